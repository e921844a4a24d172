"""``Client``: the blocking twin of :class:`AsyncClient`, with the same methods.

It owns one background event-loop thread for its whole life (never ``asyncio.run`` per call), so
it works the same from a script, a notebook with a running loop, or many threads at once.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from types import TracebackType
from typing import Any, TypeVar, overload

from plait.client.async_client import DEFAULT_PREFETCH, AsyncClient, DocInputs, Response, ReturnType
from plait.client.loop_thread import LoopThread
from plait.client.transport import ServiceDescription
from plait.docs import DocList, Document
from plait.errors import ClientClosedError, PlaitError

T = TypeVar("T", bound=Document)


class Client:
    """Post documents to a plait Executor, Deployment or Flow. Safe to share between threads.

    ``Client(host='localhost', port=12345)``; ``host`` may also be ``'grpc://host:port'`` or a list
    of ``'host:port'`` replicas to balance over. Use it as a context manager or call ``close()``.
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
        """TLS and credentials as for :class:`AsyncClient` (``tls``, ``ca_file``, ``token``...)."""
        self._async = AsyncClient(
            host,
            port,
            protocol,
            prefetch=prefetch,
            max_message_size=max_message_size,
            timeout=timeout,
            tls=tls,
            ca_file=ca_file,
            certfile=certfile,
            keyfile=keyfile,
            server_name=server_name,
            token=token,
            headers=headers,
            tracing=tracing,
            traces_exporter_host=traces_exporter_host,
            traces_exporter_port=traces_exporter_port,
        )
        self._loop = LoopThread()

    @property
    def protocol(self) -> str:
        return self._async.protocol

    @property
    def addresses(self) -> tuple[str, ...]:
        return self._async.addresses

    @property
    def closed(self) -> bool:
        return self._async.closed

    def __enter__(self) -> Client:
        self.open()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def open(self) -> None:
        self._check_open()
        self._loop.run(self._async.open())

    def close(self) -> None:
        if self._async.closed:
            return
        try:
            self._loop.run(self._async.close())
        finally:
            self._loop.stop()

    def _check_open(self) -> None:
        if self._async.closed:
            raise ClientClosedError("this client is closed; create a new one")

    @overload
    def post(
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
    def post(
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

    def post(
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
        """See :meth:`AsyncClient.post`. Callbacks run on the client's loop thread."""
        self._check_open()
        return self._loop.run(
            self._async.post(
                on,
                inputs,
                parameters,
                return_type=return_type,
                request_size=request_size,
                target_executor=target_executor,
                timeout=timeout,
                prefetch=prefetch,
                show_progress=show_progress,
                on_done=on_done,
                on_error=on_error,
                on_always=on_always,
            )
        )

    @overload
    def stream_doc(
        self,
        on: str,
        inputs: Document,
        parameters: Mapping[str, Any] | None = ...,
        *,
        return_type: type[T],
        timeout: float | None = ...,
    ) -> Iterator[T]: ...
    @overload
    def stream_doc(
        self,
        on: str,
        inputs: Document,
        parameters: Mapping[str, Any] | None = ...,
        *,
        return_type: None = ...,
        timeout: float | None = ...,
    ) -> Iterator[Any]: ...

    def stream_doc(
        self,
        on: str,
        inputs: Document,
        parameters: Mapping[str, Any] | None = None,
        *,
        return_type: type[Document] | None = None,
        timeout: float | None = None,
    ) -> Iterator[Any]:
        """See :meth:`AsyncClient.stream_doc`; yields documents as the server produces them."""
        self._check_open()
        agen = self._async.stream_doc(on, inputs, parameters, return_type=return_type, timeout=timeout)
        try:
            while True:
                try:
                    yield self._loop.run(_next(agen))
                except StopAsyncIteration:
                    return
        finally:
            if not self._async.closed:
                self._loop.run(_aclose(agen))

    def health(self, timeout: float | None = 5.0) -> str:
        """'SERVING', 'NOT_SERVING' or 'UNREACHABLE'."""
        self._check_open()
        return self._loop.run(self._async.health(timeout))

    def is_ready(self, timeout: float | None = 5.0) -> bool:
        self._check_open()
        return self._loop.run(self._async.is_ready(timeout))

    def describe(self, timeout: float | None = 10.0) -> ServiceDescription:
        self._check_open()
        return self._loop.run(self._async.describe(timeout))


async def _next(agen: AsyncIterator[Any]) -> Any:
    return await agen.__anext__()


async def _aclose(agen: Any) -> None:
    with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
        await agen.aclose()
