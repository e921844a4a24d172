"""The WebSocket server as a third-party client sees it: raw frames, ids, errors, streams."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from executors import Text
from test_http import Hanging
from websockets.sync.client import ClientConnection, connect

from plait import Client
from plait.client.loop_thread import LoopThread
from plait.config import ExecutorConfig, ServerOptions
from plait.docs import decode_docs, encode_docs
from plait.errors import UnavailableError
from plait.executor.loader import load_executor
from plait.gateway.protocols import ProtocolServer
from plait.gateway.websocket_server import WebSocketServer
from plait.orchestrate.process import free_port
from plait.serve import RequestHandler
from plait.wire import plait_pb2 as pb

LIMIT = 64 * 1024
IN_FLIGHT = 3


@pytest.fixture(scope="module")
def server_loop() -> Iterator[LoopThread]:
    loop = LoopThread("plait-test-ws")
    yield loop
    loop.stop()


def serve(loop: LoopThread, server: ProtocolServer) -> Iterator[str]:
    loop.run(server.start(), timeout=30)
    try:
        yield f"127.0.0.1:{server.port}"
    finally:
        loop.run(server.stop(1.0), timeout=30)


@pytest.fixture(scope="module")
def address(server_loop: LoopThread) -> Iterator[str]:
    handler = RequestHandler(load_executor(ExecutorConfig(uses="executors:Echo", name="echo")), name="echo")
    options = ServerOptions(max_request_bytes=LIMIT, max_in_flight=IN_FLIGHT)
    yield from serve(server_loop, WebSocketServer(handler, "127.0.0.1", free_port(), options))
    handler.close()


@pytest.fixture
def ws(address: str) -> Iterator[ClientConnection]:
    with connect(f"ws://{address}/", proxy=None, open_timeout=10) as connection:
        yield connection


def send(ws: ClientConnection, **frame: Any) -> None:
    ws.send(json.dumps(frame))


def recv(ws: ClientConnection) -> dict[str, Any]:
    frame: dict[str, Any] = json.loads(ws.recv(timeout=10))
    return frame


def test_requests_in_flight_are_answered_by_id(ws: ClientConnection) -> None:
    send(ws, request_id="slow", endpoint="/sleep", data=[{"text": "s"}], parameters={"seconds": 0.4})
    send(ws, request_id="fast", endpoint="/echo", data=[{"text": "f"}])
    send(ws, request_id="one", endpoint="/echo", data={"text": "single"}, parameters={"x": 1})
    replies = {}
    order = []
    for _ in range(3):
        frame = recv(ws)
        replies[frame["request_id"]] = frame
        order.append(frame["request_id"])
    assert order[-1] == "slow"  # answered when ready, not in the order asked
    assert replies["fast"]["data"][0]["text"] == "f"
    assert replies["one"]["data"][0]["text"] == "single" and replies["one"]["parameters"] == {"x": 1}
    assert replies["slow"]["data"][0]["text"] == "s"


def test_malformed_frames_get_errors_and_the_connection_stays(ws: ClientConnection) -> None:
    ws.send("this is not json")
    frame = recv(ws)
    assert frame["request_id"] is None and frame["error"]["type"] == "BadRequestError"
    assert "not valid JSON" in frame["error"]["message"]
    ws.send(b"\x00\x01binary")
    frame = recv(ws)
    assert frame["error"]["type"] == "BadRequestError" and "binary" in frame["error"]["message"]
    send(ws, request_id="no-endpoint", data=[])
    frame = recv(ws)
    assert frame["request_id"] == "no-endpoint" and "endpoint" in frame["error"]["message"]
    send(ws, request_id="bad-data", endpoint="/echo", data="text")
    frame = recv(ws)
    assert frame["request_id"] == "bad-data" and frame["error"]["field"] == "$.data"
    send(ws, request_id="ok", endpoint="/echo", data=[{"text": "still open"}])
    assert recv(ws)["data"][0]["text"] == "still open"


def test_errors_carry_the_request_id(ws: ClientConnection) -> None:
    send(ws, request_id="f", endpoint="/fail", data=[{}])
    error = recv(ws)["error"]
    assert error["type"] == "ExecutorError" and error["executor"] == "echo" and "boom" in error["message"]
    send(ws, request_id="s", endpoint="/echo", data=[{"text": 1}])
    frame = recv(ws)
    assert frame["request_id"] == "s" and frame["error"]["type"] == "SchemaError"
    assert "docs[0].text" in frame["error"]["message"]
    send(ws, request_id="n", endpoint="/nope", data=[])
    assert recv(ws)["error"]["type"] == "EndpointNotFoundError"
    send(ws, request_id="t", endpoint="/sleep", data=[{}], parameters={"seconds": 5}, timeout=0.2)
    frame = recv(ws)
    assert frame["request_id"] == "t" and frame["error"]["type"] == "DeadlineExceededError"
    send(ws, request_id="big", endpoint="/echo", data=[{"text": "x" * (LIMIT + 10)}])
    frame = recv(ws)
    assert frame["request_id"] == "big" and frame["error"]["type"] == "PayloadTooLargeError"
    send(ws, request_id="after", endpoint="/echo", data=[])
    assert recv(ws) == {"request_id": "after", "data": [], "parameters": {}}


def test_stream_ends_with_an_end_marker(ws: ClientConnection) -> None:
    send(ws, request_id="st", endpoint="/tokens", data={"text": "w"}, parameters={"n": 3}, stream=True)
    frames = [recv(ws) for _ in range(4)]
    assert [f["data"][0]["text"] for f in frames[:3]] == ["w-0", "w-1", "w-2"]
    assert frames[3] == {"request_id": "st", "end": True}


def test_in_flight_window_applies_backpressure(ws: ClientConnection) -> None:
    start = time.perf_counter()
    for i in range(IN_FLIGHT + 1):
        send(ws, request_id=str(i), endpoint="/sleep", data=[], parameters={"seconds": 0.3})
    arrivals = []
    for _ in range(IN_FLIGHT + 1):
        recv(ws)
        arrivals.append(time.perf_counter() - start)
    # The first IN_FLIGHT run together; the last one is read only when one of them is done.
    assert arrivals[IN_FLIGHT - 1] < 0.55 and arrivals[IN_FLIGHT] >= 0.55


def test_disconnect_mid_request_leaves_the_server_serving(address: str) -> None:
    with connect(f"ws://{address}/", proxy=None) as ws:
        send(ws, request_id="gone", endpoint="/sleep", data=[], parameters={"seconds": 5})
        send(
            ws,
            request_id="gone2",
            endpoint="/tokens",
            data={"text": "x"},
            parameters={"n": 1000},
            stream=True,
        )
    with connect(f"ws://{address}/", proxy=None) as ws:
        send(ws, request_id="next", endpoint="/echo", data=[{"text": "hello again"}])
        assert recv(ws)["data"][0]["text"] == "hello again"


def test_disconnect_cancels_the_work(server_loop: LoopThread) -> None:
    processor = Hanging()
    for addr in serve(server_loop, WebSocketServer(processor, "127.0.0.1", free_port(), ServerOptions())):
        with connect(f"ws://{addr}/", proxy=None) as ws:
            send(ws, request_id="h", endpoint="/hang", data=[])
            assert processor.started.wait(5)
        assert processor.cancelled.wait(5), "the processor's await was not cancelled"


def test_probes_on_the_websocket_port(address: str) -> None:
    with httpx.Client(base_url=f"http://{address}", trust_env=False, timeout=10) as http:
        assert http.get("/health").json() == {"status": "ok"}
        assert http.get("/ready").status_code == 200
        described = http.get("/describe").json()
        assert (
            described["name"] == "echo"
            and "text" in described["endpoints"]["/echo"]["input_schema"]["properties"]
        )
        assert http.get("/status").json()["endpoints"] == list(described["endpoints"])
        missing = http.get("/nowhere")
        assert missing.status_code == 404
        assert "/nowhere" in missing.json()["error"]["message"], missing.text
        assert "/health" in missing.json()["error"]["message"], missing.text
        wrong = http.post("/health")
        assert wrong.status_code == 405 and "POST" in wrong.json()["error"]["message"], wrong.text


def test_stop_lets_running_requests_answer(server_loop: LoopThread) -> None:
    handler = RequestHandler(load_executor(ExecutorConfig(uses="executors:Echo", name="echo")), name="echo")
    server = WebSocketServer(handler, "127.0.0.1", free_port(), ServerOptions())
    server_loop.run(server.start(), timeout=30)
    try:
        with connect(f"ws://127.0.0.1:{server.port}/", proxy=None) as ws:
            send(ws, request_id="late", endpoint="/sleep", data=[{"text": "z"}], parameters={"seconds": 0.3})
            time.sleep(0.1)
            stopping = threading.Thread(target=server_loop.run, args=(server.stop(5.0),))
            stopping.start()
            frame = recv(ws)
            assert frame["request_id"] == "late" and frame["data"][0]["text"] == "z"
            stopping.join(10)
            assert not stopping.is_alive()
    finally:
        handler.close()


def test_client_fails_pending_requests_on_a_drop_and_reconnects(server_loop: LoopThread) -> None:
    handler = RequestHandler(load_executor(ExecutorConfig(uses="executors:Echo", name="echo")), name="echo")
    port = free_port()

    def start() -> WebSocketServer:
        server = WebSocketServer(handler, "127.0.0.1", port, ServerOptions())
        server_loop.run(server.start(), timeout=30)
        return server

    server = start()
    try:
        with Client("127.0.0.1", port, protocol="websocket") as client:
            assert client.post("/echo", Text(text="a")).text == ["a"]
            failures: list[BaseException] = []

            def pending() -> None:
                try:
                    client.post("/sleep", Text(), parameters={"seconds": 5})
                except BaseException as e:
                    failures.append(e)

            caller = threading.Thread(target=pending)
            caller.start()
            time.sleep(0.2)
            server_loop.run(server.stop(0.0), timeout=10)
            caller.join(10)
            assert failures and isinstance(failures[0], UnavailableError)
            with pytest.raises(UnavailableError):
                client.post("/echo", Text())
            server = start()
            assert client.post("/echo", Text(text="back")).text == ["back"]
    finally:
        server_loop.run(server.stop(1.0), timeout=10)
        handler.close()


def test_client_accepts_a_ws_url(address: str) -> None:
    with Client(f"ws://{address}") as client:
        assert client.post("/echo", Text(text="via url")).text == ["via url"]
        assert client.is_ready()


def test_binary_protobuf_frames(ws: ClientConnection) -> None:
    """plait's own client: plait.v1.Request binary frames, answered with plait.v1.Response frames."""
    docs = encode_docs([Text(text="bin")])

    def call(request: pb.Request) -> pb.Response:
        ws.send(request.SerializeToString())
        reply = ws.recv(timeout=10)
        assert isinstance(reply, bytes)
        return pb.Response.FromString(reply)

    reply = call(pb.Request(request_id="b1", endpoint="/echo", docs=docs, parameters=b'{"a": 1}'))
    assert reply.request_id == "b1" and not reply.error
    assert [d.text for d in decode_docs(reply.docs, Text)] == ["bin"]
    assert json.loads(reply.parameters) == {"a": 1}
    # Errors come back in the same kind of frame, with the request id.
    reply = call(pb.Request(request_id="b2", endpoint="/nope", docs=docs))
    assert reply.request_id == "b2" and json.loads(reply.error)["type"] == "EndpointNotFoundError"
    reply = call(pb.Request(request_id="b3", endpoint="/echo", docs=b"\x00garbage"))
    assert json.loads(reply.error)["type"] in ("CodecError", "BadRequestError")
    # A frame the server cannot route answers as JSON (no request id to put on a binary reply).
    ws.send(pb.Request(request_id="b4", docs=docs).SerializeToString())
    frame = recv(ws)
    assert frame["request_id"] == "b4" and "endpoint" in frame["error"]["message"]
    ws.send(pb.Request(request_id="b5", endpoint="/echo", timeout=-1.0).SerializeToString())
    assert "timeout" in recv(ws)["error"]["message"]
    big = pb.Request(request_id="b6", endpoint="/echo", docs=encode_docs([Text(text="x" * LIMIT)]))
    ws.send(big.SerializeToString())
    assert recv(ws)["error"]["type"] == "PayloadTooLargeError"
    # The connection still serves, in both kinds of frame.
    assert call(pb.Request(request_id="b7", endpoint="/echo", docs=docs)).request_id == "b7"
    send(ws, request_id="ok", endpoint="/echo", data=[{"text": "json"}])
    assert recv(ws)["data"][0]["text"] == "json"
