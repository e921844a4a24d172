"""Benchmark: a plait Flow of two chained echo Executors vs the grpc.aio 3-hop floor and Jina 3.34.

    .venv/bin/python benchmarks/bench_flow.py [--rounds 3] [--protocols grpc,http,websocket]
                                              [--jina-python ../jina-venv/bin/python]

The Flow is ``gateway -> echo1 -> echo2`` (both ``EchoExecutor``, endpoints ``/echo`` and
``/echo_emb``). plait's gateway serves every protocol at once, one port each; Jina needs one Flow
per protocol, so ``baselines/jina_echo.py --workload flow`` runs once per protocol. The floor is
``baselines/grpc_floor.py --hops 3`` (client -> A -> B -> C, raw bytes): the cheapest possible
version of the same chain.

Per round, back to back so they see the same machine load: the floor, plait, then Jina. plait, per
protocol (sync ``Client`` on that protocol's port):

  * latency: 20 warm-up then --n-lat sequential single-doc posts; nearest-rank p50/p99;
  * bulk: --n-bulk small docs and --n-bulk 512-d float32 embedding docs in one
    ``post(..., request_size=100)``; median docs/s of 3 posts (after one 500-doc warm-up each);
  * resident memory (VmRSS) of every plait process (gateway, echo1, echo2, and the executor fork
    server the two executors were forked from) after the bulk runs, and, after all protocols, the
    proportional set size of all of them together (shared pages counted once);
  * concurrency: --concurrency ``AsyncClient``s (one each) in one event loop, one warm-up request
    each, then all share a budget of --n-conc single-doc requests (bounded by --loop-timeout):
    req/s and p50/p99. The same recipe as ``jina_echo.py --concurrency``.

Start-up (entering ``with flow:`` until ready, the fork server's own start included) is measured
for a Flow of each selected protocol alone, the median of 3 starts per round (Jina's Flows alike:
``jina_echo.py --startup-repeats 3``), and once for the Flow serving all of them. Figures are
medians over rounds; ratios and the issue's targets are computed from those medians. Prints one
JSON object on stdout, then Markdown tables on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
from common import (
    DEFAULT_JINA_PYTHON,
    HERE,
    bulk_docs_per_s,
    check,
    compile_plait,
    established_to,
    fmt,
    latency_ms,
    mark,
    median_tree,
    percentile,
    ratio,
    rss_mb,
    run_baseline,
)
from echo_executor import Emb, Small

from plait import AsyncClient, Client, DocList, Flow

PROTOCOLS = ("grpc", "http", "websocket")
BULK_REPEATS = 3
STARTUP_REPEATS = 3
"""Starts of each one-protocol Flow per round (plait and Jina alike); their median counts."""
WARM_BULK = 500
HOST = "127.0.0.1"
MAX_MESSAGE_SIZE = 64 * 1024 * 1024

# The targets (issue 3).
P50_VS_FLOOR_MAX = 1.3
P50_JINA_OVER_PLAIT_MIN = 4.0
BULK_VS_JINA_MIN = 10.0
CONC_RPS_VS_JINA_MIN = 5.0
CONC_P99_JINA_OVER_PLAIT_MIN = 5.0
EXECUTOR_RSS_MAX_MB = 60.0
STARTUP_JINA_OVER_PLAIT_MIN = 2.0


def log(msg: str) -> None:
    print(f"[bench_flow] {msg}", file=sys.stderr, flush=True)


def make_flow(protocols: Sequence[str]) -> Flow:
    return (
        Flow(host=HOST, port=[None] * len(protocols), protocol=list(protocols), quiet=True)
        .add(name="echo1", uses="echo_executor:EchoExecutor")
        .add(name="echo2", uses="echo_executor:EchoExecutor")
    )


async def concurrency_run(
    protocol: str, port: int, concurrency: int, n_conc: int, loop_timeout: float
) -> dict[str, Any]:
    """``concurrency`` AsyncClients in this loop share a budget of ``n_conc`` single-doc requests
    (jina_echo.py's recipe: one uncounted warm-up request per client, then the clock starts)."""
    # grpc-core shares one TCP connection between channels whose target and options are equal
    # (its global subchannel pool); a distinct (and harmless) max_message_size per client gives every
    # client its own connection, as separate client processes would have. conc_connections checks it.
    clients = [
        AsyncClient(HOST, port, protocol, max_message_size=MAX_MESSAGE_SIZE + i) for i in range(concurrency)
    ]
    remaining = n_conc
    lat: list[float] = []
    warmed = 0
    all_warm = asyncio.Event()
    start = asyncio.Event()
    connections = 0

    async def one(client: AsyncClient, text: str) -> float:
        t0 = time.perf_counter()
        out = await client.post("/echo", DocList[Small]([Small(text=text)]))
        dt = (time.perf_counter() - t0) * 1e3
        if len(out) != 1 or out[0].text != text:
            raise RuntimeError(f"bad echo reply: {out!r}")
        return dt

    async def worker(wid: int, client: AsyncClient) -> None:
        nonlocal remaining, warmed
        await one(client, f"warm {wid}")
        warmed += 1
        if warmed == concurrency:
            all_warm.set()
        await start.wait()
        while remaining > 0:
            remaining -= 1
            lat.append(await one(client, f"c{wid}-{remaining}"))

    async def go() -> float:
        nonlocal connections
        tasks = [asyncio.ensure_future(worker(i, c)) for i, c in enumerate(clients)]
        waiter = asyncio.ensure_future(all_warm.wait())
        await asyncio.wait([waiter, *tasks], return_when=asyncio.FIRST_COMPLETED)
        for t in tasks:  # a worker that failed during warm-up surfaces its error here
            if t.done() and t.exception() is not None:
                raise t.exception()  # type: ignore[misc]
        await waiter
        connections = established_to(port)
        t0 = time.perf_counter()
        start.set()
        await asyncio.gather(*tasks)
        return time.perf_counter() - t0

    try:
        elapsed = await asyncio.wait_for(go(), timeout=loop_timeout)
    finally:
        await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)
    lat.sort()
    return {
        "conc_rps": len(lat) / elapsed,
        "conc_p50_ms": percentile(lat, 0.50),
        "conc_p99_ms": percentile(lat, 0.99),
        "conc_connections": connections,
    }


