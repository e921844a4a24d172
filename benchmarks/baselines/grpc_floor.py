"""The bare grpc.aio floor: the cheapest possible gRPC hop, to put plait's and Jina's numbers in scale.

Runs under any interpreter that has grpcio (e.g. plait's .venv); it uses neither plait nor Jina::

    .venv/bin/python benchmarks/baselines/grpc_floor.py --hops 1 --n-lat 300 --n-bulk 5000 --request-size 100
    .venv/bin/python benchmarks/baselines/grpc_floor.py --hops 3 --concurrency 64 --n-conc 2000

Echo servers run in separate processes (this same script in ``--serve PORT [--next PORT]`` mode), each a
``grpc.aio`` server on 127.0.0.1 with one generic unary-unary method whose request/response
(de)serialisers are the identity: request bytes in, the same bytes out.

  --hops 1   client -> server (echo)
  --hops 3   client -> A -> B -> C (echo) -> B -> A -> client; each forwarding server keeps one
             persistent grpc.aio channel to the next one and relays the raw bytes.

Measurements (same recipe as jina_echo.py and plait's benchmark), client = one persistent grpc.aio
channel:
  * warm-up: 20 requests;
  * latency: --n-lat sequential requests with a ~60-byte payload; p50/p99 in ms, nearest rank on the
    sorted list (index ceil(q*n)-1);
  * bulk: n-bulk/request-size requests (50 by default), each the size of request-size docs
    (~5 KB of small text docs; ~210 KB of 512-d float32 embeddings), up to 8 in flight;
    docs/s = docs / elapsed; after one warm-up run of --warm-bulk docs, the median of
    --bulk-repeats runs (default 3);
  * optional --concurrency C --n-conc N: C concurrent workers sharing a bounded budget of N single
    small requests over the same channel: req/s and p50/p99.
  * startup_s: wall time from spawning the server processes until every one accepts connections.

stdout holds exactly one line: the JSON result. Every loop is bounded in count and time
(--loop-timeout, default 300 s), and the servers are ended by pid when the run finishes.

The default asyncio event loop is used on both sides, on purpose (no uvloop): the floor is plain
grpc.aio as anyone gets it out of the box.
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
import subprocess
import sys
import time
from typing import Any

import grpc

HOST = "127.0.0.1"
METHOD = "/floor.Echo/Call"
WARMUP = 20
BULK_IN_FLIGHT = 8
EMB_DIM = 512
RPC_TIMEOUT_S = 30.0


def _identity(b: bytes) -> bytes:
    return b


def free_port() -> int:
    """A free TCP port: bind a socket to 127.0.0.1 port 0 and read the port back."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def percentile(sorted_vals: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list (index ceil(q*n)-1)."""
    if not sorted_vals:
        return float("nan")
    idx = min(len(sorted_vals) - 1, max(0, math.ceil(q * len(sorted_vals)) - 1))
    return sorted_vals[idx]


def log(msg: str) -> None:
    print(f"[grpc_floor] {msg}", file=sys.stderr, flush=True)


def vm_rss_mb(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return round(int(line.split()[1]) / 1024.0, 1)
    except OSError:
        return None
    return None


# ---------------------------------------------------------------------------------------------- server


async def serve(port: int, next_port: int | None, max_life_s: float) -> None:
    parent = os.getppid()
    server = grpc.aio.server()
    if next_port is None:

        async def handle(request: bytes, context: Any) -> bytes:
            return request

    else:
        channel = grpc.aio.insecure_channel(f"{HOST}:{next_port}")
        forward = channel.unary_unary(METHOD, request_serializer=_identity, response_deserializer=_identity)

        async def handle(request: bytes, context: Any) -> bytes:
            return await forward(request, timeout=RPC_TIMEOUT_S)  # type: ignore[no-any-return]

    handler = grpc.method_handlers_generic_handler(
        "floor.Echo",
        {
            "Call": grpc.unary_unary_rpc_method_handler(
                handle, request_deserializer=_identity, response_serializer=_identity
            )
        },
    )
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(f"{HOST}:{port}")
    await server.start()

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    born = time.monotonic()
    # Stop on a signal, when the parent (the benchmark client) is gone, or after max_life_s anyway.
    while not stop.is_set():
        if os.getppid() != parent or time.monotonic() - born > max_life_s:
            break
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=1.0)
    await server.stop(grace=0.5)


