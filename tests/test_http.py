"""The HTTP server as a curl user sees it: raw requests, status codes, bodies, SSE, OpenAPI."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from executors import Text

from plait import Client
from plait.client.loop_thread import LoopThread
from plait.config import ExecutorConfig, ServerOptions
from plait.docs import decode_docs, encode_docs
from plait.errors import EndpointNotFoundError
from plait.executor.loader import load_executor
from plait.gateway.http_server import HttpServer
from plait.gateway.protocols import ProtocolServer
from plait.orchestrate.process import free_port
from plait.serve import Processor, RequestHandler
from plait.wire import plait_pb2 as pb

LIMIT = 64 * 1024


class Hanging:
    """A processor whose ``/hang`` waits until cancelled, and which raises a bug on ``/bug``."""

    name = "hanging"

    def __init__(self) -> None:
        self.started = threading.Event()
        self.cancelled = threading.Event()

    async def process(self, request: pb.Request, *, timeout: float | None = None) -> pb.Response:
        if request.endpoint == "/bug":
            raise RuntimeError("secret internals")
        if request.endpoint != "/hang":
            raise EndpointNotFoundError(f"no endpoint {request.endpoint}")
        self.started.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            self.cancelled.set()
            raise
        return pb.Response(request_id=request.request_id)

    async def stream(
        self, request: pb.Request, *, timeout: float | None = None
    ) -> AsyncIterator[pb.Response]:
        yield await self.process(request, timeout=timeout)

    def describe(self) -> pb.DescribeResponse:
        return pb.DescribeResponse(name=self.name, kind="executor", version="0")

    def ready(self) -> bool:
        return False


@pytest.fixture(scope="module")
def server_loop() -> Iterator[LoopThread]:
    loop = LoopThread("plait-test-http")
    yield loop
    loop.stop()


def serve(loop: LoopThread, server: ProtocolServer) -> Iterator[str]:
    loop.run(server.start(), timeout=30)
    try:
        yield f"http://127.0.0.1:{server.port}"
    finally:
        loop.run(server.stop(1.0), timeout=30)


@pytest.fixture(scope="module")
def base(server_loop: LoopThread) -> Iterator[str]:
    handler = RequestHandler(load_executor(ExecutorConfig(uses="executors:Echo", name="echo")), name="echo")
    options = ServerOptions(max_request_bytes=LIMIT, cors=True, title="Echo service", description="echoes")
    yield from serve(server_loop, HttpServer(handler, "127.0.0.1", free_port(), options))
    handler.close()


@pytest.fixture(scope="module")
def hanging(server_loop: LoopThread) -> Iterator[tuple[str, Hanging]]:
    processor = Hanging()
    assert isinstance(processor, Processor)
    for url in serve(server_loop, HttpServer(processor, "127.0.0.1", free_port(), ServerOptions())):
        yield url, processor


@pytest.fixture
def http(base: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=base, timeout=10, trust_env=False) as client:
        yield client


def error_of(response: httpx.Response) -> dict[str, Any]:
    assert response.headers["content-type"] == "application/json"
    error: dict[str, Any] = response.json()["error"]
    return error


def test_echo_and_request_ids(http: httpx.Client) -> None:
    r = http.post("/echo", json={"data": [{"text": "hi"}, {"text": "yo"}], "parameters": {"a": 1}})
    assert r.status_code == 200
    body = r.json()
    assert [d["text"] for d in body["data"]] == ["hi", "yo"] and body["parameters"] == {"a": 1}
    assert body["request_id"]
    # One document instead of a list; the id from the X-Request-ID header.
    r = http.post("/echo", json={"data": {"text": "one"}}, headers={"X-Request-ID": "abc"})
    assert r.json()["request_id"] == "abc" and r.json()["data"][0]["text"] == "one"
    # Jina's body: the header object carries the request id.
    r = http.post("/echo", json={"data": [{"text": "j"}], "header": {"request_id": "jina-1"}})
    assert r.json()["request_id"] == "jina-1"
    # No body at all: no documents.
    assert http.post("/echo").json()["data"] == []


def test_malformed_json_names_the_position(http: httpx.Client) -> None:
    r = http.post(
        "/echo", content=b'{"data": [{"text": "a"},, ]}', headers={"content-type": "application/json"}
    )
    assert r.status_code == 400
    assert "byte 24" in error_of(r)["message"]
    r = http.post("/echo", content=b'{"data": [', headers={"content-type": "application/json"})
    assert r.status_code == 400 and "end of input" in error_of(r)["message"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"data": "text"}, "$.data"),
        ({"data": [1, 2]}, "$.data[0]"),
        ({"data": [], "parameters": [1]}, "$.parameters"),
        ([{"text": "a"}], "$"),
    ],
)
def test_body_of_the_wrong_shape_names_the_field(http: httpx.Client, body: object, field: str) -> None:
    r = http.post("/echo", json=body)
    assert r.status_code == 400
    error = error_of(r)
    assert error["type"] == "BadRequestError" and error["field"] == field
    assert field in error["message"]


def test_wrong_schema_is_422_naming_the_field(http: httpx.Client) -> None:
    r = http.post("/echo", json={"data": [{"text": 5}]})
    assert r.status_code == 422
    error = error_of(r)
    assert error["type"] == "SchemaError" and "docs[0].text" in error["message"]
    assert error["errors"][0]["loc"] == "docs[0].text"


def test_oversized_bodies_are_413_and_the_server_keeps_serving(http: httpx.Client) -> None:
    big = b'{"data": [{"text": "' + b"x" * (LIMIT + 10) + b'"}]}'
    r = http.post("/echo", content=big, headers={"content-type": "application/json"})
    assert r.status_code == 413 and error_of(r)["type"] == "PayloadTooLargeError"

    def chunked() -> Iterator[bytes]:  # no Content-Length: the limit is enforced while reading
        for _ in range(LIMIT // 1000 + 5):
            yield b" " * 1000

    r = http.post("/echo", content=chunked())
    assert r.status_code == 413 and "max_request_bytes" in error_of(r)["message"]
    assert http.post("/echo", json={"data": [{"text": "ok"}]}).status_code == 200


def test_executor_failure_is_500_naming_the_executor(http: httpx.Client) -> None:
    r = http.post("/fail", json={"data": [{}]})
    assert r.status_code == 500
    error = error_of(r)
    assert error["type"] == "ExecutorError" and error["executor"] == "echo" and error["endpoint"] == "/fail"
    assert "boom" in error["message"] and "ValueError" in error["traceback"]
    assert http.post("/echo", json={"data": [{}]}).status_code == 200


def test_unknown_endpoint_is_404(http: httpx.Client) -> None:
    r = http.post("/nope", json={"data": []})
    assert r.status_code == 404 and error_of(r)["type"] == "EndpointNotFoundError"
    r = http.get("/nope")
    assert r.status_code == 404 and error_of(r)["type"] == "EndpointNotFoundError"


def test_openapi_shows_the_documents_fields(http: httpx.Client) -> None:
    spec = http.get("/openapi.json").json()
    assert spec["info"]["title"] == "Echo service" and spec["info"]["description"] == "echoes"
    schemas = spec["components"]["schemas"]

    def resolve(node: dict[str, Any]) -> dict[str, Any]:
        ref = node.get("$ref")
        return resolve(schemas[ref.rsplit("/", 1)[1]]) if ref else node

    def request_schema(path: str) -> dict[str, Any]:
        schema: dict[str, Any] = spec["paths"][path]["post"]["requestBody"]["content"]["application/json"]
        return schema["schema"]

    post = spec["paths"]["/echo"]["post"]
    request = request_schema("/echo")
    doc_in = resolve(request["properties"]["data"]["anyOf"][0]["items"])
    assert doc_in["properties"]["text"]["type"] == "string"
    response = post["responses"]["200"]["content"]["application/json"]["schema"]
    doc_out = resolve(response["properties"]["data"]["items"])
    assert "text" in doc_out["properties"]
    assert "k" in resolve(request_schema("/topk")["properties"]["parameters"])["properties"]
    assert "get" in spec["paths"]["/tokens"]  # streaming endpoints also answer GET
    assert "/health" in spec["paths"]
    docs = http.get("/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()


def test_probes(http: httpx.Client) -> None:
    assert http.get("/health").json() == {"status": "ok"}
    assert http.get("/ready").json() == {"ready": True}
    status = http.get("/status").json()
    assert status["name"] == "echo" and "/echo" in status["endpoints"]
    described = http.get("/describe").json()
    assert described["executor_class"] == "Echo"
    echo = described["endpoints"]["/echo"]
    assert "text" in echo["input_schema"]["properties"] and echo["streaming"] is False
    assert described["endpoints"]["/tokens"]["streaming"] is True


def test_cors(http: httpx.Client) -> None:
    r = http.post("/echo", json={"data": []}, headers={"Origin": "https://example.com"})
    assert r.headers["access-control-allow-origin"] == "*"
    preflight = http.options(
        "/echo", headers={"Origin": "https://example.com", "Access-Control-Request-Method": "POST"}
    )
    assert preflight.status_code == 200 and "POST" in preflight.headers["access-control-allow-methods"]


def sse(text: str) -> list[tuple[str, str]]:
    events = []
    for block in text.strip().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines())
        events.append((fields["event"], fields["data"]))
    return events


def test_streaming_endpoint_answers_server_sent_events(http: httpx.Client) -> None:
    r = http.post("/tokens", json={"data": {"text": "a"}, "parameters": {"n": 3}})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = sse(r.text)
    assert [e for e, _ in events] == ["update", "update", "update", "end"]
    assert '"text":"a-1"' in events[1][1]
    # GET: the query string is the input document.
    events = sse(http.get("/tokens", params={"text": "q"}).text)
    assert [e for e, _ in events] == ["update"] * 5 + ["end"] and '"q-4"' in events[4][1]
    # A failure before the first document still gets a status code.
    r = http.post("/tokens", json={"data": {"text": 5}})
    assert r.status_code == 422 and error_of(r)["type"] == "SchemaError"


def test_timeout_header_gives_504(http: httpx.Client) -> None:
    r = http.post(
        "/sleep", json={"data": [{}], "parameters": {"seconds": 5}}, headers={"X-Plait-Timeout": "0.2"}
    )
    assert r.status_code == 504 and error_of(r)["type"] == "DeadlineExceededError"
    r = http.post("/echo", json={}, headers={"X-Plait-Timeout": "soon"})
    assert r.status_code == 400 and error_of(r)["field"] == "X-Plait-Timeout"


def test_gateway_bugs_are_500_without_internals(hanging: tuple[str, Hanging]) -> None:
    url, _ = hanging
    r = httpx.post(f"{url}/bug", json={}, trust_env=False)
    assert r.status_code == 500
    text = r.text
    assert "secret" not in text and "Traceback" not in text and "see its log" in text
    assert httpx.get(f"{url}/ready", trust_env=False).status_code == 503  # processor.ready() is False
    assert httpx.get(f"{url}/health", trust_env=False).status_code == 200


def test_client_disconnect_cancels_the_work(hanging: tuple[str, Hanging]) -> None:
    url, processor = hanging
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{url}/hang", json={}, timeout=0.3, trust_env=False)
    assert processor.started.is_set()
    assert processor.cancelled.wait(5), "the processor's await was not cancelled"


def test_stop_lets_running_requests_answer(server_loop: LoopThread) -> None:
    handler = RequestHandler(load_executor(ExecutorConfig(uses="executors:Echo", name="echo")), name="echo")
    server = HttpServer(handler, "127.0.0.1", free_port(), ServerOptions())
    server_loop.run(server.start(), timeout=30)
    try:
        result: list[httpx.Response] = []
        url = f"http://127.0.0.1:{server.port}/sleep"
        body = {"data": [{"text": "z"}], "parameters": {"seconds": 0.3}}
        caller = threading.Thread(target=lambda: result.append(httpx.post(url, json=body, trust_env=False)))
        caller.start()
        time.sleep(0.1)
        server_loop.run(server.stop(5.0), timeout=10)
        caller.join(10)
        assert result and result[0].status_code == 200 and result[0].json()["data"][0]["text"] == "z"
    finally:
        handler.close()


def test_client_accepts_an_http_url(base: str) -> None:
    with Client(base) as client:
        assert client.protocol == "http"
        assert client.post("/echo", Text(text="via url")).text == ["via url"]


def test_binary_protobuf_bodies(http: httpx.Client) -> None:
    """plait's own client: a plait.v1.Request in, a plait.v1.Response out; errors stay JSON."""
    binary = {"content-type": "application/x-protobuf"}
    docs = encode_docs([Text(text="raw")])
    request = pb.Request(request_id="bin-1", parameters=b'{"k": 2}', docs=docs)
    r = http.post("/echo", content=request.SerializeToString(), headers=binary)
    assert r.status_code == 200 and r.headers["content-type"] == "application/x-protobuf"
    reply = pb.Response.FromString(r.content)
    assert reply.request_id == "bin-1" and json.loads(reply.parameters) == {"k": 2}
    assert [d.text for d in decode_docs(reply.docs, Text)] == ["raw"]
    # No request id: the server makes one.
    r = http.post("/echo", content=pb.Request(docs=docs).SerializeToString(), headers=binary)
    assert pb.Response.FromString(r.content).request_id
    # Not a protobuf message: 400 naming the expected type.
    r = http.post("/echo", content=b"\xff\xff\xff not protobuf", headers=binary)
    assert r.status_code == 400 and "plait.v1.Request" in error_of(r)["message"]
    # Docs that are not plait codec bytes: 400 from the executor, as JSON.
    r = http.post("/echo", content=pb.Request(docs=b"\x00garbage").SerializeToString(), headers=binary)
    assert r.status_code == 400 and error_of(r)["type"] in ("CodecError", "BadRequestError")
    r = http.post("/nope", content=request.SerializeToString(), headers=binary)
    assert r.status_code == 404 and error_of(r)["type"] == "EndpointNotFoundError"
    # Over the size limit: 413, as for JSON.
    big = pb.Request(docs=encode_docs([Text(text="x" * LIMIT)])).SerializeToString()
    assert http.post("/echo", content=big, headers=binary).status_code == 413
