"""Benchmark: ``@dynamic_batching`` against the same endpoint unbatched, under 64 concurrent clients.

    .venv/bin/python benchmarks/bench_batching.py [--rounds 3] [--clients 64] [--duration 3]

The executor emulates a model on an accelerator: a call costs 5 ms + 0.05 ms per document (an
``asyncio.sleep``) and the device runs one call at a time (an ``asyncio.Lock``; without it,
overlapping sleeps would make an unbatched endpoint look like 64 devices). It serves that cost
twice, on ``/unbatched`` and on ``/batched`` (``@dynamic_batching(preferred_batch_size=64,
timeout=5)``), from one Deployment, so both runs use the same processes. Each of ``--clients``
AsyncClient instances (one channel each) posts one single-document request after another for
``--warmup`` + ``--duration`` seconds (at most ``--max-requests`` each); requests that finish in
the measured window count. Each round measures both endpoints, in alternating order; reported
figures are medians over rounds. Prints one JSON object, then a Markdown table on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from typing import Any

from common import check, fmt, mark, median_tree, percentile, ratio

from plait import AsyncClient, Deployment, DocList, Document, Executor, dynamic_batching, requests
from plait._loop import new_event_loop

BASE_MS = 5.0
PER_DOC_MS = 0.05
PREFERRED_BATCH_SIZE = 64
TIMEOUT_MS = 5.0
ONE_CALL_MS = BASE_MS + PER_DOC_MS * PREFERRED_BATCH_SIZE
P99_LIMIT_MS = 3 * (TIMEOUT_MS + ONE_CALL_MS)
RATIO_TARGET = 10.0


class Req(Document):
    text: str = ""
    batch_size: int = 0  # how many docs the call that served this one held


class CostModel(Executor):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._device = asyncio.Lock()  # one accelerator: one call at a time

    async def _infer(self, docs: DocList[Req]) -> DocList[Req]:
        async with self._device:
            await asyncio.sleep((BASE_MS + PER_DOC_MS * len(docs)) / 1000)
        for d in docs:
            d.batch_size = len(docs)
        return docs

    @requests(on="/unbatched")
    async def unbatched(self, docs: DocList[Req], **kwargs: Any) -> DocList[Req]:
        return await self._infer(docs)

    @dynamic_batching(preferred_batch_size=PREFERRED_BATCH_SIZE, timeout=TIMEOUT_MS)
    @requests(on="/batched")
    async def batched(self, docs: DocList[Req], **kwargs: Any) -> DocList[Req]:
        return await self._infer(docs)


async def load(
    port: int, endpoint: str, clients: int, warmup: float, duration: float, cap: int
) -> dict[str, Any]:
    """Closed-loop load: ``clients`` callers, each posting one single-doc request after another."""
    latencies: list[float] = []
    sizes: list[int] = []
    errors = 0
    start = time.perf_counter()
    measure_from, stop_at = start + warmup, start + warmup + duration

    async def caller(client: AsyncClient, i: int) -> None:
        nonlocal errors
        docs = DocList[Req]([Req(text=f"client {i}")])
        for _ in range(cap):
            t0 = time.perf_counter()
            if t0 >= stop_at:
                return
            try:
                out = await client.post(endpoint, docs, return_type=DocList[Req], timeout=30)
            except Exception:
                errors += 1
                continue
            t1 = time.perf_counter()
            if measure_from <= t1 <= stop_at:
                latencies.append((t1 - t0) * 1e3)
                sizes.append(out[0].batch_size)

    pool = [AsyncClient("127.0.0.1", port) for _ in range(clients)]
    try:
        await asyncio.gather(*(caller(c, i) for i, c in enumerate(pool)))
    finally:
        await asyncio.gather(*(c.close() for c in pool))
    latencies.sort()
    return {
        "requests": len(latencies),
        "errors": errors,
        "req_per_s": len(latencies) / duration,
        "p50_ms": percentile(latencies, 0.5) if latencies else None,
        "p99_ms": percentile(latencies, 0.99) if latencies else None,
        "mean_batch": statistics.fmean(sizes) if sizes else None,
    }


def measure_round(args: argparse.Namespace, batched_first: bool) -> dict[str, Any]:
    order = ["/batched", "/unbatched"] if batched_first else ["/unbatched", "/batched"]
    result: dict[str, Any] = {}
    with Deployment(uses=CostModel, host="127.0.0.1", quiet=True) as dep:
        for endpoint in order:
            # The clients run on the loop plait runs everywhere (uvloop where available).
            with asyncio.Runner(loop_factory=new_event_loop) as runner:
                result[endpoint.strip("/")] = runner.run(
                    load(dep.port, endpoint, args.clients, args.warmup, args.duration, args.max_requests)
                )
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--duration", type=float, default=3.0, help="measured seconds per endpoint and round")
    ap.add_argument("--warmup", type=float, default=0.5, help="seconds before measuring starts")
    ap.add_argument("--max-requests", type=int, default=100_000, help="requests per client at most")
    args = ap.parse_args()

    rounds = []
    for r in range(args.rounds):
        print(f"round {r + 1}/{args.rounds}", file=sys.stderr)
        rounds.append(measure_round(args, batched_first=r % 2 == 1))
    summary: dict[str, Any] = {
        "benchmark": "batching",
        "rounds": args.rounds,
        "clients": args.clients,
        "duration_s": args.duration,
        "call_cost_ms": f"{BASE_MS:g} + {PER_DOC_MS:g} per doc",
        "preferred_batch_size": PREFERRED_BATCH_SIZE,
        "timeout_ms": TIMEOUT_MS,
        **median_tree(rounds),
    }
    b, u = summary["batched"], summary["unbatched"]
    speedup = ratio(b["req_per_s"], u["req_per_s"])
    summary["ratios"] = {"req_per_s_batched_over_unbatched": speedup}
    summary["targets"] = {
        "throughput_ratio": {
            "limit": RATIO_TARGET,
            "value": speedup,
            "met": check(speedup, RATIO_TARGET, True),
        },
        "batched_p99_ms": {
            "limit": P99_LIMIT_MS,
            "value": b["p99_ms"],
            "met": check(b["p99_ms"], P99_LIMIT_MS, False),
        },
    }
    print(json.dumps(summary, indent=2))
    print(markdown(summary), file=sys.stderr)
    return 0


def markdown(s: dict[str, Any]) -> str:
    b, u, t = s["batched"], s["unbatched"], s["targets"]
    rows = [
        "| metric | unbatched | `@dynamic_batching(64, timeout=5)` | ratio |",
        "|---|---|---|---|",
        f"| requests/s | {fmt(u['req_per_s'], 0)} | {fmt(b['req_per_s'], 0)} "
        f"| **{fmt(s['ratios']['req_per_s_batched_over_unbatched'], 1)}×** |",
        f"| p50 latency (ms) | {fmt(u['p50_ms'])} | {fmt(b['p50_ms'])} | |",
        f"| p99 latency (ms) | {fmt(u['p99_ms'])} | {fmt(b['p99_ms'])} | |",
        f"| docs per call (mean) | {fmt(u['mean_batch'], 1)} | {fmt(b['mean_batch'], 1)} | |",
        "",
        "| target | limit | result |",
        "|---|---|---|",
        f"| batched req/s over unbatched | ≥ {fmt(t['throughput_ratio']['limit'], 0)}× "
        f"| {fmt(t['throughput_ratio']['value'], 1)}× {mark(t['throughput_ratio']['met'])} |",
        f"| batched p99 ≤ 3 × (timeout + one call of 64) | ≤ {fmt(t['batched_p99_ms']['limit'], 1)} ms "
        f"| {fmt(t['batched_p99_ms']['value'])} ms {mark(t['batched_p99_ms']['met'])} |",
    ]
    return "\n".join(rows)


if __name__ == "__main__":
    sys.exit(main())
