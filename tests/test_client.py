"""Clients against a real executor process: batching, ordering, callbacks, threads, closing."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest
from conftest import subprocess_env
from executors import Emb, Text, Token

from plait import AnyDoc, AsyncClient, Client, Deployment, DocList
from plait.client import Response
from plait.errors import (
    ClientClosedError,
    ConfigError,
    DeadlineExceededError,
    ExecutorError,
    PlaitError,
    UnavailableError,
)
from plait.orchestrate.process import free_port


def test_large_inputs_are_split_pipelined_and_returned_in_order(echo_deployment: Deployment) -> None:
    docs = DocList[Text]([Text(text=str(i)) for i in range(1050)])
    with Client("127.0.0.1", echo_deployment.port) as client:
        out = client.post("/echo", docs, request_size=100, prefetch=4)
        assert isinstance(out, DocList) and out.doc_type is Text
        assert out.text == [str(i) for i in range(1050)]
        assert [d.id for d in out] == [d.id for d in docs]
        # A generator of docs works too, and return_type decides what comes back.
        gen = (Text(text=str(i)) for i in range(250))
        out2 = client.post("/echo", gen, request_size=7, return_type=DocList[AnyDoc])
        assert out2.doc_type is AnyDoc and [d.text for d in out2] == [str(i) for i in range(250)]  # type: ignore[attr-defined]


def test_callbacks_and_errors(echo_deployment: Deployment) -> None:
    with Client("127.0.0.1", echo_deployment.port) as client:
        done: list[Response] = []
        always: list[object] = []
        result = client.post(
            "/echo",
            [Text(text=str(i)) for i in range(10)],
            request_size=3,
            on_done=done.append,
            on_always=always.append,
        )
        assert len(result) == 0  # with on_done, responses go to the callback instead
        assert sorted(len(r.docs) for r in done) == [1, 3, 3, 3] and len(always) == 4
        errors: list[PlaitError] = []
        client.post("/fail", [Text()] * 4, request_size=2, on_error=errors.append)
        assert len(errors) == 2 and all(isinstance(e, ExecutorError) for e in errors)
        with pytest.raises(ExecutorError, match="boom"):
            client.post("/fail", [Text()] * 4, request_size=2)


def test_many_threads_share_one_client(echo_deployment: Deployment) -> None:
    failures: list[BaseException] = []
    with Client("127.0.0.1", echo_deployment.port) as client:

        def worker(n: int) -> None:
            try:
                for i in range(25):
                    text = f"{n}-{i}"
                    assert client.post("/echo", Text(text=text)).text == [text]
            except BaseException as e:
                failures.append(e)

        threads = [threading.Thread(target=worker, args=(n,)) for n in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    assert not failures, failures[:3]


def test_closed_client_raises(echo_deployment: Deployment) -> None:
    client = Client("127.0.0.1", echo_deployment.port)
    assert client.is_ready()
    client.close()
    client.close()  # idempotent
    with pytest.raises(ClientClosedError):
        client.post("/echo", Text())
    with pytest.raises(ClientClosedError):
        client.health()


def test_timeout_and_unreachable_server(echo_deployment: Deployment) -> None:
    with Client("127.0.0.1", echo_deployment.port) as client:
        with pytest.raises(DeadlineExceededError):
            client.post("/sleep", Text(), {"seconds": 2}, timeout=0.3)
        assert client.post("/echo", Text(text="after")).text == ["after"]
    with Client("127.0.0.1", free_port()) as down:
        assert down.health(timeout=0.5) == "UNREACHABLE"
        assert not down.is_ready(timeout=0.5)
        with pytest.raises(UnavailableError, match=r"127\.0\.0\.1"):
            down.post("/echo", Text(), timeout=2)


def test_address_forms() -> None:
    assert Client(f"grpc://127.0.0.1:{1234}").addresses == ("127.0.0.1:1234",)
    assert Client("127.0.0.1:1234").addresses == ("127.0.0.1:1234",)
    assert Client(["127.0.0.1:1", "localhost:2"]).addresses == ("127.0.0.1:1", "localhost:2")
    with pytest.raises(ConfigError, match="no port"):
        Client("localhost")
    with pytest.raises(ConfigError, match="not supported"):
        Client("localhost", 1, protocol="carrier-pigeon")
    with pytest.raises(ConfigError, match="already has a port"):
        Client("localhost:1", port=2)


def test_sync_stream_doc_and_progress(
    echo_deployment: Deployment, capsys: pytest.CaptureFixture[str]
) -> None:
    with Client("127.0.0.1", echo_deployment.port) as client:
        tokens = list(client.stream_doc("/tokens", Text(text="t"), {"n": 3}, return_type=Token))
        assert [t.text for t in tokens] == ["t-0", "t-1", "t-2"]
        # Stopping early closes the stream cleanly and the client stays usable.
        first = next(iter(client.stream_doc("/tokens", Text(text="e"), {"n": 100}, return_type=Token)))
        assert first.text == "e-0"
        out = client.post(
            "/echo", [Text(text=str(i)) for i in range(30)], request_size=10, show_progress=True
        )
        assert len(out) == 30


def test_async_client_concurrency(echo_deployment: Deployment) -> None:
    async def main() -> None:
        async with AsyncClient("127.0.0.1", echo_deployment.port) as client:
            results = await asyncio.gather(*(client.post("/echo", Text(text=str(i))) for i in range(50)))
            assert [r.text[0] for r in results] == [str(i) for i in range(50)]
            embs = DocList[Emb]([Emb(embedding=np.ones(512, dtype=np.float32)) for _ in range(300)])
            out = await client.post("/embed", embs, request_size=64)
            assert out.embedding.shape == (300, 512) and float(out.embedding.sum()) == 300 * 512 * 2

    asyncio.run(asyncio.wait_for(main(), 60))


def runs_cleanly(script: str) -> None:
    """``script`` (Python, run in a fresh interpreter) prints "done" and no traceback."""
    out = subprocess.run(
        [sys.executable, "-c", script], env=subprocess_env(), capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "done"
    assert "Traceback" not in out.stderr, out.stderr[-2000:]


def test_async_clients_in_their_own_loops_next_to_a_deployment_close_cleanly() -> None:
    # gRPC's asyncio layer delivers events to the loop that first used it (here one of the
    # Deployment's) and relays them to any other loop; an AsyncClient closed in asyncio.run must
    # not leave relayed events behind for a loop that is closed by the time they arrive (each one
    # printed "RuntimeError: Event loop is closed" at the exit of asyncio.run).
    script = textwrap.dedent(
        """
        import asyncio
        from plait import AsyncClient, Deployment
        from executors import Text

        async def burst(port):
            async with AsyncClient("127.0.0.1", port) as client:
                for i in range(300):
                    assert (await client.post("/echo", Text(text=str(i)))).text[0] == str(i)

        if __name__ == "__main__":
            with Deployment(uses="executors:Echo", host="127.0.0.1", quiet=True) as dep:
                for round in range(3):
                    for _ in range(100):
                        assert dep.post("/echo", Text(text="s")).text[0] == "s"
                    asyncio.run(burst(dep.port))
            print("done")
        """
    )
    runs_cleanly(script)


def test_an_async_client_left_mid_stream_in_its_own_loop_closes_cleanly() -> None:
    # As above, for a stream the caller stops reading (a `break` out of stream_doc): closing the
    # client settles the stream, so gRPC's last event of it arrives before asyncio.run closes the
    # loop (without that, about one loop in seven printed "Event loop is closed").
    script = textwrap.dedent(
        """
        import asyncio
        from plait import AsyncClient, Deployment
        from executors import Text

        async def leave_streams(port):
            async with AsyncClient("127.0.0.1", port) as client:
                for _ in range(5):
                    async for token in client.stream_doc("/tokens", Text(text="a"), parameters={"n": 50}):
                        assert token.text == "a-0"
                        break

        if __name__ == "__main__":
            with Deployment(uses="executors:Echo", host="127.0.0.1", quiet=True) as dep:
                for round in range(20):
                    assert dep.post("/echo", Text(text="s")).text[0] == "s"
                    asyncio.run(leave_streams(dep.port))
            print("done")
        """
    )
    runs_cleanly(script)
