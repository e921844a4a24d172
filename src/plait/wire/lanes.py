"""Unary calls carried as messages of long-lived ``ProcessStream`` calls (*lanes*).

Used by plait's gRPC client (to a gateway or to replicas) and by the gateway (to each replica).

A unary gRPC call in grpc.aio costs a call object, an HTTP/2 stream, headers both ways and a task
on each side; a message on a stream that is already open costs one frame each way. So the gRPC
client sends each request as one ``plait.v1.Request`` message on a ``ProcessStream`` (a *lane*) and
matches the ``plait.v1.Response`` that answers it by ``request_id``: same server, same processing,
about half the per-request CPU on both ends.

What a unary call gives is kept:

- **deadline**: the request's ``timeout`` travels in the message and the server enforces it; the
  client stops waiting at the same time.
- **cancellation**: a caller that gives up (cancelled, or timed out) sends a ``cancel`` message
  naming the request, and the server cancels its work downstream; a client that goes away ends
  the lane, which cancels everything still running on it.
- **errors**: a failed request is answered with the error's details; the lane goes on.
- **failover**: a lane that could not be opened (refused, no replica ready) fails its requests
  with UNAVAILABLE "never started"; they are sent again on a new lane (``with_retries``).
- **coalescing**: requests that wait while a write is in flight go out together, as one message
  (``Request.batch``), and a server sends the responses that are ready together
  (``Response.batch``), each side only once the other said it reads them (``plait-batch``
  metadata). Under load this divides grpc.aio's per-message cost (a poller-thread hop and a
  syscall per send and per receive) among the requests; a lone request goes out alone, at once.
- **balancing**: one lane per server address (each on a channel of its own), picked in turn,
  passing over for a moment an address that refused one; a lane is replaced after
  ``LANE_MAX_AGE`` seconds (so a client follows new replicas behind DNS, as a server's maximum
  connection age asks) and closed after ``LANE_IDLE`` seconds with nothing in flight (so an idle
  client holds no call open and servers can close idle connections).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import logging
import time
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

import grpc
import msgspec

from plait.errors import ERROR_METADATA_KEY, error_from_details
from plait.wire import SERVICE_NAME
from plait.wire import plait_pb2 as pb
from plait.wire.retry import SHUTTING_DOWN, never_started
from plait.wire.settle import settled
from plait.wire.shm import SHM_KEY, CallerSlots, Region, varint
from plait.wire.shm import enabled as shm_enabled

log = logging.getLogger("plait.wire")

LANE_MAX_AGE = 60.0
"""Seconds a lane takes new requests; then a new one opens (the old one finishes what it has)."""
LANE_IDLE = 20.0
"""Seconds a lane stays open with nothing in flight."""

_END_WAIT_S = 1.0
"""How long a failed write waits for the call's status before giving the call up."""

BATCH_KEY = "plait-batch"
"""Metadata key by which each end of a ``ProcessStream`` says it reads several messages in one; its
value is the largest message that end receives, in bytes (0: no limit of its own)."""
BATCH_MAX_BYTES = 256 * 1024
"""Messages join one carrier up to this many bytes (or the receiver's limit, if lower); a larger
message goes alone."""
BATCH_MAX_COUNT = 256
_PART_OVERHEAD = 6
"""Bytes a message takes in a carrier besides its own: the field's tag and a length of 5 bytes at most."""


def batch_metadata(receive_limit: int | None) -> tuple[tuple[str, str], ...]:
    """The metadata entry saying this end reads joined messages of up to ``receive_limit`` bytes."""
    return ((BATCH_KEY, str(max(receive_limit or 0, 0))),)


def batch_limit(metadata: Any) -> int | None:
    """How large a carrier may be for the end that sent ``metadata``; None when it does not read
    joined messages (it sent no ``plait-batch``: a peer from before them)."""
    for key, value in metadata or ():
        if key == BATCH_KEY:
            try:
                limit = int(value)
            except (TypeError, ValueError):
                return None
            return BATCH_MAX_BYTES if limit <= 0 else min(BATCH_MAX_BYTES, limit)
    return None


_REQUEST_BATCH_TAG = b"\x4a"  # field 9 (Request.batch), length-delimited
_RESPONSE_BATCH_TAG = b"\x2a"  # field 5 (Response.batch), length-delimited