def plait_processes(flow: Flow) -> dict[str, int]:
    """Label → pid of every process the Flow runs, its executor fork server ('forkserver') included."""
    pids = {child.label: child.pid for child in flow.children if child.pid}
    server = getattr(flow, "_forkserver", None)
    if server is not None and not server.lost:
        pids["forkserver"] = server.pid
    return pids


def plait_rss(flow: Flow) -> dict[str, float | None]:
    return {label: rss_mb(pid) for label, pid in plait_processes(flow).items()}


def pss_total_mb(flow: Flow) -> float | None:
    """Proportional set size summed over the Flow's processes: its memory, shared pages counted once."""
    total = 0
    for pid in plait_processes(flow).values():
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                total += next(int(line.split()[1]) for line in f if line.startswith("Pss:"))
        except (OSError, StopIteration):
            return None
    return round(total / 1024, 1)


def measure_protocol(
    flow: Flow, protocol: str, port: int, args: argparse.Namespace, small: DocList[Any], embs: DocList[Any]
) -> dict[str, Any]:
    with Client(HOST, port, protocol=protocol) as client:
        one = DocList[Small]([Small(text="x")])
        out = client.post("/echo", one)
        if len(out) != 1 or out[0].text != "x":
            raise RuntimeError(f"{protocol}: bad echo reply {out!r}")
        result: dict[str, Any] = latency_ms(lambda: client.post("/echo", one), args.n_lat)
        bulk_docs_per_s(client, small[:WARM_BULK], "/echo", args.request_size, 1)
        bulk_docs_per_s(client, embs[:WARM_BULK], "/echo_emb", args.request_size, 1)
        result["bulk_small_docs_per_s"] = bulk_docs_per_s(
            client, small, "/echo", args.request_size, BULK_REPEATS
        )
        result["bulk_embed_docs_per_s"] = bulk_docs_per_s(
            client, embs, "/echo_emb", args.request_size, BULK_REPEATS
        )
        back = client.post("/echo_emb", embs[:2], request_size=args.request_size)
        if back[0].embedding is None or not np.array_equal(back[0].embedding, embs[0].embedding):
            raise RuntimeError(f"{protocol}: the embedding did not come back intact")
    result["rss_mb"] = plait_rss(flow)
    if args.concurrency > 0:
        result.update(
            asyncio.run(concurrency_run(protocol, port, args.concurrency, args.n_conc, args.loop_timeout))
        )
    return result