# ---------------------------------------------------------------------------------------------- client


def small_docs_payload(n_docs: int) -> bytes:
    """~50 bytes per doc: a 32-hex id and a short text, length-prefixed (like a tiny doc record)."""
    parts = []
    for i in range(n_docs):
        rec = b"id:" + os.urandom(16).hex().encode() + b";text:" + f"doc {i}".encode() + b";"
        parts.append(len(rec).to_bytes(2, "little") + rec)
    return b"".join(parts)


def embed_docs_payload(n_docs: int) -> bytes:
    """Each doc: id + text + 512 float32 (2,048 bytes); 100 docs ~ 210 KB."""
    parts = []
    for i in range(n_docs):
        rec = os.urandom(16).hex().encode() + f"doc {i}".encode() + os.urandom(EMB_DIM * 4)
        parts.append(len(rec).to_bytes(4, "little") + rec)
    return b"".join(parts)


async def run_client(args: argparse.Namespace, entry_port: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    async with grpc.aio.insecure_channel(f"{HOST}:{entry_port}") as channel:
        call = channel.unary_unary(METHOD, request_serializer=_identity, response_deserializer=_identity)

        async def echo(payload: bytes) -> None:
            reply = await call(payload, timeout=RPC_TIMEOUT_S)
            if reply != payload:
                raise RuntimeError("echo reply differs from the request")

        small = b'{"id":"0123456789abcdef0123456789abcdef","text":"hello"}'  # 56 bytes
        small = small + b" " * (60 - len(small))

        async def latency() -> list[float]:
            for _ in range(WARMUP):
                await echo(small)
            lat = []
            for _ in range(args.n_lat):
                t0 = time.perf_counter()
                await echo(small)
                lat.append((time.perf_counter() - t0) * 1e3)
            lat.sort()
            return lat

        if args.n_lat > 0:
            lat = await asyncio.wait_for(latency(), timeout=args.loop_timeout)
            out["p50_ms"] = round(percentile(lat, 0.50), 3)
            out["p99_ms"] = round(percentile(lat, 0.99), 3)
            log(f"latency p50={out['p50_ms']} ms p99={out['p99_ms']} ms")
        else:
            for _ in range(WARMUP):
                await echo(small)

        async def bulk(payload: bytes, n_requests: int) -> float:
            sem = asyncio.Semaphore(BULK_IN_FLIGHT)

            async def one() -> None:
                async with sem:
                    await echo(payload)

            t0 = time.perf_counter()
            await asyncio.gather(*(one() for _ in range(n_requests)))
            return time.perf_counter() - t0

        if args.n_bulk > 0:
            n_req = math.ceil(args.n_bulk / args.request_size)
            n_docs = n_req * args.request_size
            p_small = small_docs_payload(args.request_size)
            p_emb = embed_docs_payload(args.request_size)
            out["bulk_small_payload_bytes"] = len(p_small)
            out["bulk_embed_payload_bytes"] = len(p_emb)

            async def median_rate(payload: bytes) -> float:
                # The recipe of plait's benchmark: a warm-up of --warm-bulk docs, then the median
                # of --bulk-repeats runs.
                warm = math.ceil(args.warm_bulk / args.request_size)
                if warm > 0:
                    await asyncio.wait_for(bulk(payload, warm), timeout=args.loop_timeout)
                times = [
                    await asyncio.wait_for(bulk(payload, n_req), timeout=args.loop_timeout)
                    for _ in range(max(1, args.bulk_repeats))
                ]
                return n_docs / statistics.median(times)

            out["bulk_small_docs_per_s"] = round(await median_rate(p_small), 1)
            out["bulk_embed_docs_per_s"] = round(await median_rate(p_emb), 1)
            small_rate, emb_rate = out["bulk_small_docs_per_s"], out["bulk_embed_docs_per_s"]
            log(f"bulk small {small_rate} docs/s, embed {emb_rate} docs/s")

        if args.concurrency > 0:
            remaining = args.n_conc
            conc_lat: list[float] = []

            async def worker() -> None:
                nonlocal remaining
                while remaining > 0:
                    remaining -= 1
                    t0 = time.perf_counter()
                    await echo(small)
                    conc_lat.append((time.perf_counter() - t0) * 1e3)

            async def conc() -> float:
                t0 = time.perf_counter()
                await asyncio.gather(*(worker() for _ in range(args.concurrency)))
                return time.perf_counter() - t0

            dt = await asyncio.wait_for(conc(), timeout=args.loop_timeout)
            conc_lat.sort()
            out.update(
                {
                    "concurrency": args.concurrency,
                    "n_conc": len(conc_lat),
                    "conc_rps": round(len(conc_lat) / dt, 1),
                    "conc_p50_ms": round(percentile(conc_lat, 0.50), 3),
                    "conc_p99_ms": round(percentile(conc_lat, 0.99), 3),
                }
            )
            log(f"concurrency {args.concurrency}: {out['conc_rps']} req/s p99={out['conc_p99_ms']} ms")
    return out


async def wait_ready(ports: list[int], timeout: float) -> None:
    async def one(port: int) -> None:
        async with grpc.aio.insecure_channel(f"{HOST}:{port}") as ch:
            await ch.channel_ready()

    await asyncio.wait_for(asyncio.gather(*(one(p) for p in ports)), timeout=timeout)


def stop_servers(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(timeout=5)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(timeout=5)


def bench(args: argparse.Namespace) -> dict[str, Any]:
    ports = [free_port() for _ in range(args.hops)]
    procs: list[subprocess.Popen[bytes]] = []
    result: dict[str, Any] = {
        "system": "grpc_floor",
        "version": grpc.__version__,
        "hops": args.hops,
        "protocol": "grpc",
        "host": HOST,
        "event_loop": "asyncio (default)",
        "n_lat": args.n_lat,
        "n_bulk": args.n_bulk,
        "request_size": args.request_size,
        "p50_ms": None,
        "p99_ms": None,
        "bulk_small_docs_per_s": None,
        "bulk_embed_docs_per_s": None,
        "startup_s": None,
    }
    max_life = str(4 * args.loop_timeout + 120)
    try:
        t0 = time.perf_counter()
        # Start from the end of the chain: the last server echoes, each earlier one forwards to the next.
        for i in reversed(range(args.hops)):
            cmd = [
                sys.executable,
                os.path.abspath(__file__),
                "--serve",
                str(ports[i]),
                "--max-life",
                max_life,
            ]
            if i + 1 < args.hops:
                cmd += ["--next", str(ports[i + 1])]
            procs.append(subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=sys.stderr.fileno()))
        asyncio.run(wait_ready(ports, timeout=60.0))
        result["startup_s"] = round(time.perf_counter() - t0, 3)
        log(f"{args.hops} server(s) ready on {HOST}:{ports} in {result['startup_s']} s")
        result.update(asyncio.run(run_client(args, ports[0])))
        if args.rss:
            chain = list(reversed(procs))  # procs were started last hop first
            result["rss_mb"] = {
                f"server-{i}": {"pid": p.pid, "rss_mb": vm_rss_mb(p.pid)} for i, p in enumerate(chain)
            }
    finally:
        stop_servers(procs)
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hops", type=int, choices=[1, 3], default=1)
    ap.add_argument("--n-lat", type=int, default=300, help="sequential single requests (0: skip)")
    ap.add_argument("--n-bulk", type=int, default=5000, help="docs per bulk run (0: skip both bulk runs)")
    ap.add_argument("--request-size", type=int, default=100, help="docs per bulk request")
    ap.add_argument("--bulk-repeats", type=int, default=3, help="bulk runs per kind; their median counts")
    ap.add_argument("--warm-bulk", type=int, default=500, help="docs of a warm-up run per bulk kind")
    ap.add_argument("--concurrency", type=int, default=0, help="concurrent in-flight requests (0: skip)")
    ap.add_argument("--n-conc", type=int, default=2000, help="total requests of the concurrency run")
    ap.add_argument("--rss", action="store_true", help="report VmRSS of the server processes")
    ap.add_argument("--loop-timeout", type=float, default=300.0, help="time bound of each loop (s)")
    ap.add_argument("--serve", type=int, metavar="PORT", help=argparse.SUPPRESS)
    ap.add_argument("--next", type=int, metavar="PORT", help=argparse.SUPPRESS)
    ap.add_argument("--max-life", type=float, default=1320.0, help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.serve is not None:
        asyncio.run(serve(args.serve, args.next, args.max_life))
        return 0

    result = bench(args)
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
