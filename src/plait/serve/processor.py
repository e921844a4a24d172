"""``Processor``: what a protocol server serves. An executor replica and a Flow's router both are one.

A processor takes and returns ``plait.v1`` messages and raises :class:`plait.errors.PlaitError`;
protocol servers (gRPC here, HTTP and WebSocket in the gateway) only translate.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol, runtime_checkable

from plait.wire import plait_pb2 as pb


@runtime_checkable
class Processor(Protocol):
    name: str

    async def process(self, request: pb.Request, *, timeout: float | None = None) -> pb.Response:
        """Serve one request; ``timeout`` is what is left of the caller's deadline (seconds)."""
        ...

    def stream(self, request: pb.Request, *, timeout: float | None = None) -> AsyncIterator[pb.Response]:
        """Serve a request to a streaming endpoint: one response per produced document."""
        ...

    def describe(self) -> pb.DescribeResponse:
        """Endpoints and their schemas."""
        ...

    def ready(self) -> bool:
        """True when requests can be served (for readiness probes)."""
        ...
