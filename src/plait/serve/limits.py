"""Backpressure: a Processor wrapper that bounds how much work a server takes on.

At most ``max_concurrent`` requests run and at most ``max_queue`` wait for a slot; past that a
request is refused at once with :class:`ResourceExhaustedError` (gRPC RESOURCE_EXHAUSTED, HTTP
429 with ``Retry-After``), so a flood costs a bounded amount of memory instead of an ever longer
queue.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

from plait.errors import ResourceExhaustedError
from plait.serve.processor import Processor
from plait.wire import plait_pb2 as pb

RETRY_AFTER_S = 1.0


class AdmissionLimit:
    """Wraps a :class:`Processor`; refuses work beyond ``max_concurrent`` running + ``max_queue`` waiting."""

    def __init__(self, inner: Processor, *, max_concurrent: int, max_queue: int) -> None:
        if max_concurrent < 1 or max_queue < 0:
            raise ValueError("max_concurrent must be >= 1 and max_queue >= 0")
        self.inner = inner
        self.name = inner.name
        self.max_concurrent = max_concurrent
        self.max_queue = max_queue
        self._slots = asyncio.Semaphore(max_concurrent)
        self._waiting = 0

    @property
    def running(self) -> int:
        return self.max_concurrent - self._slots._value

    @property
    def waiting(self) -> int:
        """Requests queued for a slot now."""
        return self._waiting

    async def _admit(self) -> None:
        if self._slots.locked() and self._waiting >= self.max_queue:
            raise ResourceExhaustedError(
                f"{self.name!r} is at capacity ({self.max_concurrent} requests running, {self._waiting} "
                f"waiting); retry in {RETRY_AFTER_S:g}s or raise max_concurrent/max_queue",
                retry_after=RETRY_AFTER_S,
                executor=self.name,
            )
        self._waiting += 1
        try:
            await self._slots.acquire()
        finally:
            self._waiting -= 1

    async def process(self, request: pb.Request, *, timeout: float | None = None) -> pb.Response:
        await self._admit()
        try:
            return await self.inner.process(request, timeout=timeout)
        finally:
            self._slots.release()

    async def stream(
        self, request: pb.Request, *, timeout: float | None = None
    ) -> AsyncIterator[pb.Response]:
        await self._admit()
        try:
            async for response in self.inner.stream(request, timeout=timeout):
                yield response
        finally:
            self._slots.release()

    def describe(self) -> pb.DescribeResponse:
        return self.inner.describe()

    def ready(self) -> bool:
        return self.inner.ready()


def limited(inner: Processor, max_concurrent: int | None, max_queue: int) -> Processor:
    """``inner`` behind an :class:`AdmissionLimit`, or as it is when ``max_concurrent`` is None."""
    if max_concurrent is None:
        return inner
    return AdmissionLimit(inner, max_concurrent=max_concurrent, max_queue=max_queue)


def queue_depth(processor: Processor) -> Callable[[], float]:
    """Requests waiting for an admission slot in ``processor`` (0 when it has no limit)."""
    if isinstance(processor, AdmissionLimit):
        return lambda: float(processor.waiting)
    return lambda: 0.0
