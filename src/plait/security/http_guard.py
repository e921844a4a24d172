"""HTTP and WebSocket side of the gateway's security, for servers run by uvicorn.

- :class:`Guard`, an ASGI middleware: checks credentials on every request except ``/health`` and
  ``/ready`` (401 with ``WWW-Authenticate: Bearer``; a WebSocket handshake is refused with 401
  too), and bounds an HTTP request's time (504), body upload included.
- :func:`guarded_protocol`: uvicorn's httptools protocol with a bound on a request's head (the
  request line and headers: 431 beyond ``max_header_bytes``) and on the time to send it
  (``header_timeout``; the connection is closed, as a slow-loris client deserves).
- :func:`uvicorn_settings`: the uvicorn options for TLS, connection count and idle time.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

from plait.config import ServerOptions
from plait.errors import DeadlineExceededError, PlaitError
from plait.security.auth import OPEN_HTTP_PATHS, Authenticator, AuthRequest, authenticator_for
from plait.wire.status import error_details

log = logging.getLogger("plait.security")

_TIMEOUT_MARGIN_S = 1.0
"""The processor's own deadline (same length, started a little later) answers first with a
precise error; this one catches what it cannot see (a slow upload)."""


def _error_body(error: PlaitError) -> bytes:
    """The gateway's JSON error shape, ``{"error": {...}}``."""
    return b'{"error":' + error_details(error) + b"}"


def _headers(scope: Scope) -> dict[str, str]:
    return {name.decode("latin-1"): value.decode("latin-1") for name, value in scope["headers"]}


async def _respond(send: Send, status: int, body: bytes, extra: list[tuple[bytes, bytes]], ws: bool) -> None:
    prefix = "websocket.http.response" if ws else "http.response"
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body)), *extra]
    await send({"type": f"{prefix}.start", "status": status, "headers": headers})
    await send({"type": f"{prefix}.body", "body": body})


def _preflight(scope: Scope) -> bool:
    """A browser's CORS preflight: it never carries credentials, and it calls no endpoint (the CORS
    middleware answers it, or the app refuses the method)."""
    return (
        scope["type"] == "http"
        and scope["method"] == "OPTIONS"
        and any(name == b"access-control-request-method" for name, _ in scope["headers"])
    )


