"""HTTP transport: keep-alive connections (:mod:`plait.client.http_wire`) for the client's life.

Unary calls send a ``plait.v1.Request`` body (``Content-Type: application/x-protobuf``) and read a
``plait.v1.Response``: the docs stay in the plait codec end to end, as on gRPC, and the gateway
passes them on untouched. Streaming calls use the JSON body and read server-sent events (the codec
bytes of a :class:`Call` become a JSON array, :func:`plait.docs.wire_to_json`). Errors come back
as JSON either way. Several addresses are balanced round-robin, one call each.

The helpers for probing (``GET /ready``), describing (``GET /describe``) and reading error
bodies are shared with the WebSocket transport, whose servers answer the same HTTP routes.
"""

from __future__ import annotations

import asyncio
import itertools
import math
from collections.abc import AsyncGenerator, AsyncIterator, Mapping, Sequence
from typing import Any

import msgspec
from google.protobuf.message import DecodeError

from plait.client.http_wire import HttpConnectionError, HttpPool, HttpResponse
from plait.client.transport import Call, EndpointDescription, Reply, ServiceDescription, Transport
from plait.docs import encode_raw, wire_to_json
from plait.errors import (
    STATUS_TABLE,
    BadRequestError,
    DeadlineExceededError,
    PlaitError,
    UnavailableError,
    error_from_details,
)
from plait.security.client import ClientSecurity
from plait.wire import PROTOBUF_TYPE
from plait.wire import plait_pb2 as pb

# -- shared with the WebSocket transport -------------------------------------------------------

_BY_STATUS: dict[int, type[PlaitError]] = {}
for _row in STATUS_TABLE:  # the first row with a status wins, as for gRPC codes
    _BY_STATUS.setdefault(_row.http_status, _row.error)
_BY_STATUS[502] = UnavailableError  # a proxy in front of the server could not reach it

encode = msgspec.json.Encoder().encode


class _ErrorBody(msgspec.Struct):
    error: dict[str, Any]


_ERROR_BODY = msgspec.json.Decoder(_ErrorBody)


def error_from_http(status: int, body: bytes, address: str) -> PlaitError:
    """The exception for an HTTP error response: its ``{"error": ...}`` body, else its status."""
    try:
        return error_from_details(_ERROR_BODY.decode(body).error)
    except msgspec.MsgspecError:
        pass
    cls = _BY_STATUS.get(status) or (UnavailableError if status >= 500 else BadRequestError)
    text = body[:200].decode("utf-8", "replace").strip()
    return cls(f"HTTP {status} from {address}" + (f": {text}" if text else ""), http_status=status)


def transport_error(error: HttpConnectionError, address: str) -> PlaitError:
    """A connection-level failure as a plait exception naming the server."""
    if not error.connected:
        return UnavailableError(f"cannot reach the server at {address}: {error}", address=address)
    return UnavailableError(f"connection to the server at {address} failed: {error}", address=address)


def deadline_error(address: str, timeout: float | None) -> DeadlineExceededError:
    return DeadlineExceededError(
        f"no response from {address} within the timeout of {timeout}s", address=address, timeout=timeout
    )


async def http_get(pool: HttpPool, address: str, path: str, timeout: float | None) -> HttpResponse:
    try:
        async with asyncio.timeout(timeout):
            return await pool.request("GET", address, path)
    except TimeoutError:
        raise deadline_error(address, timeout) from None
    except HttpConnectionError as e:
        raise transport_error(e, address) from None


async def probe(pool: HttpPool, address: str, timeout: float | None) -> str:
    """``GET /ready``: 'SERVING', 'NOT_SERVING' or 'UNREACHABLE'."""
    try:
        response = await http_get(pool, address, "/ready", timeout)
    except (UnavailableError, DeadlineExceededError):
        return "UNREACHABLE"
    return "SERVING" if response.status == 200 else "NOT_SERVING"


async def probe_any(pool: HttpPool, addresses: Sequence[str], timeout: float | None) -> str:
    """SERVING when some address serves (the client balances over them), as gRPC's channel does."""
    seen = "UNREACHABLE"
    for address in addresses:
        status = await probe(pool, address, timeout)
        if status == "SERVING":
            return status
        if status == "NOT_SERVING":
            seen = status
    return seen


