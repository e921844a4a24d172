"""One suite every protocol passes: the same client calls, the same results, the same errors.

Each protocol's server runs in-process (on a background event-loop thread) for a
``RequestHandler`` over ``executors:Echo`` named ``echo``, and is driven with the sync ``Client``
and the ``AsyncClient`` exactly as a user would, changing only ``protocol=``.

To run this suite against something else that serves Echo as ``echo`` (a Flow's gateway, say),
import it into another test module and override the ``served`` fixture there::

    from test_conformance import *  # noqa: F403  (the tests and the `protocol` fixture)

    @pytest.fixture(scope="module")
    def served(protocol: str) -> Iterator[tuple[str, int]]:
        with Flow(protocol=protocol, ...).add(name="echo", uses="executors:Echo") as flow:
            yield "127.0.0.1", flow.port

The server must accept at most :data:`LIMIT` bytes per request (``max_request_bytes``).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator

import numpy as np
import pytest
from executors import Emb, Text, Token

from plait import AsyncClient, Client, DocList, Document
from plait.client import Response
from plait.client.loop_thread import LoopThread
from plait.config import ExecutorConfig, ServerOptions
from plait.errors import (
    ClientClosedError,
    DeadlineExceededError,
    EndpointNotFoundError,
    ExecutorError,
    PayloadTooLargeError,
    SchemaError,
    UnavailableError,
)
from plait.executor.loader import load_executor
from plait.gateway.protocols import server_class
from plait.orchestrate.process import free_port
from plait.serve import RequestHandler

PROTOCOLS = ["grpc", "http", "websocket"]
LIMIT = 1024 * 1024
"""``max_request_bytes`` of the servers under test."""


class NumberText(Document):
    """A document whose ``text`` is a number: wrong for Echo's ``Text``."""

    text: int = 0


@pytest.fixture(scope="module")
def server_loop() -> Iterator[LoopThread]:
    loop = LoopThread("plait-test-servers")
    yield loop
    loop.stop()