class Guard:
    """Wraps the app of an HTTP or WebSocket server: authentication and request time."""

    def __init__(
        self, app: ASGIApp, authenticator: Authenticator | None, request_timeout: float | None
    ) -> None:
        self.app = app
        self.authenticator = authenticator
        self.request_timeout = None if request_timeout is None else request_timeout + _TIMEOUT_MARGIN_S

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if (
            self.authenticator is not None
            and kind in ("http", "websocket")
            and scope["path"] not in OPEN_HTTP_PATHS
            and not _preflight(scope)
            and not await self._allowed(scope, receive, send)
        ):
            return
        if kind == "http" and self.request_timeout is not None:
            await self._timed(scope, receive, send, self.request_timeout)
            return
        await self.app(scope, receive, send)

    async def _allowed(self, scope: Scope, receive: Receive, send: Send) -> bool:
        assert self.authenticator is not None
        client = scope.get("client")
        request = AuthRequest(
            protocol=scope["type"],
            path=scope["path"],
            headers=_headers(scope),
            peer=f"{client[0]}:{client[1]}" if client else "",
        )
        if await self.authenticator.allows(request):
            return True
        log.debug("%s %s: unauthenticated request refused", scope["type"], scope["path"])
        error = self.authenticator.refusal(request)
        challenge = [(b"www-authenticate", b'Bearer realm="plait"')]
        if scope["type"] == "http":
            await _respond(send, 401, _error_body(error), challenge, ws=False)
            return False
        # A WebSocket is refused during its handshake: with a real 401 where the server can send
        # one (the ASGI "websocket.http.response" extension), else by closing it (HTTP 403).
        message = await receive()
        if message["type"] != "websocket.connect":
            return False
        if "websocket.http.response" in scope.get("extensions", {}):
            await _respond(send, 401, _error_body(error), challenge, ws=True)
        else:
            await send({"type": "websocket.close", "code": 1008})
        return False

    async def _timed(self, scope: Scope, receive: Receive, send: Send, limit: float) -> None:
        started = False

        async def tracked(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            async with asyncio.timeout(limit):
                await self.app(scope, receive, tracked)
        except TimeoutError:
            if started:
                return  # the response is cut short: the client sees the connection end
            error = DeadlineExceededError(
                f"the request took longer than this server's limit of {limit - _TIMEOUT_MARGIN_S:g}s "
                "(request_timeout)",
                timeout=limit - _TIMEOUT_MARGIN_S,
            )
            await _respond(send, 504, _error_body(error), [], ws=False)


def secured_app(app: ASGIApp, options: ServerOptions) -> ASGIApp:
    """``app`` behind a :class:`Guard` with the options' authentication and request time."""
    authenticator = authenticator_for(options)
    if authenticator is None and options.request_timeout is None:
        return app
    return Guard(app, authenticator, options.request_timeout)


class _HeadTooLarge(Exception):
    """The request line and headers are over the limit (parser callbacks raise to stop parsing)."""


class GuardedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a bounded request head: size and time to arrive."""

    max_head_bytes = 16 * 1024
    head_timeout = 10.0
    max_connections: int | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_bytes = 0
        self._head_too_large = False
        self._head_timer: asyncio.TimerHandle | None = None

    def _arm(self) -> None:
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(self.head_timeout, self._head_late)

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_late(self) -> None:
        self._head_timer = None
        if not self.transport.is_closing():
            log.debug(
                "HTTP: no complete request head within %.1fs; closing the connection", self.head_timeout
            )
            self.transport.close()

    def _count(self, size: int) -> None:
        self._head_bytes += size
        if self._head_bytes > self.max_head_bytes:
            self._head_too_large = True
            raise _HeadTooLarge

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        # uvicorn's own limit (limit_concurrency) answers requests, not connections, and lets
        # WebSocket handshakes through: count connections (WebSockets included) here.
        if self.max_connections is not None and len(self.connections) > self.max_connections:
            self._refuse(503, "Service Unavailable", "too many connections; retry later")
            return
        self._arm()  # a connection that never sends a request is closed too

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_bytes = 0
        self._arm()

    def on_url(self, url: bytes) -> None:
        self._count(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value) + 4)
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()

    def send_400_response(self, msg: str) -> None:
        if not self._head_too_large:
            super().send_400_response(msg)
            return
        self._refuse(
            431,
            "Request Header Fields Too Large",
            f"request line and headers are over this server's limit of {self.max_head_bytes} bytes",
        )

    def _refuse(self, status: int, reason: str, text: str) -> None:
        body = text.encode()
        self.transport.write(
            b"HTTP/1.1 %d %s\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: %d\r\n"
            b"connection: close\r\n\r\n%s" % (status, reason.encode(), len(body), body)
        )
        self.transport.close()


def guarded_protocol(options: ServerOptions) -> type[GuardedHttpProtocol]:
    """A :class:`GuardedHttpProtocol` class with the options' head limits."""
    return type(
        "GuardedHttpProtocol",
        (GuardedHttpProtocol,),
        {
            "max_head_bytes": options.max_header_bytes,
            "head_timeout": options.header_timeout,
            "max_connections": options.max_connections,
        },
    )


class RefusingWebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's sans-I/O WebSocket protocol, which can refuse a handshake with an HTTP response
    (401) without logging "ASGI callable returned without completing handshake" and answering
    500 on top: it does not count a refusal as the end of the handshake."""

    async def send(self, message: Any) -> None:
        await super().send(message)
        if message["type"] == "websocket.http.response.body" and not message.get("more_body", False):
            self.handshake_complete = True


def uvicorn_settings(options: ServerOptions, *, websocket: bool = False) -> dict[str, Any]:
    """uvicorn.Config keyword arguments for the options' TLS and connection limits."""
    settings: dict[str, Any] = {
        "http": guarded_protocol(options),
        "timeout_keep_alive": options.idle_timeout,
    }
    if websocket:
        settings["ws"] = RefusingWebSocketProtocol
    if options.ssl_certfile is not None:
        settings["ssl_certfile"] = options.ssl_certfile
        settings["ssl_keyfile"] = options.ssl_keyfile
    return settings
