"""A small HTTP/1.1 client for plait's own servers: keep-alive connections, httptools parsing.

The HTTP and WebSocket transports talk to one kind of server (plait's gateway or a served
Deployment), send small fixed requests and read whole bodies or server-sent events. A general
client (redirects, cookies, proxies, content negotiation) costs about 2 ms of CPU per request
in Python; this one writes the request in one buffer and parses the reply with httptools (the
parser uvicorn uses), so a request costs a few tens of microseconds beyond the socket.

Connections are kept per address and reused. A request sent on a connection the server had
already closed while it sat idle (a keep-alive timeout) fails before any reply byte arrives;
it is sent once more on a new connection, as browsers and other clients do.
"""

from __future__ import annotations

import asyncio
import collections
import ssl as _ssl
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from dataclasses import dataclass

import httptools

from plait._address import host_and_port

MAX_IDLE_PER_ADDRESS = 64


class HttpConnectionError(OSError):
    """The connection failed (could not open, or closed before the reply was complete).

    ``connected`` says whether the connection had opened; ``stale`` whether it failed before a
    single reply byte on a reused connection (so the request never reached the application).
    """

    def __init__(self, message: str, *, connected: bool, stale: bool = False) -> None:
        super().__init__(message)
        self.connected = connected
        self.stale = stale


@dataclass(slots=True)
class HttpResponse:
    status: int
    headers: dict[str, str]
    """Header names in lower case."""
    body: bytes


