"""gRPC side of the gateway's security: credentials checked per call, limits as server options."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from plait.config import ServerOptions
from plait.errors import PlaitError
from plait.security.auth import OPEN_GRPC_PREFIX, Authenticator, AuthRequest, authenticator_for
from plait.security.tls import grpc_server_credentials
from plait.wire import error_metadata


def _refuse(error: PlaitError, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    """A handler of the same kind as ``handler`` that ends the call with ``error``, reading nothing."""

    async def abort(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        await context.abort(error.grpc_code, error.message, trailing_metadata=error_metadata(error))

    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(abort)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(abort)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(abort)
    return grpc.unary_unary_rpc_method_handler(abort)


class AuthInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Refuses calls whose metadata the authenticator does not accept (UNAUTHENTICATED).
    Health checks pass unasked."""

    def __init__(self, authenticator: Authenticator) -> None:
        self.authenticator = authenticator

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        method: str = handler_call_details.method
        if method.startswith(OPEN_GRPC_PREFIX):
            return await continuation(handler_call_details)
        headers = {
            key: value
            for key, value in handler_call_details.invocation_metadata or ()
            if isinstance(value, str)
        }
        request = AuthRequest(protocol="grpc", path=method, headers=headers)
        handler = await continuation(handler_call_details)
        if handler is None or await self.authenticator.allows(request):
            return handler
        return _refuse(self.authenticator.refusal(request), handler)


def grpc_limit_options(options: ServerOptions) -> list[tuple[str, Any]]:
    """The gateway's limits as gRPC server options (see docs/security.md for each)."""
    out: list[tuple[str, Any]] = [
        # The soft limit refuses calls past it only at random; the hard one refuses them all.
        ("grpc.max_metadata_size", options.max_header_bytes),
        ("grpc.absolute_max_metadata_size", options.max_header_bytes),
        ("grpc.max_connection_idle_ms", int(options.idle_timeout * 1000)),
        ("grpc.server_handshake_timeout_ms", int(options.header_timeout * 1000)),
    ]
    if options.max_connections is not None:
        out.append(("grpc.max_allowed_incoming_connections", options.max_connections))
    return out


def grpc_interceptors(options: ServerOptions) -> list[grpc.aio.ServerInterceptor]:
    """The gateway's gRPC interceptors: authentication, when the options ask for it."""
    authenticator = authenticator_for(options)
    return [] if authenticator is None else [AuthInterceptor(authenticator)]


def add_port(server: grpc.aio.Server, address: str, options: ServerOptions) -> int:
    """Bind ``address``: with TLS when the options name a certificate, else in the clear."""
    if options.ssl_certfile is not None and options.ssl_keyfile is not None:
        credentials = grpc_server_credentials(options.ssl_certfile, options.ssl_keyfile)
        return int(server.add_secure_port(address, credentials))
    return int(server.add_insecure_port(address))