def measure_plait(protocols: Sequence[str], args: argparse.Namespace) -> dict[str, Any]:
    small = DocList[Small]([Small(text=f"doc {i}") for i in range(args.n_bulk)])
    rng = np.random.default_rng(0)
    vectors = rng.random((args.n_bulk, 512), dtype=np.float32)
    embs = DocList[Emb]([Emb(text=f"doc {i}", embedding=vectors[i]) for i in range(args.n_bulk)])
    result: dict[str, Any] = {"protocols": {}, "startup_one_protocol_s": {}}
    if len(protocols) > 1:  # each protocol alone, as Jina serves them (one Flow per protocol)
        for protocol in protocols:
            starts = []
            for _ in range(STARTUP_REPEATS):
                flow = make_flow([protocol])
                t0 = time.perf_counter()
                with flow:
                    starts.append(time.perf_counter() - t0)
            result["startup_one_protocol_s"][protocol] = statistics.median(starts)
            result.setdefault("startup_runs_s", {})[protocol] = [round(t, 3) for t in starts]
    flow = make_flow(protocols)
    t0 = time.perf_counter()
    with flow:
        result["startup_s"] = time.perf_counter() - t0
        if len(protocols) == 1:
            result["startup_one_protocol_s"][protocols[0]] = result["startup_s"]
        log(f"plait Flow ({'+'.join(protocols)}) ready in {result['startup_s']:.2f} s on {flow.ports}")
        for protocol, port in zip(protocols, flow.ports, strict=True):
            r = measure_protocol(flow, protocol, port, args, small, embs)
            result["protocols"][protocol] = r
            log(
                f"plait {protocol}: p50 {r['p50_ms']:.2f} ms, bulk {r['bulk_small_docs_per_s']:,.0f} / "
                f"{r['bulk_embed_docs_per_s']:,.0f} docs/s, 64 clients {r.get('conc_rps', 0):,.0f} req/s "
                f"p99 {r.get('conc_p99_ms', 0):.1f} ms ({r.get('conc_connections')} connections)"
            )
        # after every protocol's bulk runs (the last protocol's concurrency run included)
        result["rss_mb"] = plait_rss(flow)
        result["pss_total_mb"] = pss_total_mb(flow)
    return result


def jina_summary(run: dict[str, Any]) -> dict[str, Any]:
    """The fields of one jina_echo.py result this benchmark uses, RSS split gateway/executors."""
    keep = ("p50_ms", "p99_ms", "bulk_small_docs_per_s", "bulk_embed_docs_per_s", "startup_s")
    out = {k: run.get(k) for k in (*keep, "startup_runs_s", "conc_rps", "conc_p50_ms", "conc_p99_ms")}
    rss = run.get("rss_mb") or {}
    executors = [v["rss_mb"] for k, v in rss.items() if k.startswith("echo") and v.get("rss_mb")]
    gateway = rss.get("gateway", {}).get("rss_mb")
    out["executor_rss_mb"] = max(executors) if executors else None
    out["gateway_rss_mb"] = gateway
    return out