async def fetch_description(pool: HttpPool, address: str, timeout: float | None) -> ServiceDescription:
    """``GET /describe`` as a :class:`ServiceDescription`."""
    response = await http_get(pool, address, "/describe", timeout)
    if response.status != 200:
        raise error_from_http(response.status, response.body, address)
    body = msgspec.json.decode(response.body)
    endpoints = {
        name: EndpointDescription(
            name=name,
            input_schema=info.get("input_schema") or {},
            output_schema=info.get("output_schema") or {},
            streaming=bool(info.get("streaming")),
            doc=info.get("doc") or "",
            parameters_schema=info.get("parameters_schema") or None,
        )
        for name, info in body.get("endpoints", {}).items()
    }
    return ServiceDescription(
        body.get("name", ""),
        body.get("kind", ""),
        body.get("version", ""),
        endpoints,
        body.get("executor_class", ""),
    )


def encode_parameters(call: Call) -> bytes:
    try:
        return encode(dict(call.parameters)) if call.parameters else b"{}"
    except (TypeError, ValueError) as e:
        raise BadRequestError(f"parameters must be JSON-serializable: {e}") from None


def binary_message(call: Call, request_id: str, timeout: float | None = None) -> pb.Request:
    """The ``plait.v1.Request`` for ``call``, as an HTTP body or a WebSocket binary frame carries it."""
    return pb.Request(
        request_id=request_id,
        endpoint=call.endpoint,
        parameters=encode_parameters(call) if call.parameters else b"",
        target_executor=call.target_executor,
        docs=call.docs,
        timeout=timeout or 0.0,
    )


def binary_request(call: Call, request_id: str, timeout: float | None = None) -> bytes:
    """A serialized ``plait.v1.Request`` for ``call``: an HTTP body or a WebSocket binary frame."""
    data: bytes = binary_message(call, request_id, timeout).SerializeToString()
    return data


def binary_reply(response: pb.Response, request_id: str) -> Reply:
    """The :class:`Reply` in a ``plait.v1.Response`` (raises the error it carries, if any)."""
    if response.error:
        raise error_from_details(msgspec.json.decode(response.error))
    parameters = msgspec.json.decode(response.parameters) if response.parameters else {}
    return Reply(response.request_id or request_id, response.docs, parameters)


def timeout_header(timeout: float) -> str:
    return repr(float(timeout)) if math.isfinite(timeout) else "1e9"


# -- the transport ---------------------------------------------------------------------------


class _Reply(msgspec.Struct):
    data: list[dict[str, Any]] = []
    parameters: dict[str, Any] = {}
    request_id: str = ""


_REPLY = msgspec.json.Decoder(_Reply)
_ONE_DOC = msgspec.json.Decoder(dict[str, Any])


