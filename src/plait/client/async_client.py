"""``AsyncClient``: post documents to a plait Executor, Deployment or Flow from async code."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import math
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, TypeAlias, TypeVar, overload

from plait.client.progress import Progress
from plait.client.registry import transport_for
from plait.client.transport import Call, Reply, ServiceDescription, Transport
from plait.docs import AnyDoc, DocList, Document, decode_docs, encode_docs
from plait.errors import ClientClosedError, ConfigError, PlaitError
from plait.observe.tracing import Tracing
from plait.security.client import ClientSecurity

T = TypeVar("T", bound=Document)
DocInputs: TypeAlias = Document | Iterable[Document] | None
ReturnType: TypeAlias = "type[DocList[Any]] | type[Document] | None"

DEFAULT_PREFETCH = 16
"""Requests one ``post`` keeps in flight; later batches are encoded as earlier ones complete."""


@dataclass(frozen=True, slots=True)
class Response:
    """One request's result, as passed to ``on_done`` / ``on_always``."""

    request_id: str
    docs: DocList[Any]
    parameters: dict[str, Any]


def parse_address(host: str | Sequence[str], port: int | None, protocol: str) -> tuple[str, list[str]]:
    """``(protocol, ['host:port', ...])`` from the forms users write.

    ``host`` may be ``'localhost'`` with ``port``, ``'grpc://host:port'``, ``'host:port'``, or a list
    of ``'host:port'`` (replicas the client balances over).
    """
    if not isinstance(host, str):
        addresses = [parse_address(h, port, protocol)[1][0] for h in host]
        if not addresses:
            raise ConfigError("host: an empty list of addresses")
        return protocol, addresses
    scheme, sep, rest = host.partition("://")
    if sep:
        if protocol not in ("grpc", scheme):
            raise ConfigError(f"host {host!r} names scheme {scheme!r} but protocol={protocol!r}")
        protocol, host = scheme, rest
    name, colon, port_text = host.rpartition(":")
    if colon and port_text.isdigit() and not name.endswith(":"):
        if port is not None and int(port_text) != port:
            raise ConfigError(f"host {host!r} already has a port; don't pass port={port} too")
        return protocol, [host]
    if port is None:
        raise ConfigError(f"no port: pass port=... or host='{host}:PORT'")
    return protocol, [f"{host}:{port}"]


_TLS_SCHEMES = {"grpcs": "grpc", "https": "http", "wss": "websocket"}
TLS_PORT = 443


def tls_address(
    host: str | Sequence[str], port: int | None, tls: bool
) -> tuple[str | Sequence[str], int | None, bool]:
    """A ``grpcs://``, ``https://`` or ``wss://`` host means TLS (and the plain scheme); a TLS
    address without a port gets 443."""
    if not isinstance(host, str):
        return host, port, tls
    scheme, sep, rest = host.partition("://")
    if sep and scheme in _TLS_SCHEMES:
        host, tls = f"{_TLS_SCHEMES[scheme]}://{rest}", True
    bare = host.partition("://")[2] or host
    if tls and port is None and not bare.rpartition(":")[2].isdigit():
        port = TLS_PORT
    return host, port, tls


def _batches(inputs: DocInputs, request_size: int) -> Iterator[Sequence[Document]]:
    if request_size < 1:
        raise ConfigError(f"request_size must be >= 1, got {request_size}")
    if inputs is None:
        yield []
        return
    if isinstance(inputs, Document):
        yield [inputs]
        return
    if isinstance(inputs, Sequence):
        if not inputs:
            yield []
        for start in range(0, len(inputs), request_size):
            yield inputs[start : start + request_size]
        return
    it = iter(inputs)
    while chunk := list(itertools.islice(it, request_size)):
        yield chunk


def _doc_type(return_type: ReturnType, inputs: DocInputs) -> type[Document]:
    if return_type is not None:
        if isinstance(return_type, type) and issubclass(return_type, DocList):
            return return_type.doc_type
        if isinstance(return_type, type) and issubclass(return_type, Document):
            return return_type
        raise ConfigError(f"return_type must be DocList[T] or a Document subclass, got {return_type!r}")
    if isinstance(inputs, DocList):
        return inputs.doc_type
    if isinstance(inputs, Document):
        return type(inputs)
    if isinstance(inputs, Sequence) and inputs and isinstance(inputs[0], Document):
        return type(inputs[0])
    return AnyDoc


