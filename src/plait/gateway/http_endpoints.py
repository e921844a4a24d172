"""The hot path of the HTTP server: ``POST /{endpoint}`` (JSON or SSE) and ``GET /{endpoint}`` (SSE).

Plain ASGI rather than a framework route: the body is read once, with the size limit enforced
while reading, parsed once with msgspec, and the reply is written as bytes. Two things are
watched while the processor works: the ``X-Plait-Timeout`` deadline, and the client's
connection, whose loss cancels the work (as a gRPC cancellation would).
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import AsyncIterator, Awaitable, Collection
from typing import Any, TypeVar
from urllib.parse import parse_qsl

import msgspec
from starlette.types import Message, Receive, Scope, Send

from plait.config import ServerOptions
from plait.errors import BadRequestError, DeadlineExceededError, PayloadTooLargeError, PlaitError
from plait.gateway.http_messages import (
    docs_json,
    encode,
    error_json,
    internal_error,
    new_request_id,
    parse_binary_request,
    parse_http_body,
    reply_json,
    to_request,
)
from plait.observe.tracing import incoming
from plait.serve import Processor
from plait.wire import PROTOBUF_TYPE
from plait.wire import plait_pb2 as pb

log = logging.getLogger("plait.gateway")

R = TypeVar("R")

_JSON_HEADERS = [(b"content-type", b"application/json")]
_SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),  # tells nginx & co. not to hold events back
]
_PROTOBUF = PROTOBUF_TYPE.encode()
_PROTOBUF_HEADERS = [(b"content-type", _PROTOBUF)]
_DOCS = msgspec.json.Decoder(list[msgspec.Raw])


class _ClientGone(Exception):
    """The client closed the connection; there is no one to answer."""


class _Headers:
    """The few request headers the endpoints read, found in one pass."""

    __slots__ = ("binary", "content_length", "request_id", "timeout", "trace")

    def __init__(self, scope: Scope) -> None:
        self.binary = False
        self.trace: dict[str, str] | None = None
        self.content_length: int | None = None
        self.request_id: str | None = None
        self.timeout: float | None = None
        for name, value in scope["headers"]:
            if name == b"content-length":
                self.content_length = int(value)  # the HTTP parser has checked it is a number
            elif name == b"x-request-id":
                self.request_id = value.decode("latin-1")
            elif name == b"x-plait-timeout":
                self.timeout = _parse_timeout(value)
            elif name == b"content-type":
                self.binary = value == _PROTOBUF
            elif name == b"traceparent" or name == b"tracestate":
                if self.trace is None:
                    self.trace = {}
                self.trace[name.decode()] = value.decode("latin-1")


def _parse_timeout(value: bytes) -> float:
    try:
        timeout = float(value)
    except ValueError:
        timeout = math.nan
    if not (math.isfinite(timeout) and timeout > 0):
        raise BadRequestError(
            f"header X-Plait-Timeout must be a positive number of seconds, got {value.decode('latin-1')!r}",
            field="X-Plait-Timeout",
        )
    return timeout


async def _respond(
    send: Send, status: int, body: bytes, error: PlaitError | None = None, *, binary: bool = False
) -> None:
    # With a Content-Length the body goes out in one piece, not chunked.
    headers = [*(_PROTOBUF_HEADERS if binary else _JSON_HEADERS), (b"content-length", b"%d" % len(body))]
    retry_after = error.details.get("retry_after") if error is not None else None
    if retry_after is not None:  # a server at capacity (429) says when to come back
        headers.append((b"retry-after", b"%d" % max(1, round(float(retry_after)))))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _watch_disconnect(receive: Receive, task: asyncio.Task[Any]) -> None:
    # Runs once the body has been read: the next message can only be the disconnect.
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            task.cancel(_ClientGone.__name__)
            return


def _split_docs(docs: bytes) -> list[bytes]:
    """Each document of codec bytes as its own JSON object."""
    return [bytes(raw) for raw in _DOCS.decode(docs_json(docs))]


class EndpointCalls:
    """Serves endpoint calls for one processor. ``streaming``: endpoints answered with SSE."""

    def __init__(self, processor: Processor, options: ServerOptions, streaming: Collection[str]) -> None:
        self.processor = processor
        self.trace_context = bool(getattr(processor, "wants_trace_context", False))
        self.limit = options.max_request_bytes
        self.streaming = frozenset(streaming)

    # -- ASGI entry points ---------------------------------------------------------------------

    async def post(self, scope: Scope, receive: Receive, send: Send) -> None:
        request_id: str | None = None
        binary = False
        try:
            headers = _Headers(scope)
            if self.trace_context:  # each HTTP request runs in its own task
                incoming.set(headers.trace)
            endpoint = scope["path"]
            raw = await self._read_body(receive, headers.content_length)
            if headers.binary and endpoint not in self.streaming:
                # plait's own client: a plait.v1.Request, answered with a plait.v1.Response.
                request = parse_binary_request(raw, endpoint)
                binary = True
            else:
                body = parse_http_body(raw)
                header = body.header
                request_id = (
                    body.request_id
                    or (header.request_id if header else None)
                    or headers.request_id
                    or new_request_id()
                )
                target = body.target_executor or (header.target_executor if header else None) or ""
                request = to_request(request_id, endpoint, body.data, body.parameters, target)
                if endpoint in self.streaming:
                    await self._stream(request, headers.timeout, receive, send)
                    return
            request_id = request.request_id
            response = await self._guard(
                self.processor.process(request, timeout=headers.timeout), headers.timeout, receive
            )
            if binary:
                response.request_id = response.request_id or request_id
                payload = response.SerializeToString()
            else:
                payload = reply_json(request_id, response)
            status, failure = 200, None
        except PlaitError as e:
            status, payload, failure, binary = e.http_status, error_json(e), e, False
        except _ClientGone:
            return
        except Exception:
            log.exception("HTTP %s: request %s failed", scope.get("path"), request_id)
            status, payload, failure, binary = 500, error_json(internal_error(request_id)), None, False
        await _respond(send, status, payload, failure, binary=binary)

    async def get(self, scope: Scope, receive: Receive, send: Send) -> None:
        """A streaming endpoint called with its one input document's fields as the query string."""
        request_id: str | None = None
        try:
            headers = _Headers(scope)
            if self.trace_context:
                incoming.set(headers.trace)
            request_id = headers.request_id or new_request_id()
            doc = dict(parse_qsl(scope["query_string"].decode("latin-1"), keep_blank_values=True))
            request = to_request(request_id, scope["path"], doc, None, "")
        except PlaitError as e:
            await _respond(send, e.http_status, error_json(e), e)
            return
        await self._stream(request, headers.timeout, receive, send)

    # -- helpers -------------------------------------------------------------------------------

    async def _read_body(self, receive: Receive, declared: int | None) -> bytes:
        if declared is not None and declared > self.limit:
            raise self._too_large(declared)
        chunks: list[bytes] = []
        size = 0
        while True:
            message: Message = await receive()
            if message["type"] == "http.disconnect":
                raise _ClientGone
            chunk: bytes = message.get("body", b"")
            size += len(chunk)
            if size > self.limit:  # a chunked body has no Content-Length: stop reading here
                raise self._too_large(size, more=True)
            if not message.get("more_body", False):
                if not chunks:
                    return chunk
                chunks.append(chunk)
                return b"".join(chunks)
            chunks.append(chunk)

    def _too_large(self, size: int, *, more: bool = False) -> PayloadTooLargeError:
        return PayloadTooLargeError(
            f"request body of {size}{'+' if more else ''} bytes is over this server's limit of "
            f"{self.limit} bytes (max_request_bytes); send fewer documents per request (request_size)",
            limit=self.limit,
        )

    async def _guard(self, work: Awaitable[R], timeout: float | None, receive: Receive) -> R:
        """Await ``work`` under the request's deadline, cancelling it if the client goes away."""
        task = asyncio.current_task()
        assert task is not None
        watcher = asyncio.ensure_future(_watch_disconnect(receive, task))
        try:
            if timeout is None:
                return await work
            async with asyncio.timeout(timeout):
                return await work
        except TimeoutError:
            raise DeadlineExceededError(
                f"no response within the request's timeout of {timeout}s", timeout=timeout
            ) from None
        except asyncio.CancelledError:
            if watcher.done() and not watcher.cancelled():  # it was the client leaving
                task.uncancel()
                raise _ClientGone from None
            raise
        finally:
            watcher.cancel()

    async def _stream(self, request: pb.Request, timeout: float | None, receive: Receive, send: Send) -> None:
        events = _EventStream(send, request.request_id)
        try:
            await self._guard(events.relay(self.processor.stream(request, timeout=timeout)), timeout, receive)
            return
        except _ClientGone:
            return
        except PlaitError as e:
            error = e
        except Exception:
            log.exception("HTTP %s: stream %s failed", request.endpoint, request.request_id)
            error = internal_error(request.request_id)
        if events.started:
            await events.fail(error)
        else:  # nothing sent yet: the error gets its own status code
            await _respond(send, error.http_status, error_json(error), error)


class _EventStream:
    """Server-sent events: ``update`` per document, then ``end``; or ``error`` mid-stream."""

    def __init__(self, send: Send, request_id: str) -> None:
        self.send = send
        self.request_id = request_id
        self.started = False

    async def _event(self, name: bytes, data: bytes, *, last: bool = False) -> None:
        if not self.started:
            # Headers go out with the first event, so an early failure still gets a real status.
            self.started = True
            await self.send({"type": "http.response.start", "status": 200, "headers": _SSE_HEADERS})
        body = b"event: " + name + b"\ndata: " + data + b"\n\n"
        await self.send({"type": "http.response.body", "body": body, "more_body": not last})

    async def relay(self, responses: AsyncIterator[pb.Response]) -> None:
        try:
            async for response in responses:
                for doc in _split_docs(response.docs):
                    await self._event(b"update", doc)
        finally:
            aclose = getattr(responses, "aclose", None)
            if aclose is not None:
                await aclose()
        await self._event(b"end", b'{"request_id":' + encode(self.request_id) + b"}", last=True)

    async def fail(self, error: PlaitError) -> None:
        await self._event(b"error", error_json(error), last=True)