class _Connection(asyncio.Protocol):
    """One keep-alive connection: one request at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.WriteTransport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.closed = False
        self.used = False
        self._received = False
        self._status = 0
        self._headers: dict[str, str] = {}
        self._chunks: list[bytes] = []
        self._keep_alive = True
        self._head: asyncio.Future[None] | None = None
        self._done: asyncio.Future[None] | None = None
        self._body: asyncio.Queue[bytes | None] | None = None

    # -- asyncio.Protocol ------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # a TCP transport (uvloop's, too)

    def data_received(self, data: bytes) -> None:
        self._received = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as e:
            self._fail(HttpConnectionError(f"malformed HTTP reply: {e}", connected=True))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        stale = self.used and not self._received
        why = f": {exc}" if exc else ""
        self._fail(HttpConnectionError(f"the server closed the connection{why}", connected=True, stale=stale))

    # -- httptools callbacks ---------------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        self._status = self.parser.get_status_code()
        self._keep_alive = self.parser.should_keep_alive()
        if self._head is not None and not self._head.done():
            self._head.set_result(None)

    def on_body(self, body: bytes) -> None:
        if self._body is not None:
            self._body.put_nowait(body)
        else:
            self._chunks.append(body)

    def on_message_complete(self) -> None:
        if self._body is not None:
            self._body.put_nowait(None)
        if self._done is not None and not self._done.done():
            self._done.set_result(None)

    # -- use -------------------------------------------------------------------------------------

    def _fail(self, error: Exception) -> None:
        for waiter in (self._head, self._done):
            if waiter is not None and not waiter.done():
                waiter.set_exception(error)
                waiter.exception()  # a call awaits one of the two: the other must not log it unread
        if self._body is not None:
            self._body.put_nowait(None)

    def _send(self, data: bytes, stream: bool) -> None:
        if self.closed or self.transport is None:
            raise HttpConnectionError("the connection is closed", connected=True, stale=self.used)
        loop = asyncio.get_running_loop()
        self._received = False
        self._status, self._headers, self._chunks, self._keep_alive = 0, {}, [], True
        self._head = loop.create_future()
        self._done = loop.create_future()
        self._body = asyncio.Queue() if stream else None
        self.transport.write(data)
        self.used = True

    async def roundtrip(self, data: bytes) -> HttpResponse:
        self._send(data, stream=False)
        assert self._done is not None
        await self._done
        body = self._chunks[0] if len(self._chunks) == 1 else b"".join(self._chunks)
        return HttpResponse(self._status, self._headers, body)

    async def open_stream(self, data: bytes) -> HttpResponse:
        """Send, and return once the reply's headers are in (``body`` empty; see :meth:`chunks`)."""
        self._send(data, stream=True)
        assert self._head is not None
        await self._head
        return HttpResponse(self._status, self._headers, b"")

    async def chunks(self) -> AsyncIterator[bytes]:
        assert self._body is not None
        while True:
            chunk = await self._body.get()
            if chunk is None:
                if self._done is not None and self._done.done():
                    self._done.result()  # raises when the connection failed mid-body
                    return
                raise HttpConnectionError("the reply ended early", connected=True)
            yield chunk

    @property
    def reusable(self) -> bool:
        return not self.closed and self._keep_alive and self._done is not None and self._done.done()

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class HttpPool:
    """Keep-alive connections to one or more ``host:port`` addresses."""

    def __init__(
        self, *, ssl: _ssl.SSLContext | None = None, headers: Mapping[str, str] | None = None
    ) -> None:
        self.ssl = ssl
        self.headers = dict(headers or {})
        """Sent with every request (credentials: ``authorization``, custom auth headers)."""
        self._idle: dict[str, collections.deque[_Connection]] = {}
        self._busy: set[_Connection] = set()
        self._closed = False

    async def _connect(self, address: str) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            host, port = host_and_port(address)
            _, connection = await loop.create_connection(
                _Connection, host, port, ssl=self.ssl, server_hostname=host if self.ssl else None
            )
        except (OSError, ValueError) as e:
            raise HttpConnectionError(str(e) or type(e).__name__, connected=False) from None
        return connection

    def _take_idle(self, address: str) -> _Connection | None:
        idle = self._idle.get(address)
        while idle:
            connection = idle.pop()
            if not connection.closed:
                return connection
        return None

    def _release(self, address: str, connection: _Connection) -> None:
        self._busy.discard(connection)
        idle = self._idle.setdefault(address, collections.deque())
        if connection.reusable and not self._closed and len(idle) < MAX_IDLE_PER_ADDRESS:
            idle.append(connection)
        else:
            connection.close()

    def _encode(
        self, method: str, address: str, path: str, headers: Mapping[str, str] | None, body: bytes | None
    ) -> bytes:
        """The request's bytes: its line, the pool's headers overridden by ``headers``, the body."""
        if self.headers:
            headers = {**self.headers, **(headers or {})}
        lines = [f"{method} {path} HTTP/1.1", f"host: {address}"]
        lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
        if body is not None:
            lines.append(f"content-length: {len(body)}")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        return head + body if body else head

    async def _checkout(self, address: str) -> tuple[_Connection, bool]:
        if self._closed:
            raise HttpConnectionError("this client is closed", connected=False)
        connection = self._take_idle(address)
        reused = connection is not None
        if connection is None:
            connection = await self._connect(address)
        self._busy.add(connection)
        return connection, reused

    def _discard(self, connection: _Connection) -> None:
        self._busy.discard(connection)
        connection.close()

    async def _exchange(self, address: str, data: bytes, stream: bool) -> tuple[_Connection, HttpResponse]:
        for attempt in (1, 2):
            connection, reused = await self._checkout(address)
            try:
                response = await (connection.open_stream(data) if stream else connection.roundtrip(data))
            except HttpConnectionError as e:
                self._discard(connection)
                if reused and e.stale and attempt == 1:
                    continue  # the server had closed this idle connection: once more, on a new one
                raise
            except BaseException:  # cancelled or timed out mid-reply: the connection is unusable
                self._discard(connection)
                raise
            return connection, response
        raise AssertionError("unreachable")  # pragma: no cover

    async def request(
        self,
        method: str,
        address: str,
        path: str,
        *,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> HttpResponse:
        """One request, its whole reply. Raises :class:`HttpConnectionError` (the caller adds its
        own timeout: a request cut short closes its connection)."""
        data = self._encode(method, address, path, headers, body)
        connection, response = await self._exchange(address, data, stream=False)
        self._release(address, connection)
        return response

    async def stream(
        self,
        method: str,
        address: str,
        path: str,
        *,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> tuple[HttpResponse, AsyncGenerator[bytes, None]]:
        """Send a request; return the reply's status and headers, and its body as chunks.

        The connection goes back to the pool when the chunks have been read to the end, and is
        closed if they are not."""
        data = self._encode(method, address, path, headers, body)
        connection, head = await self._exchange(address, data, stream=True)
        return head, self._drain(address, connection)

    async def _drain(self, address: str, connection: _Connection) -> AsyncGenerator[bytes, None]:
        finished = False
        try:
            async for chunk in connection.chunks():
                yield chunk
            finished = True
        finally:
            if finished:
                self._release(address, connection)
            else:
                self._discard(connection)

    async def close(self) -> None:
        self._closed = True
        for idle in self._idle.values():
            for connection in idle:
                connection.close()
        self._idle.clear()
        for connection in list(self._busy):
            connection.close()
        self._busy.clear()
