"""The ``plait.v1`` wire protocol: generated protobuf/gRPC code and status mapping."""

from plait.wire import plait_pb2, plait_pb2_grpc
from plait.wire.status import (
    PROTOBUF_TYPE,
    SERVICE_NAME,
    abort_with,
    error_from_rpc_error,
    error_metadata,
    fail_with,
)

__all__ = [
    "PROTOBUF_TYPE",
    "SERVICE_NAME",
    "abort_with",
    "error_from_rpc_error",
    "error_metadata",
    "fail_with",
    "plait_pb2",
    "plait_pb2_grpc",
]
