"""Limits every protocol of a gateway shares: documents per request and a request's time.

:class:`RequestBounds` wraps the gateway's processor (as the admission limit does), so gRPC,
HTTP and WebSocket requests meet the same bounds. The per-connection limits (bytes, headers,
connections, idle time) belong to each protocol's server: see :mod:`plait.security.http_guard`
and :func:`plait.security.grpc_guard.grpc_limit_options`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

from starlette.types import Message, Receive, Send

from plait.config import ServerOptions
from plait.errors import PayloadTooLargeError
from plait.serve.processor import Processor
from plait.wire import plait_pb2 as pb

_FIXARRAY, _ARRAY16, _ARRAY32 = 0x90, 0xDC, 0xDD


def count_docs(data: bytes) -> int:
    """How many documents codec bytes hold, from the array header alone (O(1)). Bytes that are
    not a codec array count 0: the decoder refuses them where they are decoded."""
    if len(data) < 2:
        return 0
    head = data[1]
    if head & 0xF0 == _FIXARRAY:
        return head & 0x0F
    if head == _ARRAY16:
        return int.from_bytes(data[2:4], "big")
    if head == _ARRAY32:
        return int.from_bytes(data[2:6], "big")
    return 0


class RequestBounds:
    """A processor that refuses requests with more than ``max_docs`` documents and gives each
    request at most ``request_timeout`` seconds (a client's own, shorter timeout still wins)."""

    def __init__(self, inner: Processor, *, max_docs: int | None, request_timeout: float | None) -> None:
        self.inner = inner
        self.name = inner.name
        self.max_docs = max_docs
        self.request_timeout = request_timeout

    def _admit(self, request: pb.Request, timeout: float | None) -> float | None:
        if self.max_docs is not None:
            count = count_docs(request.docs)
            if request.docs_matrix:  # a join's branches, when a caller sends them itself
                count += sum(count_docs(branch) for branch in request.docs_matrix)
            if count > self.max_docs:
                raise PayloadTooLargeError(
                    f"request of {count} documents is over this server's limit of {self.max_docs} "
                    "(max_docs_per_request); send fewer documents per request (request_size)",
                    limit=self.max_docs,
                    request_id=request.request_id,
                )
        cap = self.request_timeout
        if cap is None:
            return timeout
        return cap if timeout is None else min(timeout, cap)

    async def process(self, request: pb.Request, *, timeout: float | None = None) -> pb.Response:
        return await self.inner.process(request, timeout=self._admit(request, timeout))

    async def stream(
        self, request: pb.Request, *, timeout: float | None = None
    ) -> AsyncIterator[pb.Response]:
        timeout = self._admit(request, timeout)
        responses = self.inner.stream(request, timeout=timeout)
        try:
            async for response in responses:
                yield response
        finally:
            aclose = getattr(responses, "aclose", None)
            if aclose is not None:
                await aclose()

    def describe(self) -> pb.DescribeResponse:
        return self.inner.describe()

    def ready(self) -> bool:
        return self.inner.ready()


def bounded(inner: Processor, options: ServerOptions) -> Processor:
    """``inner`` behind :class:`RequestBounds` with the options' limits (as it is when unlimited)."""
    if options.max_docs_per_request is None and options.request_timeout is None:
        return inner
    return RequestBounds(
        inner, max_docs=options.max_docs_per_request, request_timeout=options.request_timeout
    )


IDLE_CLOSE_CODE = 1001  # "going away"


def idle_closing(receive: Receive, send: Send, busy: Callable[[], bool], idle_timeout: float) -> Receive:
    """A WebSocket ``receive`` that ends the connection once it has been idle ``idle_timeout``
    seconds: no frame received and, per ``busy()``, no request of it running."""

    async def receive_or_idle() -> Message:
        while True:
            try:
                async with asyncio.timeout(idle_timeout):
                    return await receive()  # cancellation-safe: uvicorn's receive is a queue get
            except TimeoutError:
                if busy():
                    continue
            await send({"type": "websocket.close", "code": IDLE_CLOSE_CODE, "reason": "idle"})
            return {"type": "websocket.disconnect", "code": IDLE_CLOSE_CODE}

    return receive_or_idle
