"""Serving one Executor replica over gRPC, with health and graceful drain."""

from plait.serve.handler import RequestHandler
from plait.serve.processor import Processor
from plait.serve.server import ExecutorServer, PlaitServicer, serve_replica, server_options

__all__ = [
    "ExecutorServer",
    "PlaitServicer",
    "Processor",
    "RequestHandler",
    "serve_replica",
    "server_options",
]
