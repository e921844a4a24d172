"""One WebSocket connection of the WebSocket server: many requests in flight, answered by id.

The session reads a frame only when it has room for one more request (``max_in_flight``), so a
client that sends faster than the processor serves is slowed down by TCP, not buffered. Each
request runs in a task the session owns; replies go out as soon as they are ready, in any
order, each carrying its ``request_id``. When the client leaves, the session cancels what it
still runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

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

log = logging.getLogger("plait.gateway")


class _ClientGone(Exception):
    """Sending failed: the client has closed the connection."""


class WsSession:
    """Serves one accepted WebSocket connection until the client disconnects."""

    def __init__(self, processor: Processor, options: ServerOptions, send: Send) -> None:
        self.processor = processor
        self.options = options
        self.draining = False
        self._send_asgi = send
        self._tasks: set[asyncio.Task[None]] = set()
        self._by_id: dict[str, asyncio.Task[None]] = {}

    @property
    def busy(self) -> bool:
        """True while requests of this connection are running."""
        return bool(self._tasks)

    async def _send(self, payload: bytes) -> None:
        try:
            await self._send_asgi({"type": "websocket.send", "text": payload.decode()})
        except OSError as e:  # uvicorn's ClientDisconnected, or the socket itself
            raise _ClientGone from e

    async def run(self, receive: Receive) -> None:
        if (await receive())["type"] != "websocket.connect":
            return
        await self._send_asgi({"type": "websocket.accept"})
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
                    frame = self._parse(message.get("text"), message.get("bytes"))
                except PlaitError as e:
                    window.release()
                    await self._send(error_json(e, e.details.pop("request_id", None), with_id=True))
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

    def _parse(self, text: str | None, data: bytes | None) -> WsFrame:
        if self.draining:
            raise UnavailableError(
                "the server is shutting down and takes no new requests; retry (on another replica)",
                request_id=request_id_of(text) if text is not None else None,
            )
        if text is None:
            raise BadRequestError(
                f"binary frame ({len(data or b'')} bytes): send requests as JSON text frames",
                request_id=None,
            )
        if len(text) > self.options.max_request_bytes:
            raise PayloadTooLargeError(
                f"frame of {len(text)} characters is over this server's limit of "
                f"{self.options.max_request_bytes} bytes (max_request_bytes); send fewer documents "
                "per request (request_size)",
                request_id=request_id_of(text),
                limit=self.options.max_request_bytes,
            )
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
        rid = encode(request_id)
        error: PlaitError
        try:
            request = to_request(
                request_id, frame.endpoint, frame.data, frame.parameters, frame.target_executor
            )
            async with asyncio.timeout(frame.timeout):
                if frame.stream:
                    await self._relay(request, rid, frame.timeout)
                else:
                    response = await self.processor.process(request, timeout=frame.timeout)
                    await self._send(reply_json(request_id, response))
            return
        except _ClientGone:
            return
        except TimeoutError:
            error = DeadlineExceededError(
                f"no response within the request's timeout of {frame.timeout}s", timeout=frame.timeout
            )
        except PlaitError as e:
            error = e
        except Exception:
            log.exception("WebSocket %s: request %s failed", frame.endpoint, request_id)
            error = internal_error(request_id)
        with contextlib.suppress(_ClientGone):
            await self._send(error_json(error, request_id, with_id=True))

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
