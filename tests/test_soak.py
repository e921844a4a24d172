"""Soak: 10,000 requests at 64 concurrency through a Flow with 2 replicas per executor while a
replica is killed with SIGKILL every second. Idempotent calls lose and duplicate nothing; memory
stays flat. Marked slow; bounded to ~2 minutes."""

from __future__ import annotations

import asyncio
import itertools
import os
import random
import signal
import threading
import time

import grpc
import pytest
from executors import Text
from grpc_health.v1 import health_pb2, health_pb2_grpc

from plait import AsyncClient, Flow
from plait.errors import PlaitError

H = "127.0.0.1"
TOTAL = 10_000
CONCURRENCY = 64
BUDGET_S = 150.0
MIN_KILLS = 5


def _rss_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _serving(address: str) -> bool:
    with grpc.insecure_channel(address) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=0.5)
        except grpc.RpcError:
            return False
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


def _killer(flow: Flow, stop: threading.Event, kills: list[str]) -> None:
    """Every second, SIGKILL one executor replica whose sibling is serving: one replica is killed,
    never the last one standing (a replica killed a moment ago may still be restarting)."""
    rng = random.Random(7)
    while not stop.wait(1.0):
        status = {s.label: s for s in flow.status()}
        candidates = []
        for label, s in status.items():
            if "/rep-" not in label or not s.alive or s.pid is None:
                continue
            sibling = status.get(label[:-1] + ("1" if label.endswith("0") else "0"))
            if sibling is not None and sibling.alive and _serving(sibling.address):
                candidates.append(s)
        if candidates:
            victim = rng.choice(candidates)
            os.kill(victim.pid or 0, signal.SIGKILL)
            kills.append(victim.label)


async def _load(
    port: int, endpoint: str, kills: list[str]
) -> tuple[dict[str, list[str]], list[PlaitError], int]:
    """At least TOTAL requests, and on until MIN_KILLS replicas were killed (a fast machine sends
    TOTAL before that), within BUDGET_S."""
    answers: dict[str, list[str]] = {}
    failures: list[PlaitError] = []
    counter = itertools.count()
    deadline = time.monotonic() + BUDGET_S
    sent = 0

    async def worker() -> None:
        nonlocal sent
        async with AsyncClient(H, port) as client:
            for i in counter:
                if time.monotonic() > deadline or (i >= TOTAL and len(kills) >= MIN_KILLS):
                    return
                sent += 1
                doc = Text(id=f"d{i}", text=str(i))
                try:
                    out = await client.post(endpoint, doc, {"seconds": 0.002}, timeout=30)
                    answers.setdefault(doc.id, []).extend(d.id for d in out)
                except PlaitError as e:
                    failures.append(e)

    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return answers, failures, sent


@pytest.mark.slow
def test_soak_with_a_replica_killed_every_second() -> None:
    flow = (
        Flow(host=H, quiet=True, grace_period=1)
        .add(name="a", uses="executors:Resilient", replicas=2)
        .add(name="b", uses="executors:Resilient", replicas=2)
    )
    with flow:
        asyncio.run(_load_warmup(flow.port))
        gateway = next(s for s in flow.status() if s.label == "gateway")
        warm_gateway = _rss_mb(gateway.pid or 0)
        warm_executor = max(_rss_mb(s.pid or 0) for s in flow.status() if "/rep-" in s.label)
        stop, kills = threading.Event(), []
        killer = threading.Thread(target=_killer, args=(flow, stop, kills), daemon=True)
        killer.start()
        try:
            answers, failures, sent = asyncio.run(_load(flow.port, "/search", kills))
        finally:
            stop.set()
            killer.join(5)
        status = flow.status()
        end_gateway = _rss_mb(gateway.pid or 0)
        end_executors = [_rss_mb(s.pid or 0) for s in status if "/rep-" in s.label and s.alive]
    assert sent >= TOTAL, f"only {sent} requests were sent within {BUDGET_S}s"
    assert len(kills) >= MIN_KILLS, kills
    assert sum(s.restarts for s in status) >= len(kills) - 2
    # Idempotent endpoint: nothing lost, nothing duplicated, every answer is its own document.
    assert not failures, failures[:3]
    assert len(answers) == sent
    assert all(ids == [doc_id] for doc_id, ids in answers.items())
    # Memory: flat after warm-up (restarted replicas start fresh, so compare with the warm maximum).
    assert end_gateway < warm_gateway * 1.2, (warm_gateway, end_gateway)
    assert all(rss < warm_executor * 1.2 for rss in end_executors), (warm_executor, end_executors)


async def _load_warmup(port: int) -> None:
    async with AsyncClient(H, port) as client:
        await asyncio.gather(
            *(client.post("/search", Text(text=str(i)), {"seconds": 0.001}) for i in range(500))
        )
