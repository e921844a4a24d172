"""Serve the search example (flow.yml) until Ctrl-C or SIGTERM: gRPC, HTTP and WebSocket on one gateway.

    python examples/search/serve.py [--backend auto|hash|minilm] [--workspace DIR]
                                    [--ports 12345,12346,12347] [--protocols grpc,http,websocket]

The index lives in examples/search/workspace/ unless --workspace says otherwise. Then, from
another terminal:  python examples/search/client.py
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

from plait import Flow
from plait.config import FlowConfig
from plait.errors import PlaitError

HERE = Path(__file__).resolve().parent
FLOW_YML = HERE / "flow.yml"
SCHEMES = {"grpc": "grpc", "http": "http", "websocket": "ws"}


def load_flow(
    source: str | os.PathLike[str] = FLOW_YML,
    *,
    backend: str | None = None,
    workspace: str | os.PathLike[str] | None = None,
    ports: Sequence[int | None] | None = None,
    protocols: Sequence[str] | None = None,
    quiet: bool = False,
) -> Flow:
    """The Flow of ``source`` with a few settings changed (the config is frozen: copies all the way).

    A relative ``workspace:`` in the YAML is made relative to the YAML file; ``workspace`` replaces
    it; ``backend`` replaces the encoder's; ``protocols`` keeps those protocols (with their ports)
    and ``ports`` then replaces the ports (``None`` or 0: a free port, chosen when the Flow starts).
    """
    source = Path(source).resolve()
    cfg: FlowConfig = Flow.load_config(source).config
    nodes = []
    for node in cfg.executors:
        ex = node.executor
        update: dict[str, object] = {}
        if workspace is not None and ex.workspace is not None:
            update["workspace"] = str(Path(workspace).resolve())
        elif ex.workspace is not None and not os.path.isabs(os.path.expanduser(ex.workspace)):
            update["workspace"] = str(source.parent / ex.workspace)
        if backend is not None and "backend" in ex.uses_with:
            update["uses_with"] = {**ex.uses_with, "backend": backend}
        nodes.append(node.model_copy(update={"executor": ex.model_copy(update=update)}) if update else node)
    changes: dict[str, object] = {"executors": tuple(nodes)}
    kept = list(zip(cfg.protocols, cfg.ports, strict=True))
    if protocols is not None:
        wanted = [p.lower() for p in protocols]
        unknown = set(wanted) - set(cfg.protocols)
        if unknown:
            raise ValueError(
                f"protocols {sorted(unknown)} are not in {source.name} ({', '.join(cfg.protocols)})"
            )
        kept = [(p, port) for p, port in kept if p in wanted]
    if ports is not None:
        if len(ports) != len(kept):
            raise ValueError(f"{len(ports)} port(s) for {len(kept)} protocol(s) {[p for p, _ in kept]}")
        kept = [(p, port or None) for (p, _), port in zip(kept, ports, strict=True)]
    changes["protocols"] = tuple(p for p, _ in kept)
    changes["ports"] = tuple(port for _, port in kept)
    return Flow(config=cfg.model_copy(update=changes), quiet=quiet)


def _csv(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--backend", choices=["auto", "hash", "minilm"], help="encoder backend (default: flow.yml's)"
    )
    ap.add_argument("--workspace", help="folder for the index (default: examples/search/workspace)")
    ap.add_argument(
        "--ports", type=lambda t: [int(p) for p in _csv(t)], help="e.g. 12345,12346,12347 (0: any free port)"
    )
    ap.add_argument("--protocols", type=_csv, help="a subset of grpc,http,websocket")
    ap.add_argument("--quiet", action="store_true", help="don't relay the executors' logs")
    args = ap.parse_args(argv)
    try:
        flow = load_flow(
            backend=args.backend,
            workspace=args.workspace,
            ports=args.ports,
            protocols=args.protocols,
            quiet=args.quiet,
        )
    except ValueError as e:
        ap.error(str(e))
    host = flow.config.host
    try:
        flow.start()
    except PlaitError as e:  # a port in use, an executor that failed to start (its output is shown)
        sys.exit(f"error: {e}")
    except KeyboardInterrupt:
        sys.exit(130)  # Ctrl-C while starting: start() has stopped what it had started
    # Ctrl-C and SIGTERM (docker stop, kill) both end block(); set here, so they work even when
    # this process was started with SIGINT ignored (as a background job of a script is).
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    with flow:
        print(f"plait search example serving (index in {_workspace(flow)}):")
        for protocol, port in zip(flow.protocols, flow.ports, strict=True):
            extra = f"   OpenAPI: http://{host}:{port}/docs" if protocol == "http" else ""
            print(f"  {protocol:<9} {SCHEMES[protocol]}://{host}:{port}{extra}")
        print("Try, from another terminal:")
        client = _short(HERE / "client.py")
        python = "python" if "VIRTUAL_ENV" in os.environ else _short(Path(sys.executable))
        for protocol, port in zip(flow.protocols, flow.ports, strict=True):
            print(f"  {python} {client} --protocol {protocol} --port {port}")
        if "http" in flow.protocols:
            port = flow.ports[flow.protocols.index("http")]
            body = '{"data": [{"text": "a cat asleep on the sofa"}], "parameters": {"limit": 3}}'
            print(f"  curl -s -X POST {host}:{port}/search -H 'Content-Type: application/json' -d '{body}'")
        print("Ctrl-C to stop.", flush=True)
        flow.block(stop)
    print("stopped; the index is saved.", flush=True)


def _short(path: Path) -> str:
    """``path`` relative to the current folder when it is below it, else absolute; shell-quoted."""
    relative = os.path.relpath(path)
    return shlex.quote(path.as_posix() if relative.startswith("..") else relative)


def _workspace(flow: Flow) -> str:
    for node in flow.config.executors:
        if node.executor.workspace:
            return os.path.join(node.executor.workspace, node.name)
    return "(no workspace)"


if __name__ == "__main__":
    main()
