"""Translate between plait exceptions and gRPC status, in both directions, through errors.STATUS_TABLE."""

from __future__ import annotations

import math
from typing import Any, NoReturn

import grpc
import msgspec

from plait.errors import ERROR_METADATA_KEY, BadRequestError, PlaitError, error_from_grpc
from plait.wire import plait_pb2 as pb

SERVICE_NAME = "plait.v1.Plait"

PROTOBUF_TYPE = "application/x-protobuf"
"""Content type of plait's binary HTTP bodies: a ``plait.v1.Request`` in, a ``plait.v1.Response``
out (docs in the plait codec). plait's own HTTP client sends them; JSON stays for everyone else."""


_DETAILS = msgspec.json.Encoder(enc_hook=str)  # a value JSON cannot hold becomes its str()


def error_details(error: PlaitError) -> bytes:
    """The error's structured details as JSON, as every protocol carries them."""
    return _DETAILS.encode(error.to_details())


def error_metadata(error: PlaitError) -> tuple[tuple[str, bytes], ...]:
    """Trailing metadata carrying the error's structured details."""
    return ((ERROR_METADATA_KEY, error_details(error)),)


def message_timeout(request: pb.Request) -> float | None:
    """The ``timeout`` a streamed request carries (a WebSocket binary frame, a ``ProcessStream``
    message), in seconds; None when it has none. A negative or NaN one is a BadRequestError."""
    value = request.timeout
    if value < 0 or math.isnan(value):
        raise BadRequestError(
            f"timeout must be a positive number of seconds, got {value}",
            request_id=request.request_id or None,
        )
    return value or None


def error_reply(request_id: str, error: PlaitError) -> pb.Response:
    """The reply to one request of a stream (``ProcessStream``, a WebSocket binary frame) that failed."""
    return pb.Response(request_id=request_id, error=error_details(error))


def fail_with(context: Any, error: PlaitError) -> None:
    """Set the status for ``error`` (details in trailing metadata) on a unary call, for the handler
    to return instead of raising: cheaper than :func:`abort_with`, which unwinds through an
    exception. grpc.aio discards a response returned with a non-OK status."""
    context.set_code(error.grpc_code)
    context.set_details(str(error.message))
    context.set_trailing_metadata(error_metadata(error))


async def abort_with(context: Any, error: PlaitError) -> NoReturn:
    """End the RPC with the status for ``error`` and its details in trailing metadata."""
    await context.abort(error.grpc_code, str(error.message), trailing_metadata=error_metadata(error))
    raise AssertionError("unreachable: context.abort raises")  # pragma: no cover


def error_from_rpc_error(err: grpc.RpcError) -> PlaitError:
    """A client-side ``grpc.aio.AioRpcError`` as a plait exception."""
    code = err.code() if hasattr(err, "code") else grpc.StatusCode.UNKNOWN
    message = err.details() if hasattr(err, "details") else str(err)
    blob: bytes | None = None
    trailing = err.trailing_metadata() if hasattr(err, "trailing_metadata") else None
    for key, value in trailing or ():
        if key == ERROR_METADATA_KEY:
            blob = value if isinstance(value, bytes) else str(value).encode()
    return error_from_grpc(code, message or "", blob)
