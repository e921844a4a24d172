"""The gateway's limits, each on every protocol it concerns: documents per request, request time,
header size, time to send a request's head, idle connections, open connections, request bytes."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator

import grpc
import httpx
import pytest
from executors import Text
from grpc_health.v1 import health_pb2, health_pb2_grpc
from security_support import H, Stack, gateway_stack
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from plait import Client, DocList
from plait.config import ServerOptions
from plait.docs import encode_docs
from plait.errors import DeadlineExceededError, PayloadTooLargeError
from plait.security.limits import count_docs

pytestmark = pytest.mark.timeout(120)

MAX_DOCS = 3
MAX_BYTES = 64 * 1024
REQUEST_TIMEOUT = 1.5
HEADER_BYTES = 2048
HEADER_TIMEOUT = 0.5
IDLE = 0.7
CONNECTIONS = 3


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    options = ServerOptions(
        max_docs_per_request=MAX_DOCS,
        max_request_bytes=MAX_BYTES,
        request_timeout=REQUEST_TIMEOUT,
        max_header_bytes=HEADER_BYTES,
        header_timeout=HEADER_TIMEOUT,
        idle_timeout=IDLE,
        max_connections=CONNECTIONS,
        grace_period=1,
    )
    with gateway_stack(options) as s:
        yield s


def _docs(n: int) -> DocList[Text]:
    return DocList[Text]([Text(text=str(i)) for i in range(n)])


def _ws_call(port: int, frame: str, headers: dict[str, str] | None = None) -> str:
    async def run() -> str:
        async with connect(f"ws://{H}:{port}/", additional_headers=headers, proxy=None) as ws:
            await ws.send(frame)
            return str(await asyncio.wait_for(ws.recv(), 10))

    return asyncio.run(run())


def _ws_frame(n: int, endpoint: str = "/echo", parameters: str = "{}") -> str:
    data = ",".join(f'{{"text": "{i}"}}' for i in range(n))
    return f'{{"request_id": "r", "endpoint": "{endpoint}", "data": [{data}], "parameters": {parameters}}}'


def test_count_docs_reads_the_array_header() -> None:
    for n in (0, 1, 15, 16, 300, 70_000):
        assert count_docs(encode_docs(_docs(n) if n < 1000 else [Text()] * n)) == n
    assert count_docs(b"") == 0 and count_docs(b"\x01\xc0") == 0


def test_documents_per_request(stack: Stack) -> None:
    with Client(H, stack.ports["grpc"]) as client:
        assert len(client.post("/echo", _docs(MAX_DOCS))) == MAX_DOCS
        with pytest.raises(PayloadTooLargeError, match="max_docs_per_request"):
            client.post("/echo", _docs(MAX_DOCS + 1), request_size=100)
    with httpx.Client(trust_env=False, timeout=10) as http:
        url = f"http://{H}:{stack.ports['http']}/echo"
        body = {"data": [{"text": str(i)} for i in range(MAX_DOCS + 1)]}
        r = http.post(url, json=body)
        assert r.status_code == 413 and "max_docs_per_request" in r.text
    reply = _ws_call(stack.ports["websocket"], _ws_frame(MAX_DOCS + 1))
    assert "PayloadTooLargeError" in reply and "max_docs_per_request" in reply


def test_request_timeout_caps_every_protocol(stack: Stack) -> None:
    slow = {"seconds": 5}
    started = time.monotonic()
    with Client(H, stack.ports["grpc"]) as client:
        with pytest.raises(DeadlineExceededError):
            client.post("/sleep", _docs(1), slow)
        with pytest.raises(DeadlineExceededError):  # a client's longer timeout is capped too
            client.post("/sleep", _docs(1), slow, timeout=30)
    with httpx.Client(trust_env=False, timeout=10) as http:
        r = http.post(f"http://{H}:{stack.ports['http']}/sleep", json={"data": [{}], "parameters": slow})
        assert r.status_code == 504
    reply = _ws_call(stack.ports["websocket"], _ws_frame(1, "/sleep", '{"seconds": 5}'))
    assert "DeadlineExceededError" in reply
    assert time.monotonic() - started < 4 * (REQUEST_TIMEOUT + 1.5)


def test_request_bytes(stack: Stack) -> None:
    big = DocList[Text]([Text(text="x" * (MAX_BYTES + 10))])
    with Client(H, stack.ports["grpc"]) as client, pytest.raises(PayloadTooLargeError):
        client.post("/echo", big)
    with httpx.Client(trust_env=False, timeout=10) as http:
        r = http.post(f"http://{H}:{stack.ports['http']}/echo", json={"data": [{"text": "x" * MAX_BYTES}]})
        assert r.status_code == 413
    reply = _ws_call(stack.ports["websocket"], _ws_frame(1).replace('"0"', '"' + "x" * MAX_BYTES + '"'))
    assert "PayloadTooLargeError" in reply


def test_header_size(stack: Stack) -> None:
    huge = {"x-filler": "a" * (HEADER_BYTES + 100)}
    with httpx.Client(trust_env=False, timeout=10) as http:
        r = http.get(f"http://{H}:{stack.ports['http']}/health", headers=huge)
        assert r.status_code == 431
        assert http.get(f"http://{H}:{stack.ports['http']}/health").status_code == 200
        r = http.get(f"http://{H}:{stack.ports['http']}/health?" + "q" * HEADER_BYTES)
        assert r.status_code == 431  # the request line counts too
    with pytest.raises(InvalidStatus) as info:
        _ws_call(stack.ports["websocket"], _ws_frame(1), huge)
    assert info.value.response.status_code == 431
    with grpc.insecure_channel(f"{H}:{stack.ports['grpc']}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        with pytest.raises(grpc.RpcError) as error:
            stub.Check(health_pb2.HealthCheckRequest(), metadata=tuple(huge.items()), timeout=5)
        assert error.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert stub.Check(health_pb2.HealthCheckRequest(), timeout=5).status == 1


def _closed_within(sock: socket.socket, seconds: float) -> float | None:
    """Seconds until the server closed ``sock`` (None if it stayed open); reads what arrives."""
    sock.settimeout(seconds)
    started = time.monotonic()
    try:
        while sock.recv(65536):
            pass
    except TimeoutError:
        return None
    except ConnectionResetError:
        pass
    return time.monotonic() - started


@pytest.mark.parametrize("protocol", ["http", "websocket"])
def test_slow_request_heads_are_cut_off(stack: Stack, protocol: str) -> None:
    port = stack.ports[protocol]
    with socket.create_connection((H, port)) as silent, socket.create_connection((H, port)) as slow:
        slow.sendall(b"GET /health HTTP/1.1\r\nhost: x\r\n")  # ...and never the rest
        for sock in (silent, slow):
            closed = _closed_within(sock, HEADER_TIMEOUT + 3)
            assert closed is not None and closed < HEADER_TIMEOUT + 2


def test_grpc_connections_that_never_speak_are_cut_off(stack: Stack) -> None:
    with socket.create_connection((H, stack.ports["grpc"])) as silent:
        closed = _closed_within(silent, HEADER_TIMEOUT + 5)
        assert closed is not None


def test_idle_connections_are_closed(stack: Stack) -> None:
    with socket.create_connection((H, stack.ports["http"])) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n")
        closed = _closed_within(sock, IDLE + 3)  # the response, then nothing until the close
        assert closed is not None and closed >= IDLE * 0.8

    async def idle_websocket() -> tuple[int | None, float]:
        async with connect(f"ws://{H}:{stack.ports['websocket']}/", proxy=None) as ws:
            started = time.monotonic()
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(ws.recv(), IDLE + 5)
            return ws.close_code, time.monotonic() - started

    code, after = asyncio.run(idle_websocket())
    assert code == 1001 and after >= IDLE * 0.8

    states: list[grpc.ChannelConnectivity] = []
    with grpc.insecure_channel(f"{H}:{stack.ports['grpc']}") as channel:
        channel.subscribe(states.append, try_to_connect=False)
        health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        deadline = time.monotonic() + IDLE + 5
        while time.monotonic() < deadline and states[-1] != grpc.ChannelConnectivity.IDLE:
            time.sleep(0.1)
        assert grpc.ChannelConnectivity.READY in states and states[-1] == grpc.ChannelConnectivity.IDLE


def test_busy_websockets_are_not_idle(stack: Stack) -> None:
    # A request that runs longer than the idle timeout keeps its connection open.
    reply = _ws_call(stack.ports["websocket"], _ws_frame(1, "/sleep", '{"seconds": %s}' % (IDLE + 0.3)))
    assert '"request_id":"r"' in reply and "error" not in reply


def test_open_connections(stack: Stack) -> None:
    port = stack.ports["http"]
    held = [socket.create_connection((H, port)) for _ in range(CONNECTIONS)]
    try:
        time.sleep(0.2)
        with socket.create_connection((H, port)) as extra:
            extra.settimeout(5)
            assert extra.recv(100).startswith(b"HTTP/1.1 503")
    finally:
        for sock in held:
            sock.close()
    time.sleep(0.2)
    with httpx.Client(trust_env=False, timeout=10) as http:
        assert http.get(f"http://{H}:{port}/health").status_code == 200  # room again

    channels = [
        grpc.insecure_channel(f"{H}:{stack.ports['grpc']}", options=[("grpc.use_local_subchannel_pool", 1)])
        for _ in range(CONNECTIONS + 1)
    ]
    outcomes = []
    try:
        for channel in channels:
            try:
                health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=3)
                outcomes.append("ok")
            except grpc.RpcError as e:
                outcomes.append(e.code().name)
    finally:
        for channel in channels:
            channel.close()
    assert outcomes == ["ok"] * CONNECTIONS + ["UNAVAILABLE"]


def test_websocket_connections_count_too(stack: Stack) -> None:
    async def run() -> str:
        opened = [
            await connect(f"ws://{H}:{stack.ports['websocket']}/", proxy=None) for _ in range(CONNECTIONS)
        ]
        try:
            with pytest.raises((InvalidStatus, ConnectionClosed, OSError)):
                extra = await connect(f"ws://{H}:{stack.ports['websocket']}/", proxy=None, open_timeout=5)
                await extra.close()
            return "refused"
        finally:
            for ws in opened:
                await ws.close()

    assert asyncio.run(run()) == "refused"
    assert threading.active_count() > 0