class AsyncClient:
    """Talks to one plait server (or balances over several replicas) over one long-lived connection.

    Open with ``async with AsyncClient(...)`` or on first use; ``close()`` ends it, and a closed
    client raises :class:`ClientClosedError`. Methods mirror :class:`plait.Client`.
    """

    def __init__(
        self,
        host: str | Sequence[str] = "localhost",
        port: int | None = None,
        protocol: str = "grpc",
        *,
        prefetch: int = DEFAULT_PREFETCH,
        max_message_size: int | None = None,
        timeout: float | None = None,
        tls: bool = False,
        ca_file: str | None = None,
        certfile: str | None = None,
        keyfile: str | None = None,
        server_name: str | None = None,
        token: str | None = None,
        headers: Mapping[str, str] | None = None,
        tracing: bool = False,
        traces_exporter_host: str | None = None,
        traces_exporter_port: int | None = None,
    ) -> None:
        """``tls=True`` (or a ``grpcs://``, ``https://``, ``wss://`` host) connects with TLS,
        trusting ``ca_file`` instead of the system's CAs when given; ``certfile``/``keyfile``
        present a client certificate. ``token`` is sent as ``authorization: Bearer <token>`` on
        every call and ``headers`` too (gRPC metadata, HTTP headers, the WebSocket handshake).

        ``tracing=True``: each request is a CLIENT span whose W3C context goes to the server
        (gRPC metadata, HTTP headers), exported over OTLP/gRPC to ``traces_exporter_host:port``,
        or, without a host, through the application's own (global) OpenTelemetry provider."""
        host, port, tls = tls_address(host, port, tls)
        protocol, addresses = parse_address(host, port, protocol.lower())
        self.protocol = protocol
        self.addresses = tuple(addresses)
        if prefetch < 1:
            raise ConfigError(f"prefetch must be >= 1, got {prefetch}")
        self.prefetch = prefetch
        self.timeout = timeout
        security = ClientSecurity.from_options(
            tls=tls,
            ca_file=ca_file,
            certfile=certfile,
            keyfile=keyfile,
            server_name=server_name,
            token=token,
            headers=headers,
        )
        self._transport: Transport = transport_for(protocol)(
            addresses, max_message_size=max_message_size, security=security
        )
        self._closed = False
        self._tracing: Tracing | None = None
        if tracing:
            self._tracing = Tracing(
                "client",
                host=traces_exporter_host,
                port=traces_exporter_port,
                use_global=traces_exporter_host is None,
            )

    # -- lifecycle -----------------------------------------------------------------------------

    async def __aenter__(self) -> AsyncClient:
        await self.open()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def open(self) -> None:
        self._check_open()
        await self._transport.open()

    async def close(self) -> None:
        self._closed = True
        await self._transport.close()
        if self._tracing is not None:
            tracing, self._tracing = self._tracing, None
            await asyncio.get_running_loop().run_in_executor(None, tracing.shutdown)

    @property
    def closed(self) -> bool:
        return self._closed

    def _check_open(self) -> None:
        if self._closed:
            raise ClientClosedError("this client is closed; create a new one")

    # -- calls ---------------------------------------------------------------------------------

    @overload
    async def post(
        self,
        on: str,
        inputs: DocInputs = ...,
        parameters: Mapping[str, Any] | None = ...,
        *,
        return_type: type[DocList[T]] | type[T],
        request_size: int = ...,
        target_executor: str = ...,
        timeout: float | None = ...,
        prefetch: int | None = ...,
        show_progress: bool = ...,
        on_done: Callable[[Response], Any] | None = ...,
        on_error: Callable[[PlaitError], Any] | None = ...,
        on_always: Callable[[Response | PlaitError], Any] | None = ...,
    ) -> DocList[T]: ...
    @overload
    async def post(
        self,
        on: str,
        inputs: DocInputs = ...,
        parameters: Mapping[str, Any] | None = ...,
        *,
        return_type: None = ...,
        request_size: int = ...,
        target_executor: str = ...,
        timeout: float | None = ...,
        prefetch: int | None = ...,
        show_progress: bool = ...,
        on_done: Callable[[Response], Any] | None = ...,
        on_error: Callable[[PlaitError], Any] | None = ...,
        on_always: Callable[[Response | PlaitError], Any] | None = ...,
    ) -> DocList[Any]: ...

    async def post(
        self,
        on: str,
        inputs: DocInputs = None,
        parameters: Mapping[str, Any] | None = None,
        *,
        return_type: ReturnType = None,
        request_size: int = 100,
        target_executor: str = "",
        timeout: float | None = None,
        prefetch: int | None = None,
        show_progress: bool = False,
        on_done: Callable[[Response], Any] | None = None,
        on_error: Callable[[PlaitError], Any] | None = None,
        on_always: Callable[[Response | PlaitError], Any] | None = None,
    ) -> DocList[Any]:
        """Send ``inputs`` to endpoint ``on`` and return the resulting documents in input order.

        Inputs are split into requests of ``request_size`` docs, up to ``prefetch`` of them in
        flight at once. ``timeout`` (seconds) is the deadline of each request. Results decode into
        ``return_type`` (default: the inputs' document type). With ``on_done``, each response is
        handed to the callback as it arrives instead of being collected, and ``post`` returns an
        empty DocList. With ``on_error``, failed requests go to the callback and the rest carry on;
        without it the first error is raised and the requests still in flight are cancelled.
        """
        self._check_open()
        doc_type = _doc_type(return_type, inputs)
        params = dict(parameters or {})
        endpoint = on if on.startswith("/") else f"/{on}"
        deadline = timeout if timeout is not None else self.timeout
        window = prefetch or self.prefetch
        total = math.ceil(len(inputs) / request_size) if isinstance(inputs, Sequence) and inputs else None
        collected: dict[int, DocList[Any]] = {}

        async def one(index: int, batch: Sequence[Document]) -> None:
            call = Call(endpoint, encode_docs(batch), params, target_executor, uuid.uuid4().hex)
            try:
                reply = await self._send(call, deadline)
                response = Response(reply.request_id, decode_docs(reply.docs, doc_type), reply.parameters)
            except PlaitError as error:
                if on_always is not None:
                    on_always(error)
                if on_error is None:
                    raise
                on_error(error)
                return
            if on_done is not None:
                on_done(response)
            else:
                collected[index] = response.docs
            if on_always is not None:
                on_always(response)

        batches = _batches(inputs, request_size)
        first = next(batches)
        second = next(batches, None)
        if second is None and not show_progress:  # the common single-request case: no task machinery
            await one(0, first)
        else:
            with Progress(enabled=show_progress, total=total, description=f"post {endpoint}") as progress:
                await self._pipeline(one, itertools.chain([first, second], batches), window, progress)
        out = DocList[doc_type]()  # type: ignore[valid-type]
        for index in sorted(collected):
            out.extend(collected[index])
        return out

    @staticmethod
    async def _pipeline(
        one: Callable[[int, Sequence[Document]], Any],
        batches: Iterable[Sequence[Document] | None],
        window: int,
        progress: Progress,
    ) -> None:
        pending: set[asyncio.Task[None]] = set()

        async def reap(when: str) -> None:
            nonlocal pending
            done, pending = await asyncio.wait(pending, return_when=when)
            for task in done:
                task.result()  # re-raises the request's error
                progress.advance()

        try:
            for index, batch in enumerate(batches):
                if batch is None:
                    continue
                if len(pending) >= window:
                    await reap(asyncio.FIRST_COMPLETED)
                pending.add(asyncio.ensure_future(one(index, batch)))
            while pending:
                await reap(asyncio.FIRST_COMPLETED)
        finally:
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)

    @overload
    def stream_doc(
        self,
        on: str,
        inputs: Document,
        parameters: Mapping[str, Any] | None = ...,
        *,
        return_type: type[T],
        timeout: float | None = ...,
    ) -> AsyncIterator[T]: ...
    @overload
    def stream_doc(
        self,
        on: str,
        inputs: Document,
        parameters: Mapping[str, Any] | None = ...,
        *,
        return_type: None = ...,
        timeout: float | None = ...,
    ) -> AsyncIterator[Any]: ...

    async def stream_doc(
        self,
        on: str,
        inputs: Document,
        parameters: Mapping[str, Any] | None = None,
        *,
        return_type: type[Document] | None = None,
        timeout: float | None = None,
    ) -> AsyncIterator[Any]:
        """Send one document to a streaming endpoint and yield each document it produces."""
        self._check_open()
        doc_type = _doc_type(return_type, inputs)
        endpoint = on if on.startswith("/") else f"/{on}"
        call = Call(endpoint, encode_docs([inputs]), dict(parameters or {}), "", uuid.uuid4().hex)
        # aclosing: a caller that stops reading ends the transport's stream now, not when the
        # garbage collector gets to it.
        replies = self._transport.stream(call, timeout=timeout if timeout is not None else self.timeout)
        async with contextlib.aclosing(replies):
            async for reply in replies:
                for doc in decode_docs(reply.docs, doc_type):
                    yield doc

    async def _send(self, call: Call, timeout: float | None) -> Reply:
        if self._tracing is None:
            return await self._transport.call(call, timeout=timeout)
        attributes = {"plait.endpoint": call.endpoint, "plait.request_id": call.request_id}
        with self._tracing.client_span(f"client {call.endpoint}", attributes):
            call = dataclasses.replace(call, metadata=self._tracing.outgoing())
            return await self._transport.call(call, timeout=timeout)

    async def health(self, timeout: float | None = 5.0) -> str:
        """The server's health status: 'SERVING', 'NOT_SERVING' or 'UNREACHABLE'."""
        self._check_open()
        return await self._transport.health(timeout=timeout)

    async def is_ready(self, timeout: float | None = 5.0) -> bool:
        """True when the server answers health checks with SERVING."""
        return await self.health(timeout=timeout) == "SERVING"

    async def describe(self, timeout: float | None = 10.0) -> ServiceDescription:
        """The server's endpoints and their document schemas."""
        self._check_open()
        return await self._transport.describe(timeout=timeout)
