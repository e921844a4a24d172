"""The executor gRPC server, in-process on loopback: errors, limits, streaming, describe, drain."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Coroutine
from typing import Any

import grpc
import numpy as np
import pytest
from executors import Emb, Text, Token

from plait import AnyDoc, AsyncClient, DocList
from plait.client import Response
from plait.config import ExecutorConfig, ReplicaConfig
from plait.docs import encode_docs
from plait.errors import (
    EndpointNotFoundError,
    ExecutorError,
    PayloadTooLargeError,
    SchemaError,
    UnavailableError,
)
from plait.orchestrate.process import free_port
from plait.serve import ExecutorServer
from plait.wire import plait_pb2 as pb


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    return asyncio.run(asyncio.wait_for(coro, timeout=60))


@contextlib.asynccontextmanager
async def serving(**overrides: Any) -> AsyncIterator[tuple[ExecutorServer, AsyncClient]]:
    port = free_port()
    cfg = ReplicaConfig(executor=ExecutorConfig(uses="executors:Echo", name="echo"), port=port, **overrides)
    server = ExecutorServer(cfg)
    await server.start()
    client = AsyncClient("127.0.0.1", port)
    try:
        yield server, client
    finally:
        await client.close()
        await server.stop()


def test_executor_exception_names_executor_endpoint_and_traceback_then_keeps_serving() -> None:
    async def main() -> None:
        async with serving() as (_, client):
            with pytest.raises(ExecutorError) as info:
                await client.post("/fail", Text(text="x"))
            err = info.value
            assert err.details["executor"] == "echo"
            assert err.details["endpoint"] == "/fail"
            assert "boom: this executor failed on purpose" in str(err)
            assert "ValueError" in err.details["traceback"] and "executors.py" in err.details["traceback"]
            out = await client.post("/echo", Text(text="still here"))
            assert out.text == ["still here"]

    run(main())


def test_unknown_endpoint_lists_the_known_ones() -> None:
    async def main() -> None:
        async with serving() as (_, client):
            with pytest.raises(EndpointNotFoundError, match=r"no endpoint '/nope'.*/echo"):
                await client.post("/nope", Text(text="x"))

    run(main())


def test_wrong_schema_names_the_field_path() -> None:
    async def main() -> None:
        async with serving() as (_, client):
            bad = DocList[AnyDoc]([AnyDoc(text="ok"), AnyDoc(text=123)])
            with pytest.raises(SchemaError, match=r"docs\[1\]\.text"):
                await client.post("/echo", bad)
            with pytest.raises(SchemaError, match="k"):
                await client.post("/topk", Text(), parameters={"k": "not a number"})
            out = await client.post("/topk", Text(), parameters={"k": 7})
            assert out.text == ["k=7"]

    run(main())


def test_bad_return_value_is_an_executor_error() -> None:
    async def main() -> None:
        async with serving() as (_, client):
            with pytest.raises(ExecutorError, match="returned int"):
                await client.post("/bad_return", Text())

    run(main())


def test_oversized_message_is_refused_clearly_and_server_keeps_serving() -> None:
    async def main() -> None:
        async with serving(max_message_size=256 * 1024) as (_, client):
            big = Text(text="x" * (512 * 1024))
            with pytest.raises(PayloadTooLargeError, match="max_message_size"):
                await client.post("/echo", big)
            assert (await client.post("/echo", Text(text="small"))).text == ["small"]

    run(main())


def test_parameters_dict_results_and_target_executor() -> None:
    async def main() -> None:
        async with serving() as (_, client):
            out = await client.post("/greet", Text(text="bob"), parameters={"suffix": "!"})
            assert out.text == ["hello bob!"]
            responses: list[Response] = []
            await client.post("/count", [Text(), Text()], on_done=responses.append)
            assert responses[0].parameters["__results__"]["echo"] == {"n": 2}
            untouched = await client.post("/greet", Text(text="bob"), target_executor="^other$")
            assert untouched.text == ["bob"]

    run(main())


def test_tensors_round_trip_through_an_endpoint() -> None:
    async def main() -> None:
        async with serving() as (_, client):
            docs = DocList[Emb]([Emb(embedding=np.arange(512, dtype=np.float32) + i) for i in range(3)])
            out = await client.post("/embed", docs)
            assert out.embedding.shape == (3, 512)
            np.testing.assert_array_equal(out.embedding, docs.embedding * 2)
            assert [d.id for d in out] == [d.id for d in docs]

    run(main())


def test_streaming_endpoints() -> None:
    async def main() -> None:
        async with serving() as (_, client):
            got = [t async for t in client.stream_doc("/tokens", Text(text="a"), {"n": 4}, return_type=Token)]
            assert [t.text for t in got] == ["a-0", "a-1", "a-2", "a-3"]
            got = [t async for t in client.stream_doc("/sync_tokens", Text(text="s"), return_type=Token)]
            assert [t.index for t in got] == [0, 1, 2]
            # A unary call on a streaming endpoint collects what it yields.
            collected = await client.post("/tokens", Text(text="u"), {"n": 2}, return_type=DocList[Token])
            assert collected.text == ["u-0", "u-1"]
            # Per-document endpoints are called once per doc.
            rev = await client.post("/per_doc", [Text(text="abc"), Text(text="xy")])
            assert rev.text == ["cba", "yx"]

    run(main())


def test_describe_reports_endpoints_and_schemas() -> None:
    async def main() -> None:
        async with serving() as (_, client):
            info = await client.describe()
            assert info.name == "echo" and info.kind == "executor" and info.executor_class == "Echo"
            assert "text" in info.endpoints["/echo"].input_schema["properties"]
            assert info.endpoints["/tokens"].streaming
            assert info.endpoints["/tokens"].output_schema["title"] == "Token"
            assert info.endpoints["/topk"].parameters_schema is not None
            assert await client.health() == "SERVING"

    run(main())


def test_process_stream_pipelines_requests_and_reports_errors_per_request() -> None:
    async def main() -> None:
        async with serving() as (server, _):
            port = server.config.port
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                method = channel.stream_stream(
                    "/plait.v1.Plait/ProcessStream",
                    request_serializer=pb.Request.SerializeToString,
                    response_deserializer=pb.Response.FromString,
                )

                async def requests() -> AsyncIterator[pb.Request]:
                    for i in range(20):
                        endpoint = "/fail" if i == 7 else "/echo"
                        yield pb.Request(
                            request_id=str(i), endpoint=endpoint, docs=encode_docs([Text(text=str(i))])
                        )

                replies = {r.request_id: r async for r in method(requests())}
            assert set(replies) == {str(i) for i in range(20)}
            assert json.loads(replies["7"].error)["type"] == "ExecutorError"
            assert not replies["3"].error

    run(main())


def test_drain_finishes_in_flight_requests_and_refuses_new_ones() -> None:
    async def main() -> None:
        port = free_port()
        cfg = ReplicaConfig(
            executor=ExecutorConfig(uses="executors:Echo", name="echo"), port=port, grace_period=5
        )
        server = ExecutorServer(cfg)
        serve_task = asyncio.create_task(server.serve())
        client = AsyncClient("127.0.0.1", port)
        for _ in range(100):
            if await client.is_ready(timeout=0.5):
                break
            await asyncio.sleep(0.05)
        slow = asyncio.create_task(client.post("/sleep", Text(text="slow"), {"seconds": 0.8}))
        await asyncio.sleep(0.2)
        server.request_stop()
        assert (await slow).text == ["slow"]  # the in-flight request finished
        await serve_task
        with pytest.raises(UnavailableError):
            await client.post("/echo", Text(text="late"), timeout=2)
        assert await client.health(timeout=1) == "UNREACHABLE"
        await client.close()

    run(main())


def test_slow_sync_endpoint_does_not_block_health_or_async_endpoints() -> None:
    async def main() -> None:
        async with serving() as (_, client):
            slow = asyncio.create_task(client.post("/sync_sleep", Text(text="slow"), {"seconds": 1.5}))
            await asyncio.sleep(0.2)
            # Both of these would time out if the sync endpoint held the event loop.
            assert await client.health(timeout=0.5) == "SERVING"
            assert (await client.post("/echo", Text(text="fast"), timeout=0.5)).text == ["fast"]
            assert not slow.done()
            assert (await slow).text == ["slow"]

    run(main())
