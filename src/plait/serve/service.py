"""The ``plait.v1.Plait`` service registered on a gRPC server, with a request parser that never raises.

gRPC's generated registration parses each message with ``FromString``, whose error on bad bytes
reaches the caller as UNKNOWN (and the server's log as an unexpected exception; under
``ProcessStream`` as a task-group failure). Here bad bytes parse to a :class:`MalformedMessage`
that the servicer answers with INVALID_ARGUMENT, like any other bad request.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
from google.protobuf.message import DecodeError

from plait.errors import BadRequestError
from plait.wire import SERVICE_NAME
from plait.wire import plait_pb2 as pb

M = TypeVar("M")


@dataclass(frozen=True, slots=True)
class MalformedMessage:
    """What a message that is not valid protobuf parses to."""

    error: BadRequestError


def _parser(message: type[M], what: str) -> Callable[[bytes], M | MalformedMessage]:
    parse: Callable[[bytes], M] = message.FromString  # type: ignore[attr-defined]

    def parse_or_report(data: bytes) -> M | MalformedMessage:
        try:
            return parse(data)
        except (DecodeError, ValueError, RuntimeError) as e:
            return MalformedMessage(BadRequestError(f"the {what} is not a valid plait.v1 message: {e}"))

    return parse_or_report


parse_request = _parser(pb.Request, "request")
"""Bytes → ``pb.Request``, or a :class:`MalformedMessage` saying why not."""
parse_describe_request = _parser(pb.DescribeRequest, "describe request")


def add_plait_servicer(servicer: Any, server: grpc.aio.Server) -> None:
    """Register ``servicer`` (a :class:`~plait.serve.PlaitServicer`) as ``plait.v1.Plait`` on ``server``."""
    out = pb.Response.SerializeToString
    handlers = {
        "Process": grpc.unary_unary_rpc_method_handler(
            servicer.Process, request_deserializer=parse_request, response_serializer=out
        ),
        "Stream": grpc.unary_stream_rpc_method_handler(
            servicer.Stream, request_deserializer=parse_request, response_serializer=out
        ),
        "ProcessStream": grpc.stream_stream_rpc_method_handler(
            # it yields serialized responses (several may be joined into one message)
            servicer.ProcessStream,
            request_deserializer=parse_request,
            response_serializer=None,
        ),
        "Describe": grpc.unary_unary_rpc_method_handler(
            servicer.Describe,
            request_deserializer=parse_describe_request,
            response_serializer=pb.DescribeResponse.SerializeToString,
        ),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
    server.add_registered_method_handlers(SERVICE_NAME, handlers)
