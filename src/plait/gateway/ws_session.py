"""One WebSocket connection of the WebSocket server: many requests in flight, answered by id.

The session reads a frame only when it has room for one more request (``max_in_flight``), so a
client that sends faster than the processor serves is slowed down by TCP, not buffered. Each
request runs in a task the session owns; replies go out as soon as they are ready, in any
order, each carrying its ``request_id``. When the client leaves, the session cancels what it
still runs.

A client on this host may offer a shared-memory region in its handshake (the ``plait-shm``
header, as in :mod:`plait.wire.shm`); the session maps it and says so in its accept
(``plait-shm: 1``). Binary requests may then carry their docs in a slot of it, and get their
response's docs back in the same slot.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable

from google.protobuf.message import DecodeError
from starlette.types import Receive, Send

from plait.config import ServerOptions
from plait.errors import (
    BadRequestError,
    DeadlineExceededError,
    PayloadTooLargeError,
    PlaitError,
    UnavailableError,
)
from plait.gateway.http_messages import (
    WsFrame,
    docs_json,
    encode,
    error_json,
    internal_error,
    new_request_id,
    parse_ws_frame,
    reply_json,
    request_id_of,
    to_request,
)
from plait.serve import Processor
from plait.wire import plait_pb2 as pb
from plait.wire.shm import SHM_KEY, Region, answer_in_slot, take_docs
from plait.wire.shm import enabled as shm_enabled
from plait.wire.status import error_reply, message_timeout

log = logging.getLogger("plait.gateway")


_SHM_HEADER = SHM_KEY.encode()


class _ClientGone(Exception):
    """Sending failed: the client has closed the connection."""


class WsSession:
    """Serves one accepted WebSocket connection until the client disconnects."""

    def __init__(
        self,
        processor: Processor,
        options: ServerOptions,
        send: Send,
        headers: Iterable[tuple[bytes, bytes]] = (),
    ) -> None:
        self.processor = processor
        self.options = options
        self.draining = False
        self._send_asgi = send
        self._tasks: set[asyncio.Task[None]] = set()
        self._by_id: dict[str, asyncio.Task[None]] = {}
        self._offer = next((v.decode("latin-1") for k, v in headers if k.lower() == _SHM_HEADER), None)
        self._region: Region | None = None
        self._slots: dict[str, tuple[int, int]] = {}
        """Slot (offset, capacity) of each binary request running with its docs in the region."""

    @property
    def busy(self) -> bool:
        """True while requests of this connection are running."""
        return bool(self._tasks)

    async def _send(self, payload: bytes, *, binary: bool = False) -> None:
        message = (
            {"type": "websocket.send", "bytes": payload}
            if binary
            else {"type": "websocket.send", "text": payload.decode()}
        )
        try:
            await self._send_asgi(message)
        except OSError as e:  # uvicorn's ClientDisconnected, or the socket itself
            raise _ClientGone from e

    async def run(self, receive: Receive) -> None:
        if (await receive())["type"] != "websocket.connect":
            return
        if self._offer is not None and shm_enabled():
            self._region = Region.attach(self._offer)
        try:
            await self._serve_connection(receive)
        finally:
            if self._region is not None:
                self._region.close()

    async def _serve_connection(self, receive: Receive) -> None:
        accept: dict[str, object] = {"type": "websocket.accept"}
        if self._region is not None:
            accept["headers"] = [(_SHM_HEADER, b"1")]
        await self._send_asgi(accept)
        window = asyncio.Semaphore(self.options.max_in_flight)

        def finished(task: asyncio.Task[None]) -> None:
            self._tasks.discard(task)
            for rid in [rid for rid, t in self._by_id.items() if t is task]:
                del self._by_id[rid]
            window.release()

        try:
            while True:
                await window.acquire()  # full: stop reading, so TCP pushes back on the client
                message = await receive()
                if message["type"] == "websocket.disconnect":
                    return
                try:
                    text = message.get("text")
                    frame = (
                        self._parse(text) if text is not None else self._parse_binary(message.get("bytes"))
                    )
                except PlaitError as e:
                    window.release()
                    await self._send(error_json(e, e.details.pop("request_id", None), with_id=True))
                    continue
                if isinstance(frame, pb.Request):  # plait's own client: protobuf in and out
                    task = asyncio.create_task(self._serve_binary(frame))
                    self._tasks.add(task)
                    self._by_id[frame.request_id] = task
                    task.add_done_callback(finished)
                    continue
                if frame.cancel:  # the client gave up on one of its requests: stop its work
                    window.release()
                    running = self._by_id.get(frame.request_id or "")
                    if running is not None:
                        running.cancel()
                    continue
                task = asyncio.create_task(self._serve(frame))
                self._tasks.add(task)
                if frame.request_id:
                    self._by_id[frame.request_id] = task
                task.add_done_callback(finished)
        except _ClientGone:
            return
        finally:
            tasks = list(self._tasks)
            for task in tasks:
                task.cancel()
            if tasks:
                await asyncio.gather(*tasks, return_exceptions=True)

    def _refuse_when_draining(self, request_id: str | None) -> None:
        if self.draining:
            raise UnavailableError(
                "the server is shutting down and takes no new requests; retry (on another replica)",
                request_id=request_id,
            )

    def _parse_binary(self, data: bytes | None) -> pb.Request:
        """A binary frame: one ``plait.v1.Request`` (docs in the plait codec, passed on untouched)."""
        data = data or b""
        try:
            request: pb.Request = pb.Request.FromString(data)
        except DecodeError as e:
            raise BadRequestError(
                f"binary frame of {len(data)} bytes is not a plait.v1.Request: {e}; "
                "send JSON text frames, or protobuf-encoded plait.v1.Request binary frames",
                request_id=None,
            ) from None
        self._refuse_when_draining(request.request_id or None)
        size = len(data) + (request.shared.length if request.HasField("shared") else 0)
        if size > self.options.max_request_bytes:
            raise self._too_large(size, "bytes", request.request_id or None)
        if not request.endpoint:
            raise BadRequestError("a request needs an endpoint", request_id=request.request_id or None)
        if not request.request_id:
            request.request_id = new_request_id()
        message_timeout(request)  # checked now: a bad one is answered like any unreadable frame
        if request.HasField("shared"):  # its docs are in a slot of the client's region
            slot = (request.shared.offset, request.shared.capacity)
            wrong = take_docs(self._region, request)
            if wrong is not None:
                raise BadRequestError(wrong, request_id=request.request_id)
            self._slots[request.request_id] = slot
        return request

    def _too_large(self, size: int, unit: str, request_id: str | None) -> PayloadTooLargeError:
        return PayloadTooLargeError(
            f"frame of {size} {unit} is over this server's limit of "
            f"{self.options.max_request_bytes} bytes (max_request_bytes); send fewer documents "
            "per request (request_size)",
            request_id=request_id,
            limit=self.options.max_request_bytes,
        )

    def _parse(self, text: str) -> WsFrame:
        self._refuse_when_draining(request_id_of(text))
        if len(text) > self.options.max_request_bytes:
            raise self._too_large(len(text), "characters", request_id_of(text))
        try:
            frame = parse_ws_frame(text)
        except PlaitError as e:
            e.details["request_id"] = request_id_of(text)
            raise
        if frame.cancel:
            if not frame.request_id:
                raise BadRequestError("a cancel frame names the request_id to cancel", request_id=None)
            return frame
        if not frame.endpoint:
            raise BadRequestError(
                "a request frame needs an endpoint", request_id=frame.request_id, field="$.endpoint"
            )
        if frame.timeout is not None and not frame.timeout > 0:
            raise BadRequestError(
                f"timeout must be a positive number of seconds, got {frame.timeout}",
                request_id=frame.request_id,
                field="$.timeout",
            )
        return frame

    async def _serve(self, frame: WsFrame) -> None:
        request_id = frame.request_id or new_request_id()

        async def work() -> None:
            request = to_request(
                request_id, frame.endpoint, frame.data, frame.parameters, frame.target_executor
            )
            if frame.stream:
                await self._relay(request, encode(request_id), frame.timeout)
            else:
                response = await self.processor.process(request, timeout=frame.timeout)
                await self._send(reply_json(request_id, response))

        error = await self._run(work, frame.endpoint, request_id, frame.timeout)
        if error is not None:
            with contextlib.suppress(_ClientGone):
                await self._send(error_json(error, request_id, with_id=True))

    async def _serve_binary(self, request: pb.Request) -> None:
        timeout = request.timeout or None

        async def work() -> None:
            response = await self.processor.process(request, timeout=timeout)
            response.request_id = request.request_id
            slot = self._slots.pop(request.request_id, None)
            if slot is not None and self._region is not None:
                answer_in_slot(self._region, *slot, response)
            await self._send(response.SerializeToString(), binary=True)

        try:
            error = await self._run(work, request.endpoint, request.request_id, timeout)
        except asyncio.CancelledError:
            if self._slots.pop(request.request_id, None) is not None:
                # Stopped by a cancel frame: the client may reuse the slot once it hears so.
                with contextlib.suppress(Exception):
                    await self._send(
                        pb.Response(request_id=request.request_id).SerializeToString(), binary=True
                    )
            raise
        self._slots.pop(request.request_id, None)
        if error is not None:
            reply = error_reply(request.request_id, error)
            with contextlib.suppress(_ClientGone):
                await self._send(reply.SerializeToString(), binary=True)

    async def _run(
        self, work: Callable[[], Awaitable[None]], endpoint: str, request_id: str, timeout: float | None
    ) -> PlaitError | None:
        """Run one request's ``work`` under its timeout: the error to answer with, if any."""
        try:
            async with asyncio.timeout(timeout):
                await work()
            return None
        except _ClientGone:
            return None
        except TimeoutError:
            return DeadlineExceededError(
                f"no response within the request's timeout of {timeout}s", timeout=timeout
            )
        except PlaitError as e:
            return e
        except Exception:
            log.exception("WebSocket %s: request %s failed", endpoint, request_id)
            return internal_error(request_id)

    async def _relay(self, request: pb.Request, rid: bytes, timeout: float | None) -> None:
        responses: AsyncIterator[pb.Response] = self.processor.stream(request, timeout=timeout)
        try:
            async for response in responses:
                await self._send(b'{"request_id":' + rid + b',"data":' + docs_json(response.docs) + b"}")
        finally:
            aclose = getattr(responses, "aclose", None)
            if aclose is not None:
                await aclose()
        await self._send(b'{"request_id":' + rid + b',"end":true}')
