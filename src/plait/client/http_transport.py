"""HTTP transport: JSON over one pooled ``httpx.AsyncClient`` for the client's life.

Docs travel as JSON on this protocol: the codec bytes of a :class:`Call` become a JSON array
(:func:`plait.docs.wire_to_json`), spliced into the request body as they are, and the reply's
array becomes codec bytes again. Several addresses are balanced round-robin, one call each.

The helpers for probing (``GET /ready``), describing (``GET /describe``) and reading error
bodies are shared with the WebSocket transport, whose servers answer the same HTTP routes.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import AsyncIterator, Sequence
from typing import Any

import httpx
import msgspec

from plait.client.transport import Call, EndpointDescription, Reply, ServiceDescription, Transport
from plait.docs import encode_raw, wire_to_json
from plait.errors import (
    STATUS_TABLE,
    BadRequestError,
    ClientClosedError,
    DeadlineExceededError,
    PlaitError,
    UnavailableError,
    error_from_details,
)

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


def transport_error(error: httpx.TransportError, address: str, timeout: float | None) -> PlaitError:
    """A connection-level failure as a plait exception naming the server."""
    if isinstance(error, httpx.TimeoutException):
        return DeadlineExceededError(
            f"no response from {address} within the timeout of {timeout}s", address=address, timeout=timeout
        )
    if isinstance(error, httpx.ConnectError):
        return UnavailableError(f"cannot reach the server at {address}: {error}", address=address)
    return UnavailableError(
        f"connection to the server at {address} failed: {type(error).__name__}: {error}", address=address
    )


def new_http_client() -> httpx.AsyncClient:
    # No default timeout (each call brings its own); no proxies from the environment (library
    # code reads no environment variables; a gateway on loopback must never go through a proxy).
    return httpx.AsyncClient(
        timeout=None,
        trust_env=False,
        verify=False,  # plain http:// only (no TLS yet): skip building an SSL context, ~50 ms each
        limits=httpx.Limits(max_connections=None, max_keepalive_connections=64),
    )


async def probe(client: httpx.AsyncClient, address: str, timeout: float | None) -> str:
    """``GET /ready``: 'SERVING', 'NOT_SERVING' or 'UNREACHABLE'."""
    try:
        response = await client.get(f"http://{address}/ready", timeout=timeout)
    except httpx.TransportError:
        return "UNREACHABLE"
    return "SERVING" if response.status_code == 200 else "NOT_SERVING"


async def probe_any(client: httpx.AsyncClient, addresses: Sequence[str], timeout: float | None) -> str:
    """SERVING when some address serves (the client balances over them), as gRPC's channel does."""
    seen = "UNREACHABLE"
    for address in addresses:
        status = await probe(client, address, timeout)
        if status == "SERVING":
            return status
        if status == "NOT_SERVING":
            seen = status
    return seen


async def fetch_description(
    client: httpx.AsyncClient, address: str, timeout: float | None
) -> ServiceDescription:
    """``GET /describe`` as a :class:`ServiceDescription`."""
    try:
        response = await client.get(f"http://{address}/describe", timeout=timeout)
    except httpx.TransportError as e:
        raise transport_error(e, address, timeout) from None
    if response.status_code != 200:
        raise error_from_http(response.status_code, response.content, address)
    body = msgspec.json.decode(response.content)
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

    def __init__(self, addresses: Sequence[str], *, max_message_size: int | None = None) -> None:
        super().__init__(addresses, max_message_size=max_message_size)
        self._client: httpx.AsyncClient | None = None
        self._closed = False
        self._next = itertools.cycle(self.addresses).__next__

    async def open(self) -> None:
        if self._closed:
            raise ClientClosedError("this client is closed; create a new one")
        if self._client is None:
            self._client = new_http_client()

    async def close(self) -> None:
        self._closed = True
        if self._client is not None:
            client, self._client = self._client, None
            await client.aclose()

    async def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            await self.open()
        assert self._client is not None
        return self._client

    @staticmethod
    def _body(call: Call) -> bytes:
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
    def _headers(timeout: float | None, accept: str) -> dict[str, str]:
        headers = {"content-type": "application/json", "accept": accept}
        if timeout is not None:
            headers["x-plait-timeout"] = timeout_header(timeout)
        return headers

    async def call(self, call: Call, timeout: float | None = None) -> Reply:
        client = await self._http()
        address = self._next()
        try:
            response = await client.post(
                f"http://{address}{call.endpoint}",
                content=self._body(call),
                headers=self._headers(timeout, "application/json"),
                timeout=timeout,
            )
        except httpx.TransportError as e:
            raise transport_error(e, address, timeout) from None
        if response.status_code != 200:
            raise error_from_http(response.status_code, response.content, address)
        try:
            reply = _REPLY.decode(response.content)
        except msgspec.MsgspecError as e:
            raise UnavailableError(f"malformed reply from {address}: {e}", address=address) from None
        return Reply(reply.request_id or call.request_id, encode_raw(reply.data), reply.parameters)

    async def stream(self, call: Call, timeout: float | None = None) -> AsyncIterator[Reply]:
        client = await self._http()
        address = self._next()
        request = client.build_request(
            "POST",
            f"http://{address}{call.endpoint}",
            content=self._body(call),
            headers=self._headers(timeout, "text/event-stream"),
            timeout=timeout,
        )
        try:
            response = await client.send(request, stream=True)
        except httpx.TransportError as e:
            raise transport_error(e, address, timeout) from None
        try:
            if response.status_code != 200:
                raise error_from_http(response.status_code, await response.aread(), address)
            if not response.headers.get("content-type", "").startswith("text/event-stream"):
                # A non-streaming endpoint answers once, with JSON.
                reply = _REPLY.decode(await response.aread())
                yield Reply(reply.request_id or call.request_id, encode_raw(reply.data), reply.parameters)
                return
            async for event, data in _events(response):
                if event == "update":
                    yield Reply(call.request_id, encode_raw([_ONE_DOC.decode(data)]), {})
                elif event == "end":
                    return
                elif event == "error":
                    raise error_from_http(500, data.encode(), address)
            raise UnavailableError(f"the stream from {address} ended without an end event", address=address)
        except httpx.TransportError as e:
            raise transport_error(e, address, timeout) from None
        except msgspec.MsgspecError as e:
            raise UnavailableError(f"malformed reply from {address}: {e}", address=address) from None
        finally:
            await response.aclose()

    async def health(self, timeout: float | None = None) -> str:
        return await probe_any(await self._http(), self.addresses, timeout)

    async def describe(self, timeout: float | None = None) -> ServiceDescription:
        return await fetch_description(await self._http(), self._next(), timeout)


async def _events(response: httpx.Response) -> AsyncIterator[tuple[str, str]]:
    """``(event, data)`` pairs of a server-sent event stream."""
    event = "message"
    data: list[str] = []
    async for line in response.aiter_lines():
        if not line:
            if data:
                yield event, "\n".join(data)
            event, data = "message", []
        elif line.startswith("data:"):
            data.append(line[5:].removeprefix(" "))
        elif line.startswith("event:"):
            event = line[6:].strip()
    if data:
        yield event, "\n".join(data)