def main() -> int:
    compile_plait()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument(
        "--protocols", default=",".join(PROTOCOLS), help="comma-separated subset of grpc,http,websocket"
    )
    ap.add_argument("--n-lat", type=int, default=300)
    ap.add_argument("--n-bulk", type=int, default=5000)
    ap.add_argument("--request-size", type=int, default=100)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--n-conc", type=int, default=2000)
    ap.add_argument("--loop-timeout", type=float, default=300.0, help="time bound of the concurrency run (s)")
    ap.add_argument(
        "--jina-python", default=str(DEFAULT_JINA_PYTHON), help="Jina 3.34 interpreter ('' to skip)"
    )
    args = ap.parse_args()
    protocols = [p.strip() for p in args.protocols.split(",") if p.strip()]
    if not protocols or any(p not in PROTOCOLS for p in protocols):
        ap.error(f"--protocols: choose from {','.join(PROTOCOLS)}")
    if protocols[0] != "grpc" and "grpc" in protocols:
        protocols.remove("grpc")
        protocols.insert(0, "grpc")
    sizes = [
        "--n-lat",
        str(args.n_lat),
        "--n-bulk",
        str(args.n_bulk),
        "--request-size",
        str(args.request_size),
    ]
    conc = ["--concurrency", str(args.concurrency), "--n-conc", str(args.n_conc)]
    timeout = ["--loop-timeout", str(args.loop_timeout)]
    floor_argv = [
        sys.executable,
        str(HERE / "baselines" / "grpc_floor.py"),
        "--hops",
        "3",
        *sizes,
        *conc,
        *timeout,
        "--rss",
    ]
    have_jina = bool(args.jina_python) and os.path.exists(args.jina_python)

    def jina_argv(protocol: str) -> list[str]:
        return [
            args.jina_python,
            str(HERE / "baselines" / "jina_echo.py"),
            "--workload",
            "flow",
            "--protocol",
            protocol,
            *sizes,
            *conc,
            *timeout,
            "--rss",
            "--startup-repeats",
            str(STARTUP_REPEATS),
        ]

    plait_rounds: list[dict[str, Any]] = []
    floor_rounds: list[dict[str, Any]] = []
    jina_rounds: list[dict[str, Any]] = []
    loads: list[tuple[float, float]] = []
    for r in range(args.rounds):
        log(f"round {r + 1}/{args.rounds} (load average {os.getloadavg()[0]:.2f})")
        load_before = os.getloadavg()[0]
        floor = run_baseline(floor_argv)
        floor_rounds.append(floor or {})
        plait_rounds.append(measure_plait(protocols, args))
        jina_round: dict[str, Any] = {}
        if have_jina:
            for protocol in protocols:
                run = run_baseline(jina_argv(protocol))
                if run:
                    jina_round[protocol] = jina_summary(run)
                    log(
                        f"jina {protocol}: p50 {run['p50_ms']} ms, bulk {run['bulk_small_docs_per_s']} / "
                        f"{run['bulk_embed_docs_per_s']} docs/s, {run.get('conc_rps')} req/s "
                        f"p99 {run.get('conc_p99_ms')} ms, start-up {run['startup_s']} s"
                    )
        jina_rounds.append(jina_round)
        loads.append((load_before, os.getloadavg()[0]))

    summary = summarize(args, protocols, plait_rounds, floor_rounds, jina_rounds, have_jina, loads)
    print(json.dumps(summary, indent=2))
    print(markdown(summary), file=sys.stderr)
    return 0


FLOOR_KEYS = (
    "p50_ms",
    "p99_ms",
    "bulk_small_docs_per_s",
    "bulk_embed_docs_per_s",
    "startup_s",
    "conc_rps",
    "conc_p50_ms",
    "conc_p99_ms",
)


def executor_rss(plait: dict[str, Any]) -> float | None:
    rss = plait.get("rss_mb") or {}
    values = [v for k, v in rss.items() if k not in ("gateway", "forkserver") and v is not None]
    return max(values) if values else None


