"""``@dynamic_batching``: a real in-process executor server on loopback (and one real Deployment)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Coroutine
from pathlib import Path
from typing import Any

import pytest
from batching_executors import Item

from plait import AsyncClient, Deployment, DocList, Executor, dynamic_batching, requests
from plait.config import DeploymentConfig, ExecutorConfig, ReplicaConfig, load_executor_yaml
from plait.errors import ConfigError, DeadlineExceededError, ExecutorError, PlaitError
from plait.executor import BatchingConfig
from plait.orchestrate.process import free_port
from plait.serve import ExecutorServer, RequestHandler

Docs = DocList[Item]


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    return asyncio.run(asyncio.wait_for(coro, timeout=60))


@contextlib.asynccontextmanager
async def serving(**executor: Any) -> AsyncIterator[tuple[ExecutorServer, AsyncClient]]:
    port = free_port()
    fields: dict[str, Any] = {"uses": "batching_executors:Batched", "name": "batched", **executor}
    server = ExecutorServer(ReplicaConfig(executor=ExecutorConfig(**fields), port=port, grace_period=1.0))
    await server.start()
    client = AsyncClient("127.0.0.1", port)
    try:
        yield server, client
    finally:
        await client.close()
        await server.stop()


def handler_of(server: ExecutorServer) -> RequestHandler:
    assert server.handler is not None
    return server.handler


def request_docs(i: int, n: int = 1, **fields: Any) -> Docs:
    return Docs([Item(id=f"r{i}-d{j}", text=f"{i}:{j}", **fields) for j in range(n)])


async def post_all(client: AsyncClient, endpoint: str, requests_: list[Docs], **kw: Any) -> list[Docs]:
    return list(await asyncio.gather(*(client.post(endpoint, r, return_type=Docs, **kw) for r in requests_)))


def sample(server: ExecutorServer, name: str, endpoint: str) -> float:
    value = handler_of(server).registry.get_sample_value(name, {"executor": "batched", "endpoint": endpoint})
    return 0.0 if value is None else value


@pytest.mark.parametrize("endpoint", ["/batch", "/sync_batch"])
def test_concurrent_requests_are_merged_and_split_back_by_position(endpoint: str) -> None:
    async def main() -> None:
        async with serving() as (server, client):
            sent = [request_docs(i, n=1 + i % 3) for i in range(64)]  # 1 to 3 docs each
            total = sum(len(r) for r in sent)
            got = await post_all(client, endpoint, sent)
            for req, out in zip(sent, got, strict=True):
                assert [d.id for d in out] == [d.id for d in req]
                assert [d.text for d in out] == [d.text for d in req]
            sizes = {d.call: d.batch_size for out in got for d in out}
            assert max(sizes.values()) <= 8
            assert max(sizes.values()) > 1, "no request shared a call: nothing was batched"
            assert sum(sizes.values()) == total  # every doc went through exactly one call
            # The histograms saw every batch and every request.
            assert sample(server, "plait_batch_size_count", endpoint) == len(sizes)
            assert sample(server, "plait_batch_size_sum", endpoint) == total
            assert sample(server, "plait_batch_wait_seconds_count", endpoint) == 64
            assert sample(server, "plait_batch_wait_seconds_sum", endpoint) > 0

    run(main())


def test_a_request_larger_than_the_preferred_size_runs_alone_and_whole() -> None:
    async def main() -> None:
        async with serving() as (_, client):
            big, small = request_docs(0, n=20), request_docs(1, n=1)
            out_big, out_small = await post_all(client, "/batch", [big, small])
            assert [d.id for d in out_big] == [d.id for d in big]
            assert {d.batch_size for d in out_big} == {20}
            assert len({d.call for d in out_big}) == 1
            assert out_small[0].batch_size == 1 and out_small[0].call != out_big[0].call

    run(main())


def test_only_requests_with_equal_parameters_share_a_batch() -> None:
    async def main() -> None:
        async with serving() as (_, client):
            tags = ["a", "b", "c"]
            coros = [
                client.post("/batch", request_docs(i), {"tag": tags[i % 3], "n": 1}, return_type=Docs)
                for i in range(48)
            ]
            # Same values, other key order: the same parameters, so the same queue.
            coros += [
                client.post("/batch", request_docs(100 + i), {"n": 1, "tag": "a"}, return_type=Docs)
                for i in range(8)
            ]
            got = await asyncio.gather(*coros)
            tag_of_call: dict[int, set[str]] = {}
            for i, out in enumerate(got):
                expected = tags[i % 3] if i < 48 else "a"
                assert out[0].tag == expected
                tag_of_call.setdefault(out[0].call, set()).add(out[0].tag)
            assert all(len(t) == 1 for t in tag_of_call.values()), tag_of_call
            assert any(d.batch_size > 1 for out in got for d in out)

    run(main())


def test_a_lone_request_is_flushed_after_the_timeout() -> None:
    async def main() -> None:
        async with serving() as (server, client):
            t0 = time.perf_counter()
            out = await client.post("/window", request_docs(0), return_type=Docs)  # 300 ms window
            elapsed = time.perf_counter() - t0
            assert out[0].batch_size == 1
            assert 0.25 <= elapsed < 5.0
            assert sample(server, "plait_batch_wait_seconds_sum", "/window") >= 0.25

    run(main())


def test_an_exception_fails_only_its_batch_and_the_server_keeps_serving() -> None:
    async def main() -> None:
        async with serving() as (_, client):
            bad = [request_docs(i, poison=(i == 2)) for i in range(4)]
            good = [request_docs(10 + i) for i in range(4)]
            results = await asyncio.gather(
                *(client.post("/batch", r, {"tag": "bad"}, return_type=Docs) for r in bad),
                *(client.post("/batch", r, {"tag": "good"}, return_type=Docs) for r in good),
                return_exceptions=True,
            )
            failed, served = results[:4], results[4:]
            for err in failed:
                assert isinstance(err, ExecutorError), err
                assert "poisoned batch" in str(err)
                assert err.details["executor"] == "batched" and err.details["endpoint"] == "/batch"
                assert "batching_executors.py" in err.details["traceback"]
            for out in served:
                assert isinstance(out, DocList) and out[0].tag == "good"
            again = await client.post("/batch", request_docs(99), return_type=Docs)
            assert again[0].text == "99:0"

    run(main())


def test_returning_the_wrong_number_of_docs_is_a_clear_executor_error() -> None:
    async def main() -> None:
        async with serving() as (_, client):
            results = await asyncio.gather(
                *(client.post("/wrong_count", request_docs(i), return_type=Docs) for i in range(3)),
                return_exceptions=True,
            )
            for err in results:
                assert isinstance(err, ExecutorError)
                assert "one document per input document" in str(err)
                assert "wrong_count returned" in str(err)

    run(main())


def test_uses_dynamic_batching_overrides_and_enables() -> None:
    async def main() -> None:
        overrides = {
            "/plain": {"preferred_batch_size": 4, "timeout": 50},
            "batch": {"preferred_batch_size": 3},
        }
        async with serving(uses_dynamic_batching=overrides) as (_, client):
            plain = await post_all(client, "/plain", [request_docs(i) for i in range(16)])
            sizes = {d.call: d.batch_size for out in plain for d in out}
            assert 1 < max(sizes.values()) <= 4
            batch = await post_all(client, "/batch", [request_docs(i) for i in range(16)])
            assert max(d.batch_size for out in batch for d in out) <= 3

    run(main())


def test_executor_yaml_dynamic_batching_takes_effect(tmp_path: Path) -> None:
    yml = tmp_path / "batched.yml"
    yml.write_text(
        "jtype: Batched\n"
        "py_modules: [batching_executors]\n"
        "dynamic_batching:\n"
        "  /plain: {preferred_batch_size: 5, timeout: 50}\n"
        "  /batch: {preferred_batch_size: 2}\n"
    )
    explicit = load_executor_yaml(yml, uses_dynamic_batching={"/batch": {"timeout": 7}})
    assert explicit.uses_dynamic_batching == {
        "/plain": {"preferred_batch_size": 5, "timeout": 50},
        "/batch": {"preferred_batch_size": 2, "timeout": 7},
    }

    async def main() -> None:
        async with serving(uses=str(yml)) as (_, client):
            plain = await post_all(client, "/plain", [request_docs(i) for i in range(20)])
            assert 1 < max(d.batch_size for out in plain for d in out) <= 5
            batch = await post_all(client, "/batch", [request_docs(i) for i in range(8)])
            assert max(d.batch_size for out in batch for d in out) <= 2

    run(main())


def test_a_request_that_times_out_in_the_queue_does_not_break_the_batch() -> None:
    async def main() -> None:
        async with serving() as (server, client):
            handler = handler_of(server)
            # /window waits 300 ms for a batch; this caller gives up after 50 ms.
            doomed = asyncio.create_task(client.post("/window", request_docs(0), timeout=0.05))
            await asyncio.sleep(0.01)
            others = asyncio.gather(
                *(client.post("/window", request_docs(i), return_type=Docs) for i in (1, 2))
            )
            with pytest.raises(DeadlineExceededError):
                await doomed
            got = await others
            assert [out[0].id for out in got] == ["r1-d0", "r2-d0"]
            assert {out[0].batch_size for out in got} == {2}  # the doomed request left the batch
            assert handler._batcher.pending == 0

    run(main())


def test_a_cancelled_caller_leaves_the_queue() -> None:
    async def main() -> None:
        async with serving() as (server, client):
            handler = handler_of(server)
            spec = handler.lookup("/window")
            config = BatchingConfig(preferred_batch_size=64, timeout=300)
            doomed = asyncio.create_task(handler._batcher.submit(spec, config, request_docs(0), {}))
            await asyncio.sleep(0.02)
            assert handler._batcher.pending == 1
            doomed.cancel()
            await asyncio.sleep(0)
            assert handler._batcher.pending == 0
            out = await client.post("/window", request_docs(1), return_type=Docs)
            assert out[0].batch_size == 1

    run(main())


def test_stop_fails_queued_requests_and_leaves_no_task_behind() -> None:
    async def main() -> None:
        async with serving() as (server, _):
            handler = handler_of(server)
            spec = handler.lookup("/window")
            config = BatchingConfig(preferred_batch_size=64, timeout=60_000)
            queued = asyncio.create_task(handler._batcher.submit(spec, config, request_docs(0), {}))
            await asyncio.sleep(0.02)
            assert handler._batcher._tasks
        with pytest.raises(PlaitError, match="shutting down"):
            await queued
        assert not handler._batcher._tasks

    run(main())


def test_batching_config_errors_are_clear() -> None:
    with pytest.raises(ConfigError, match="timeout"):
        dynamic_batching(timeout=0)
    with pytest.raises(ConfigError, match="preferred_batch_size"):
        dynamic_batching(preferred_batch_size=0)
    with pytest.raises(ConfigError, match="once per document"):

        class PerDoc(Executor):
            @dynamic_batching
            @requests(on="/x")
            def x(self, doc: Item, **kwargs: Any) -> Item:
                return doc

    with pytest.raises(ConfigError, match="needs @requests"):

        class NoEndpoint(Executor):
            @dynamic_batching
            def x(self, docs: Docs, **kwargs: Any) -> None: ...

    from batching_executors import Batched

    with pytest.raises(ConfigError, match="no endpoint or method '/nope'"):
        RequestHandler(Batched(), name="b", dynamic_batching={"/nope": {"timeout": 1}})
    with pytest.raises(ConfigError, match=r"unknown option\(s\) \['flush_all'\]"):
        RequestHandler(Batched(), name="b", dynamic_batching={"/batch": {"flush_all": True}})


def test_deployment_batches_in_a_real_process() -> None:
    executor = ExecutorConfig(
        uses="batching_executors:Batched",
        name="batched",
        uses_dynamic_batching={"/batch": {"preferred_batch_size": 16}},
    )
    config = DeploymentConfig(executor=executor, host="127.0.0.1", grace_period=2.0)

    async def main(port: int) -> None:
        async with AsyncClient("127.0.0.1", port) as client:
            sent = [request_docs(i) for i in range(48)]
            got = await post_all(client, "/batch", sent)
            assert [out[0].id for out in got] == [r[0].id for r in sent]
            sizes = {d.call: d.batch_size for out in got for d in out}
            assert 1 < max(sizes.values()) <= 16

    with Deployment(config=config, quiet=True) as dep:
        run(main(dep.port))


def test_flow_add_takes_uses_dynamic_batching() -> None:
    from plait import Flow

    flow = Flow().add(
        name="b", uses="executors:Echo", uses_dynamic_batching={"/echo": {"preferred_batch_size": 8}}
    )
    assert flow.config.executors[0].executor.uses_dynamic_batching == {"/echo": {"preferred_batch_size": 8}}
    assert Flow(config=flow.config).to_dict()["executors"][0]["uses_dynamic_batching"] == {
        "/echo": {"preferred_batch_size": 8}
    }
