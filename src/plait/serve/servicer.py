"""``plait.v1.Plait`` over any :class:`~plait.serve.processor.Processor`: the gRPC servicer both
executor replicas (:mod:`plait.serve.server`) and gateways serve, and the gRPC server options they
share. Imports nothing of the executor side (no document types, no numpy)."""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterator, Callable
from typing import Any

from plait.errors import (
    BadRequestError,
    DeadlineExceededError,
    PayloadTooLargeError,
    PlaitError,
    UnavailableError,
)
from plait.observe.tracing import incoming, trace_headers
from plait.serve.processor import Processor
from plait.serve.service import MalformedMessage
from plait.wire import abort_with, fail_with, plait_pb2_grpc
from plait.wire import plait_pb2 as pb
from plait.wire.lanes import batch_limit, batch_metadata, join_responses, take_batch
from plait.wire.retry import SHUTTING_DOWN
from plait.wire.shm import SHM_KEY, Region, answer_in_slot, take_docs
from plait.wire.shm import enabled as shm_enabled
from plait.wire.status import error_reply, message_timeout

STREAM_WINDOW = 64
"""Requests one ProcessStream call runs at once; further ones wait to be read (backpressure)."""
SLOTTED_PER_TURN = 4
"""Requests of one joined message whose docs came through shared memory started per loop turn."""
UNLIMITED_STREAM_WINDOW = 4096
"""Requests one stream may have running on a replica without an admission limit (max_concurrent=None)."""


_EMPTY = pb.Response()


def _remaining(context: Any) -> float | None:
    remaining = context.time_remaining()
    return None if remaining is None else max(0.0, float(remaining))


