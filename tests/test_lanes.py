"""The gRPC client's unary calls as messages of long-lived ProcessStream calls (client/lanes.py),
against the gateway's real gRPC server (gateway/protocols.py) serving a scripted processor.

Each unary call keeps what a gRPC unary call gives: its deadline (enforced by the server, which
then cancels the work), cancellation by the caller, per-request errors, failover for requests that
never started (a draining server), and the stream is given up when idle or old.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import json
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc
import pytest
from conftest import subprocess_env

from plait._loop import new_event_loop
from plait.client.grpc_transport import GrpcTransport
from plait.client.transport import Call
from plait.config import ServerOptions
from plait.errors import DeadlineExceededError, SchemaError, UnavailableError
from plait.gateway.protocols import GrpcServer
from plait.orchestrate.process import free_port
from plait.serve import servicer as servicer_module
from plait.serve.servicer import PlaitServicer
from plait.wire import error_from_rpc_error, lanes
from plait.wire import plait_pb2 as pb

pytestmark = pytest.mark.timeout(60)

F = TypeVar("F", bound=Callable[..., Awaitable[None]])


def in_loop(test: F) -> Callable[..., None]:
    """Run an async test in a fresh event loop (plait's loop policy), cancelling what it leaves."""

    @functools.wraps(test)
    def run(*args: Any, **kwargs: Any) -> None:
        loop = new_event_loop()
        try:
            loop.run_until_complete(asyncio.wait_for(test(*args, **kwargs), 45))
        finally:
            leftovers = asyncio.all_tasks(loop)
            for task in leftovers:
                task.cancel()
            if leftovers:
                loop.run_until_complete(asyncio.gather(*leftovers, return_exceptions=True))
            loop.close()

    return run


class Scripted:
    """A processor whose behaviour each request's endpoint picks; it records what happened."""

    name = "scripted"

    def __init__(self, label: str = "a") -> None:
        self.label = label
        self.started: list[str] = []
        self.cancelled: list[str] = []
        self.finished: list[str] = []
        self.timeouts: list[float | None] = []
        self.streams_open = 0
        self.stream_calls = 0
        self.unary_calls = 0
        self.messages_in = 0
        """ProcessStream messages read (a joined message counts once)."""
        self.messages_out = 0

    async def process(self, request: pb.Request, *, timeout: float | None = None) -> pb.Response:
        self.started.append(request.request_id)
        self.timeouts.append(timeout)
        try:
            if request.endpoint == "/slow":
                await asyncio.sleep(float(json.loads(request.parameters or b"{}").get("s", 30)))
            elif request.endpoint == "/bad":
                raise SchemaError("field 'text' must be a string", field="$.data[0].text")
        except asyncio.CancelledError:
            self.cancelled.append(request.request_id)
            raise
        self.finished.append(request.request_id)
        return pb.Response(request_id=request.request_id, docs=request.docs + self.label.encode())

    async def stream(
        self, request: pb.Request, *, timeout: float | None = None
    ) -> AsyncIterator[pb.Response]:
        if request.endpoint == "/many":  # a long stream, which a caller may leave early
            for i in range(50):
                yield pb.Response(request_id=request.request_id, docs=request.docs + str(i).encode())
                await asyncio.sleep(0.01)
            return
        yield await self.process(request, timeout=timeout)

    def describe(self) -> pb.DescribeResponse:
        return pb.DescribeResponse(name=self.name, kind="gateway")

    def ready(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def count_calls(monkeypatch: pytest.MonkeyPatch) -> None:
    """Count each server's ProcessStream and Process calls (and streams open) on its processor."""
    stream, unary = PlaitServicer.ProcessStream, PlaitServicer.Process

    async def counting_stream(
        self: PlaitServicer, request_iterator: Any, context: Any
    ) -> AsyncIterator[pb.Response]:
        processor = self.handler
        processor.stream_calls += 1
        processor.streams_open += 1

        async def counted() -> AsyncIterator[Any]:
            async for message in request_iterator:
                processor.messages_in += 1
                yield message

        try:
            async for response in stream(self, counted(), context):
                processor.messages_out += 1
                yield response
        finally:
            processor.streams_open -= 1

    async def counting_unary(self: PlaitServicer, request: Any, context: Any) -> pb.Response:
        self.handler.unary_calls += 1
        return await unary(self, request, context)

    monkeypatch.setattr(PlaitServicer, "ProcessStream", counting_stream)
    monkeypatch.setattr(PlaitServicer, "Process", counting_unary)


class Server:
    def __init__(self, processor: Scripted, options: ServerOptions | None = None) -> None:
        self.processor = processor
        self.port = free_port("127.0.0.1")
        self.grpc = GrpcServer(processor, "127.0.0.1", self.port, options or ServerOptions())
        self.address = f"127.0.0.1:{self.port}"

    @property
    def process_stream_calls(self) -> int:
        return self.processor.stream_calls

    @property
    def unary_calls(self) -> int:
        return self.processor.unary_calls

    async def start(self) -> None:
        await self.grpc.start()

    async def stop(self, grace: float = 5.0) -> None:
        await self.grpc.stop(grace)


def call(endpoint: str, rid: str = "", **parameters: Any) -> Call:
    return Call(endpoint=endpoint, docs=b"x", parameters=parameters, request_id=rid)


async def started(server: Server) -> Server:
    await server.start()
    return server


async def eventually(condition: Callable[[], bool], seconds: float = 2.0) -> bool:
    """Whether ``condition()`` holds within ``seconds``."""
    deadline = asyncio.get_running_loop().time() + seconds
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            return False
        await asyncio.sleep(0.02)
    return True


@contextlib.asynccontextmanager
async def serving(*labels: str) -> AsyncIterator[tuple[list[Server], GrpcTransport]]:
    """Servers (one per label; "a" by default) and a transport over all of them, closed after."""
    servers = [await started(Server(Scripted(label))) for label in labels or ("a",)]
    transport = GrpcTransport([server.address for server in servers])
    try:
        yield servers, transport
    finally:
        await transport.close()
        for server in servers:
            await server.stop()


@in_loop
async def test_many_calls_travel_as_messages_of_one_stream() -> None:
    async with serving() as ([server], transport):
        replies = await asyncio.gather(*(transport.call(call("/echo", f"r{i}")) for i in range(50)))
        assert [r.request_id for r in replies] == [f"r{i}" for i in range(50)]
        assert {r.docs for r in replies} == {b"xa"}
        # Same ids twice at once, or none: still matched to the right caller.
        twins = await asyncio.gather(
            transport.call(call("/echo", "same")), transport.call(call("/echo", "same"))
        )
        assert [t.docs for t in twins] == [b"xa", b"xa"]
        assert server.process_stream_calls == 1
        assert server.unary_calls == 0


@in_loop
async def test_the_deadline_is_enforced_by_the_server_which_cancels_the_work() -> None:
    async with serving() as ([server], transport):
        with pytest.raises(DeadlineExceededError, match="timeout"):
            await transport.call(call("/slow", "late", s=30), timeout=0.3)
        assert await eventually(lambda: "late" in server.processor.cancelled)
        assert server.processor.cancelled == ["late"]
        assert server.processor.timeouts[0] is not None and 0 < server.processor.timeouts[0] <= 0.3
        # The stream goes on.
        assert (await transport.call(call("/echo", "next"), timeout=5)).docs == b"xa"
        assert server.process_stream_calls == 1


@in_loop
async def test_a_caller_that_gives_up_cancels_the_work_on_the_server() -> None:
    async with serving() as ([server], transport):
        task = asyncio.create_task(transport.call(call("/slow", "abandoned", s=30)))
        assert await eventually(lambda: bool(server.processor.started))
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await eventually(lambda: bool(server.processor.cancelled))
        assert server.processor.cancelled == ["abandoned"]
        assert server.processor.finished == []


@in_loop
async def test_an_error_fails_only_its_request() -> None:
    async with serving() as ([server], transport):
        bad, good = await asyncio.gather(
            transport.call(call("/bad", "bad")), transport.call(call("/echo", "good")), return_exceptions=True
        )
        assert isinstance(bad, SchemaError)
        assert bad.details.get("field") == "$.data[0].text"
        assert not isinstance(good, BaseException) and good.docs == b"xa"
        assert server.process_stream_calls == 1


@in_loop
async def test_a_draining_server_finishes_its_requests_and_the_rest_go_elsewhere() -> None:
    async with serving("a", "b") as ([a, _], transport):
        # Both lanes open, one per server (round_robin over the two).
        first = await asyncio.gather(*(transport.call(call("/echo", f"w{i}")) for i in range(10)))
        assert {r.docs for r in first} == {b"xa", b"xb"}
        # A request in flight on a's stream when it starts to drain is answered, and the drain does
        # not wait out the grace period for the open stream.
        in_flight = [
            asyncio.create_task(transport.call(call("/slow", f"s{i}", s=0.5), timeout=10)) for i in range(2)
        ]
        await asyncio.sleep(0.2)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        stopping = asyncio.create_task(a.stop(grace=20))
        await asyncio.sleep(0.05)
        # Meanwhile every request succeeds: none lost to the draining server, which starts no new one.
        a_started = len(a.processor.started)
        during = await asyncio.gather(
            *(transport.call(call("/echo", f"d{i}"), timeout=10) for i in range(20))
        )
        assert {r.docs for r in during} == {b"xb"}
        assert len(a.processor.started) == a_started
        done = await asyncio.gather(*in_flight)
        assert sorted(r.docs for r in done) == [b"xa", b"xb"]
        await stopping
        assert loop.time() - t0 < 5, "the drain waited for the open stream"
        after = await asyncio.gather(*(transport.call(call("/echo", f"x{i}"), timeout=10) for i in range(10)))
        assert {r.docs for r in after} == {b"xb"}


@in_loop
async def test_an_idle_stream_is_closed_and_the_next_call_opens_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lanes, "LANE_IDLE", 0.2)
    async with serving() as ([server], transport):
        await transport.call(call("/echo"))
        assert server.processor.streams_open == 1
        assert await eventually(lambda: server.processor.streams_open == 0), (
            "an idle client still holds its stream open"
        )
        assert (await transport.call(call("/echo"), timeout=5)).docs == b"xa"
        assert server.process_stream_calls == 2


@in_loop
async def test_an_old_stream_is_replaced_and_finishes_what_it_has(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lanes, "LANE_MAX_AGE", 0.3)
    async with serving() as ([server], transport):
        slow = asyncio.create_task(transport.call(call("/slow", "old", s=0.6), timeout=10))
        await asyncio.sleep(0.4)
        assert (await transport.call(call("/echo"), timeout=5)).docs == b"xa"  # on a new stream
        assert (await slow).docs == b"xa"  # the old one answered it
        assert server.process_stream_calls == 2
        assert await eventually(lambda: server.processor.streams_open == 1), (
            "the replaced stream was not closed"
        )


_CROSS_LOOPS = """
import asyncio, threading
import grpc
from plait.client.grpc_transport import GrpcTransport
from plait.client.transport import Call
from plait.wire import lanes, plait_pb2 as pb, settle
from test_lanes import Scripted, Server, started

first = asyncio.new_event_loop()  # the loop that uses gRPC first: it polls, and relays to others
threading.Thread(target=first.run_forever, daemon=True).start()
server = asyncio.run_coroutine_threadsafe(started(Server(Scripted("a"))), first).result(10)

async def lanes_closed(n):
    found = pending = 0
    for _ in range(n):
        channel = grpc.aio.insecure_channel(server.address)
        lane = lanes._Lane(lanes.stream_opener(channel))
        assert (await lane.request(pb.Request(endpoint="/echo", docs=b"x"))).docs == b"xa"
        watcher = settle.status_watcher(lane.rpc)
        found += watcher is not None
        await lane.close()
        pending += watcher is not None and not watcher.done()
        await channel.close()
    return found, pending

async def stream_left_early():
    transport = GrpcTransport([server.address])
    replies = transport.stream(Call(endpoint="/many", docs=b"x", parameters={}, request_id="s"))
    assert (await anext(replies)).docs == b"x0"
    await replies.aclose()  # the caller stops reading: the call is cancelled
    await transport.close()

print(*asyncio.run(lanes_closed(200)))
for _ in range(100):  # each loop closes right after its stream was left
    asyncio.run(stream_left_early())
asyncio.run_coroutine_threadsafe(server.stop(), first).result(10)
"""


def test_closing_a_stream_waits_for_grpcs_last_event_of_it() -> None:
    # gRPC relays a call's events from the loop that first used it to the loop that made the call;
    # one still on its way when that loop closes fails there ("Event loop is closed", printed at
    # the exit of asyncio.run). cancel() sets a call's status at once, yet gRPC core still delivers
    # it to the call's status watcher task afterwards: closing a lane, or a stream the caller left,
    # waits for that (plait.wire.settle). Without it, about one lane in 30 closed with its watcher
    # pending here, and a left stream printed the error in about one loop in three.
    out = subprocess.run(
        [sys.executable, "-c", _CROSS_LOOPS],
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    found, pending = map(int, out.stdout.split())
    assert found == 200, "grpc.aio's status watcher was not found: see plait.wire.settle"
    assert pending == 0
    assert "Traceback" not in out.stderr, out.stderr[-2000:]


@in_loop
async def test_an_unreachable_server_is_unavailable_after_the_retries() -> None:
    transport = GrpcTransport([f"127.0.0.1:{free_port('127.0.0.1')}"])
    try:
        with pytest.raises(UnavailableError):
            await transport.call(call("/echo"), timeout=5)
    finally:
        await transport.close()


@in_loop
async def test_trace_context_goes_as_a_unary_call_of_its_own() -> None:
    async with serving() as ([server], transport):
        traced = Call(
            endpoint="/echo",
            docs=b"x",
            request_id="t",
            metadata=(("traceparent", "00-" + "1" * 32 + "-" + "2" * 16 + "-01"),),
        )
        assert (await transport.call(traced, timeout=5)).docs == b"xa"
        assert server.unary_calls == 1 and server.process_stream_calls == 0


@in_loop
async def test_the_gateway_calls_named_replicas_on_lanes_and_dns_names_per_call() -> None:
    from plait.gateway.router import _Shard  # the gateway's per-shard caller

    a, b = await started(Server(Scripted("a"))), await started(Server(Scripted("b")))
    named = _Shard([a.address, b.address])
    behind_dns = _Shard([f"dns:///localhost:{a.port}"])
    try:
        assert named.lanes is not None and behind_dns.lanes is None
        replies = await asyncio.gather(
            *(named.call(pb.Request(request_id=f"r{i}", endpoint="/echo", docs=b"x"), 5) for i in range(20))
        )
        assert {r.docs for r in replies} == {b"xa", b"xb"}, "both replicas serve, in turn"
        assert a.process_stream_calls == b.process_stream_calls == 1
        assert a.unary_calls == b.unary_calls == 0
        # With a trace context of its own, a call goes alone.
        traced = await named.call(pb.Request(request_id="t", endpoint="/echo", docs=b"x"), 5, (("k", "v"),))
        assert traced.docs in (b"xa", b"xb") and a.unary_calls + b.unary_calls == 1
        # An error reply is the RpcError a unary call would have raised, details and all.
        with pytest.raises(grpc.RpcError) as failed:
            await named.call(pb.Request(request_id="bad", endpoint="/bad", docs=b"x"), 5)
        assert failed.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert isinstance(error_from_rpc_error(failed.value), SchemaError)
    finally:
        await named.close()
        await behind_dns.close()
        await a.stop()
        await b.stop()


@in_loop
async def test_requests_that_wait_for_a_write_go_out_together_and_so_do_their_responses() -> None:
    async with serving() as ([server], transport):
        replies = await asyncio.gather(*(transport.call(call("/echo", f"r{i}")) for i in range(50)))
        assert [r.request_id for r in replies] == [f"r{i}" for i in range(50)]
        assert {r.docs for r in replies} == {b"xa"}
        lane = next(lane for lane in transport._mux._lanes if lane is not None)
        assert lane.batch_limit == lanes.BATCH_MAX_BYTES  # the server reads joined requests
        processor = server.processor
        assert sorted(processor.started) == sorted(f"r{i}" for i in range(50))
        # 50 requests queued at once: a handful of messages each way, not 50.
        assert processor.messages_in < 10, processor.messages_in
        assert processor.messages_out < 50, processor.messages_out
        assert server.process_stream_calls == 1


@in_loop
async def test_a_server_that_does_not_announce_joined_messages_gets_one_request_per_message(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A server from before `batch` (its initial metadata says nothing): requests go one by one.
    monkeypatch.setattr(servicer_module, "batch_metadata", lambda limit: ())
    async with serving() as ([server], transport):
        replies = await asyncio.gather(*(transport.call(call("/echo", f"r{i}")) for i in range(30)))
        assert [r.request_id for r in replies] == [f"r{i}" for i in range(30)]
        lane = next(lane for lane in transport._mux._lanes if lane is not None)
        assert lane.batch_limit is None
        assert server.processor.messages_in == 30


@in_loop
async def test_a_caller_that_does_not_read_joined_messages_gets_one_response_per_message() -> None:
    # A caller from before `batch` (no plait-batch metadata): every response comes alone.
    async with serving() as ([server], _transport):
        async with grpc.aio.insecure_channel(server.address) as channel:
            exchange = channel.stream_stream(
                "/plait.v1.Plait/ProcessStream",
                request_serializer=pb.Request.SerializeToString,
                response_deserializer=pb.Response.FromString,
            )

            async def requests() -> AsyncIterator[pb.Request]:
                for i in range(20):
                    yield pb.Request(request_id=f"r{i}", endpoint="/echo", docs=b"x")

            responses = [r async for r in exchange(requests(), timeout=10)]
        assert sorted(r.request_id for r in responses) == sorted(f"r{i}" for i in range(20))
        assert not any(r.batch for r in responses)
        assert server.processor.messages_out == 20


@in_loop
async def test_joined_messages_stay_under_the_receivers_message_size_limits() -> None:
    # Each request and response alone fits the limits; 30 of them together would not.
    limit = 64 * 1024
    server = await started(Server(Scripted(), ServerOptions(max_request_bytes=limit)))
    transport = GrpcTransport([server.address], max_message_size=limit)
    try:
        docs = b"d" * 10_000
        calls = [
            transport.call(Call(endpoint="/echo", docs=docs, parameters={}, request_id=f"r{i}"))
            for i in range(30)
        ]
        replies = await asyncio.gather(*calls)
        assert [r.request_id for r in replies] == [f"r{i}" for i in range(30)]
        assert all(r.docs == docs + b"a" for r in replies)
        lane = next(lane for lane in transport._mux._lanes if lane is not None)
        assert lane.batch_limit == limit  # what the server announced
        # Joined (fewer messages than requests), but never more than ~6 requests per carrier.
        assert 30 / 6 <= server.processor.messages_in < 30
        assert 30 / 6 <= server.processor.messages_out < 30
    finally:
        await transport.close()
        await server.stop()


def test_a_carrier_holds_what_fits_and_a_large_message_goes_alone() -> None:
    big = lanes.BATCH_MAX_BYTES // 2 - 10  # two of them (with their framing) do not fit one carrier
    queue = collections.deque([b"a" * 10, b"b" * 10, b"c" * big, b"d" * big, b"e" * 10])
    taken = [lanes.take_batch(queue, len, lambda _: True) for _ in range(2)]
    assert [[len(p) for p in t] for t in taken] == [[10, 10, big], [big, 10]]
    assert not queue
    # Only what `fits` joins: the carrier stops at the first item that does not.
    mixed = collections.deque([b"1", b"2", None, b"3"])
    assert lanes.take_batch(mixed, lambda p: len(p or b""), lambda p: p is not None) == [b"1", b"2"]
    assert list(mixed) == [None, b"3"]
    alone = collections.deque([b"x" * (lanes.BATCH_MAX_BYTES * 2), b"y"])
    assert lanes.take_batch(alone, len, lambda _: True) == [b"x" * (lanes.BATCH_MAX_BYTES * 2)]
    # A receiver's lower limit bounds the carrier, its framing included.
    small = collections.deque([b"s" * 94] * 10)
    assert len(lanes.take_batch(small, len, lambda _: True, limit=500)) == 5
    assert lanes.batch_limit([("plait-batch", "0")]) == lanes.BATCH_MAX_BYTES
    assert lanes.batch_limit([("plait-batch", "1000")]) == 1000
    assert lanes.batch_limit([("plait-batch", str(10**9))]) == lanes.BATCH_MAX_BYTES
    assert lanes.batch_limit([("other", "1")]) is None
    assert lanes.batch_limit([("plait-batch", "many")]) is None
    # A joined message parses as the messages it carries, in order.
    parts = [pb.Request(request_id=f"r{i}", docs=b"z" * i).SerializeToString() for i in range(300)]
    carrier = pb.Request.FromString(lanes.join_requests(parts))
    assert [r.request_id for r in carrier.batch] == [f"r{i}" for i in range(300)]
    assert carrier.batch[299].docs == b"z" * 299 and not carrier.request_id
    assert lanes.join_requests(parts[:1]) == parts[0]


@in_loop
async def test_a_caller_cancelled_mid_write_does_not_end_the_stream_for_the_others() -> None:
    # grpc.aio cancels a whole call when one of its writes is cancelled: a caller giving up while
    # its (large, flow-controlled) message is still being written must not take the lane with it.
    async with serving() as ([server], transport):
        assert (await transport.call(call("/echo", "warm"), timeout=5)).docs == b"xa"
        lane = next(lane for lane in transport._mux._lanes if lane is not None)
        release = asyncio.Event()
        real_write = lane.rpc.write

        async def slow_write(message: bytes) -> None:
            if pb.Request.FromString(message).request_id == "slow":
                try:
                    await release.wait()  # a write held up, as by HTTP/2 flow control
                except asyncio.CancelledError:
                    lane.rpc.cancel()  # what grpc.aio's own write does when it is cancelled
                    raise
            await real_write(message)

        lane.rpc.write = slow_write
        stuck = asyncio.create_task(transport.call(call("/echo", "slow"), timeout=5))
        await asyncio.sleep(0.05)
        stuck.cancel()
        with pytest.raises(asyncio.CancelledError):
            await stuck
        release.set()
        # The lane goes on: the next request on it is answered, on the same stream.
        assert (await transport.call(call("/echo", "after"), timeout=5)).docs == b"xa"
        assert not lane.dead
        assert server.process_stream_calls == 1


def test_an_error_reply_round_trips_its_type_message_and_details() -> None:
    # The executor encodes an error's details (msgspec; values JSON cannot hold become strings),
    # the gateway rebuilds the exception from them: the same type, message, details and status.
    from pathlib import Path

    from plait.errors import error_from_grpc
    from plait.wire.status import error_details, error_reply

    error = UnavailableError("replica 0 refuses", executor="flaky", where=Path("/tmp/x"), n=3)
    reply = error_reply("r1", error)
    assert json.loads(reply.error) == {
        "type": "UnavailableError",
        "message": "replica 0 refuses",
        "executor": "flaky",
        "where": "/tmp/x",
        "n": 3,
    }
    ended = lanes._failed(reply.error)
    assert ended.code() == grpc.StatusCode.UNAVAILABLE and ended.details() == "replica 0 refuses"
    back = error_from_rpc_error(ended)
    assert type(back) is UnavailableError
    assert back.details == {"executor": "flaky", "where": "/tmp/x", "n": 3}
    assert error_from_grpc(grpc.StatusCode.UNAVAILABLE, "x", error_details(error)).message == error.message
    broken = lanes._failed(b"{not json")
    assert broken.code() == grpc.StatusCode.UNKNOWN and "malformed error reply" in broken.details()
