"""Per-request cost of metrics and tracing, in process: one Echo handler behind the admission
limit, called directly (no network), plain vs ``monitoring`` vs ``tracing`` vs both.

    PYTHONPATH=src:tests python benchmarks/bench_observe.py     # JSON on stdout, table on stderr

The baseline is the same handler with nothing on, measured in the same run: each configuration is
reported in µs per request and as a ratio to it.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any

from executors import Echo, Text

from plait.config import Observability, RuntimeArgs
from plait.docs import encode_docs
from plait.observe import Instruments
from plait.serve.handler import RequestHandler
from plait.serve.limits import limited
from plait.wire import plait_pb2 as pb

N = 20_000


async def per_call_us(processor: Any, request: pb.Request) -> float:
    for _ in range(500):
        await processor.process(request)
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(N):
            await processor.process(request)
        best = min(best, (time.perf_counter() - start) / N * 1e6)
    return best


async def main() -> None:
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    request = pb.Request(request_id="r", endpoint="/echo", docs=encode_docs([Text(text="hello")]))
    handler = RequestHandler(Echo(runtime_args=RuntimeArgs(name="echo")), name="echo")
    base = limited(handler, 64, 256)
    plain = await per_call_us(base, request)
    out: dict[str, Any] = {"plain_us": round(plain, 2)}
    print(f"plain                   {plain:6.2f} us/request", file=sys.stderr)
    for label, cfg in (
        ("monitoring", Observability(monitoring=True)),
        ("tracing (in-memory)", Observability(tracing=True)),
        ("monitoring + tracing", Observability(monitoring=True, tracing=True)),
    ):
        exporter = InMemorySpanExporter()
        wrapped = Instruments(cfg, name="echo", role="executor", exporter=exporter).wrap(base)
        cost = await per_call_us(wrapped, request)
        exporter.clear()
        key = label.split(" (")[0].replace(" + ", "_and_")
        out[f"{key}_us"] = round(cost, 2)
        out[f"{key}_vs_plain"] = round(cost / plain, 2)
        print(f"{label:23} {cost:6.2f} us/request  (+{cost - plain:.2f})", file=sys.stderr)
    print(json.dumps(out))


if __name__ == "__main__":
    asyncio.run(main())