@pytest.fixture(scope="module", params=PROTOCOLS)
def protocol(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def served(protocol: str, server_loop: LoopThread) -> Iterator[tuple[str, int]]:
    """``(host, port)`` of a server speaking ``protocol`` for Echo named ``echo``."""
    handler = RequestHandler(load_executor(ExecutorConfig(uses="executors:Echo", name="echo")), name="echo")
    server = server_class(protocol)(handler, "127.0.0.1", free_port(), ServerOptions(max_request_bytes=LIMIT))
    server_loop.run(server.start(), timeout=30)
    try:
        yield "127.0.0.1", server.port
    finally:
        server_loop.run(server.stop(1.0), timeout=30)
        handler.close()


@pytest.fixture
def client(served: tuple[str, int], protocol: str) -> Iterator[Client]:
    host, port = served
    with Client(host, port, protocol=protocol) as c:
        yield c


def test_echo(client: Client) -> None:
    docs = DocList[Text]([Text(text="hi"), Text(text="there")])
    out = client.post("/echo", docs)
    assert out.doc_type is Text
    assert out.text == ["hi", "there"] and [d.id for d in out] == [d.id for d in docs]
    single = client.post("echo", Text(text="one"), return_type=DocList[Text])
    assert single.text == ["one"]
    assert len(client.post("/echo", None)) == 0


def test_1050_docs_come_back_in_order(client: Client) -> None:
    docs = DocList[Text]([Text(text=str(i)) for i in range(1050)])
    out = client.post("/echo", docs, request_size=100)
    assert out.text == [str(i) for i in range(1050)]
    assert [d.id for d in out] == [d.id for d in docs]


def test_parameters(client: Client) -> None:
    assert client.post("/greet", Text(text="bob"), parameters={"suffix": "!"}).text == ["hello bob!"]
    assert client.post("/topk", Text(), parameters={"k": 7}).text == ["k=7"]


def test_dict_results_arrive_in_parameters(client: Client) -> None:
    done: list[Response] = []
    client.post("/count", [Text()] * 5, request_size=2, on_done=done.append)
    counts = sorted(r.parameters["__results__"]["echo"]["n"] for r in done)
    assert counts == [1, 2, 2]


def test_executor_error_names_executor_and_endpoint(client: Client) -> None:
    with pytest.raises(ExecutorError, match="boom") as info:
        client.post("/fail", Text())
    assert info.value.details["executor"] == "echo"
    assert info.value.details["endpoint"] == "/fail"
    assert "ValueError" in info.value.details["traceback"]
    assert client.post("/echo", Text(text="still here")).text == ["still here"]


def test_unknown_endpoint(client: Client) -> None:
    with pytest.raises(EndpointNotFoundError, match="/nope"):
        client.post("/nope", Text())


def test_schema_error_names_the_field(client: Client) -> None:
    with pytest.raises(SchemaError, match=r"docs\[1\]\.text"):
        client.post("/echo", [NumberText(text=1), NumberText(text=2)], return_type=DocList[Text])


def test_payload_too_large(client: Client) -> None:
    with pytest.raises(PayloadTooLargeError):
        client.post("/echo", Text(text="x" * (LIMIT + LIMIT // 4)))
    assert client.post("/echo", Text(text="small")).text == ["small"]


def test_stream_doc(client: Client) -> None:
    tokens = list(client.stream_doc("/tokens", Text(text="a"), parameters={"n": 4}, return_type=Token))
    assert [t.text for t in tokens] == ["a-0", "a-1", "a-2", "a-3"]
    assert [t.index for t in tokens] == [0, 1, 2, 3]
    # Leaving a stream early does not break the client.
    stream = client.stream_doc("/tokens", Text(text="b"), parameters={"n": 50}, return_type=Token)
    assert next(iter(stream)).text == "b-0"
    del stream
    assert client.post("/echo", Text(text="after")).text == ["after"]


@pytest.fixture(scope="module")
def served_name() -> str:
    """The name ``describe()`` reports: the executor's, or "gateway" behind a Flow."""
    return "echo"


def test_describe(client: Client, served_name: str) -> None:
    description = client.describe()
    assert description.name == served_name and description.version
    echo = description.endpoints["/echo"]
    assert "text" in echo.input_schema["properties"] and "text" in echo.output_schema["properties"]
    assert not echo.streaming
    assert description.endpoints["/tokens"].streaming
    assert description.endpoints["/topk"].parameters_schema is not None


def test_health(client: Client, protocol: str) -> None:
    assert client.health() == "SERVING" and client.is_ready()
    with Client("127.0.0.1", free_port(), protocol=protocol) as nobody:
        assert nobody.health(timeout=2) == "UNREACHABLE" and not nobody.is_ready(timeout=2)
        with pytest.raises(UnavailableError):
            nobody.post("/echo", Text(), timeout=5)


def test_deadline(client: Client) -> None:
    start = time.perf_counter()
    with pytest.raises(DeadlineExceededError):
        client.post("/sleep", Text(), parameters={"seconds": 3}, timeout=0.3)
    assert time.perf_counter() - start < 2.0
    assert client.post("/echo", Text(text="on time"), timeout=5).text == ["on time"]


def test_closed_client_raises(served: tuple[str, int], protocol: str) -> None:
    client = Client(*served, protocol=protocol)
    assert client.post("/echo", Text(text="x")).text == ["x"]
    client.close()
    with pytest.raises(ClientClosedError):
        client.post("/echo", Text())
    with pytest.raises(ClientClosedError):
        client.health()


def test_tensors_round_trip(client: Client) -> None:
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((8, 512)).astype(np.float32)
    docs = DocList[Emb]([Emb(text=str(i), embedding=v) for i, v in enumerate(vectors)])
    out = client.post("/embed", docs, request_size=3)
    assert out.text == [str(i) for i in range(8)]
    for doc, vector in zip(out, vectors, strict=True):
        assert doc.embedding is not None and doc.embedding.shape == (512,)
        np.testing.assert_array_equal(doc.embedding, vector * 2)


def test_threads_share_one_client(client: Client) -> None:
    failures: list[BaseException] = []

    def work(n: int) -> None:
        try:
            for i in range(5):
                texts = [f"{n}-{i}-{j}" for j in range(7)]
                out = client.post("/echo", [Text(text=t) for t in texts], request_size=3)
                assert out.text == texts
        except BaseException as e:
            failures.append(e)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not failures, failures[0]


def test_async_client(served: tuple[str, int], protocol: str) -> None:
    async def main() -> None:
        async with AsyncClient(*served, protocol=protocol) as client:
            outs = await asyncio.gather(*(client.post("/echo", Text(text=str(i))) for i in range(20)))
            assert [o.text for o in outs] == [[str(i)] for i in range(20)]
            tokens = [t.text async for t in client.stream_doc("/tokens", Text(text="z"), parameters={"n": 3})]
            assert tokens == ["z-0", "z-1", "z-2"]
            with pytest.raises(ExecutorError):
                await client.post("/fail", Text())
            assert await client.is_ready()
            assert "/echo" in (await client.describe()).endpoints
        with pytest.raises(ClientClosedError):
            await client.post("/echo", Text())

    asyncio.run(main())
