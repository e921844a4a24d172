"""The conformance suite again, now through a real Flow: a gateway process serving gRPC, HTTP and
WebSocket at once in front of an executor process. Plus what only a Flow can show per protocol:
a client leaving a stream cancels the executor's work behind the gateway."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from executors import Text, Token
from test_conformance import *  # noqa: F403  (the suite and its `protocol` fixture)
from test_conformance import LIMIT

from plait import Client, Flow

H = "127.0.0.1"


@pytest.fixture(scope="module")
def gateway_flow() -> Iterator[Flow]:
    flow = (
        Flow(
            host=H,
            protocol=["grpc", "http", "websocket"],
            max_request_bytes=LIMIT,
            quiet=True,
            grace_period=2,
        )
        .add(name="echo", uses="executors:Echo")
        .add(name="slow", uses="executors:Cancellable", needs="gateway")
    )
    with flow:
        yield flow


@pytest.fixture(scope="module")
def served(protocol: str, gateway_flow: Flow) -> Iterator[tuple[str, int]]:
    yield H, gateway_flow.ports[gateway_flow.protocols.index(protocol)]


@pytest.fixture(scope="module")
def served_name() -> str:
    return "gateway"


@pytest.mark.parametrize("proto", ["grpc", "http", "websocket"])
def test_leaving_a_stream_cancels_the_executor_behind_the_gateway(
    proto: str, gateway_flow: Flow, tmp_path: Path
) -> None:
    marker = tmp_path / f"cancelled-{proto}"
    port = gateway_flow.ports[gateway_flow.protocols.index(proto)]
    with Client(H, port, protocol=proto) as client:
        stream = client.stream_doc("/drip", Text(), {"marker": str(marker)}, return_type=Token)
        assert [next(stream).text for _ in range(3)] == ["0", "1", "2"]
        stream.close()
        deadline = time.monotonic() + 10
        while not marker.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert marker.exists(), f"{proto}: the executor kept streaming after the client left"
        assert client.post("/greet", Text(text="still"), target_executor="echo").text == ["hello still"]
