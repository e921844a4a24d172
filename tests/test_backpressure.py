"""Backpressure: a flooded executor refuses what it cannot take (RESOURCE_EXHAUSTED / HTTP 429 with
Retry-After) instead of queueing without bound."""

from __future__ import annotations

import asyncio

import httpx
from executors import Text

from plait import AsyncClient, Deployment, Flow
from plait.errors import PlaitError, ResourceExhaustedError

H = "127.0.0.1"


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


async def _flood(port: int, n: int, seconds: float) -> list[object]:
    async with AsyncClient(H, port) as client:

        async def one(i: int) -> object:
            try:
                return (
                    await client.post("/sync_sleep", Text(text=str(i)), {"seconds": seconds}, timeout=60)
                ).text[0]
            except PlaitError as e:
                return e

        return list(await asyncio.gather(*(one(i) for i in range(n))))


def test_a_flooded_executor_refuses_the_excess_quickly_and_clearly() -> None:
    with Deployment(
        uses="executors:Echo", name="slow", host=H, max_concurrent=2, max_queue=2, quiet=True, grace_period=1
    ) as dep:
        results = asyncio.run(_flood(dep.port, 30, 0.2))
    served = [r for r in results if isinstance(r, str)]
    refused = [r for r in results if isinstance(r, PlaitError)]
    assert len(served) >= 4 and len(refused) >= 20, (len(served), len(refused))
    assert all(isinstance(e, ResourceExhaustedError) for e in refused), refused[:3]
    assert "at capacity" in str(refused[0]) and refused[0].details["retry_after"] == 1.0


def test_http_callers_get_429_with_retry_after_through_the_gateway() -> None:
    flow = Flow(host=H, protocol=["http"], quiet=True, grace_period=1).add(
        name="slow", uses="executors:Echo", max_concurrent=1, max_queue=1
    )
    with flow:

        async def main() -> list[httpx.Response]:
            async with httpx.AsyncClient(base_url=f"http://{H}:{flow.port}", timeout=30) as http:
                body = {"data": [{"text": "x"}], "parameters": {"seconds": 0.3}}
                return list(await asyncio.gather(*(http.post("/sync_sleep", json=body) for _ in range(12))))

        responses = asyncio.run(main())
    codes = sorted(r.status_code for r in responses)
    assert codes.count(200) >= 2 and codes.count(429) >= 6, codes
    refused = next(r for r in responses if r.status_code == 429)
    assert refused.headers["retry-after"] == "1"
    assert refused.json()["error"]["type"] == "ResourceExhaustedError"


def test_a_long_flood_costs_bounded_memory() -> None:
    with Deployment(
        uses="executors:Echo", name="slow", host=H, max_concurrent=2, max_queue=4, quiet=True, grace_period=1
    ) as dep:
        pid = dep.children[0].pid or 0
        asyncio.run(_flood(dep.port, 200, 0.01))  # warm up
        before = _rss_mb(pid)
        for _ in range(5):
            results = asyncio.run(_flood(dep.port, 400, 0.01))
            assert any(isinstance(r, ResourceExhaustedError) for r in results)
        after = _rss_mb(pid)
    assert after - before < 15, (before, after)