def _carrier(tag: bytes, parts: Sequence[bytes]) -> bytes:
    """One message whose repeated ``batch`` field holds ``parts`` (each a serialized message):
    protobuf encodes a repeated message field as the concatenation of its tagged elements."""
    return b"".join(b"".join((tag, varint(len(part)), part)) for part in parts)


def join_requests(parts: Sequence[bytes]) -> bytes:
    """Serialized ``Request``s as one serialized ``Request`` carrying them in ``batch``."""
    return parts[0] if len(parts) == 1 else _carrier(_REQUEST_BATCH_TAG, parts)


def join_responses(parts: Sequence[bytes]) -> bytes:
    """Serialized ``Response``s as one serialized ``Response`` carrying them in ``batch``."""
    return parts[0] if len(parts) == 1 else _carrier(_RESPONSE_BATCH_TAG, parts)


def take_batch(
    queue: Any, size: Callable[[Any], int], fits: Callable[[Any], bool], limit: int = BATCH_MAX_BYTES
) -> list[Any]:
    """Pop from the left of ``queue`` (a deque, not empty) what goes in one carrier of at most
    ``limit`` bytes: its first item (alone if it is that large), then the next while
    ``fits(item)``, up to ``BATCH_MAX_COUNT`` items."""
    first = queue.popleft()
    taken = [first]
    total = size(first) + _PART_OVERHEAD
    while queue and len(taken) < BATCH_MAX_COUNT and fits(queue[0]):
        total += size(queue[0]) + _PART_OVERHEAD
        if total > limit:
            break
        taken.append(queue.popleft())
    return taken


OpenStream = Callable[..., Any]
"""Opens one ``ProcessStream`` call (a ``grpc.aio.StreamStreamCall`` with no request iterator);
takes the call's extra metadata (a shared-memory region's offer) as its one argument, if any."""


def stream_opener(
    channel: grpc.aio.Channel, metadata: Any = None, receive_limit: int | None = None
) -> OpenStream:
    """Opens ``ProcessStream`` calls on ``channel`` (with ``metadata``: credentials), saying they
    read joined responses of up to ``receive_limit`` bytes (the channel's own limit; None: none)."""
    # Lanes write serialized requests (bytes: several may be joined into one message).
    multicallable = channel.stream_stream(
        f"/{SERVICE_NAME}/ProcessStream",
        request_serializer=None,
        response_deserializer=pb.Response.FromString,
    )
    base = (*(metadata or ()), *batch_metadata(receive_limit))

    def open_stream(extra: tuple[tuple[str, str], ...] = ()) -> Any:
        return multicallable(metadata=(*base, *extra))

    return open_stream


