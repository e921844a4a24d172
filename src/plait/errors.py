"""The one exception tree of plait, and the table that maps it to gRPC and HTTP status.

Every boundary (gRPC server, gRPC client, HTTP server, HTTP client) translates through
:data:`STATUS_TABLE` so an error keeps its meaning from the executor that raised it to the caller
that receives it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import grpc
import msgspec

__all__ = [
    "BadRequestError",
    "ClientClosedError",
    "CodecError",
    "ConfigError",
    "DeadlineExceededError",
    "EndpointNotFoundError",
    "ExecutorError",
    "PayloadTooLargeError",
    "PlaitError",
    "ResourceExhaustedError",
    "SchemaError",
    "StartupError",
    "UnauthenticatedError",
    "UnavailableError",
    "error_from_details",
]


class PlaitError(Exception):
    """Base of every error plait raises on purpose."""

    grpc_code: ClassVar[grpc.StatusCode] = grpc.StatusCode.UNKNOWN
    http_status: ClassVar[int] = 500

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details: dict[str, Any] = details

    def to_details(self) -> dict[str, Any]:
        """JSON-able description that travels in gRPC trailing metadata / HTTP bodies."""
        return {"type": type(self).__name__, "message": self.message, **self.details}


class ConfigError(PlaitError):
    """A configuration (keyword arguments, YAML, CLI flags) that cannot be used."""

    grpc_code = grpc.StatusCode.INVALID_ARGUMENT
    http_status = 400


class StartupError(PlaitError):
    """A process that did not come up (crashed or not ready within ``timeout_ready``)."""

    grpc_code = grpc.StatusCode.UNAVAILABLE
    http_status = 503


class BadRequestError(PlaitError):
    """The request itself is wrong (malformed bytes, bad parameters)."""

    grpc_code = grpc.StatusCode.INVALID_ARGUMENT
    http_status = 400


class CodecError(BadRequestError):
    """Bytes that are not a valid plait document payload."""


class SchemaError(BadRequestError):
    """Documents or parameters that do not match the endpoint's schema; names the field path."""

    http_status = 422


class EndpointNotFoundError(PlaitError):
    """No handler for the requested endpoint."""

    grpc_code = grpc.StatusCode.NOT_FOUND
    http_status = 404


class PayloadTooLargeError(PlaitError):
    """A message over the configured maximum size."""

    grpc_code = grpc.StatusCode.RESOURCE_EXHAUSTED
    http_status = 413


class ResourceExhaustedError(PlaitError):
    """The server is at capacity; retry later."""

    grpc_code = grpc.StatusCode.RESOURCE_EXHAUSTED
    http_status = 429


class ExecutorError(PlaitError):
    """An executor's endpoint raised. ``details`` names the executor, endpoint and traceback."""

    grpc_code = grpc.StatusCode.INTERNAL
    http_status = 500

    def __str__(self) -> str:
        d = self.details
        head = self.message
        where = []
        if d.get("executor"):
            where.append(f"executor {d['executor']!r}")
        if d.get("endpoint"):
            where.append(f"endpoint {d['endpoint']!r}")
        if where:
            head = f"{head} (in {', '.join(where)})"
        tb = d.get("traceback")
        return f"{head}\n{tb}" if tb else head


class UnavailableError(PlaitError):
    """The server cannot be reached or is shutting down."""

    grpc_code = grpc.StatusCode.UNAVAILABLE
    http_status = 503


class DeadlineExceededError(PlaitError):
    """The request did not finish within its timeout."""

    grpc_code = grpc.StatusCode.DEADLINE_EXCEEDED
    http_status = 504


class UnauthenticatedError(PlaitError):
    """Missing or wrong credentials."""

    grpc_code = grpc.StatusCode.UNAUTHENTICATED
    http_status = 401


class ClientClosedError(PlaitError):
    """A client used after ``close()``."""


@dataclass(frozen=True)
class _Row:
    error: type[PlaitError]
    grpc_code: grpc.StatusCode
    http_status: int


# Decoding direction: a gRPC status with no plait details maps to the first row with its code.
STATUS_TABLE: tuple[_Row, ...] = tuple(
    _Row(cls, cls.grpc_code, cls.http_status)
    for cls in (
        BadRequestError,
        CodecError,
        SchemaError,
        EndpointNotFoundError,
        ResourceExhaustedError,
        PayloadTooLargeError,
        ExecutorError,
        UnavailableError,
        DeadlineExceededError,
        UnauthenticatedError,
        ConfigError,
        StartupError,
        PlaitError,
    )
)
_BY_NAME: dict[str, type[PlaitError]] = {row.error.__name__: row.error for row in STATUS_TABLE}
_BY_GRPC: dict[grpc.StatusCode, type[PlaitError]] = {}
for _row in STATUS_TABLE:
    _BY_GRPC.setdefault(_row.grpc_code, _row.error)
_BY_GRPC[grpc.StatusCode.CANCELLED] = UnavailableError
_BY_GRPC[grpc.StatusCode.INTERNAL] = ExecutorError

ERROR_METADATA_KEY = "plait-error-bin"


def error_from_details(details: dict[str, Any]) -> PlaitError:
    """Rebuild an exception from :meth:`PlaitError.to_details` output."""
    fields = dict(details)
    cls = _BY_NAME.get(str(fields.pop("type", "")), PlaitError)
    message = str(fields.pop("message", "error"))
    return cls(message, **fields)


def error_from_grpc(code: grpc.StatusCode, message: str, metadata_details: bytes | None) -> PlaitError:
    """Translate a gRPC status (and the optional plait details blob) into a plait exception."""
    if metadata_details:
        try:
            return error_from_details(msgspec.json.decode(metadata_details))
        except (ValueError, TypeError):
            pass
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED and "larger than max" in message:
        return PayloadTooLargeError(
            f"message too large: {message}. Raise max_message_size on both ends, or send fewer docs "
            "per request (request_size)."
        )
    cls = _BY_GRPC.get(code, PlaitError)
    return cls(message or code.name, grpc_code=code.name)
