"""Serving one Executor replica over gRPC, with health and graceful drain.

Names load on first use: a gateway needs the servicer (:mod:`plait.serve.servicer`), not the
executor side (the handler, the document types, numpy)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from plait._lazy import lazy_getattr

if TYPE_CHECKING:
    from plait.serve.handler import RequestHandler
    from plait.serve.processor import Processor
    from plait.serve.server import ExecutorServer, serve_replica
    from plait.serve.servicer import PlaitServicer, server_options

_EXPORTS = {
    "ExecutorServer": "plait.serve.server",
    "PlaitServicer": "plait.serve.servicer",
    "Processor": "plait.serve.processor",
    "RequestHandler": "plait.serve.handler",
    "serve_replica": "plait.serve.server",
    "server_options": "plait.serve.servicer",
}

__all__ = [
    "ExecutorServer",
    "PlaitServicer",
    "Processor",
    "RequestHandler",
    "serve_replica",
    "server_options",
]

__getattr__ = lazy_getattr(__name__, globals(), _EXPORTS)


def __dir__() -> list[str]:
    return sorted(__all__)