def compute_ratios(
    protocols: Sequence[str], plait: dict[str, Any], floor: dict[str, Any], jina: dict[str, Any]
) -> dict[str, Any]:
    """Every ratio the targets use, from one set of figures (medians, or one round's)."""
    ratios: dict[str, Any] = {}
    for protocol in protocols:
        p = plait.get("protocols", {}).get(protocol, {})
        j = jina.get(protocol, {})
        ratios[protocol] = {
            "p50_vs_floor": ratio(p.get("p50_ms"), floor.get("p50_ms")),
            "p50_jina_over_plait": ratio(j.get("p50_ms"), p.get("p50_ms")),
            "bulk_small_vs_jina": ratio(p.get("bulk_small_docs_per_s"), j.get("bulk_small_docs_per_s")),
            "bulk_embed_vs_jina": ratio(p.get("bulk_embed_docs_per_s"), j.get("bulk_embed_docs_per_s")),
            "bulk_small_vs_floor": ratio(p.get("bulk_small_docs_per_s"), floor.get("bulk_small_docs_per_s")),
            "bulk_embed_vs_floor": ratio(p.get("bulk_embed_docs_per_s"), floor.get("bulk_embed_docs_per_s")),
            "conc_rps_vs_jina": ratio(p.get("conc_rps"), j.get("conc_rps")),
            "conc_p99_jina_over_plait": ratio(j.get("conc_p99_ms"), p.get("conc_p99_ms")),
            "conc_rps_vs_floor": ratio(p.get("conc_rps"), floor.get("conc_rps")),
            "startup_jina_over_plait": ratio(
                j.get("startup_s"), (plait.get("startup_one_protocol_s") or {}).get(protocol)
            ),
        }
    jina_startups = [jina[p]["startup_s"] for p in protocols if jina.get(p, {}).get("startup_s")]
    ratios["startup_all_jina_over_plait"] = ratio(
        min(jina_startups) if jina_startups else None, plait.get("startup_s")
    )
    return ratios


def summarize(
    args: argparse.Namespace,
    protocols: Sequence[str],
    plait_rounds: list[dict[str, Any]],
    floor_rounds: list[dict[str, Any]],
    jina_rounds: list[dict[str, Any]],
    have_jina: bool,
    loads: list[tuple[float, float]],
) -> dict[str, Any]:
    plait = median_tree(plait_rounds)
    floor_runs = [f for f in floor_rounds if f]
    floor = median_tree([{k: f.get(k) for k in FLOOR_KEYS} for f in floor_runs]) if floor_runs else {}
    floor["rss_mb"] = (
        {k: v["rss_mb"] for k, v in (floor_runs[-1].get("rss_mb") or {}).items()} if floor_runs else {}
    )
    jina = median_tree([j for j in jina_rounds if j]) if any(jina_rounds) else {}
    plait["executor_rss_mb"] = executor_rss(plait)
    plait["gateway_rss_mb"] = (plait.get("rss_mb") or {}).get("gateway")
    ratios = compute_ratios(protocols, plait, floor, jina)
    # The same ratios per round (plait against the baselines of its own round), then their median:
    # a second view that is less sensitive to load that changes between rounds.
    per_round = [
        compute_ratios(protocols, pr, {k: fr.get(k) for k in FLOOR_KEYS}, jr)
        for pr, fr, jr in zip(plait_rounds, floor_rounds, jina_rounds, strict=True)
    ]
    ratios_round_median = median_tree(per_round)

    targets: list[dict[str, Any]] = []

    def target(
        name: str, key: tuple[str, ...], limit: float, at_least: bool, value: float | None = None
    ) -> None:
        def pick(tree: dict[str, Any]) -> float | None:
            for part in key:
                tree = tree.get(part) or {}
            return tree if isinstance(tree, int | float) else None  # type: ignore[return-value]

        value = pick(ratios) if value is None else value
        per_round_value = pick(ratios_round_median) if key else None
        targets.append(
            {
                "target": name,
                "value": value,
                "per_round_median": per_round_value,
                "limit": limit,
                "at_least": at_least,
                "met": check(value, limit, at_least),
            }
        )

    for protocol in protocols:
        target(
            f"{protocol}: single-doc p50 ≤ {P50_VS_FLOOR_MAX}× 3-hop floor",
            (protocol, "p50_vs_floor"),
            P50_VS_FLOOR_MAX,
            False,
        )
        target(
            f"{protocol}: single-doc p50 ≤ Jina's / {P50_JINA_OVER_PLAIT_MIN:g}",
            (protocol, "p50_jina_over_plait"),
            P50_JINA_OVER_PLAIT_MIN,
            True,
        )
        target(
            f"{protocol}: bulk small ≥ {BULK_VS_JINA_MIN:g}× Jina",
            (protocol, "bulk_small_vs_jina"),
            BULK_VS_JINA_MIN,
            True,
        )
        target(
            f"{protocol}: bulk 512-d ≥ {BULK_VS_JINA_MIN:g}× Jina",
            (protocol, "bulk_embed_vs_jina"),
            BULK_VS_JINA_MIN,
            True,
        )
        target(
            f"{protocol}: {args.concurrency} clients req/s ≥ {CONC_RPS_VS_JINA_MIN:g}× Jina",
            (protocol, "conc_rps_vs_jina"),
            CONC_RPS_VS_JINA_MIN,
            True,
        )
        target(
            f"{protocol}: {args.concurrency} clients p99 ≤ Jina's / {CONC_P99_JINA_OVER_PLAIT_MIN:g}",
            (protocol, "conc_p99_jina_over_plait"),
            CONC_P99_JINA_OVER_PLAIT_MIN,
            True,
        )
    target(
        f"resident memory ≤ {EXECUTOR_RSS_MAX_MB:g} MB per executor process (MB)",
        (),
        EXECUTOR_RSS_MAX_MB,
        False,
        value=plait["executor_rss_mb"],
    )
    for protocol in protocols:
        target(
            f"{protocol}: start-up ≤ Jina's / 2 (one-protocol Flows)",
            (protocol, "startup_jina_over_plait"),
            STARTUP_JINA_OVER_PLAIT_MIN,
            True,
        )

    from plait import __version__ as plait_version

    return {
        "benchmark": "flow",
        "date": time.strftime("%Y-%m-%d"),
        "rounds": args.rounds,
        "protocols": list(protocols),
        "plait_version": plait_version,
        "jina_ran": have_jina,
        "request_size": args.request_size,
        "concurrency": args.concurrency,
        "n_conc": args.n_conc,
        "plait": plait,
        "grpc_floor_3hop": floor,
        "jina": jina,
        "ratios": ratios,
        "ratios_per_round_median": ratios_round_median,
        "load_average_per_round": [[round(a, 2), round(b, 2)] for a, b in loads],
        "targets": targets,
        "targets_met": sum(1 for t in targets if t["met"]),
        "targets_total": len(targets),
        "rounds_raw": {"plait": plait_rounds, "grpc_floor_3hop": floor_rounds, "jina": jina_rounds},
    }


