"""Serving one Executor replica over gRPC, with health and graceful drain."""

from plait.serve.handler import RequestHandler
from plait.serve.server import ExecutorServer, serve_replica

__all__ = ["ExecutorServer", "RequestHandler", "serve_replica"]
