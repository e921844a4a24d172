"""Failover: a dead replica is taken out of rotation and calls go to the others; a call cut off
mid-way is retried only when its endpoint is idempotent."""

from __future__ import annotations

import asyncio
import os
import signal

from executors import Text

from plait import AsyncClient, Deployment, DocList, Flow
from plait.errors import PlaitError, UnavailableError

H = "127.0.0.1"


async def _burst(port: int, endpoint: str, n: int, kill_pid: int) -> list[object]:
    async with AsyncClient(H, port) as client:
        await client.post(endpoint, Text(text="warm"), {"seconds": 0.01})

        async def one(i: int) -> object:
            try:
                return (await client.post(endpoint, Text(text=str(i)), {"seconds": 0.6}, timeout=20)).text[0]
            except PlaitError as e:
                return e

        tasks = [asyncio.ensure_future(one(i)) for i in range(n)]
        await asyncio.sleep(0.25)  # every request is now running on one replica or the other
        os.kill(kill_pid, signal.SIGKILL)
        return list(await asyncio.gather(*tasks))


def test_idempotent_calls_survive_a_replica_dying_under_them_and_others_fail_clearly() -> None:
    flow = Flow(host=H, quiet=True, grace_period=1).add(name="r", uses="executors:Resilient", replicas=2)
    with flow:
        victims = [c for c in flow.children if c.label.startswith("r/")]
        results = asyncio.run(_burst(flow.port, "/search", 8, victims[0].pid or 0))
        assert all(isinstance(r, str) for r in results), results
        survivor = str(victims[1].pid)
        assert {r.split("@")[1] for r in results if isinstance(r, str)} <= {str(victims[0].pid), survivor}
        # The second burst kills the survivor while /write (not idempotent) calls run on it.
        results = asyncio.run(_burst(flow.port, "/write", 6, victims[1].pid or 0))
        failures = [r for r in results if isinstance(r, PlaitError)]
        assert failures, "calls running on the killed replica cannot have succeeded"
        assert all(isinstance(f, UnavailableError) and "'r'" in str(f) for f in failures), failures


def test_a_client_balancing_replicas_skips_a_dead_one() -> None:
    with Deployment(
        uses="executors:Echo", name="echo", replicas=3, host=H, quiet=True, grace_period=1
    ) as dep:
        dead = dep.children[0]
        os.kill(dead.pid or 0, signal.SIGKILL)
        dead.wait(5)
        outputs = [dep.post("/whoami", Text()).text[0] for _ in range(30)]
        assert all(not o.endswith(f":{dead.pid}") for o in outputs)
        assert len({o.split(":")[1] for o in outputs}) >= 1
        docs = DocList[Text]([Text(text=str(i)) for i in range(300)])
        assert dep.post("/echo", docs, request_size=10).text == [str(i) for i in range(300)]


def test_calls_crossing_a_servers_connection_aging_are_resent_not_failed() -> None:
    """A server with a maximum connection age (as exports set) sends GOAWAY now and then; calls
    that cross it on the wire come back UNAVAILABLE "GOAWAY received" without having run. They
    count as never started, so even a non-idempotent call is sent again, and none fails."""
    import grpc

    from plait.serve.server import server_options
    from plait.wire import plait_pb2 as pb
    from plait.wire import plait_pb2_grpc
    from plait.wire.channels import open_channel
    from plait.wire.retry import never_started, with_retries

    seen: list[str] = []

    class Servicer(plait_pb2_grpc.PlaitServicer):  # type: ignore[misc]
        async def Process(self, request: pb.Request, context: object) -> pb.Response:
            seen.append(request.request_id)
            await asyncio.sleep(0.001)
            return pb.Response(request_id=request.request_id)

    async def scenario() -> tuple[int, list[str], int, int]:
        server = grpc.aio.server(options=server_options(1 << 20, False, max_connection_age=0.02))
        plait_pb2_grpc.add_PlaitServicer_to_server(Servicer(), server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        channel = open_channel([f"127.0.0.1:{port}"])
        stub = plait_pb2_grpc.PlaitStub(channel)
        crossed = 0
        failures: list[str] = []

        async def one(rid: str) -> None:
            nonlocal crossed

            async def attempt(left: float | None) -> pb.Response:
                nonlocal crossed
                try:
                    response: pb.Response = await stub.Process(pb.Request(request_id=rid), timeout=left)
                except grpc.RpcError as e:
                    crossed += "GOAWAY" in (e.details() or "")
                    assert never_started(e) or "GOAWAY" not in (e.details() or ""), e
                    raise
                return response

            try:
                await with_retries(attempt, timeout=10)
            except grpc.RpcError as e:
                failures.append(f"{e.code().name}: {e.details()}")

        # 150 batches, and on (up to 600) until a call has crossed a GOAWAY: the race is timing's.
        batches = 0
        try:
            while batches < 150 or (crossed == 0 and batches < 600):
                await asyncio.gather(*(one(f"{batches}-{i}") for i in range(40)))
                batches += 1
        finally:
            await channel.close()
            await server.stop(None)
        return crossed, failures, len(set(seen)), batches * 40

    crossed, failures, served, sent = asyncio.run(scenario())
    assert failures == []
    assert served == sent, "every call ran"
    assert crossed > 0, "no call crossed a GOAWAY: the test did not exercise the race"
