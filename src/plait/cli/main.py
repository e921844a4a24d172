"""``plait``: serve executors and deployments, probe servers.

Heavy imports happen inside each command so ``plait --help`` and ``plait ping`` start fast.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any

import typer

from plait._version import __version__

app = typer.Typer(
    name="plait",
    help="Build and serve multimodal AI pipelines: Executors, Deployments and Flows over gRPC.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"plait {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", "-v", callback=_version, is_eager=True, help="Print the version and exit."),
    ] = False,
) -> None:
    """plait: typed Documents, Executors, Deployments and Flows."""


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )


def _fail(message: str) -> typer.Exit:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    return typer.Exit(code=1)


@contextlib.contextmanager
def _clean_errors() -> Iterator[None]:
    """A PlaitError or a config validation error ends the command with one line, not a traceback."""
    from plait.errors import PlaitError

    try:
        yield
    except (PlaitError, ValueError) as e:
        raise _fail(str(e)) from None


def _serve_blocking(orchestration: Any, banner: Callable[[Any], str]) -> None:
    """Start a Deployment or Flow, print where it serves, and block until Ctrl-C or SIGTERM."""
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with orchestration as running:
        typer.echo(banner(running))
        running.block(stop)


def _json_option(text: str | None, what: str) -> dict[str, Any]:
    if not text:
        return {}
    try:
        value = json.loads(text)
    except ValueError as e:
        raise _fail(f"{what} is not valid JSON: {e}") from e
    if not isinstance(value, dict):
        raise _fail(f"{what} must be a JSON object")
    return value


def _run_async(coro: Any) -> None:
    """The process's one event loop (uvloop when available)."""
    # Not via plait.client: an executor process has no use for the client stack (httpx, websockets).
    from plait._loop import new_event_loop

    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        runner.run(coro)


@app.command()
def executor(
    uses: Annotated[
        str | None,
        typer.Option(help="Executor to serve: 'package.module:Class', a class in --py-modules, or YAML."),
    ] = None,
    port: Annotated[int, typer.Option(help="Port to listen on (0: any free port).")] = 0,
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "0.0.0.0",
    name: Annotated[str, typer.Option(help="Executor name, used in logs and errors.")] = "executor",
    uses_with: Annotated[str | None, typer.Option(help="Constructor arguments as a JSON object.")] = None,
    py_modules: Annotated[
        list[str] | None,
        typer.Option("--py-modules", help="Python files or modules to import first (repeatable)."),
    ] = None,
    workspace: Annotated[str | None, typer.Option(help="Base folder for the executor's workspace.")] = None,
    allow_concurrent: Annotated[
        bool, typer.Option(help="Run sync endpoints concurrently instead of one at a time.")
    ] = False,
    max_message_size: Annotated[int | None, typer.Option(help="Largest request accepted, in bytes.")] = None,
    grace_period: Annotated[float, typer.Option(help="Seconds in-flight requests get on SIGTERM.")] = 10.0,
    config: Annotated[
        str | None,
        typer.Option(
            help="A serialized replica config (JSON text or a .json/.yml file); replaces the flags."
        ),
    ] = None,
    log_level: Annotated[str, typer.Option(help="DEBUG, INFO, WARNING or ERROR.")] = "INFO",
) -> None:
    """Serve one Executor over gRPC until SIGTERM or Ctrl-C."""
    from plait.config import ExecutorConfig, ReplicaConfig
    from plait.serve import serve_replica

    _setup_logging(log_level)
    with _clean_errors():
        if config:
            replica = _load_config_arg(config, ReplicaConfig)
        else:
            if not uses:
                raise _fail("pass --uses (or --config)")
            fields: dict[str, Any] = {
                "uses": uses,
                "uses_with": _json_option(uses_with, "--uses-with"),
                "py_modules": tuple(py_modules or ()),
                "name": name,
                "workspace": workspace,
                "allow_concurrent": allow_concurrent,
            }
            extra: dict[str, Any] = {"grace_period": grace_period}
            if max_message_size:
                extra["max_message_size"] = max_message_size
            replica = ReplicaConfig(executor=ExecutorConfig(**fields), host=host, port=port, **extra)
        _run_async(serve_replica(replica))


@app.command()
def deployment(
    uses: Annotated[
        Path, typer.Option(help="Deployment YAML (jtype: Deployment).", exists=True, dir_okay=False)
    ],
    log_level: Annotated[str, typer.Option(help="DEBUG, INFO, WARNING or ERROR.")] = "INFO",
) -> None:
    """Serve a Deployment described in YAML until Ctrl-C or SIGTERM."""
    from plait.orchestrate import Deployment

    _setup_logging(log_level)
    with _clean_errors():
        _serve_blocking(
            Deployment.load_config(uses), lambda dep: f"deployment serving on {dep.host}:{dep.port}"
        )


def _load_config_arg(config: str, model: Any) -> Any:
    """A serialized config from ``--config``: JSON text, or a .json/.yml file (a ConfigMap, say)."""
    from plait.config import load_yaml

    if config.lstrip().startswith("{"):
        return model.model_validate_json(config)
    path = Path(config)
    data = json.loads(path.read_text()) if path.suffix == ".json" else load_yaml(path)
    return model.model_validate(data)


@app.command()
def gateway(
    config: Annotated[
        str, typer.Option(help="A serialized gateway config (JSON text or a .json/.yml file).")
    ],
    log_level: Annotated[str, typer.Option(help="DEBUG, INFO, WARNING or ERROR.")] = "INFO",
) -> None:
    """Serve a Flow's gateway (started by `plait flow`, Docker Compose or Kubernetes)."""
    from plait.config import GatewayConfig
    from plait.gateway.runtime import serve_gateway

    _setup_logging(log_level)
    with _clean_errors():
        _run_async(serve_gateway(_load_config_arg(config, GatewayConfig)))


@app.command()
def flow(
    uses: Annotated[Path, typer.Option(help="Flow YAML (jtype: Flow).", exists=True, dir_okay=False)],
    log_level: Annotated[str, typer.Option(help="DEBUG, INFO, WARNING or ERROR.")] = "INFO",
) -> None:
    """Serve a Flow described in YAML until Ctrl-C or SIGTERM."""
    from plait.orchestrate import Flow

    def banner(f: Flow) -> str:
        where = ", ".join(
            f"{p}://{f.config.host}:{port}" for p, port in zip(f.protocols, f.ports, strict=True)
        )
        return f"flow serving on {where}"

    _setup_logging(log_level)
    with _clean_errors():
        _serve_blocking(Flow.load_config(uses), banner)


@app.command()
def ping(
    target: Annotated[str, typer.Argument(help="HOST:PORT of an executor or gateway.")],
    timeout: Annotated[float, typer.Option(help="Seconds to wait for each attempt.")] = 3.0,
    attempts: Annotated[int, typer.Option(help="How many times to try before giving up.")] = 1,
) -> None:
    """Check that a plait server is up and SERVING; exit code 1 when it is not."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    address = target.split("://", 1)[-1]
    if ":" not in address:
        raise _fail(f"target {target!r} must be HOST:PORT")
    status = "UNREACHABLE"
    for attempt in range(max(1, attempts)):
        if attempt:
            time.sleep(min(1.0, timeout))
        with grpc.insecure_channel(address) as channel:
            try:
                reply = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(service=""), timeout=timeout, wait_for_ready=True
                )
                status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
            except grpc.RpcError as e:
                status = f"UNREACHABLE ({e.code().name})"
        if status == "SERVING":
            typer.echo(f"{address} is SERVING")
            return
    typer.secho(f"{address} is {status}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=1)


def main() -> None:
    app()
