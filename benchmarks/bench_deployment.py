"""Benchmark: a plait Deployment of one echo Executor vs the bare grpc.aio floor (and Jina 3.34).

    .venv/bin/python benchmarks/bench_deployment.py [--rounds 3] [--jina-python ../jina-venv/bin/python]

Each round measures the grpc.aio one-hop floor and plait back to back, so both see the same machine
load. Each system's bulk figure in a round is the median of 3 posts after a warm-up post (the
baselines' ``--bulk-repeats`` and ``--warm-bulk``); reported figures are medians over
rounds, and every plait figure is also given as a ratio against the baselines measured in this
run. Jina runs once per round when its interpreter exists
(DESIGN.md §5 says how to make it). Prints one JSON object, then a Markdown table on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import Any

import numpy as np
from common import (
    DEFAULT_JINA_PYTHON,
    HERE,
    bulk_docs_per_s,
    compile_plait,
    fmt,
    latency_ms,
    median_of,
    ratio,
    rss_mb,
    run_baseline,
)
from echo_executor import Emb, Small

from plait import AsyncClient, Deployment, DocList

BULK_REPEATS = 3
METRICS = ("p50_ms", "p99_ms", "async_p50_ms", "bulk_small_docs_per_s", "bulk_embed_docs_per_s", "startup_s")


async def async_latency(port: int, n: int) -> float:
    async with AsyncClient("127.0.0.1", port) as client:
        one = DocList[Small]([Small(text="x")])
        for _ in range(20):
            await client.post("/echo", one)
        samples = []
        for _ in range(n):
            t0 = time.perf_counter()
            await client.post("/echo", one)
            samples.append((time.perf_counter() - t0) * 1e3)
    samples.sort()
    return samples[len(samples) // 2]


def measure_plait(n_lat: int, n_bulk: int, request_size: int) -> dict[str, Any]:
    small = DocList[Small]([Small(text=f"doc {i}") for i in range(n_bulk)])
    rng = np.random.default_rng(0)
    embs = DocList[Emb](
        [Emb(text=f"doc {i}", embedding=rng.random(512, dtype=np.float32)) for i in range(n_bulk)]
    )
    t0 = time.perf_counter()
    with Deployment(uses="echo_executor:EchoExecutor", host="127.0.0.1", quiet=True) as dep:
        startup = time.perf_counter() - t0
        one = DocList[Small]([Small(text="x")])
        result: dict[str, Any] = latency_ms(lambda: dep.post("/echo", one), n_lat)
        result["async_p50_ms"] = asyncio.run(async_latency(dep.port, n_lat))
        bulk_docs_per_s(dep, small[:500], "/echo", request_size, 1)  # warm the bulk path
        result["bulk_small_docs_per_s"] = bulk_docs_per_s(dep, small, "/echo", request_size, BULK_REPEATS)
        result["bulk_embed_docs_per_s"] = bulk_docs_per_s(dep, embs, "/echo_emb", request_size, BULK_REPEATS)
        result["startup_s"] = startup
        result["rss_mb"] = {child.label: rss_mb(child.pid) for child in dep.children if child.pid}
    return result


def main() -> int:
    compile_plait()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--n-lat", type=int, default=300)
    ap.add_argument("--n-bulk", type=int, default=5000)
    ap.add_argument("--request-size", type=int, default=100)
    ap.add_argument(
        "--jina-python", default=str(DEFAULT_JINA_PYTHON), help="Jina 3.34 interpreter ('' to skip)"
    )
    args = ap.parse_args()
    sizes = [
        "--n-lat",
        str(args.n_lat),
        "--n-bulk",
        str(args.n_bulk),
        "--request-size",
        str(args.request_size),
    ]
    floor_argv = [sys.executable, str(HERE / "baselines" / "grpc_floor.py"), "--hops", "1", *sizes]
    jina_argv = [
        args.jina_python,
        str(HERE / "baselines" / "jina_echo.py"),
        "--workload",
        "deployment",
        *sizes,
    ]
    have_jina = bool(args.jina_python) and __import__("os").path.exists(args.jina_python)

    plait_rounds, floor_rounds, jina_rounds = [], [], []
    for r in range(args.rounds):
        print(f"round {r + 1}/{args.rounds}", file=sys.stderr)
        floor = run_baseline(floor_argv)
        if floor:
            floor_rounds.append(floor)
        plait_rounds.append(measure_plait(args.n_lat, args.n_bulk, args.request_size))
        if have_jina:
            jina = run_baseline(jina_argv)
            if jina:
                jina_rounds.append(jina)

    summary: dict[str, Any] = {
        "benchmark": "deployment",
        "rounds": args.rounds,
        "request_size": args.request_size,
    }
    for name, rounds in (("plait", plait_rounds), ("grpc_floor", floor_rounds), ("jina", jina_rounds)):
        summary[name] = {m: median_of(rounds, m) for m in METRICS}
    summary["plait"]["rss_mb"] = plait_rounds[-1]["rss_mb"]
    p, f, j = summary["plait"], summary["grpc_floor"], summary["jina"]
    summary["ratios"] = {
        "p50_vs_floor": ratio(p["p50_ms"], f["p50_ms"]),
        "async_p50_vs_floor": ratio(p["async_p50_ms"], f["p50_ms"]),
        "p50_jina_over_plait": ratio(j["p50_ms"], p["p50_ms"]),
        "bulk_small_vs_jina": ratio(p["bulk_small_docs_per_s"], j["bulk_small_docs_per_s"]),
        "bulk_embed_vs_jina": ratio(p["bulk_embed_docs_per_s"], j["bulk_embed_docs_per_s"]),
        "bulk_small_vs_floor": ratio(p["bulk_small_docs_per_s"], f["bulk_small_docs_per_s"]),
        "bulk_embed_vs_floor": ratio(p["bulk_embed_docs_per_s"], f["bulk_embed_docs_per_s"]),
    }
    print(json.dumps(summary, indent=2))
    print(markdown(summary), file=sys.stderr)
    return 0


def markdown(s: dict[str, Any]) -> str:
    p, f, j, r = s["plait"], s["grpc_floor"], s["jina"], s["ratios"]
    rows = [
        "| metric | plait | grpc.aio floor | Jina 3.34 | plait vs floor | plait vs Jina |",
        "|---|---|---|---|---|---|",
        f"| single-doc p50 (ms), sync Client | {fmt(p['p50_ms'])} | {fmt(f['p50_ms'])} | {fmt(j['p50_ms'])} "
        f"| {fmt(r['p50_vs_floor'])}× | {fmt(r['p50_jina_over_plait'])}× faster |",
        f"| single-doc p50 (ms), AsyncClient | {fmt(p['async_p50_ms'])} | {fmt(f['p50_ms'])} | — "
        f"| {fmt(r['async_p50_vs_floor'])}× | — |",
        f"| single-doc p99 (ms) | {fmt(p['p99_ms'])} | {fmt(f['p99_ms'])} | {fmt(j['p99_ms'])} | | |",
        f"| bulk small docs/s | {fmt(p['bulk_small_docs_per_s'], 0)} | {fmt(f['bulk_small_docs_per_s'], 0)} "
        f"| {fmt(j['bulk_small_docs_per_s'], 0)} | {fmt(r['bulk_small_vs_floor'])}× "
        f"| {fmt(r['bulk_small_vs_jina'])}× |",
        f"| bulk 512-d embedding docs/s | {fmt(p['bulk_embed_docs_per_s'], 0)} "
        f"| {fmt(f['bulk_embed_docs_per_s'], 0)} | {fmt(j['bulk_embed_docs_per_s'], 0)} "
        f"| {fmt(r['bulk_embed_vs_floor'])}× | {fmt(r['bulk_embed_vs_jina'])}× |",
        f"| start-up to ready (s) | {fmt(p['startup_s'])} | — | {fmt(j['startup_s'])} | | |",
    ]
    return "\n".join(rows)


if __name__ == "__main__":
    sys.exit(main())
