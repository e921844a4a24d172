"""The lean HTTP/1.1 client under the HTTP and WebSocket transports, against raw asyncio servers."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from plait._loop import new_event_loop
from plait.client.http_wire import HttpConnectionError, HttpPool

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def run(main: Callable[[], Awaitable[None]]) -> None:
    loop = new_event_loop()
    try:
        loop.run_until_complete(asyncio.wait_for(main(), 20))
    finally:
        leftovers = asyncio.all_tasks(loop)  # server handlers still waiting on their clients
        for task in leftovers:
            task.cancel()
        if leftovers:
            loop.run_until_complete(asyncio.gather(*leftovers, return_exceptions=True))
        loop.close()


async def read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            await reader.readexactly(int(line.split(b":")[1]))
    return head


def reply(body: bytes, *, close: bool = False) -> bytes:
    extra = b"connection: close\r\n" if close else b""
    return b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n%s\r\n%s" % (len(body), extra, body)


async def serving(handler: Handler) -> tuple[asyncio.Server, str]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    return server, f"127.0.0.1:{server.sockets[0].getsockname()[1]}"


def test_keep_alive_reuses_one_connection() -> None:
    connections = 0

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        while True:
            try:
                head = await read_request(reader)
            except asyncio.IncompleteReadError:
                return
            writer.write(reply(head.split(b" ")[1]))
            await writer.drain()

    async def main() -> None:
        server, address = await serving(handler)
        pool = HttpPool()
        for i in range(5):
            response = await pool.request("POST", address, f"/p{i}", body=b"x" * i)
            assert response.status == 200 and response.body == f"/p{i}".encode()
        assert connections == 1
        await pool.close()
        server.close()

    run(main)


def test_a_connection_the_server_closed_while_idle_is_replaced() -> None:
    """A keep-alive timeout on the server: the next request fails before any reply byte on the
    stale connection and goes out once more on a new one."""
    connections = 0

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        await read_request(reader)
        writer.write(reply(b"ok"))
        await writer.drain()
        writer.close()  # no "connection: close" header: the client believes it can reuse it

    async def main() -> None:
        server, address = await serving(handler)
        pool = HttpPool()
        for _ in range(3):
            assert (await pool.request("GET", address, "/")).body == b"ok"
            await asyncio.sleep(0.05)  # the server's close reaches the client while it is idle
        assert connections == 3
        await pool.close()
        server.close()

    run(main)


def test_failures_say_whether_the_connection_opened() -> None:
    async def half_reply(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nshort")
        await writer.drain()
        writer.close()

    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"NOT HTTP AT ALL\r\n\r\n")
        await writer.drain()

    async def main() -> None:
        pool = HttpPool()
        server, address = await serving(half_reply)
        server.close()
        await server.wait_closed()
        with pytest.raises(HttpConnectionError) as refused:
            await pool.request("GET", address, "/")
        assert not refused.value.connected
        server, address = await serving(half_reply)
        with pytest.raises(HttpConnectionError) as cut:
            await pool.request("GET", address, "/")
        assert cut.value.connected and not cut.value.stale
        server.close()
        server, address = await serving(garbage)
        with pytest.raises(HttpConnectionError, match="malformed HTTP reply"):
            await pool.request("GET", address, "/")
        server.close()
        await pool.close()

    run(main)


def test_a_cancelled_request_closes_its_connection_and_streams_read_chunks() -> None:
    async def slow_then_chunked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                head = await read_request(reader)
            except asyncio.IncompleteReadError:
                return
            if b"/slow" in head:
                await asyncio.sleep(10)
            writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
            for part in (b"event: a\n", b"data: 1\n\n"):
                writer.write(b"%x\r\n%s\r\n" % (len(part), part))
                await writer.drain()
            writer.write(b"0\r\n\r\n")
            await writer.drain()

    async def main() -> None:
        server, address = await serving(slow_then_chunked)
        pool = HttpPool()
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.2):
                await pool.request("GET", address, "/slow")
        head, chunks = await pool.stream("GET", address, "/fast")
        assert head.status == 200
        assert b"".join([c async for c in chunks]) == b"event: a\ndata: 1\n\n"
        # The stream read to its end: its connection is reused.
        assert (await pool.request("GET", address, "/fast")).status == 200
        await pool.close()
        server.close()

    run(main)
