"""The JSON messages of the HTTP and WebSocket protocols, and their translation to ``plait.v1``.

Bodies are parsed with msgspec into typed structs in one pass, which also checks their shape:
a field of the wrong type fails with a message that names it (``at `$.data```). Replies are
spliced together from already-encoded JSON pieces (the docs come from
:func:`plait.docs.wire_to_json`, the parameters are JSON bytes already), never parsed again.
"""

from __future__ import annotations

import uuid
from typing import Any

import msgspec
from google.protobuf.message import DecodeError

from plait.docs.rows import encode_raw, wire_to_json
from plait.errors import BadRequestError, PlaitError
from plait.wire import PROTOBUF_TYPE
from plait.wire import plait_pb2 as pb
from plait.wire.status import error_details

# A request's documents: a list of objects, one object, or null (no documents).
Data = list[dict[str, Any]] | dict[str, Any] | None


class _Header(msgspec.Struct):
    """Jina clients put the request id and the target executor in a ``header`` object."""

    request_id: str | None = None
    target_executor: str | None = None


class HttpBody(msgspec.Struct):
    """``POST /{endpoint}`` body."""

    data: Data = None
    parameters: dict[str, Any] | None = None
    target_executor: str = ""
    header: _Header | None = None
    request_id: str | None = None


class WsFrame(msgspec.Struct):
    """One request frame on a WebSocket connection (or, with ``cancel``, the end of one)."""

    endpoint: str = ""
    request_id: str | None = None
    data: Data = None
    parameters: dict[str, Any] | None = None
    target_executor: str = ""
    stream: bool = False
    timeout: float | None = None
    cancel: bool = False


class _AnyId(msgspec.Struct):
    """Enough of a malformed frame to answer it under its request id."""

    request_id: Any = None


_HTTP_BODY = msgspec.json.Decoder(HttpBody)
_WS_FRAME = msgspec.json.Decoder(WsFrame)
_ANY_ID = msgspec.json.Decoder(_AnyId)
# Details may carry values JSON has no type for (an exception, a path): they travel as text.
_ENCODER = msgspec.json.Encoder(enc_hook=str)
encode = _ENCODER.encode


def _bad_json(what: str, raw: bytes | str, exc: msgspec.MsgspecError) -> BadRequestError:
    if isinstance(exc, msgspec.ValidationError):
        field = _field_of(str(exc))
        where = "" if " - at `" in str(exc) else " - at `$`"
        return BadRequestError(f"{what} has the wrong shape: {exc}{where}", field=field)
    message = str(exc)
    if "truncated" in message:  # msgspec names the byte of a bad character, not of an early end
        message = f"{message} (byte {len(raw)}, end of input)"
    return BadRequestError(f"{what} is not valid JSON: {message}")


def _bad_text(what: str, exc: UnicodeDecodeError) -> BadRequestError:
    return BadRequestError(
        f"{what} is not valid JSON: a string is not UTF-8 ({exc.reason} at byte {exc.start})"
    )


def _field_of(message: str) -> str:
    """``$.data[0]`` from msgspec's "Expected ... - at `$.data[0]`" (``$`` for the whole body)."""
    _, sep, where = message.rpartition(" - at `")
    return where.rstrip("`") if sep else "$"


def parse_http_body(raw: bytes) -> HttpBody:
    """The body of an endpoint call; an empty body means no documents and no parameters."""
    if not raw:
        return HttpBody()
    try:
        return _HTTP_BODY.decode(raw)
    except msgspec.MsgspecError as exc:
        raise _bad_json("request body", raw, exc) from None
    except UnicodeDecodeError as exc:  # msgspec's error for bad UTF-8 inside a string (found by fuzzing)
        raise _bad_text("request body", exc) from None


def parse_ws_frame(raw: str | bytes) -> WsFrame:
    try:
        return _WS_FRAME.decode(raw)
    except msgspec.MsgspecError as exc:
        raise _bad_json("frame", raw, exc) from None
    except UnicodeDecodeError as exc:
        raise _bad_text("frame", exc) from None


def request_id_of(raw: str | bytes) -> str | None:
    """The ``request_id`` of a frame that failed to parse, if it has a usable one."""
    try:
        value = _ANY_ID.decode(raw).request_id
    except (msgspec.MsgspecError, UnicodeDecodeError):
        return None
    return value if isinstance(value, str) else None


def parse_binary_request(body: bytes, endpoint: str) -> pb.Request:
    """A ``plait.v1.Request`` from a binary body; the path names the endpoint."""
    try:
        request: pb.Request = pb.Request.FromString(body)
    except DecodeError as e:
        raise BadRequestError(f"body is not a plait.v1.Request ({PROTOBUF_TYPE}): {e}", field="$") from None
    request.endpoint = endpoint
    if not request.request_id:
        request.request_id = new_request_id()
    return request


def new_request_id() -> str:
    return uuid.uuid4().hex


def to_request(
    request_id: str,
    endpoint: str,
    data: Data,
    parameters: dict[str, Any] | None,
    target_executor: str,
) -> pb.Request:
    """A ``plait.v1`` request from parsed JSON; the documents become codec bytes here."""
    rows = [data] if isinstance(data, dict) else data
    return pb.Request(
        request_id=request_id,
        endpoint=endpoint,
        parameters=encode(parameters) if parameters else b"",
        target_executor=target_executor,
        docs=encode_raw(rows) if rows else b"",
    )


def docs_json(docs: bytes) -> bytes:
    """A JSON array of the documents in codec bytes (``[]`` for none)."""
    return wire_to_json(docs) if docs else b"[]"


def reply_json(request_id: str, response: pb.Response) -> bytes:
    """``{"request_id", "data", "parameters"}`` for a unary response."""
    return b"".join(
        (
            b'{"request_id":',
            encode(response.request_id or request_id),
            b',"data":',
            docs_json(response.docs),
            b',"parameters":',
            response.parameters or b"{}",
            b"}",
        )
    )


def error_json(error: PlaitError, request_id: str | None = None, *, with_id: bool = False) -> bytes:
    """``{"error": {...}}`` (HTTP) or ``{"request_id", "error": {...}}`` (WebSocket)."""
    details = error_details(error)
    if not with_id:
        return b'{"error":' + details + b"}"
    return b'{"request_id":' + encode(request_id) + b',"error":' + details + b"}"


def internal_error(request_id: str | None) -> PlaitError:
    """What a caller sees of a bug in the gateway itself: no traceback, a pointer to the log."""
    return PlaitError(
        f"internal error in the server while serving request {request_id or '(no id)'}; see its log",
        request_id=request_id,
    )
