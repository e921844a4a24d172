"""Run an ASGI app with uvicorn inside the running event loop, owned by one object.

uvicorn is used as a library here, not as a program: it gets a socket we bound (so "port in
use" is a :class:`StartupError`, not uvicorn's ``sys.exit``), installs no signal handlers (the
process owner handles signals) and configures no logging. Its serve task belongs to
:class:`UvicornRunner` from ``start`` to ``stop``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import socket
from collections.abc import Iterator
from typing import Any

import uvicorn
from starlette.types import ASGIApp

from plait.config import ServerOptions
from plait.errors import StartupError
from plait.security.http_guard import secured_app, uvicorn_settings

log = logging.getLogger("plait.gateway")

_START_POLL_S = 0.005
_STOP_MARGIN_S = 5.0  # beyond the grace period: uvicorn's own shutdown steps take ~0.2 s


class _EmbeddedServer(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # The process owner (CLI, Flow) decides what SIGTERM means; uvicorn must not re-raise it.
        yield


def bind(host: str, port: int, label: str) -> socket.socket:
    """A listening-ready TCP socket on ``host:port``; :class:`StartupError` when it cannot bind."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except socket.gaierror as e:
        raise StartupError(f"{label}: cannot resolve host {host!r}: {e}") from e
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as e:
        sock.close()
        raise StartupError(f"{label} cannot bind {host}:{port} (port in use?): {e}") from e
    return sock


class UvicornRunner:
    """One uvicorn server on one socket, started and stopped explicitly."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.port = 0
        self._server: _EmbeddedServer | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(
        self,
        app: ASGIApp,
        host: str,
        port: int,
        *,
        websocket: bool = False,
        ws_max_size: int = 16 * 1024 * 1024,
        options: ServerOptions | None = None,
    ) -> None:
        """Bind, serve, and return once the socket accepts connections. With ``options``, the
        app is served behind their TLS, authentication and limits (:mod:`plait.security`)."""
        # The sans-I/O protocol writes each message in one call, so concurrent sends from
        # several request tasks of one connection cannot interleave.
        protocols: dict[str, Any] = {"http": "httptools", "ws": "websockets-sansio" if websocket else "none"}
        if options is not None:  # the same protocols, guarded (plait.security.http_guard)
            app = secured_app(app, options)
            protocols.update(uvicorn_settings(options, websocket=websocket))
        sock = bind(host, port, self.label)
        self.port = int(sock.getsockname()[1])
        config = uvicorn.Config(
            app,
            loop="none",
            lifespan="off",
            interface="asgi3",
            ws_max_size=ws_max_size,
            ws_per_message_deflate=False,  # compression costs more latency than it saves on loopback/LAN
            access_log=False,
            log_config=None,  # logging is configured by the process owner, not replaced by uvicorn
            log_level="warning",  # its start/stop lines repeat what the gateway logs itself
            proxy_headers=False,
            server_header=False,
            **protocols,
        )
        server = _EmbeddedServer(config)
        task = asyncio.create_task(server.serve(sockets=[sock]), name=f"plait-{self.label}")
        self._server, self._task = server, task
        while not server.started:
            if task.done():
                self._server = self._task = None
                sock.close()
                error = task.exception()
                raise StartupError(f"{self.label} did not start: {error!r}") from error
            await asyncio.wait({task}, timeout=_START_POLL_S)

    async def stop(self, grace: float) -> None:
        """Stop accepting, give in-flight requests ``grace`` seconds, then cancel them."""
        server, task = self._server, self._task
        self._server = self._task = None
        if server is None or task is None:
            return
        # uvicorn takes whole seconds; rounding up never cuts a request short.
        server.config.timeout_graceful_shutdown = math.ceil(grace)
        server.should_exit = True
        done, _ = await asyncio.wait({task}, timeout=grace + _STOP_MARGIN_S)
        if not done:
            log.warning("%s: shutdown took longer than %.1fs; cancelling it", self.label, grace)
            task.cancel()
            await asyncio.wait({task})
        if not task.cancelled() and task.exception() is not None:
            log.error("%s: error while shutting down", self.label, exc_info=task.exception())
