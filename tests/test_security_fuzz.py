"""Fuzzing, bounded in time: the gateway answers bad input with clean errors and keeps serving.

- schemathesis over the gateway's OpenAPI: every operation, positive and negative cases, with and
  without credentials: no 5xx, no hang (each call has a deadline).
- hypothesis over the gRPC request parser and the codec's JSON entry, in process, and over the
  wire: random and mutated bytes as gRPC messages and as HTTP protobuf bodies: only clean errors.
- random and mutated frames on the WebSocket: every frame is answered or ignored, the connection
  stays up, and a request after each one is still served.

(The codec decoder's own fuzzers are in ``test_codec.py``; these add what reaches it from the
network.) Each test prints its figures: ``pytest -s tests/test_security_fuzz.py``.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import grpc
import httpx
import msgspec
import numpy as np
import pytest
import schemathesis
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from security_executors import Item
from security_support import H, Stack, gateway_stack, make_token
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from plait.config import ServerOptions
from plait.docs import DocList, encode_docs, json_to_wire
from plait.errors import PlaitError
from plait.security.limits import count_docs
from plait.serve.service import MalformedMessage, parse_request
from plait.wire import plait_pb2 as pb

pytestmark = pytest.mark.timeout(300)

CALL_TIMEOUT = 10.0
"""A call that takes longer than this is a hang."""
CASES_PER_OPERATION = 25
WIRE_CASES = 150
SETTINGS: dict[str, Any] = {
    "deadline": None,
    "database": None,
    "derandomize": False,
    "phases": [Phase.explicit, Phase.generate],  # no shrinking: a failure is reported as found
    "suppress_health_check": list(HealthCheck),
    "print_blob": False,
}
ENDPOINTS = ["/index", "/search", "/count", "/words", "/nope", "", "/"]


@pytest.fixture(scope="module")
def token(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    return make_token(tmp_path_factory.mktemp("fuzz-token"))


@pytest.fixture(scope="module")
def stack(token: tuple[str, str]) -> Iterator[Stack]:
    options = ServerOptions(
        auth_token_file=token[0], max_request_bytes=256 * 1024, request_timeout=8, grace_period=1
    )
    with gateway_stack(options, uses="security_executors:Catalog") as s:
        yield s


def _report(name: str, counts: Counter[str]) -> None:
    total = sum(v for k, v in counts.items() if not k.startswith("_"))
    print(f"\nFUZZ {name}: {total} cases; " + ", ".join(f"{k}={v}" for k, v in sorted(counts.items())))


def _still_serving(stack: Stack, token: str) -> None:
    with grpc.insecure_channel(f"{H}:{stack.ports['grpc']}") as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    with httpx.Client(trust_env=False, timeout=CALL_TIMEOUT) as http:
        url = f"http://{H}:{stack.ports['http']}/count"
        r = http.post(url, json={"data": [{"text": "a"}]}, headers={"authorization": f"Bearer {token}"})
        assert r.status_code == 200, r.text


# -- schemathesis over the OpenAPI -------------------------------------------------------------


def test_schemathesis_every_operation_positive_and_negative(stack: Stack, token: tuple[str, str]) -> None:
    base = f"http://{H}:{stack.ports['http']}"
    auth = {"authorization": f"Bearer {token[1]}"}
    spec = httpx.get(base + "/openapi.json", headers=auth, timeout=CALL_TIMEOUT).json()
    schema = schemathesis.openapi.from_dict(spec)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {f"{o.method.upper()} {o.path}" for o in operations} >= {
        "GET /health",
        "GET /ready",
        "GET /describe",
        "POST /index",
        "POST /search",
        "POST /words",
    }
    counts: Counter[str] = Counter()
    failures: list[str] = []

    def run(operation: Any, mode: GenerationMode, headers: dict[str, str], examples: int) -> None:
        @settings(max_examples=examples, **SETTINGS)
        @given(case=operation.as_strategy(generation_mode=mode))
        def one(case: Any) -> None:
            started = time.monotonic()
            response = case.call(base_url=base, headers=headers, timeout=CALL_TIMEOUT)
            took = time.monotonic() - started
            counts[f"{mode.value}-{response.status_code}"] += 1
            # A 504 is the client's own deadline (X-Plait-Timeout, as small as 5e-324 s) passing:
            # the server honoured it. Any other 5xx is a server error.
            deadline = {k.lower(): v for k, v in (case.headers or {}).items()}.get("x-plait-timeout")
            own_deadline = response.status_code == 504 and deadline is not None and took < CALL_TIMEOUT
            if (response.status_code >= 500 and not own_deadline) or took > CALL_TIMEOUT * 0.9:
                failures.append(
                    f"{case.method} {case.formatted_path}: {response.status_code} "
                    f"in {took:.1f}s: {response.text[:300]}"
                )

        try:
            one()
        except Unsatisfiable:
            counts["_unsatisfiable"] += 1

    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            run(operation, mode, auth, CASES_PER_OPERATION)
        run(operation, GenerationMode.POSITIVE, {}, 3)  # no credentials
    _report("schemathesis", counts)
    assert not failures, "\n".join(failures[:10])
    assert sum(v for k, v in counts.items() if k.endswith("-401")) > 0  # the unauthenticated ones
    _still_serving(stack, token[1])


# -- the gRPC request parser -------------------------------------------------------------------


def _valid_requests() -> st.SearchStrategy[pb.Request]:
    items = st.builds(
        Item,
        text=st.text(max_size=20),
        count=st.integers(-(2**63), 2**63 - 1),
        score=st.none() | st.floats(),
        tags=st.lists(st.text(max_size=5), max_size=3),
        vector=st.none() | st.just(np.arange(4, dtype=np.float32)),
    )
    parameters = st.sampled_from([b"", b"{}", b'{"limit": 2}', b'{"limit": -1}', b'{"prefix": "x"}', b"[1]"])
    return st.builds(
        lambda docs, endpoint, params, target, rid: pb.Request(
            request_id=rid,
            endpoint=endpoint,
            parameters=params,
            target_executor=target,
            docs=encode_docs(DocList[Item](docs)),
        ),
        st.lists(items, max_size=4),
        st.sampled_from(ENDPOINTS),
        parameters,
        st.sampled_from(["", "echo", "e.*", "(", "nope"]),
        st.text(max_size=8),
    )


@st.composite
def _mutant(draw: st.DrawFn, payload: bytes) -> bytes:
    """``payload`` with up to four bytes changed, and maybe cut short."""
    buffer = bytearray(payload)
    for _ in range(draw(st.integers(0, 4))):
        if not buffer:
            break
        buffer[draw(st.integers(0, len(buffer) - 1))] = draw(st.integers(0, 255))
    cut = draw(st.integers(0, len(buffer)))
    return bytes(buffer[:cut]) if draw(st.booleans()) else bytes(buffer)


def _mutated(data: st.DataObject, payload: bytes) -> bytes:
    return data.draw(_mutant(payload))


_payloads = st.one_of(st.binary(max_size=300), _valid_requests().map(lambda r: r.SerializeToString()))


@settings(max_examples=400, **SETTINGS)
@given(_valid_requests(), st.binary(max_size=200), st.data())
def test_request_parser_returns_a_request_or_says_why(
    request: pb.Request, noise: bytes, data: st.DataObject
) -> None:
    for raw in (noise, request.SerializeToString(), _mutated(data, request.SerializeToString())):
        parsed = parse_request(raw)
        assert isinstance(parsed, pb.Request | MalformedMessage)
        if isinstance(parsed, MalformedMessage):
            assert parsed.error.grpc_code == grpc.StatusCode.INVALID_ARGUMENT
        else:
            assert count_docs(parsed.docs) >= 0


ALLOWED_GRPC = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}


def test_grpc_wire_random_and_mutated_messages(stack: Stack, token: tuple[str, str]) -> None:
    counts: Counter[str] = Counter()
    failures: list[str] = []
    metadata = (("authorization", f"Bearer {token[1]}"),)
    with grpc.insecure_channel(f"{H}:{stack.ports['grpc']}") as channel:
        methods = {
            "Process": channel.unary_unary("/plait.v1.Plait/Process"),
            "Stream": channel.unary_stream("/plait.v1.Plait/Stream"),
            "Describe": channel.unary_unary("/plait.v1.Plait/Describe"),
        }
        exchange = channel.stream_stream("/plait.v1.Plait/ProcessStream")

        @settings(max_examples=WIRE_CASES, **SETTINGS)
        @given(st.sampled_from([*sorted(methods), "ProcessStream"]), _payloads, st.data())
        def one(method: str, payload: bytes, data: st.DataObject) -> None:
            payload = _mutated(data, payload) if data.draw(st.booleans()) else payload
            started = time.monotonic()
            try:
                if method == "ProcessStream":
                    list(exchange(iter([payload, payload]), metadata=metadata, timeout=CALL_TIMEOUT))
                elif method == "Stream":
                    list(methods[method](payload, metadata=metadata, timeout=CALL_TIMEOUT))
                else:
                    methods[method](payload, metadata=metadata, timeout=CALL_TIMEOUT)
                code = grpc.StatusCode.OK
            except grpc.RpcError as e:
                code = e.code()
                details = e.details()
            counts[f"{method}-{code.name}"] += 1
            if code not in ALLOWED_GRPC:
                failures.append(
                    f"{method} {payload[:60]!r}: {code.name} {details[:200]} "
                    f"after {time.monotonic() - started:.1f}s"
                )

        one()
    _report("grpc-wire", counts)
    assert not failures, "\n".join(failures[:10])
    _still_serving(stack, token[1])


def test_regression_malformed_protobuf_is_invalid_argument(stack: Stack, token: tuple[str, str]) -> None:
    """Found by the fuzzers: gRPC's generated handlers answered bytes that are not protobuf with
    UNKNOWN (an unexpected-exception log line each), ProcessStream with a task-group failure."""
    metadata = (("authorization", f"Bearer {token[1]}"),)
    with grpc.insecure_channel(f"{H}:{stack.ports['grpc']}") as channel:
        calls = {
            "Process": lambda b: channel.unary_unary("/plait.v1.Plait/Process")(
                b, metadata=metadata, timeout=5
            ),
            "Describe": lambda b: channel.unary_unary("/plait.v1.Plait/Describe")(
                b, metadata=metadata, timeout=5
            ),
            "Stream": lambda b: list(
                channel.unary_stream("/plait.v1.Plait/Stream")(b, metadata=metadata, timeout=5)
            ),
            "ProcessStream": lambda b: list(
                channel.stream_stream("/plait.v1.Plait/ProcessStream")(
                    iter([b]), metadata=metadata, timeout=5
                )
            ),
        }
        for name, call in calls.items():
            with pytest.raises(grpc.RpcError) as info:
                call(b"\xff\xff\xff")
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, name
            assert "not a valid plait.v1 message" in (info.value.details() or ""), name


def test_http_protobuf_bodies_random_and_mutated(stack: Stack, token: tuple[str, str]) -> None:
    counts: Counter[str] = Counter()
    failures: list[str] = []
    headers = {"authorization": f"Bearer {token[1]}", "content-type": "application/x-protobuf"}
    with httpx.Client(
        base_url=f"http://{H}:{stack.ports['http']}", trust_env=False, timeout=CALL_TIMEOUT
    ) as http:

        @settings(max_examples=WIRE_CASES, **SETTINGS)
        @given(st.sampled_from(ENDPOINTS[:4]), _payloads, st.data())
        def one(endpoint: str, payload: bytes, data: st.DataObject) -> None:
            payload = _mutated(data, payload) if data.draw(st.booleans()) else payload
            r = http.post(endpoint, content=payload, headers=headers)
            counts[str(r.status_code)] += 1
            if r.status_code >= 500:
                failures.append(f"POST {endpoint} {payload[:60]!r}: {r.status_code} {r.text[:200]}")

        one()
    _report("http-protobuf", counts)
    assert not failures, "\n".join(failures[:10])


_JSON_BODY = json.dumps(
    {"data": [{"text": "a b", "tags": ["x"], "vector": [1.0, 2.0]}], "parameters": {"limit": 2}}
).encode()


def test_http_json_bodies_random_and_mutated(stack: Stack, token: tuple[str, str]) -> None:
    counts: Counter[str] = Counter()
    failures: list[str] = []
    headers = {"authorization": f"Bearer {token[1]}", "content-type": "application/json"}
    with httpx.Client(
        base_url=f"http://{H}:{stack.ports['http']}", trust_env=False, timeout=CALL_TIMEOUT
    ) as http:

        @settings(max_examples=WIRE_CASES, **SETTINGS)
        @given(st.sampled_from(ENDPOINTS[:4]), st.binary(max_size=200), st.data())
        def one(endpoint: str, noise: bytes, data: st.DataObject) -> None:
            body = _mutated(data, _JSON_BODY) if data.draw(st.booleans()) else noise
            r = http.post(endpoint, content=body, headers=headers)
            counts[str(r.status_code)] += 1
            if r.status_code >= 500:
                failures.append(f"POST {endpoint} {body[:80]!r}: {r.status_code} {r.text[:200]}")

        one()
    _report("http-json", counts)
    assert not failures, "\n".join(failures[:10])


def test_regression_invalid_utf8_in_a_json_string_is_a_bad_request(
    stack: Stack, token: tuple[str, str]
) -> None:
    """Found by the fuzzers: msgspec raises UnicodeDecodeError (not a DecodeError) for bad UTF-8
    inside a JSON string, which the HTTP server answered with 500."""
    headers = {"authorization": f"Bearer {token[1]}", "content-type": "application/json"}
    with httpx.Client(trust_env=False, timeout=CALL_TIMEOUT) as http:
        r = http.post(
            f"http://{H}:{stack.ports['http']}/index",
            content=b'{"data": [{"text": "\xfb"}]}',
            headers=headers,
        )
    assert r.status_code == 400 and "not UTF-8" in r.json()["error"]["message"]
    with pytest.raises(PlaitError, match="not UTF-8"):
        json_to_wire(b'[{"text": "\xc3"}]')


# -- the codec, as the network reaches it ------------------------------------------------------


_JSON_DOCS = json.dumps([{"text": "a", "tags": ["x"], "vector": [1.0, 2.0]}, {"count": 3}]).encode()


@settings(max_examples=400, **SETTINGS)
@given(st.binary(max_size=200) | st.text(max_size=100).map(str.encode), st.data())
def test_json_entry_of_the_codec_only_raises_plait_errors(noise: bytes, data: st.DataObject) -> None:
    for raw in (noise, _mutated(data, _JSON_DOCS)):
        try:
            wire = json_to_wire(raw)
        except PlaitError:
            continue
        assert count_docs(wire) == len(msgspec.json.decode(raw))


# -- WebSocket frames --------------------------------------------------------------------------


_FRAME = json.dumps(
    {
        "request_id": "seed",
        "endpoint": "/search",
        "data": [{"text": "a b"}],
        "parameters": {"limit": 2},
        "stream": False,
        "timeout": 5,
    }
)
_frames = st.one_of(
    st.text(max_size=200),
    st.binary(max_size=200),
    st.builds(
        lambda d: json.dumps(d),
        st.dictionaries(
            st.sampled_from(
                [
                    "request_id",
                    "endpoint",
                    "data",
                    "parameters",
                    "stream",
                    "timeout",
                    "cancel",
                    "target_executor",
                    "header",
                    "x",
                ]
            ),
            st.none()
            | st.booleans()
            | st.integers()
            | st.floats(allow_nan=False)
            | st.text(max_size=10)
            | st.lists(st.dictionaries(st.text(max_size=5), st.integers() | st.text(max_size=5)), max_size=3),
            max_size=8,
        ),
    ),
)


async def _until(ws: ClientConnection, request_id: str) -> dict[str, Any]:
    while True:
        frame = json.loads(await ws.recv())
        if frame.get("request_id") == request_id:
            return frame


def test_websocket_random_and_mutated_frames(stack: Stack, token: tuple[str, str]) -> None:
    counts: Counter[str] = Counter()
    failures: list[str] = []
    url = f"ws://{H}:{stack.ports['websocket']}/"
    headers = {"authorization": f"Bearer {token[1]}"}
    probe = json.dumps({"request_id": "probe", "endpoint": "/count", "data": [{"text": "p"}]})

    async def session(frames: list[str | bytes]) -> None:
        async with connect(url, additional_headers=headers, proxy=None, max_size=2**22) as ws:
            for frame in frames:
                await ws.send(frame)
                try:
                    await ws.send(probe)
                    reply = await asyncio.wait_for(_until(ws, "probe"), CALL_TIMEOUT)
                except Exception as e:  # a closed connection or a hang
                    failures.append(f"after {frame[:80]!r}: {type(e).__name__}: {e} (close {ws.close_code})")
                    return
                counts["answered" if "error" not in reply else "probe-failed"] += 1

    @settings(max_examples=WIRE_CASES, **SETTINGS)
    @given(
        st.lists(
            _frames | _mutant(_FRAME.encode()).map(lambda b: b.decode("utf-8", "replace")),
            min_size=1,
            max_size=4,
        )
    )
    def one(frames: list[str | bytes]) -> None:
        counts["_sessions"] += 1
        asyncio.run(session(frames))

    one()
    _report("websocket-frames", counts)
    assert not failures, "\n".join(failures[:10])
    assert counts["probe-failed"] == 0


def test_garbage_below_the_protocols_is_dropped(stack: Stack, token: tuple[str, str]) -> None:
    """Random bytes where an HTTP request or a WebSocket frame header belongs: the connection is
    refused or closed, and the server keeps serving."""
    rng = np.random.default_rng(7)
    for port in (stack.ports["http"], stack.ports["websocket"], stack.ports["grpc"]):
        for _ in range(10):
            with socket.create_connection((H, port), timeout=CALL_TIMEOUT) as sock:
                sock.sendall(rng.bytes(int(rng.integers(1, 2000))))
                try:
                    while sock.recv(4096):
                        pass
                except (TimeoutError, ConnectionResetError):
                    pass

    async def bad_framing() -> int | None:
        async with connect(
            f"ws://{H}:{stack.ports['websocket']}/",
            additional_headers={"authorization": f"Bearer {token[1]}"},
            proxy=None,
        ) as ws:
            ws.transport.write(rng.bytes(64))  # not a WebSocket frame
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(ws.recv(), CALL_TIMEOUT)
            return ws.close_code

    assert asyncio.run(bad_framing()) in (1002, 1006, 1007, 1009)
    _still_serving(stack, token[1])