class PlaitServicer(plait_pb2_grpc.PlaitServicer):  # type: ignore[misc]
    """``plait.v1.Plait`` over any :class:`Processor` (an executor's handler or a Flow's router)."""

    def __init__(
        self, processor: Processor, *, stream_window: int = STREAM_WINDOW, receive_limit: int | None = None
    ) -> None:
        """``receive_limit``: the server's largest message received, in bytes (None: no limit);
        callers keep joined requests under it."""
        self.handler = processor
        self._batch_metadata = batch_metadata(receive_limit)
        self._receive_limit = receive_limit
        self._stream_window = stream_window
        self._description = processor.describe()
        self._trace_context = bool(getattr(processor, "wants_trace_context", False))
        self._draining = False
        self._streams: set[Callable[[], None]] = set()

    def begin_drain(self) -> None:
        """Shutting down: every ``ProcessStream`` refuses new requests (UNAVAILABLE, "server is
        shutting down", which callers send again elsewhere) and ends once its requests in flight
        are answered, so the server's stop need not wait out its grace period for open streams."""
        self._draining = True
        for wake in list(self._streams):
            wake()

    async def Process(self, request: pb.Request | MalformedMessage, context: Any) -> pb.Response:
        if isinstance(request, MalformedMessage):
            fail_with(context, request.error)
            return _EMPTY
        if self._trace_context:  # each RPC runs in its own task: its context is this call's alone
            incoming.set(trace_headers(context.invocation_metadata() or ()))
        try:
            return await self.handler.process(request, timeout=_remaining(context))
        except PlaitError as e:
            fail_with(context, e)
            return _EMPTY

    async def Stream(
        self, request: pb.Request | MalformedMessage, context: Any
    ) -> AsyncIterator[pb.Response]:
        if isinstance(request, MalformedMessage):
            await abort_with(context, request.error)
        if self._trace_context:
            incoming.set(trace_headers(context.invocation_metadata() or ()))
        try:
            async for response in self.handler.stream(request, timeout=_remaining(context)):
                yield response
        except PlaitError as e:
            await abort_with(context, e)

    async def ProcessStream(self, request_iterator: Any, context: Any) -> AsyncIterator[bytes]:
        """Requests as messages of one long-lived call (how plait's gRPC client sends unary calls):
        each runs concurrently (up to ``STREAM_WINDOW`` per stream) under its own ``timeout`` and
        the stream's deadline; a ``cancel`` message stops the request it names, unanswered. A failed
        request is answered with ``error``; the stream goes on. When the caller goes away, every
        request of the stream is cancelled. A caller that reads joined responses (``plait-batch``
        in its metadata) gets those that are ready at once in one message; joined requests
        (``Request.batch``) are read as if they had come one by one. A caller on this host that
        offers a shared-memory region gets large documents through it (:mod:`plait.wire.shm`).
        Yields serialized responses."""
        metadata = context.invocation_metadata() or ()
        if self._trace_context:
            incoming.set(trace_headers(metadata))
        limit = batch_limit(metadata)  # None: the caller reads no joined responses
        region = _attach(metadata)
        # At once, so the caller knows its stream was accepted before it sends (plait.wire.lanes),
        # that it may join requests, and whether the region is mapped here.
        accepted = self._batch_metadata if region is None else (*self._batch_metadata, (SHM_KEY, "1"))
        try:
            await context.send_initial_metadata(accepted)
        except BaseException:
            if region is not None:
                region.close()
            raise
        ready: collections.deque[bytes | PlaitError | None] = collections.deque()
        wake = asyncio.Event()
        window = asyncio.Semaphore(self._stream_window)
        running: dict[str, asyncio.Task[None]] = {}
        drained = False

        def put(item: pb.Response | PlaitError | None) -> None:
            ready.append(item.SerializeToString() if isinstance(item, pb.Response) else item)
            wake.set()

        def end_if_drained() -> None:
            nonlocal drained
            if self._draining and not running and not drained:
                drained = True
                put(None)

        async def one(request: pb.Request, slot: tuple[int, int] | None) -> None:
            try:
                response = await self._one_of_stream(request, context)
            finally:
                window.release()
                wanted = running.get(request.request_id) is asyncio.current_task()
                if wanted:
                    del running[request.request_id]
            # A cancelled request (whose executor went on anyway) never writes into its slot: the
            # caller may have been told it is free.
            if slot is not None and region is not None and wanted:
                answer_in_slot(region, *slot, response)
            put(response)
            end_if_drained()

        async def read_all() -> None:
            try:
                async with asyncio.TaskGroup() as tasks:
                    async for message in request_iterator:
                        if isinstance(message, MalformedMessage):  # its id is unknown: end the call
                            put(message.error)
                            return
                        joined = len(message.batch) > 1
                        slotted = 0
                        for request in message.batch or (message,):
                            if request.cancel:  # the caller gave up on this one: stop its work
                                task = running.pop(request.request_id, None)
                                if task is not None:
                                    task.cancel()
                                if request.HasField("shared"):  # the caller may reuse its slot now
                                    put(pb.Response(request_id=request.request_id))
                                continue
                            slot = None
                            if request.HasField("shared"):  # its docs are in the caller's region
                                slot = (request.shared.offset, request.shared.capacity)
                                refused = self._refuse_slot(request.request_id, request.shared.length)
                                if refused is None:
                                    wrong = take_docs(region, request)
                                    if wrong is not None:
                                        refused = error_reply(request.request_id, BadRequestError(wrong))
                                if refused is not None:
                                    put(refused)
                                    continue
                            if self._draining:
                                put(_shutting_down(request.request_id))
                                continue
                            await window.acquire()
                            running[request.request_id] = tasks.create_task(one(request, slot))
                            if joined and slot is not None:
                                slotted += 1
                                if slotted % SLOTTED_PER_TURN == 0:
                                    # Large documents (through shared memory, so their messages
                                    # are small and join) start a few per loop turn: those run,
                                    # and their responses leave (joined), before the next start.
                                    # All of a carrier at once would make each hop of a pipeline
                                    # hold the caller's whole window while the others wait; one
                                    # per turn would send every response alone. Small requests
                                    # still all start at once.
                                    await asyncio.sleep(0)
            finally:
                put(None)

        self._streams.add(end_if_drained)
        reader = asyncio.create_task(read_all())
        try:
            end_if_drained()
            while True:
                while not ready:
                    wake.clear()
                    await wake.wait()
                head = ready[0]
                if head is None:
                    break
                if isinstance(head, PlaitError):
                    await abort_with(context, head)
                if limit is not None:
                    yield join_responses(take_batch(ready, len, _is_bytes, limit))
                else:
                    ready.popleft()
                    yield head  # bytes: None and errors were dealt with above
            if not drained:
                await reader
        finally:
            self._streams.discard(end_if_drained)
            reader.cancel()
            if region is not None:
                region.close()

    def _refuse_slot(self, request_id: str, length: int) -> pb.Response | None:
        """An error reply for docs in a slot larger than this server takes in a message: shared
        memory is not a way around ``max_message_size``."""
        limit = self._receive_limit
        if limit is None or limit <= 0 or length <= limit:
            return None
        error = PayloadTooLargeError(
            f"message too large: documents of {length} bytes are over this server's limit of {limit} "
            "bytes; raise max_message_size on both ends, or send fewer docs per request (request_size)",
            request_id=request_id,
            limit=limit,
        )
        return error_reply(request_id, error)

    async def _one_of_stream(self, request: pb.Request, context: Any) -> pb.Response:
        """One request of a ``ProcessStream``: its response, or one that carries its error."""
        try:
            own = message_timeout(request)
            left = _remaining(context)
            if not own:  # no timeout of its own: the stream's deadline, if any, is the call's
                return await self.handler.process(request, timeout=left)
            try:
                async with asyncio.timeout(own):
                    return await self.handler.process(
                        request, timeout=own if left is None else min(own, left)
                    )
            except TimeoutError:
                raise DeadlineExceededError(
                    f"no response within the request's timeout of {own}s", timeout=own
                ) from None
        except PlaitError as e:
            return error_reply(request.request_id, e)

    async def Describe(
        self, request: pb.DescribeRequest | MalformedMessage, context: Any
    ) -> pb.DescribeResponse:
        if isinstance(request, MalformedMessage):
            await abort_with(context, request.error)
        return self._description


