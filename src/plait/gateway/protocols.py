"""Protocol servers: each serves a :class:`~plait.serve.Processor` over one protocol on one port.

Adding a protocol is one module with a :class:`ProtocolServer` subclass and one entry in
:data:`PROTOCOL_SERVERS`.
"""

from __future__ import annotations

import abc
import logging
from collections.abc import Callable
from typing import ClassVar

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from plait.config import ServerOptions
from plait.errors import StartupError
from plait.security.grpc_guard import add_port, grpc_interceptors, grpc_limit_options
from plait.serve import PlaitServicer, Processor, server_options
from plait.serve.service import add_plait_servicer
from plait.wire import SERVICE_NAME

log = logging.getLogger("plait.gateway")


class ProtocolServer(abc.ABC):
    """One listening socket serving a processor. ``start`` returns once it accepts requests."""

    protocol: ClassVar[str]

    def __init__(self, processor: Processor, host: str, port: int, options: ServerOptions) -> None:
        self.processor = processor
        self.host = host
        self.port = port
        self.options = options

    @abc.abstractmethod
    async def start(self) -> None: ...

    @abc.abstractmethod
    async def stop(self, grace: float) -> None:
        """Refuse new requests, give in-flight ones ``grace`` seconds, then close."""

    async def set_serving(self, serving: bool) -> None:  # noqa: B027 - optional hook
        """Health reporting hook (gRPC reports through grpc.health.v1; HTTP asks the processor)."""


class GrpcServer(ProtocolServer):
    protocol = "grpc"

    def __init__(self, processor: Processor, host: str, port: int, options: ServerOptions) -> None:
        super().__init__(processor, host, port, options)
        self._server: grpc.aio.Server | None = None
        self._servicer: PlaitServicer | None = None
        self._health = health.aio.HealthServicer()

    async def start(self) -> None:
        options = server_options(
            self.options.max_request_bytes,
            reuse_port=False,
            max_connection_age=self.options.max_connection_age,
            max_connection_age_grace=self.options.max_connection_age_grace,
        )
        server = grpc.aio.server(
            options=[*options, *grpc_limit_options(self.options)],
            interceptors=grpc_interceptors(self.options),
        )
        self._servicer = PlaitServicer(self.processor, receive_limit=self.options.max_request_bytes)
        add_plait_servicer(self._servicer, server)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        try:
            add_port(server, f"{self.host}:{self.port}", self.options)
        except RuntimeError as e:
            raise StartupError(
                f"gateway cannot bind gRPC on {self.host}:{self.port} (port in use?): {e}"
            ) from e
        await server.start()
        self._server = server
        await self.set_serving(self.processor.ready())

    async def set_serving(self, serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for service in ("", SERVICE_NAME):
            await self._health.set(service, status)

    async def stop(self, grace: float) -> None:
        await self._health.enter_graceful_shutdown()
        if self._servicer is not None:
            self._servicer.begin_drain()
        if self._server is not None:
            await self._server.stop(grace)


def _http() -> type[ProtocolServer]:
    from plait.gateway.http_server import HttpServer

    return HttpServer


def _websocket() -> type[ProtocolServer]:
    from plait.gateway.websocket_server import WebSocketServer

    return WebSocketServer


PROTOCOL_SERVERS: dict[str, Callable[[], type[ProtocolServer]]] = {
    "grpc": lambda: GrpcServer,
    "http": _http,
    "websocket": _websocket,
}
"""Protocol → loader of its server class. Loaders import on use: a gRPC-only gateway never loads
FastAPI or uvicorn, which keeps its start-up short."""


def server_class(protocol: str) -> type[ProtocolServer]:
    """The ProtocolServer class for ``protocol`` ('grpc', 'http' or 'websocket')."""
    try:
        loader = PROTOCOL_SERVERS[protocol]
    except KeyError:
        raise StartupError(f"unknown protocol {protocol!r}; choose from {sorted(PROTOCOL_SERVERS)}") from None
    return loader()
