"""Jina 3.34 echo baseline: the numbers plait's benchmarks are compared against.

Run it with Jina's own interpreter (never plait's; this script must not import plait)::

    /work/jina-venv/bin/python benchmarks/baselines/jina_echo.py \
        --workload deployment --protocol grpc --n-lat 300 --n-bulk 5000 --request-size 100

Workloads:
  deployment  one echo Executor served by a Jina ``Deployment`` (gateway + executor processes)
  flow        two echo Executors chained in a Jina ``Flow`` (gateway + 2 executor processes);
              the gateway speaks --protocol (grpc, http or websocket)

The echo Executor has two async endpoints that only do ``d.text = d.text`` and return the docs:
``/echo`` typed ``DocList[TextDoc]`` (latency, small-doc bulk, concurrency) and ``/echo_emb`` typed
``DocList[EmbDoc]`` (512-d float32 embedding bulk): Jina v3 deserialises by the endpoint's doc
type, so a typed endpoint per doc class is what keeps the embedding on the wire both ways.

Measurements (the same recipe as plait's benchmark and grpc_floor.py):
  * warm-up: 20 single-doc requests;
  * latency: --n-lat sequential single-doc ``Client.post`` calls; p50/p99 in ms, nearest rank
    on the sorted list (index ceil(q*n)-1);
  * bulk small: --n-bulk ``TextDoc(text=f'doc {i}')`` in one ``client.post(..., request_size=N)``,
    after one warm-up post of --warm-bulk docs; the median of --bulk-repeats posts (default 3),
    docs/s = n / elapsed;
  * bulk embed: --n-bulk ``EmbDoc`` with a 512-d float32 embedding, same way;
  * startup_s: wall time from entering ``with Deployment/Flow`` until it is ready; with
    --startup-repeats N, the median of N starts (all but the last stopped again at once), each
    in startup_runs_s;
  * optional --concurrency C --n-conc N: C concurrent ``Client(asyncio=True)`` workers sharing a
    bounded budget of N single-doc requests: req/s and p50/p99;
  * optional --rss: VmRSS (MB) of every Jina child process (gateway + executors) after the bulk runs.

stdout holds exactly one line: the JSON result (all Jina/rich console output is sent to stderr).
Every request loop is bounded in count and in time (--loop-timeout, default 300 s); a watchdog
kills this script's own child processes and exits non-zero if anything hangs past that.
"""

import argparse
import asyncio
import contextlib
import json
import math
import os
import signal
import socket
import statistics
import sys
import threading
import time
from typing import Any, Optional

# Jina reads these at import time: no telemetry, quiet logs, and 127.0.0.1 as the default bind host.
os.environ["JINA_OPTOUT_TELEMETRY"] = "1"
os.environ.setdefault("JINA_LOG_LEVEL", "ERROR")
os.environ["JINA_DEFAULT_HOST"] = "127.0.0.1"
os.environ.setdefault("JINA_HIDE_SURVEY", "1")

import numpy as np
from docarray import BaseDoc, DocList
from docarray.documents import TextDoc
from docarray.typing import NdArray
from jina import Executor, requests

HOST = "127.0.0.1"
WARMUP = 20
EMB_DIM = 512


class EmbDoc(BaseDoc):
    text: str = ""
    embedding: Optional[NdArray[512]] = None  # noqa: UP045 (exactly the doc class of the brief)


class EchoExecutor(Executor):
    """Real echo: touches every doc and returns the same docs."""

    @requests(on="/echo")
    async def echo(self, docs: DocList[TextDoc], **kwargs: Any) -> DocList[TextDoc]:
        for d in docs:
            d.text = d.text
        return docs

    @requests(on="/echo_emb")
    async def echo_emb(self, docs: DocList[EmbDoc], **kwargs: Any) -> DocList[EmbDoc]:
        for d in docs:
            d.text = d.text
        return docs


# ---------------------------------------------------------------------------------------------- helpers