def _attach(metadata: Any) -> Region | None:
    """The shared-memory region the caller offers, mapped; None if it offers none or it cannot be
    mapped here (the caller is on another host)."""
    for key, value in metadata:
        if key == SHM_KEY and shm_enabled():
            return Region.attach(str(value))
    return None


def _is_bytes(item: object) -> bool:
    return type(item) is bytes


def _shutting_down(request_id: str) -> pb.Response:
    error = UnavailableError(f"{SHUTTING_DOWN}: send the request again, to another replica")
    return error_reply(request_id, error)


def server_options(
    max_message_size: int,
    reuse_port: bool,
    *,
    max_connection_age: float | None = None,
    max_connection_age_grace: float | None = None,
) -> list[tuple[str, Any]]:
    options: list[tuple[str, Any]] = [
        ("grpc.max_receive_message_length", max_message_size),
        ("grpc.max_send_message_length", -1),
        # gRPC turns SO_REUSEPORT on by default, which hides "port already in use"; only replicas
        # that deliberately share a public port get it.
        ("grpc.so_reuseport", 1 if reuse_port else 0),
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
    ]
    # A caller balancing over DNS (a gateway in front of a headless Service) resolves again when a
    # connection closes: closing connections now and then (gRPC adds +-10% jitter) is how new
    # replicas get traffic. Calls already running finish (within the grace, if one is set).
    if max_connection_age is not None:
        options.append(("grpc.max_connection_age_ms", int(max_connection_age * 1000)))
    if max_connection_age_grace is not None:
        options.append(("grpc.max_connection_age_grace_ms", int(max_connection_age_grace * 1000)))
    return options
