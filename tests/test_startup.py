"""Start-up probes: nothing is asked of a server before it listens (plait.gateway.router's
discovery, plait.orchestrate.process.wait_ready), so no gRPC channel enters reconnect backoff."""

from __future__ import annotations

import asyncio
import socket
import time

from plait.gateway.router import _until_listening
from plait.orchestrate.process import free_port, listening


def test_listening_tells_an_open_port_from_a_closed_one() -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        assert listening(f"127.0.0.1:{port}")
    assert not listening(f"127.0.0.1:{port}")  # closed now
    assert not listening("not-an-address")


def test_discovery_waits_for_a_listener_then_goes_at_once() -> None:
    port = free_port("127.0.0.1")

    async def main() -> float:
        loop = asyncio.get_running_loop()
        opened = loop.create_future()

        async def open_later() -> asyncio.Server:
            await asyncio.sleep(0.3)
            server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", port)
            opened.set_result(time.monotonic())
            return server

        later = asyncio.create_task(open_later())
        nobody = f"127.0.0.1:{free_port('127.0.0.1')}"
        await _until_listening([nobody, f"127.0.0.1:{port}"], time.monotonic() + 10)
        returned = time.monotonic()
        assert opened.done()  # not before the server listened...
        server = await later
        server.close()
        return returned - opened.result()

    waited = asyncio.run(main())
    assert waited < 5  # ...and well before the deadline (one poll after it opened, normally)


def test_discovery_gives_up_at_the_deadline_and_skips_resolved_names() -> None:
    async def main() -> None:
        start = time.monotonic()
        await _until_listening([f"127.0.0.1:{free_port('127.0.0.1')}"], start + 0.2)
        assert 0.2 <= time.monotonic() - start < 5
        start = time.monotonic()
        await _until_listening(["dns:///executor.svc:8081"], start + 10)  # the channel resolves it
        assert time.monotonic() - start < 1

    asyncio.run(main())