def speed(jina_over_plait: float | None) -> str:
    """A Jina/plait ratio of times, in words: N times faster, or N times slower."""
    if jina_over_plait is None:
        return "—"
    if jina_over_plait >= 1:
        return f"{fmt(jina_over_plait)}× faster"
    return f"{fmt(1 / jina_over_plait)}× slower"


def markdown(s: dict[str, Any]) -> str:
    p, f, j, r = s["plait"], s["grpc_floor_3hop"], s["jina"], s["ratios"]
    c = s["concurrency"]
    rows = [
        f"{s['rounds']} round(s), {s['date']}, medians over rounds; 1-min load average (this benchmark "
        "included) before/after each round: "
        f"{s['load_average_per_round']}",
        "",
        "| metric | protocol | plait | 3-hop floor | Jina 3.34 | plait vs floor | plait vs Jina |",
        "|---|---|---|---|---|---|---|",
    ]

    def row(
        name: str, proto: str, key: str, digits: int, vs_floor: str | None, vs_jina: str | None, faster: bool
    ) -> str:
        pv = p["protocols"].get(proto, {}).get(key)
        fv = f.get(key)
        jv = j.get(proto, {}).get(key)
        rf = r[proto].get(vs_floor) if vs_floor else None
        rj = r[proto].get(vs_jina) if vs_jina else None
        rf_s = f"{fmt(rf)}×" if rf is not None else ""
        rj_s = (speed(rj) if faster else f"{fmt(rj)}×") if rj is not None else ""
        values = f"{fmt(pv, digits)} | {fmt(fv, digits)} | {fmt(jv, digits)}"
        return f"| {name} | {proto} | {values} | {rf_s} | {rj_s} |"

    for proto in s["protocols"]:
        rows.append(
            row(
                "single-doc p50 (ms), sync Client",
                proto,
                "p50_ms",
                2,
                "p50_vs_floor",
                "p50_jina_over_plait",
                True,
            )
        )
    for proto in s["protocols"]:
        rows.append(row("single-doc p99 (ms)", proto, "p99_ms", 2, None, None, False))
    for proto in s["protocols"]:
        rows.append(
            row(
                "bulk small docs/s",
                proto,
                "bulk_small_docs_per_s",
                0,
                "bulk_small_vs_floor",
                "bulk_small_vs_jina",
                False,
            )
        )
    for proto in s["protocols"]:
        rows.append(
            row(
                "bulk 512-d embedding docs/s",
                proto,
                "bulk_embed_docs_per_s",
                0,
                "bulk_embed_vs_floor",
                "bulk_embed_vs_jina",
                False,
            )
        )
    for proto in s["protocols"]:
        rows.append(
            row(f"{c} clients req/s", proto, "conc_rps", 0, "conc_rps_vs_floor", "conc_rps_vs_jina", False)
        )
    for proto in s["protocols"]:
        rows.append(
            row(f"{c} clients p99 (ms)", proto, "conc_p99_ms", 1, None, "conc_p99_jina_over_plait", True)
        )
    for proto in s["protocols"]:
        one = (p.get("startup_one_protocol_s") or {}).get(proto)
        jina_one, vs_jina = j.get(proto, {}).get("startup_s"), r[proto].get("startup_jina_over_plait")
        rows.append(
            f"| start-up to ready (s), one-protocol Flow | {proto} | {fmt(one)} | {fmt(f.get('startup_s'))} "
            f"| {fmt(jina_one)} | | {speed(vs_jina)} |"
        )
    if len(s["protocols"]) > 1:
        rows.append(
            f"| start-up to ready (s), one gateway for all | {'+'.join(s['protocols'])} | "
            f"{fmt(p.get('startup_s'))} | | | | {speed(r.get('startup_all_jina_over_plait'))} than Jina's "
            "fastest one-protocol Flow |"
        )
    jina_exec = max((v.get("executor_rss_mb") or 0 for v in j.values()), default=0) or None
    jina_gw = max((v.get("gateway_rss_mb") or 0 for v in j.values()), default=0) or None
    floor_rss = max(f.get("rss_mb", {}).values(), default=None)
    rows.append(
        f"| resident memory per executor (MB, max) | | {fmt(p.get('executor_rss_mb'), 1)} "
        f"| {fmt(floor_rss, 1)} | {fmt(jina_exec, 1)} | | |"
    )
    rows.append(
        f"| gateway resident memory (MB) | | {fmt(p.get('gateway_rss_mb'), 1)} | | {fmt(jina_gw, 1)} | | |"
    )
    server_rss = (p.get("rss_mb") or {}).get("forkserver")
    if server_rss is not None:
        rows.append(f"| executor fork server resident memory (MB) | | {fmt(server_rss, 1)} | | | | |")
    if p.get("pss_total_mb") is not None:
        rows.append(
            f"| all plait processes, proportional set size (MB, shared pages once) | | "
            f"{fmt(p['pss_total_mb'], 1)} | | | | |"
        )
    rows += ["", "| target | from medians | median of per-round ratios | met |", "|---|---|---|---|"]
    for t in s["targets"]:
        unit = "" if "MB" in t["target"] else "×"
        per_round = f"{fmt(t['per_round_median'])}×" if t["per_round_median"] is not None else ""
        value = f"{fmt(t['value'])}{unit}" if t["value"] is not None else "—"
        rows.append(f"| {t['target']} | {value} | {per_round} | {mark(t['met'])} |")
    rows.append(f"\n{s['targets_met']}/{s['targets_total']} targets met")
    return "\n".join(rows)


if __name__ == "__main__":
    sys.exit(main())
