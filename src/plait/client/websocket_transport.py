"""WebSocket transport: one connection per server address, many requests in flight on it.

Each connection has a reader task, owned by the connection from ``open`` to ``close``, that
routes every frame by its ``request_id`` to the call waiting for it (a future) or to the
stream consuming it (a queue). A dropped connection fails every pending request with
:class:`UnavailableError`; the next call reconnects. Health and describe use plain HTTP on the
same port (``GET /ready``, ``GET /describe``).

Unary calls go out as binary frames holding a ``plait.v1.Request`` and come back as binary
``plait.v1.Response`` frames (docs in the plait codec, untouched by the gateway); streaming calls
and cancellations use the documented JSON text frames. A connection offers the server a
shared-memory region in its handshake (:mod:`plait.wire.shm`); a server on this host maps it, and
large docs of unary calls then travel in slots of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import uuid
from collections.abc import AsyncGenerator, Sequence
from typing import Any

import msgspec
from google.protobuf.message import DecodeError
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI

from plait.client.http_transport import (
    binary_message,
    binary_reply,
    encode,
    encode_parameters,
    error_from_http,
    fetch_description,
    probe_any,
)
from plait.client.http_wire import HttpPool
from plait.client.transport import Call, Reply, ServiceDescription, Transport
from plait.docs import encode_raw, wire_to_json
from plait.errors import (
    DeadlineExceededError,
    PayloadTooLargeError,
    PlaitError,
    UnavailableError,
    error_from_details,
)
from plait.security.client import PLAIN, ClientSecurity
from plait.wire import plait_pb2 as pb
from plait.wire.shm import SHM_KEY, CallerSlots, Region
from plait.wire.shm import enabled as shm_enabled

log = logging.getLogger("plait.client")

_MESSAGE_TOO_BIG = 1009  # the close code of a frame over the server's size limit


class _Frame(msgspec.Struct):
    request_id: str | None = None
    data: list[dict[str, Any]] | None = None
    parameters: dict[str, Any] | None = None
    end: bool = False
    error: dict[str, Any] | None = None


_FRAME = msgspec.json.Decoder(_Frame)
_Pending = asyncio.Future[_Frame | pb.Response] | asyncio.Queue[_Frame | PlaitError]


def _request_frame(call: Call, request_id: str, timeout: float | None, stream: bool) -> bytes:
    return b"".join(
        (
            b'{"request_id":',
            encode(request_id),
            b',"endpoint":',
            encode(call.endpoint),
            b',"data":',
            wire_to_json(call.docs) if call.docs else b"[]",
            b',"parameters":',
            encode_parameters(call),
            b',"target_executor":',
            encode(call.target_executor),
            b',"stream":',
            b"true" if stream else b"false",
            b',"timeout":',
            encode(timeout),
            b"}",
        )
    )


def _reply(frame: _Frame, request_id: str) -> Reply:
    if frame.error is not None:
        raise error_from_details(frame.error)
    return Reply(frame.request_id or request_id, encode_raw(frame.data or []), frame.parameters or {})


class _Connection:
    """One WebSocket to one server, with the reader task that dispatches its frames."""

    def __init__(self, address: str, max_size: int | None, security: ClientSecurity = PLAIN) -> None:
        self.address = address
        self.max_size = max_size
        self.security = security
        self.pending: dict[str, _Pending] = {}
        self.shared: CallerSlots | None = None
        """Slots in the region the server of the open connection mapped, if it did."""
        self._ws: ClientConnection | None = None
        self._reader: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    async def socket(self) -> ClientConnection:
        """The open connection, (re)connecting if there is none."""
        if self._ws is not None:
            return self._ws
        async with self._lock:
            if self._ws is None:
                offered = Region.create() if shm_enabled() else None
                headers = [*self.security.metadata, *(offered.offer() if offered is not None else ())]
                connected = False
                try:
                    ws = await connect(
                        f"{self.security.ws_scheme}://{self.address}/",
                        ssl=self.security.ssl_context,
                        additional_headers=headers or None,
                        max_size=self.max_size,
                        compression=None,  # JSON of small docs: deflate costs more time than it saves
                        proxy=None,  # never through a proxy taken from the environment
                        open_timeout=10,
                    )
                    connected = True
                except InvalidStatus as e:  # refused at the handshake (401, 431...): say why
                    body = bytes(e.response.body or b"")
                    raise error_from_http(e.response.status_code, body, self.address) from None
                except (OSError, InvalidHandshake, InvalidURI, TimeoutError) as e:
                    raise UnavailableError(
                        f"cannot open a WebSocket to {self.address}: {e}", address=self.address
                    ) from None
                finally:
                    if offered is not None:
                        offered.unlink()  # mapped by both ends, or not at all: no file is left
                        if not connected:
                            offered.close()
                if offered is not None:
                    if ws.response is not None and ws.response.headers.get(SHM_KEY) == "1":
                        self.shared = CallerSlots(offered)
                    else:
                        offered.close()
                self._ws = ws
                self._reader = asyncio.create_task(self._read(ws), name=f"plait-ws-reader-{self.address}")
        return self._ws

    async def _read(self, ws: ClientConnection) -> None:
        error: PlaitError
        try:
            async for message in ws:
                self._dispatch(message)
            error = self._closed_error(ws)
        except ConnectionClosed:
            error = self._closed_error(ws)
        except Exception as e:  # never leave callers waiting on a dead reader
            log.exception("WebSocket reader for %s failed", self.address)
            error = UnavailableError(f"WebSocket to {self.address} failed: {e!r}", address=self.address)
        finally:
            if self._ws is ws:
                self._ws = None
            if self.shared is not None:  # the server writes no more into the region
                shared, self.shared = self.shared, None
                shared.close()
        self._fail_all(error)

    def _dispatch(self, message: str | bytes) -> None:
        frame: _Frame | pb.Response
        try:
            frame = pb.Response.FromString(message) if isinstance(message, bytes) else _FRAME.decode(message)
        except (msgspec.MsgspecError, DecodeError) as e:
            log.warning("WebSocket %s: ignoring a malformed frame: %s", self.address, e)
            return
        if self.shared and isinstance(frame, pb.Response):  # a slot is held: is it this one's?
            self.shared.answered(frame)
        target = self.pending.get(frame.request_id or "")
        if target is None:
            return  # the reply of a request that timed out or was abandoned
        if isinstance(target, asyncio.Future):
            del self.pending[frame.request_id or ""]
            if not target.done():
                target.set_result(frame)
        elif isinstance(frame, _Frame):
            # Unbounded on purpose: the reader must never wait, or one slow stream consumer would
            # stall every request on this connection. A stream holds only what its caller asked for.
            target.put_nowait(frame)

    def _closed_error(self, ws: ClientConnection) -> PlaitError:
        code, reason = ws.close_code, ws.close_reason
        if code == _MESSAGE_TOO_BIG:
            return PayloadTooLargeError(
                f"the server at {self.address} closed the connection: a request was over its size limit "
                "(max_request_bytes); send fewer documents per request (request_size)",
                address=self.address,
            )
        why = f" (code {code}{': ' + reason if reason else ''})" if code is not None else ""
        return UnavailableError(
            f"the WebSocket to {self.address} closed{why}; the next call reconnects", address=self.address
        )

    def _fail_all(self, error: PlaitError) -> None:
        pending, self.pending = self.pending, {}
        for target in pending.values():
            if isinstance(target, asyncio.Future):
                if not target.done():
                    target.set_exception(error)
            else:
                target.put_nowait(error)

    async def send(self, payload: bytes, *, binary: bool = False) -> None:
        ws = await self.socket()
        try:
            await ws.send(payload, text=not binary)
        except ConnectionClosed:
            raise self._closed_error(ws) from None

    async def send_request(self, request: pb.Request) -> None:
        """A unary call's request as a binary frame, its docs in a slot when the region is mapped."""
        ws = await self.socket()
        shared = self.shared
        data = None if shared is None else shared.place(request.request_id, request)
        # A slot stays held until the server answers, or the connection ends: even when this send
        # is cancelled (the call's timeout), the frame may already be on its way.
        try:
            await ws.send(request.SerializeToString() if data is None else data, text=False)
        except ConnectionClosed:
            raise self._closed_error(ws) from None

    async def close(self) -> None:
        ws, reader = self._ws, self._reader
        self._ws = self._reader = None
        if ws is not None:
            await ws.close()
        if reader is not None:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
        self._fail_all(UnavailableError(f"the WebSocket to {self.address} was closed by this client"))