class _Lane:
    """One ``ProcessStream`` call and the reader task that routes its responses."""

    def __init__(self, open_stream: OpenStream) -> None:
        # A region for large documents, used once the server says it mapped it (plait.wire.shm).
        self._offered = Region.create() if shm_enabled() else None
        self.shared: CallerSlots | None = None
        self.rpc = open_stream(self._offered.offer()) if self._offered is not None else open_stream()
        self.pending: dict[str, asyncio.Future[pb.Response]] = {}
        self.opened = time.monotonic()
        self.dead = False
        self.retiring = False
        self.error: grpc.RpcError | None = None
        self.batch_limit: int | None = None
        """How large a carrier of requests may be; None: the server reads no joined requests (it
        says so in its initial metadata)."""
        self._outbox: collections.deque[tuple[bytes, asyncio.Future[None]]] = collections.deque()
        self._flusher: asyncio.Task[None] | None = None
        self._ids = itertools.count()
        self._idle: asyncio.TimerHandle | None = None
        self._write_failed = False
        self._background: set[asyncio.Task[None]] = set()  # held here: the loop keeps weak refs
        self._reader = asyncio.create_task(self._read(), name="plait-grpc-lane")
        # Servers send their initial metadata as a stream starts: until then nothing is written,
        # so a refused stream (unreachable, unauthenticated) reports the server's own status.
        self._accepted = asyncio.create_task(self._accept(), name="plait-grpc-lane-accept")

    async def _accept(self) -> None:
        offered, self._offered = self._offered, None
        try:
            metadata = await self.rpc.initial_metadata()
            self.batch_limit = batch_limit(metadata)
            if offered is not None and not self.dead and any(key == SHM_KEY for key, _ in metadata or ()):
                self.shared = CallerSlots(offered)
        except Exception:
            pass
        finally:
            if offered is not None:
                offered.unlink()  # mapped by both ends, or not mapped there: no file is left behind
                if self.shared is None:  # not mapped there (another host, or refused)
                    offered.close()

    def usable(self, now: float) -> bool:
        return not self.dead and not self.retiring and now - self.opened < LANE_MAX_AGE

    async def request(self, request: pb.Request) -> pb.Response:
        """Send ``request`` and wait for its response; raises ``grpc.RpcError`` if the lane ends first."""
        rid = request.request_id
        if not rid or rid in self.pending:  # ids must be unique on a lane: make one up
            rid = f"~{next(self._ids)}"
            request.request_id = rid
        future: asyncio.Future[pb.Response] = asyncio.get_running_loop().create_future()
        self.pending[rid] = future
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        sent = False
        try:
            if self.retiring or self.dead:
                raise _not_sent("the stream is closing")
            if not self._accepted.done():
                await asyncio.shield(self._accepted)
            if self.rpc.done():  # refused: its status says why
                raise await self._ended()
            sent = True  # from here the message goes out even if this caller is cancelled
            data = None if self.shared is None else self.shared.place(rid, request)
            try:
                await self._write(request.SerializeToString() if data is None else data)
            except (asyncio.InvalidStateError, grpc.aio.UsageError, grpc.RpcError):
                # The stream ended (the server closed it, or went away) as the request was sent:
                # it never left, so it can be sent again elsewhere.
                sent = False
                if self.shared is not None:
                    self.shared.release(rid)
                raise _not_sent("the stream ended as the request was sent") from None
            response = await future
        finally:
            if future.done() and not future.cancelled():
                future.exception()  # seen here, whether or not it was awaited (the write failed)
            if self.pending.pop(rid, None) is not None and sent and not self.dead:
                # The caller gave up (cancelled, timed out) while the server works on it: stop that.
                self._cancel_remote(rid)
            self._maybe_idle()
        if response.error and _SHUTTING_DOWN_BYTES in response.error:
            self.retire()  # never started there: the caller sends it again, on a new lane
            raise _not_sent(SHUTTING_DOWN)
        return response

    async def _write(self, message: bytes) -> None:
        """Write ``message`` (a serialized request) after those before it. Writes happen in a task
        of their own (the flusher), shielded from the caller: grpc.aio cancels the whole call when
        a write is cancelled, which would fail every other request on the lane. Messages that queue
        while a write is in flight go out together, in one carrier, once the server reads those."""
        sent = asyncio.get_running_loop().create_future()
        sent.add_done_callback(_seen)
        self._outbox.append((message, sent))
        if self._flusher is None:
            self._flusher = self._spawn(self._flush())
        await asyncio.shield(sent)

    async def _flush(self) -> None:
        outbox = self._outbox
        batch: list[tuple[bytes, asyncio.Future[None]]] = []
        try:
            while outbox:
                limit = self.batch_limit  # None: one message at a time
                if limit is None:
                    batch = [outbox.popleft()]
                else:
                    batch = take_batch(outbox, _outgoing_size, _always, limit)
                try:
                    await self.rpc.write(join_requests([data for data, _ in batch]))
                except Exception as e:
                    # grpc.aio then records INTERNAL as the call's status, over the server's own.
                    self._write_failed = True
                    for _, sent in batch:
                        if not sent.done():
                            sent.set_exception(e)
                else:
                    for _, sent in batch:
                        if not sent.done():
                            sent.set_result(None)
                batch = []
        finally:
            self._flusher = None
            if batch or outbox:  # cancelled (the loop is closing): nothing more goes out
                gone = _not_sent("the stream closed")
                for _, sent in (*batch, *outbox):
                    if not sent.done():
                        sent.set_exception(gone)
                outbox.clear()

    def _cancel_remote(self, rid: str) -> None:
        async def send_cancel() -> None:
            with contextlib.suppress(Exception):
                cancel = pb.Request(request_id=rid, cancel=True)
                if self.shared is not None and self.shared.holds(rid):
                    # Asks the server to say when it will not write into the request's slot.
                    cancel.shared.SetInParent()
                await self._write(cancel.SerializeToString())

        self._spawn(send_cancel())

    async def _ended(self) -> grpc.RpcError:
        if self.retiring:
            return _not_sent("the stream is closing")
        await asyncio.wait({self._reader}, timeout=_END_WAIT_S)
        if not self._reader.done():
            self.rpc.cancel()  # a call that failed a write but did not end: give it up
            await asyncio.wait({self._reader}, timeout=_END_WAIT_S)
        error = self.error
        if error is not None and error.code() not in (grpc.StatusCode.OK, grpc.StatusCode.CANCELLED):
            return error  # refused (unreachable, unauthenticated...): as a unary call would be
        return _not_sent("the stream ended")

    async def _read(self) -> None:
        error: grpc.RpcError
        try:
            while True:
                response = await self.rpc.read()
                if response is grpc.aio.EOF:
                    # The server ends a stream only once every request it read is answered: what
                    # is still pending was never read.
                    error = _not_sent("the server closed the stream (shutting down?)")
                    break
                for one in response.batch or (response,):
                    if self.shared:  # a slot is held
                        self.shared.answered(one)
                    future = self.pending.pop(one.request_id, None)
                    if future is not None and not future.done():
                        future.set_result(one)
                if self.retiring and not self.pending:
                    await self._close_writing()
        except grpc.RpcError as e:
            error = e
            if self._write_failed and e.code() == grpc.StatusCode.INTERNAL:
                # The status a failed write left, not the server's: the stream broke.
                error = _LaneEnded(
                    grpc.StatusCode.UNAVAILABLE, f"the stream to the server broke: {e.details()}"
                )
        except asyncio.CancelledError:
            error = _LaneEnded(grpc.StatusCode.CANCELLED, "the client closed")
        except Exception as e:  # never leave callers waiting on a dead reader
            log.exception("gRPC lane reader failed")
            error = _LaneEnded(grpc.StatusCode.UNAVAILABLE, f"stream reader failed: {e!r}")
        self.dead = True
        self.error = error
        if self.shared is not None:
            self.shared.close()
        pending, self.pending = self.pending, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(error)

    def retire(self) -> None:
        """Take no new requests; close once the ones in flight are answered."""
        self.retiring = True
        if not self.pending:
            self._spawn(self._close_writing())

    def _spawn(self, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(work)
        self._background.add(task)
        task.add_done_callback(self._settled)
        return task

    def _settled(self, task: asyncio.Task[None]) -> None:
        self._background.discard(task)
        if not task.cancelled():
            task.exception()  # seen, even when its caller stopped waiting for it

    def _maybe_idle(self) -> None:
        if not self.pending and not self.dead and self._idle is None:
            self._idle = asyncio.get_running_loop().call_later(LANE_IDLE, self.retire)

    async def _close_writing(self) -> None:
        with contextlib.suppress(Exception):
            while self._flusher is not None:  # what is queued goes out first
                await asyncio.shield(self._flusher)
            await self.rpc.done_writing()

    async def close(self) -> None:
        if self._idle is not None:
            self._idle.cancel()
        self.rpc.cancel()
        # The reader ends once gRPC has delivered the cancelled read; it is only cancelled if that
        # takes long. Ending with the stream's own events delivered matters when gRPC relays them
        # to this loop from another one (a process whose first gRPC loop is another thread's):
        # events still on their way when this loop closes would find it closed. The last of them
        # goes to the call's status watcher (plait.wire.settle).
        await asyncio.wait({self._reader, self._accepted}, timeout=_END_WAIT_S)
        for task in (self._reader, self._accepted):
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader
        if self._offered is not None:  # cancelled before it learnt whether the server mapped it
            self._offered.unlink()
            self._offered.close()
            self._offered = None
        await settled(self.rpc, _END_WAIT_S)


class _LaneEnded(grpc.RpcError):  # type: ignore[misc]
    """A lane's end, or a request's failure on it, as the ``grpc.RpcError`` a unary call would have
    raised (the error's details JSON in the trailing metadata, as servers send it)."""

    def __init__(self, code: grpc.StatusCode, details: str, blob: bytes | None = None) -> None:
        super().__init__(details)
        self._code = code
        self._details = details
        self._blob = blob

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details

    def trailing_metadata(self) -> tuple[tuple[str, str | bytes], ...]:
        return () if self._blob is None else ((ERROR_METADATA_KEY, self._blob),)


def _seen(future: asyncio.Future[None]) -> None:
    if not future.cancelled():
        future.exception()  # seen, even when the caller stopped waiting for it


def _outgoing_size(item: tuple[bytes, asyncio.Future[None]]) -> int:
    return len(item[0])


def _always(_: object) -> bool:
    return True


def _failed(blob: bytes) -> _LaneEnded:
    """A request's error reply, as the status a unary call would have ended with."""
    try:
        error = error_from_details(msgspec.json.decode(blob))
    except (ValueError, TypeError):
        return _LaneEnded(grpc.StatusCode.UNKNOWN, f"malformed error reply: {blob[:200]!r}")
    return _LaneEnded(error.grpc_code, error.message, blob)


async def call_on_lanes(mux: StreamMux, request: pb.Request, timeout: float | None) -> pb.Response:
    """``request`` on one of ``mux``'s lanes, answered within ``timeout``. Every failure raises the
    ``grpc.RpcError`` a unary ``Process`` call would have (so ``with_retries`` and the errors'
    translation treat both alike)."""
    request.timeout = timeout or 0.0  # the server enforces it, and cancels the work downstream
    try:
        async with asyncio.timeout(timeout):
            response = await mux.request(request)
    except TimeoutError:
        raise _LaneEnded(
            grpc.StatusCode.DEADLINE_EXCEEDED, f"no response within the timeout of {timeout}s"
        ) from None
    if response.error:
        raise _failed(response.error)
    return response


_SHUTTING_DOWN_BYTES = SHUTTING_DOWN.encode()
"""In the error a draining server answers requests with that it did not start (serve/server.py)."""


def _not_sent(why: str) -> _LaneEnded:
    # "no ready" marks it as never started (plait.wire.retry): it is sent again on a new lane.
    return _LaneEnded(grpc.StatusCode.UNAVAILABLE, f"no ready stream to send the request on: {why}")


DOWN_S = 1.0
"""Seconds an address whose lane could not be opened is passed over (while another is up)."""


class StreamMux:
    """One lane per server address (its own channel), used in turn; an address that refused a
    lane is skipped for ``DOWN_S`` seconds while others are up."""

    def __init__(self, openers: Sequence[OpenStream], own_channels: Sequence[grpc.aio.Channel] = ()) -> None:
        self._openers = list(openers)
        self._lanes: list[_Lane | None] = [None] * len(self._openers)
        self._down_until = [0.0] * len(self._openers)
        self._next = 0
        self._retired: set[_Lane] = set()
        self._own_channels = list(own_channels)
        """Channels opened for the lanes alone, closed with them."""

    @classmethod
    def per_address(
        cls,
        channel: grpc.aio.Channel,
        addresses: Sequence[str],
        open_one: Callable[[str], grpc.aio.Channel],
        metadata: Any = None,
        receive_limit: int | None = None,
    ) -> StreamMux:
        """A lane per address: on ``channel`` when it reaches one address only, else each on a
        channel of its own (``open_one(address)``), so that every address gets one whichever
        connects first; the mux closes those channels, never ``channel``. ``receive_limit``: the
        channels' largest message received, in bytes (None: no limit)."""
        own = [open_one(a) for a in addresses] if len(addresses) > 1 else []
        return cls([stream_opener(c, metadata, receive_limit) for c in own or [channel]], own)

    def _pick(self, now: float) -> int:
        count = len(self._lanes)
        for step in range(count):
            i = (self._next + step) % count
            if self._down_until[i] <= now:
                self._next = i + 1
                return i
        i = self._next % count  # all down: try anyway, in turn
        self._next = i + 1
        return i

    async def request(self, request: pb.Request) -> pb.Response:
        now = time.monotonic()
        i = self._pick(now)
        lane = self._lanes[i]
        if lane is None or not lane.usable(now):
            if lane is not None and not lane.dead:
                lane.retire()
                self._retired = {old for old in self._retired if not old.dead}
                self._retired.add(lane)
            lane = self._lanes[i] = _Lane(self._openers[i])
        try:
            return await lane.request(request)
        except grpc.RpcError as e:
            if never_started(e) and lane.dead:
                self._down_until[i] = time.monotonic() + DOWN_S
            raise

    async def close(self) -> None:
        lanes, self._lanes = [*self._lanes, *self._retired], [None] * len(self._lanes)
        self._retired = set()
        # At once: each waits (a moment, bounded) for gRPC to deliver its cancelled read.
        await asyncio.gather(*(lane.close() for lane in lanes if lane is not None))
        channels, self._own_channels = self._own_channels, []
        for channel in channels:
            await channel.close()
