"""Shared helpers for plait's benchmarks: percentiles, baselines run as subprocesses, tables."""

from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DEFAULT_JINA_PYTHON = ROOT.parent / "jina-venv" / "bin" / "python"


def compile_plait() -> None:
    """Write plait's bytecode as installing a wheel does. An editable install run with
    PYTHONDONTWRITEBYTECODE=1 (this machine's default) would otherwise compile plait's modules from
    source in every process a benchmark starts, a cost an installed plait (or Jina) never pays."""
    import compileall

    import plait

    compileall.compile_dir(str(Path(plait.__file__).parent), quiet=1)
    compileall.compile_dir(str(Path(__file__).parent), maxlevels=0, quiet=1)


def percentile(sorted_vals: Sequence[float], q: float) -> float:
    """Nearest rank on a sorted list (index ceil(q*n)-1), the rule the baseline scripts use."""
    return sorted_vals[max(0, math.ceil(q * len(sorted_vals)) - 1)]


def latency_ms(
    call: Callable[[], Any], n: int, warmup: int = 20, budget_s: float = 120.0
) -> dict[str, float]:
    for _ in range(warmup):
        call()
    samples: list[float] = []
    deadline = time.monotonic() + budget_s
    for _ in range(n):
        t0 = time.perf_counter()
        call()
        samples.append((time.perf_counter() - t0) * 1e3)
        if time.monotonic() > deadline:
            break
    samples.sort()
    return {"p50_ms": percentile(samples, 0.5), "p99_ms": percentile(samples, 0.99)}


def run_baseline(argv: list[str], timeout: float = 900.0) -> dict[str, Any] | None:
    """Run a baseline script and parse the JSON object on its last stdout line."""
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    try:
        out = subprocess.run(
            argv, capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT, check=False
        )
    except subprocess.TimeoutExpired:
        print(f"baseline timed out: {' '.join(argv)}", file=sys.stderr)
        return None
    if out.returncode != 0 or not out.stdout.strip():
        print(f"baseline failed ({out.returncode}): {' '.join(argv)}\n{out.stderr[-2000:]}", file=sys.stderr)
        return None
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def median_of(rounds: Sequence[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in rounds if r.get(key) is not None]
    return statistics.median(values) if values else None


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return round(a / b, 3)


def rss_mb(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return None
    return None


def fmt(value: float | None, digits: int = 2) -> str:
    return "—" if value is None else f"{value:,.{digits}f}"


def median_tree(rounds: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Per-key medians of nested result dicts: numeric leaves become the median over the rounds
    that have them (None when none do); dicts recurse; other leaves keep the last round's value."""
    keys: dict[str, None] = {}
    for r in rounds:
        keys.update(dict.fromkeys(r))
    out: dict[str, Any] = {}
    for key in keys:
        values = [r[key] for r in rounds if r.get(key) is not None]
        if values and all(isinstance(v, dict) for v in values):
            out[key] = median_tree(values)
        elif values and all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
            out[key] = statistics.median(values)
        else:
            out[key] = values[-1] if values else None
    return out


def established_to(port: int) -> int:
    """How many ESTABLISHED TCP connections (IPv4 and IPv6) have ``port`` as their remote port:
    the client side of every connection this host has open to a server on that port."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f, None)
                for line in f:
                    fields = line.split()
                    if len(fields) > 3 and fields[3] == "01" and int(fields[2].rsplit(":", 1)[1], 16) == port:
                        count += 1
        except OSError:
            continue
    return count


def check(value: float | None, limit: float, at_least: bool) -> bool | None:
    """Whether ``value`` meets ``limit`` (``>=`` when ``at_least``, else ``<=``); None if unknown."""
    if value is None:
        return None
    return value >= limit if at_least else value <= limit


def mark(met: bool | None) -> str:
    return "—" if met is None else ("✔ met" if met else "✘ not met")


def bulk_docs_per_s(
    poster: Any, docs: Sequence[Any], endpoint: str, request_size: int, repeats: int
) -> float:
    """Median docs/s over ``repeats`` posts of all ``docs`` (one post is ~0.1 s: too short alone).

    ``poster`` is anything with plait's ``post`` (a Client, a Deployment, a Flow).
    """
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = poster.post(endpoint, docs, request_size=request_size)
        rates.append(len(docs) / (time.perf_counter() - t0))
        if len(out) != len(docs):
            raise RuntimeError(f"bulk {endpoint}: sent {len(docs)} docs, got {len(out)} back")
    return statistics.median(rates)