class WebSocketTransport(Transport):
    scheme = "websocket"

    def __init__(
        self,
        addresses: Sequence[str],
        *,
        max_message_size: int | None = None,
        security: ClientSecurity | None = None,
    ) -> None:
        super().__init__(addresses, max_message_size=max_message_size, security=security)
        self._connections = [_Connection(a, max_message_size, self.security) for a in self.addresses]
        self._next = itertools.cycle(self._connections).__next__
        self._http: HttpPool | None = None

    async def open(self) -> None:
        self._check_open()
        if self._http is None:
            self._http = HttpPool(ssl=self.security.ssl_context, headers=self.security.http_headers)
        for connection in self._connections:
            # Connecting now saves the first call a round trip; a server that is not up yet is not
            # an error here (health() must be able to say UNREACHABLE): the first call retries.
            with contextlib.suppress(PlaitError):  # unreachable, or refused (health needs no token)
                await connection.socket()

    async def close(self) -> None:
        self._closed = True
        for connection in self._connections:
            await connection.close()
        if self._http is not None:
            http, self._http = self._http, None
            await http.close()

    async def call(self, call: Call, timeout: float | None = None) -> Reply:
        self._check_open()
        connection = self._next()
        request_id = call.request_id or _new_id()
        future: asyncio.Future[_Frame | pb.Response] = asyncio.get_running_loop().create_future()
        connection.pending[request_id] = future
        try:
            async with asyncio.timeout(timeout):
                await connection.send_request(binary_message(call, request_id, timeout))
                frame = await future
        except TimeoutError:
            raise _deadline(connection.address, timeout) from None
        finally:
            connection.pending.pop(request_id, None)
        if isinstance(frame, pb.Response):
            return binary_reply(frame, request_id)
        return _reply(frame, request_id)  # refused before it was read (the server is draining, say)

    async def stream(self, call: Call, timeout: float | None = None) -> AsyncGenerator[Reply, None]:
        self._check_open()
        connection = self._next()
        request_id = call.request_id or _new_id()
        queue: asyncio.Queue[_Frame | PlaitError] = asyncio.Queue()
        connection.pending[request_id] = queue
        deadline = None if timeout is None else asyncio.get_running_loop().time() + timeout
        finished = False
        try:
            # The deadline covers the whole stream, but only our own waits run under it: a
            # timeout must not fire inside the caller's code between two documents.
            try:
                async with asyncio.timeout_at(deadline):
                    await connection.send(_request_frame(call, request_id, timeout, stream=True))
            except TimeoutError:
                raise _deadline(connection.address, timeout) from None
            while True:
                try:
                    async with asyncio.timeout_at(deadline):
                        item = await queue.get()
                except TimeoutError:
                    raise _deadline(connection.address, timeout) from None
                if isinstance(item, PlaitError):
                    raise item
                if item.end:
                    finished = True
                    return
                yield _reply(item, request_id)
        finally:
            connection.pending.pop(request_id, None)
            if not finished:  # the caller stopped reading (or failed): stop the server's work too
                with contextlib.suppress(Exception):
                    await connection.send(msgspec.json.encode({"request_id": request_id, "cancel": True}))

    async def _client(self) -> HttpPool:
        self._check_open()
        if self._http is None:
            self._http = HttpPool(ssl=self.security.ssl_context, headers=self.security.http_headers)
        return self._http

    async def health(self, timeout: float | None = None) -> str:
        return await probe_any(await self._client(), self.addresses, timeout)

    async def describe(self, timeout: float | None = None) -> ServiceDescription:
        return await fetch_description(await self._client(), self._next().address, timeout)


def _new_id() -> str:
    return uuid.uuid4().hex


def _deadline(address: str, timeout: float | None) -> DeadlineExceededError:
    return DeadlineExceededError(
        f"no response from {address} within the timeout of {timeout}s", address=address, timeout=timeout
    )