class HttpTransport(Transport):
    scheme = "http"

    def __init__(
        self,
        addresses: Sequence[str],
        *,
        max_message_size: int | None = None,
        security: ClientSecurity | None = None,
    ) -> None:
        super().__init__(addresses, max_message_size=max_message_size, security=security)
        self._pool: HttpPool | None = None
        self._next = itertools.cycle(self.addresses).__next__

    async def open(self) -> None:
        self._check_open()
        if self._pool is None:
            self._pool = HttpPool(ssl=self.security.ssl_context, headers=self.security.http_headers)

    async def close(self) -> None:
        self._closed = True
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await pool.close()

    async def _http(self) -> HttpPool:
        if self._pool is None:
            await self.open()
        assert self._pool is not None
        return self._pool

    @staticmethod
    def _json_body(call: Call) -> bytes:
        return b"".join(
            (
                b'{"data":',
                wire_to_json(call.docs) if call.docs else b"[]",
                b',"parameters":',
                encode_parameters(call),
                b',"target_executor":',
                encode(call.target_executor),
                b',"header":{"request_id":',
                encode(call.request_id),
                b"}}",
            )
        )

    @staticmethod
    def _headers(
        timeout: float | None, content_type: str, accept: str, extra: tuple[tuple[str, str], ...] = ()
    ) -> Mapping[str, str]:
        headers = {"content-type": content_type, "accept": accept, **dict(extra)}
        if timeout is not None:
            headers["x-plait-timeout"] = timeout_header(timeout)
        return headers

    async def call(self, call: Call, timeout: float | None = None) -> Reply:
        pool = await self._http()
        address = self._next()
        body = binary_request(call, call.request_id)
        headers = self._headers(timeout, PROTOBUF_TYPE, PROTOBUF_TYPE, call.metadata)
        try:
            async with asyncio.timeout(timeout):
                response = await pool.request("POST", address, call.endpoint, body=body, headers=headers)
        except TimeoutError:
            raise deadline_error(address, timeout) from None
        except HttpConnectionError as e:
            raise transport_error(e, address) from None
        if response.status != 200:
            raise error_from_http(response.status, response.body, address)
        try:
            return binary_reply(pb.Response.FromString(response.body), call.request_id)
        except (DecodeError, msgspec.MsgspecError) as e:
            raise UnavailableError(f"malformed reply from {address}: {e}", address=address) from None

    async def stream(self, call: Call, timeout: float | None = None) -> AsyncGenerator[Reply, None]:
        pool = await self._http()
        address = self._next()
        headers = self._headers(timeout, "application/json", "text/event-stream", call.metadata)
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        try:
            # Only our own waits run under the deadline, never the caller's code between documents.
            async with asyncio.timeout_at(deadline):
                head, chunks = await pool.stream(
                    "POST", address, call.endpoint, body=self._json_body(call), headers=headers
                )
                body = b"" if head.status == 200 and _is_sse(head) else b"".join([c async for c in chunks])
        except TimeoutError:
            raise deadline_error(address, timeout) from None
        except HttpConnectionError as e:
            raise transport_error(e, address) from None
        if head.status != 200:
            raise error_from_http(head.status, body, address)
        try:
            if not _is_sse(head):  # a non-streaming endpoint answers once, with JSON
                reply = _REPLY.decode(body)
                yield Reply(reply.request_id or call.request_id, encode_raw(reply.data), reply.parameters)
                return
            events = _events(chunks)
            while True:
                try:
                    async with asyncio.timeout_at(deadline):
                        event, data = await anext(events)
                except StopAsyncIteration:
                    break
                if event == "update":
                    yield Reply(call.request_id, encode_raw([_ONE_DOC.decode(data)]), {})
                elif event == "end":
                    return
                elif event == "error":
                    raise error_from_http(500, data, address)
            raise UnavailableError(f"the stream from {address} ended without an end event", address=address)
        except TimeoutError:
            raise deadline_error(address, timeout) from None
        except HttpConnectionError as e:
            raise transport_error(e, address) from None
        except msgspec.MsgspecError as e:
            raise UnavailableError(f"malformed reply from {address}: {e}", address=address) from None
        finally:
            await chunks.aclose()

    async def health(self, timeout: float | None = None) -> str:
        return await probe_any(await self._http(), self.addresses, timeout)

    async def describe(self, timeout: float | None = None) -> ServiceDescription:
        return await fetch_description(await self._http(), self._next(), timeout)


def _is_sse(head: HttpResponse) -> bool:
    return head.headers.get("content-type", "").startswith("text/event-stream")


async def _events(chunks: AsyncIterator[bytes]) -> AsyncIterator[tuple[str, bytes]]:
    """``(event, data)`` pairs of a server-sent event stream."""
    event = "message"
    data: list[bytes] = []
    buffer = b""
    async for chunk in chunks:
        buffer += chunk
        *lines, buffer = buffer.split(b"\n")
        for raw in lines:
            line = raw.removesuffix(b"\r")
            if not line:
                if data:
                    yield event, b"\n".join(data)
                event, data = "message", []
            elif line.startswith(b"data:"):
                data.append(line[5:].removeprefix(b" "))
            elif line.startswith(b"event:"):
                event = line[6:].strip().decode("utf-8", "replace")
    if data:
        yield event, b"\n".join(data)
