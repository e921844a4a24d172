"""Benchmark: what a failed-over (retried) request costs, against the cost of one extra hop.

    .venv/bin/python benchmarks/bench_retry.py [--rounds 3] [--requests 300]

One Flow, ``gateway → flaky (2 replicas) → extra``, three endpoints, measured back to back with
the sync ``Client`` over gRPC: 20 warm-up + ``--requests`` sequential single-doc posts each,
interleaved (one of each endpoint in turn), nearest-rank p50:

- ``/echo`` is served by ``flaky`` only (``extra`` passes it through): one hop.
- ``/echo2`` is served by ``flaky`` and then ``extra``: two hops. ``/echo2 - /echo`` is the cost
  of one extra hop.
- ``/flaky`` (``idempotent=True``) is served by ``flaky`` only, and its replica 0 answers
  UNAVAILABLE every time; the gateway then retries the call at once, and its round_robin channel
  sends the retry to replica 1. Each retried request moves the channel's pick twice, so with one
  sequential client nearly every ``/flaky`` request lands on replica 0 first. Replica 0 counts
  its refusals and writes the count to a file when it stops, so the share of requests that were
  retried (``retried_share``) is measured, not assumed. ``/flaky - /echo`` is the cost of a retry.

Target (issue 4): a retried request costs at most one extra hop of latency, i.e.
``retry_cost_ms ≤ hop_cost_ms``. Prints one JSON object, then a Markdown table on stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from common import compile_plait, fmt, mark, median_tree, percentile

from plait import Client, DocList, Document, Executor, Flow, requests
from plait.errors import UnavailableError

WARMUP = 20
HOST = "127.0.0.1"


class Msg(Document):
    text: str = ""


class Flaky(Executor):
    """Replica 0 refuses ``/flaky`` with UNAVAILABLE (counting each refusal); replica 1 serves it."""

    def __init__(self, counter_dir: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._counter = Path(counter_dir) / f"refused-{self.runtime_args.replica_id}"
        self._refused = 0

    @requests(on="/echo")
    async def echo(self, docs: DocList[Msg], **kwargs: Any) -> DocList[Msg]:
        return docs

    @requests(on="/echo2")
    async def echo2(self, docs: DocList[Msg], **kwargs: Any) -> DocList[Msg]:
        return docs

    @requests(on="/flaky", idempotent=True)
    async def flaky(self, docs: DocList[Msg], **kwargs: Any) -> DocList[Msg]:
        if self.runtime_args.replica_id == 0:
            self._refused += 1  # written out at close(): a file write per call would skew the figure
            raise UnavailableError("replica 0 refuses /flaky (benchmark)")
        return docs

    def close(self) -> None:
        self._counter.write_text(str(self._refused))


class Extra(Executor):
    @requests(on="/echo2")
    async def echo2(self, docs: DocList[Msg], **kwargs: Any) -> DocList[Msg]:
        return docs


def one_round(n: int, counter_dir: Path) -> dict[str, Any]:
    for f in counter_dir.glob("refused-*"):
        f.unlink()
    flow = (
        Flow(host=HOST, protocol="grpc")
        .add(name="flaky", uses=Flaky, uses_with={"counter_dir": str(counter_dir)}, replicas=2)
        .add(name="extra", uses=Extra, needs="flaky")
    )
    docs = DocList[Msg]([Msg(text="x")])
    endpoints = ("/echo", "/echo2", "/flaky")
    samples: dict[str, list[float]] = {e: [] for e in endpoints}
    with flow, Client(HOST, flow.port) as client:
        for i in range(WARMUP + n):
            # Interleaved, so the machine's load drifts over all three endpoints alike.
            for endpoint in endpoints:
                t0 = time.perf_counter()
                client.post(endpoint, docs)
                if i >= WARMUP:
                    samples[endpoint].append((time.perf_counter() - t0) * 1e3)
    out = {e: sorted(v) for e, v in samples.items()}
    refused_file = counter_dir / "refused-0"
    refused = int(refused_file.read_text()) if refused_file.exists() else 0
    flaky_posts = WARMUP + n
    echo, echo2, flaky = (percentile(out[e], 0.5) for e in endpoints)
    return {
        "echo_p50_ms": echo,
        "echo2_p50_ms": echo2,
        "flaky_p50_ms": flaky,
        "flaky_p99_ms": percentile(out["/flaky"], 0.99),
        "hop_cost_ms": round(echo2 - echo, 3),
        "retry_cost_ms": round(flaky - echo, 3),
        "retried_share": round(refused / flaky_posts, 3),
    }


def main() -> None:
    compile_plait()
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=300)
    args = parser.parse_args()
    rounds = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.rounds):
            r = one_round(args.requests, Path(tmp))
            print(f"round {i + 1}: {json.dumps(r)}", file=sys.stderr)
            rounds.append(r)
    med = median_tree(rounds)
    met = med["retry_cost_ms"] <= med["hop_cost_ms"]
    result = {"rounds": rounds, "median": med, "target_met": met}
    print(json.dumps(result))
    print(
        "\n| metric | p50 (ms) |\n|---|---|\n"
        f"| `/echo` (one hop) | {fmt(med['echo_p50_ms'])} |\n"
        f"| `/echo2` (two hops) | {fmt(med['echo2_p50_ms'])} |\n"
        f"| `/flaky` (retried share {med['retried_share']:.0%}) | {fmt(med['flaky_p50_ms'])} |\n"
        f"| one extra hop: `/echo2 - /echo` | {fmt(med['hop_cost_ms'])} |\n"
        f"| a retry: `/flaky - /echo` | {fmt(med['retry_cost_ms'])} {mark(met)} |",
        file=sys.stderr,
    )


if __name__ == "__main__":
    main()
