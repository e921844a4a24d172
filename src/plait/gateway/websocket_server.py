"""``WebSocketServer``: a processor over WebSocket, many requests in flight per connection.

Clients connect to ``ws://host:port/`` and exchange JSON text frames (see ``docs/protocols.md``).
The same port answers ``GET /health``, ``/ready``, ``/status`` and ``/describe`` over plain HTTP,
so a WebSocket gateway can be probed and described without opening a socket.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from starlette.types import ASGIApp, Receive, Scope, Send

from plait.config import ServerOptions
from plait.gateway.http_probes import ProbeApp
from plait.gateway.http_uvicorn import UvicornRunner
from plait.gateway.protocols import ProtocolServer
from plait.gateway.ws_session import WsSession
from plait.observe.tracing import incoming, trace_headers
from plait.security.limits import idle_closing
from plait.serve import Processor

_MIB = 1024 * 1024
_DRAIN_POLL_S = 0.02


class _Front:
    """WebSocket connections become sessions; HTTP requests go to the probes."""

    def __init__(self, processor: Processor, options: ServerOptions, api: ASGIApp) -> None:
        self.processor = processor
        self.options = options
        self.api = api
        self.sessions: set[WsSession] = set()
        self.draining = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "websocket":
            await self.api(scope, receive, send)
            return
        if getattr(self.processor, "wants_trace_context", False):
            # The handshake's trace context parents every request of the connection.
            incoming.set(trace_headers(scope["headers"]))
        session = WsSession(self.processor, self.options, send, headers=scope["headers"])
        session.draining = self.draining
        self.sessions.add(session)
        try:
            await session.run(idle_closing(receive, send, lambda: session.busy, self.options.idle_timeout))
        finally:
            self.sessions.discard(session)

    async def drain(self, grace: float) -> None:
        """Turn new requests away and wait up to ``grace`` seconds for running ones to answer.

        uvicorn's own shutdown closes WebSockets at once (code 1012), which would lose the
        replies of requests still running: those get their grace period here first.
        """
        self.draining = True
        for session in self.sessions:
            session.draining = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        while any(s.busy for s in self.sessions) and loop.time() < deadline:
            await asyncio.sleep(_DRAIN_POLL_S)


def build_websocket_app(processor: Processor, options: ServerOptions, serving: Callable[[], bool]) -> _Front:
    probes = ProbeApp(processor, serving, "a WebSocket gateway (connect a WebSocket to /)")
    return _Front(processor, options, probes)


def frame_limit(options: ServerOptions) -> int:
    """The size past which the WebSocket layer drops a frame (and the connection, code 1009).

    Frames between ``max_request_bytes`` and this get a polite PayloadTooLargeError reply and
    the connection stays open; only far larger ones, which would cost real memory to read, end
    the connection.
    """
    return max(2 * options.max_request_bytes, options.max_request_bytes + _MIB)


class WebSocketServer(ProtocolServer):
    protocol = "websocket"

    def __init__(self, processor: Processor, host: str, port: int, options: ServerOptions) -> None:
        super().__init__(processor, host, port, options)
        self._runner = UvicornRunner("WebSocket server")
        self._serving = True
        self._app: _Front | None = None

    async def start(self) -> None:
        self._app = build_websocket_app(self.processor, self.options, lambda: self._serving)
        await self._runner.start(
            self._app,
            self.host,
            self.port,
            websocket=True,
            ws_max_size=frame_limit(self.options),
            options=self.options,
        )
        self.port = self._runner.port

    async def set_serving(self, serving: bool) -> None:
        self._serving = serving

    async def stop(self, grace: float) -> None:
        self._serving = False
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        if self._app is not None:
            await self._app.drain(grace)
        await self._runner.stop(max(0.0, deadline - loop.time()))