def free_port() -> int:
    """A free TCP port: bind a socket to 127.0.0.1 port 0 and read the port back."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def free_ports(n: int) -> list[int]:
    return [free_port() for _ in range(n)]


def _route_jina_port_picker() -> None:
    """Make Jina's internal port picker (used for ports its API gives no argument for, e.g. the
    executor behind a Deployment's gateway) use the same 127.0.0.1:0 probe as everything else."""
    import jina.helper
    import jina.orchestrate.deployments
    import jina.orchestrate.flow.base
    import jina.parsers.orchestrate.pod
    import jina.serve.runtimes.asyncio

    for mod in (jina.helper, jina.orchestrate.deployments, jina.parsers.orchestrate.pod):
        if hasattr(mod, "random_port"):
            mod.random_port = free_port  # type: ignore[attr-defined]
    for mod in (jina.helper, jina.orchestrate.flow.base, jina.serve.runtimes.asyncio):
        if hasattr(mod, "random_ports"):
            mod.random_ports = free_ports  # type: ignore[attr-defined]


def percentile(sorted_vals: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list (index ceil(q*n)-1)."""
    if not sorted_vals:
        return float("nan")
    idx = min(len(sorted_vals) - 1, max(0, math.ceil(q * len(sorted_vals)) - 1))
    return sorted_vals[idx]


def log(msg: str) -> None:
    print(f"[jina_echo] {msg}", file=sys.stderr, flush=True)


def descendants(root: int) -> list[int]:
    """All live descendant pids of `root` (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        # field 4 (ppid) comes after the ')' that closes the command name
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    out: list[int] = []
    stack = [root]
    while stack:
        for c in children.get(stack.pop(), []):
            out.append(c)
            stack.append(c)
    return out


def vm_rss_mb(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return round(int(line.split()[1]) / 1024.0, 1)
    except OSError:
        return None
    return None


class Watchdog:
    """Last-resort bound on time: if a phase overruns, kill our own children by pid and exit 3."""

    def __init__(self) -> None:
        self._deadline: float | None = None
        self._label = ""
        self._lock = threading.Lock()
        threading.Thread(target=self._run, name="watchdog", daemon=True).start()

    def arm(self, label: str, seconds: float) -> None:
        with self._lock:
            self._label = label
            self._deadline = time.monotonic() + seconds

    def disarm(self) -> None:
        with self._lock:
            self._deadline = None

    def _run(self) -> None:
        while True:
            time.sleep(0.5)
            with self._lock:
                expired = self._deadline is not None and time.monotonic() > self._deadline
                label = self._label
            if expired:
                log(f"ERROR: watchdog: phase {label!r} exceeded its time bound; aborting")
                for pid in reversed(descendants(os.getpid())):
                    with contextlib.suppress(OSError):
                        os.kill(pid, signal.SIGKILL)
                os._exit(3)


def check_deadline(deadline: float, what: str) -> None:
    if time.perf_counter() > deadline:
        raise TimeoutError(f"{what}: exceeded the loop time bound; aborting")


# ---------------------------------------------------------------------------------------------- phases


def run_latency(client: Any, n_lat: int, loop_timeout: float) -> list[float]:
    """Warm-up, then n_lat sequential single-doc requests; returns sorted latencies in ms."""
    deadline = time.perf_counter() + loop_timeout
    for i in range(WARMUP):
        check_deadline(deadline, "warm-up")
        client.post(
            "/echo", inputs=DocList[TextDoc]([TextDoc(text=f"warm {i}")]), return_type=DocList[TextDoc]
        )
    lat: list[float] = []
    for i in range(n_lat):
        check_deadline(deadline, "latency loop")
        docs = DocList[TextDoc]([TextDoc(text=f"hello {i}")])
        t0 = time.perf_counter()
        out = client.post("/echo", inputs=docs, return_type=DocList[TextDoc])
        lat.append((time.perf_counter() - t0) * 1e3)
        if len(out) != 1 or out[0].text != f"hello {i}":
            raise RuntimeError(f"bad echo reply: {out!r}")
    lat.sort()
    return lat


def run_bulk(client: Any, endpoint: str, docs: Any, doc_cls: Any, request_size: int) -> float:
    n = len(docs)
    t0 = time.perf_counter()
    out = client.post(endpoint, inputs=docs, request_size=request_size, return_type=DocList[doc_cls])
    elapsed = time.perf_counter() - t0
    if len(out) != n:
        raise RuntimeError(f"bulk {endpoint}: sent {n} docs, got {len(out)} back")
    # Jina does not keep request order by default (results_in_order=False): compare as sets.
    if {d.text for d in out} != {d.text for d in docs}:
        raise RuntimeError(f"bulk {endpoint}: reply docs differ from the request docs")
    if doc_cls is EmbDoc and (out[0].embedding is None or tuple(out[0].embedding.shape) != (EMB_DIM,)):
        raise RuntimeError(f"bulk {endpoint}: the embedding did not come back")
    return n / elapsed


def bulk_median(client: Any, endpoint: str, docs: Any, doc_cls: Any, args: argparse.Namespace) -> float:
    """The same recipe as plait's benchmark: one warm-up post of --warm-bulk docs, then the median
    docs/s of --bulk-repeats posts of all the docs."""
    if args.warm_bulk > 0:
        run_bulk(client, endpoint, docs[: args.warm_bulk], doc_cls, args.request_size)
    return statistics.median(
        run_bulk(client, endpoint, docs, doc_cls, args.request_size) for _ in range(max(1, args.bulk_repeats))
    )


def make_embed_docs(n: int) -> Any:
    rng = np.random.default_rng(0)
    emb = rng.random((n, EMB_DIM), dtype=np.float32)
    return DocList[EmbDoc]([EmbDoc(text=f"doc {i}", embedding=emb[i]) for i in range(n)])


async def _conc_main(protocol: str, port: int, concurrency: int, n_conc: int, loop_timeout: float) -> dict:
    from jina import Client

    clients = [Client(host=HOST, port=port, protocol=protocol, asyncio=True) for _ in range(concurrency)]
    remaining = n_conc
    lat: list[float] = []

    async def one(client: Any, text: str) -> float:
        t0 = time.perf_counter()
        got: list[Any] = []
        async for resp in client.post(
            "/echo", inputs=DocList[TextDoc]([TextDoc(text=text)]), return_type=DocList[TextDoc]
        ):
            got.extend(resp)
        dt = (time.perf_counter() - t0) * 1e3
        if len(got) != 1 or got[0].text != text:
            raise RuntimeError(f"bad echo reply: {got!r}")
        return dt

    warmed = 0
    all_warm = asyncio.Event()
    start = asyncio.Event()

    async def worker(wid: int, client: Any) -> None:
        nonlocal remaining, warmed
        await one(client, f"warm {wid}")  # one warm-up request per worker, not counted
        warmed += 1
        if warmed == concurrency:
            all_warm.set()
        await start.wait()
        while remaining > 0:
            remaining -= 1
            lat.append(await one(client, f"c{wid}-{remaining}"))

    async def go() -> float:
        tasks = [asyncio.ensure_future(worker(i, c)) for i, c in enumerate(clients)]
        waiter = asyncio.ensure_future(all_warm.wait())
        await asyncio.wait([waiter, *tasks], return_when=asyncio.FIRST_COMPLETED)
        for t in tasks:  # a worker that failed during warm-up surfaces its error here
            if t.done() and t.exception() is not None:
                raise t.exception()  # type: ignore[misc]
        await waiter
        t0 = time.perf_counter()
        start.set()
        await asyncio.gather(*tasks)
        return time.perf_counter() - t0

    elapsed = await asyncio.wait_for(go(), timeout=loop_timeout)
    lat.sort()
    return {
        "concurrency": concurrency,
        "n_conc": len(lat),
        "conc_rps": round(len(lat) / elapsed, 1),
        "conc_p50_ms": round(percentile(lat, 0.50), 3),
        "conc_p99_ms": round(percentile(lat, 0.99), 3),
    }


def run_concurrency(protocol: str, port: int, concurrency: int, n_conc: int, loop_timeout: float) -> dict:
    return asyncio.run(_conc_main(protocol, port, concurrency, n_conc, loop_timeout))


def jina_pids(orch: Any, workload: str) -> list[tuple[str, int]]:
    """(label, pid) of every process a Deployment/Flow started, read from Jina's own pod objects."""

    def of_deployment(dep: Any, label: str) -> list[tuple[str, int]]:
        out: list[tuple[str, int]] = []
        for shard_id, rs in sorted(getattr(dep, "shards", {}).items()):
            for rep_id, pod in enumerate(getattr(rs, "_pods", [])):
                worker = getattr(pod, "worker", None)
                if worker is not None and worker.pid:
                    out.append((f"{label}/shard-{shard_id}/rep-{rep_id}", worker.pid))
        for attr in ("head_pod", "uses_before_pod", "uses_after_pod", "gateway_pod"):
            pod = getattr(dep, attr, None)
            worker = getattr(pod, "worker", None)
            if worker is not None and worker.pid:
                out.append(("gateway" if attr == "gateway_pod" else f"{label}/{attr}", worker.pid))
        return out

    if workload == "deployment":
        return of_deployment(orch, "executor")
    procs = []
    for name, dep in orch._deployment_nodes.items():
        procs.extend(of_deployment(dep, name))
    # the Flow's gateway is a Deployment of its own, named "gateway"
    return [("gateway" if name.startswith("gateway") else name, pid) for name, pid in procs]


def rss_report(orch: Any, workload: str) -> dict:
    named = jina_pids(orch, workload)
    seen = {pid for _, pid in named}
    report: dict[str, Any] = {}
    for name, pid in named:
        report[name] = {"pid": pid, "rss_mb": vm_rss_mb(pid)}
    for pid in descendants(os.getpid()):  # anything Jina started that its objects do not list
        if pid not in seen:
            report[f"other-{pid}"] = {"pid": pid, "rss_mb": vm_rss_mb(pid)}
    report["client(this script)"] = {"pid": os.getpid(), "rss_mb": vm_rss_mb(os.getpid())}
    return report


# ---------------------------------------------------------------------------------------------- main


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workload", choices=["deployment", "flow"], default="deployment")
    ap.add_argument("--protocol", choices=["grpc", "http", "websocket"], default="grpc")
    ap.add_argument("--n-lat", type=int, default=300, help="sequential single-doc requests (0: skip)")
    ap.add_argument("--n-bulk", type=int, default=5000, help="docs per bulk run (0: skip both bulk runs)")
    ap.add_argument("--bulk-repeats", type=int, default=3, help="bulk posts per kind; their median counts")
    ap.add_argument("--warm-bulk", type=int, default=500, help="docs of a warm-up post per bulk kind")
    ap.add_argument(
        "--startup-repeats",
        type=int,
        default=1,
        help="starts timed (the last one serves); their median counts",
    )
    ap.add_argument("--request-size", type=int, default=100)
    ap.add_argument("--concurrency", type=int, default=0, help="concurrent async clients (0: skip)")
    ap.add_argument("--n-conc", type=int, default=2000, help="total requests of the concurrency run")
    ap.add_argument("--rss", action="store_true", help="report VmRSS of every Jina child process")
    ap.add_argument("--loop-timeout", type=float, default=300.0, help="time bound of each request loop (s)")
    args = ap.parse_args()

    # Keep stdout for the one JSON line: everything else written to fd 1 (rich tables, Jina's
    # child processes, which inherit the fd) goes to stderr.
    json_out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    sys.stdout = sys.stderr

    import docarray
    import jina
    from jina import Client, Deployment, Flow

    _route_jina_port_picker()
    dog = Watchdog()
    grace = 60.0

    gw_port = free_port()
    result: dict[str, Any] = {
        "system": "jina",
        "version": jina.__version__,
        "docarray_version": docarray.__version__,
        "workload": args.workload,
        "protocol": args.protocol,
        "host": HOST,
        "n_lat": args.n_lat,
        "n_bulk": args.n_bulk,
        "request_size": args.request_size,
        "p50_ms": None,
        "p99_ms": None,
        "bulk_small_docs_per_s": None,
        "bulk_embed_docs_per_s": None,
        "startup_s": None,
    }

    if args.workload == "deployment":
        # The Deployment's own gateway speaks --protocol; the executor behind it is gRPC.
        def make() -> Any:
            return Deployment(uses=EchoExecutor, host=HOST, port=gw_port, protocol=args.protocol, name="echo")
    else:
        e1, e2 = free_ports(2)

        def make() -> Any:
            return (
                Flow(host=HOST, port=gw_port, protocol=args.protocol)
                .add(uses=EchoExecutor, name="echo1", host=HOST, port=e1)
                .add(uses=EchoExecutor, name="echo2", host=HOST, port=e2)
            )

    small = DocList[TextDoc]([TextDoc(text=f"doc {i}") for i in range(args.n_bulk)])
    emb = make_embed_docs(args.n_bulk) if args.n_bulk else None

    dog.arm("startup", args.loop_timeout + grace)
    starts = []
    for _ in range(max(args.startup_repeats, 1) - 1):  # started and stopped again, only timed
        t0 = time.perf_counter()
        with make():
            starts.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    with make() as orch:
        starts.append(time.perf_counter() - t0)
        result["startup_s"] = round(statistics.median(starts), 3)
        result["startup_runs_s"] = [round(t, 3) for t in starts]
        log(f"{args.workload}/{args.protocol} ready on {HOST}:{gw_port} in {result['startup_s']} s")
        client = Client(host=HOST, port=gw_port, protocol=args.protocol)

        dog.arm("latency", args.loop_timeout + grace)
        if args.n_lat > 0:
            lat = run_latency(client, args.n_lat, args.loop_timeout)
            result["p50_ms"] = round(percentile(lat, 0.50), 3)
            result["p99_ms"] = round(percentile(lat, 0.99), 3)
            log(f"latency p50={result['p50_ms']} ms p99={result['p99_ms']} ms")
        elif args.n_lat == 0 and (args.n_bulk or args.concurrency):
            for i in range(WARMUP):  # still warm up before the bulk/concurrency runs
                client.post(
                    "/echo", inputs=DocList[TextDoc]([TextDoc(text=f"w{i}")]), return_type=DocList[TextDoc]
                )

        if args.n_bulk > 0:
            dog.arm("bulk small", (args.bulk_repeats + 1) * args.loop_timeout + grace)
            result["bulk_small_docs_per_s"] = round(bulk_median(client, "/echo", small, TextDoc, args), 1)
            log(f"bulk small {result['bulk_small_docs_per_s']} docs/s")
            dog.arm("bulk embed", (args.bulk_repeats + 1) * args.loop_timeout + grace)
            result["bulk_embed_docs_per_s"] = round(bulk_median(client, "/echo_emb", emb, EmbDoc, args), 1)
            log(f"bulk embed {result['bulk_embed_docs_per_s']} docs/s")

        if args.rss:
            result["rss_mb"] = rss_report(orch, args.workload)

        if args.concurrency > 0:
            dog.arm("concurrency", args.loop_timeout + grace)
            result.update(
                run_concurrency(args.protocol, gw_port, args.concurrency, args.n_conc, args.loop_timeout)
            )
            rps, p99 = result["conc_rps"], result["conc_p99_ms"]
            log(f"concurrency {args.concurrency}: {rps} req/s p99={p99} ms")

        dog.arm("shutdown", 120.0)
    dog.disarm()

    json_out.write(json.dumps(result) + "\n")
    json_out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
