"""Dynamic batching: queue concurrent requests to an endpoint and serve them with one call.

There is one queue per endpoint and *canonical parameters* (the parameters as sorted-key JSON), so
only requests with equal parameters share a batch: the method is called once, with one
``parameters`` value, and each request must get what it asked for. Each queue has one drain task,
started with the queue's first request and ending when the queue is empty (so parameters that are
never sent again leave nothing behind). The :class:`Batcher` owns those tasks; ``close()`` cancels
them and fails whatever they still held.

A batch is flushed when its queue holds ``preferred_batch_size`` documents or ``timeout`` ms after
its first request arrived. Batches of one endpoint run one at a time (the point is to make big
calls), while the next batch fills; a batch whose time is up while the previous one runs goes as
soon as that one ends, with everything that arrived meanwhile (up to ``preferred_batch_size``).
A request whose caller goes away before its batch runs leaves the queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from plait.docs import DocList, Document
from plait.errors import ExecutorError, PlaitError, UnavailableError
from plait.executor import BatchingConfig, EndpointSpec
from plait.observe.tracing import Tracing

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry, Histogram

CallBatch = Callable[[EndpointSpec, DocList[Any], Any], Awaitable[Any]]
"""Calls the endpoint's method on merged docs: ``await call(spec, docs, parameters)``."""

MakeError = Callable[[str, BaseException], PlaitError]
"""Turns what the method raised into the error each request of the batch gets."""

Outcome = tuple[DocList[Any], Any]
"""What one request gets back: its own input docs and its share of what the method returned."""

BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)
WAIT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
CLOSE_TIMEOUT_S = 10.0


def canonical_parameters(parameters: Any) -> str:
    """The queue key for ``parameters``: equal values give equal strings (key order ignored)."""
    raw = parameters.model_dump(mode="json") if isinstance(parameters, BaseModel) else parameters
    if not raw:
        return "{}"
    return json.dumps(raw, sort_keys=True, separators=(",", ":"), default=str)


@dataclass(eq=False)
class _Pending:
    docs: DocList[Any]
    future: asyncio.Future[Outcome]
    arrived: float
    link: Any = None  # tracing: a link to the span of the request that queued it


@dataclass(eq=False)
class _Queue:
    """Requests waiting for one endpoint with one set of parameters."""

    spec: EndpointSpec
    config: BatchingConfig
    parameters: Any
    items: deque[_Pending] = field(default_factory=deque)
    ndocs: int = 0
    full: asyncio.Event = field(default_factory=asyncio.Event)

    def put(self, item: _Pending) -> None:
        self.items.append(item)
        self.ndocs += len(item.docs)
        cap = self.config.preferred_batch_size
        if cap is not None and self.ndocs >= cap:
            self.full.set()

    def discard(self, item: _Pending) -> None:
        try:
            self.items.remove(item)
        except ValueError:
            return  # already taken into a batch
        self.ndocs -= len(item.docs)
        self._update_full()

    def take(self) -> list[_Pending]:
        """The next batch from the head: up to ``preferred_batch_size`` docs (or one larger request)."""
        cap = self.config.preferred_batch_size
        batch: list[_Pending] = []
        n = 0
        while self.items:
            size = len(self.items[0].docs)
            if batch and cap is not None and n + size > cap:
                break
            item = self.items.popleft()
            self.ndocs -= size
            if item.future.done():  # its caller is gone
                continue
            batch.append(item)
            n += size
            if cap is not None and n >= cap:
                break
        self._update_full()
        return batch

    def _update_full(self) -> None:
        cap = self.config.preferred_batch_size
        if cap is None or self.ndocs < cap:
            self.full.clear()


class Batcher:
    """The queues and drain tasks of one executor's batched endpoints."""

    def __init__(
        self,
        *,
        executor: str,
        call: CallBatch,
        make_error: MakeError,
        registry: Callable[[], CollectorRegistry],
        tracing: Tracing | None = None,
    ) -> None:
        self.executor = executor
        self._tracing = tracing
        self._call = call
        self._make_error = make_error
        self._queues: dict[tuple[str, str], _Queue] = {}
        self._locks: dict[str, asyncio.Lock] = {}  # per endpoint: its batches run one at a time
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False
        self._registry = registry
        self._histograms: tuple[Histogram, Histogram] | None = None

    def _metrics(self) -> tuple[Histogram, Histogram]:
        """Batch sizes and queue waits, registered on the first batch (so an executor without
        batching never loads prometheus_client)."""
        if self._histograms is None:
            from prometheus_client import Histogram

            registry = self._registry()
            self._histograms = (
                Histogram(
                    "plait_batch_size",
                    "Documents in each batch a @dynamic_batching endpoint ran",
                    ("executor", "endpoint"),
                    buckets=BATCH_SIZE_BUCKETS,
                    registry=registry,
                ),
                Histogram(
                    "plait_batch_wait_seconds",
                    "Time each request waited in a batching queue before its batch ran",
                    ("executor", "endpoint"),
                    buckets=WAIT_BUCKETS,
                    registry=registry,
                ),
            )
        return self._histograms

    @property
    def pending(self) -> int:
        """Requests queued and not yet taken into a batch (all endpoints)."""
        return sum(len(q.items) for q in self._queues.values())

    async def submit(
        self, spec: EndpointSpec, config: BatchingConfig, docs: DocList[Any], parameters: Any
    ) -> Outcome:
        """Queue one request's docs; returns them with this request's share of the batch's result."""
        if self._closed:
            raise UnavailableError(
                f"executor {self.executor!r} is shutting down", executor=self.executor, endpoint=spec.endpoint
            )
        loop = asyncio.get_running_loop()
        self._loop = loop
        key = (spec.endpoint, canonical_parameters(parameters))
        queue = self._queues.get(key)
        if queue is None:
            queue = self._queues[key] = _Queue(spec, config, parameters)
            task = loop.create_task(
                self._drain(key, queue), name=f"plait-batch-{self.executor}{spec.endpoint}"
            )
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        item = _Pending(docs, loop.create_future(), loop.time())
        if self._tracing is not None:
            item.link = self._tracing.current_link()
        queue.put(item)
        try:
            return await item.future
        except asyncio.CancelledError:
            queue.discard(item)  # the caller went away before its batch ran: leave the queue
            raise

    async def _drain(self, key: tuple[str, str], queue: _Queue) -> None:
        loop = asyncio.get_running_loop()
        lock = self._locks.setdefault(queue.spec.endpoint, asyncio.Lock())
        timeout = queue.config.timeout_s
        try:
            while queue.items:
                remaining = queue.items[0].arrived + timeout - loop.time()
                if remaining > 0 and not queue.full.is_set():
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(remaining):
                            await queue.full.wait()
                async with lock:
                    batch = queue.take()
                    if batch:
                        await self._run(queue, batch)
        finally:
            # No await between the empty check above and this: a request that comes later finds
            # no queue and starts a new one.
            if self._queues.get(key) is queue:
                del self._queues[key]
            self._fail(queue.items, queue.spec.endpoint)

    async def _run(self, queue: _Queue, batch: list[_Pending]) -> None:
        spec = queue.spec
        labels = (self.executor, spec.endpoint)
        now = asyncio.get_running_loop().time()
        wait = self._metrics()[1].labels(*labels)
        for item in batch:
            wait.observe(now - item.arrived)
        docs = batch[0].docs
        if len(batch) > 1:
            docs = type(docs)()
            for item in batch:
                docs.extend(item.docs)  # DocList into DocList of its type: no per-doc check
        self._metrics()[0].labels(*labels).observe(len(docs))
        try:
            try:
                if self._tracing is None:
                    result = await self._call(spec, docs, queue.parameters)
                else:
                    with self._tracing.batch_span(
                        f"batch {self.executor} {spec.endpoint}",
                        [item.link for item in batch],
                        {
                            "plait.executor": self.executor,
                            "plait.endpoint": spec.endpoint,
                            "plait.batch.requests": len(batch),
                            "plait.batch.documents": len(docs),
                        },
                    ):
                        result = await self._call(spec, docs, queue.parameters)
                shares = self._split(spec, batch, len(docs), result)
            except Exception as e:
                for item in batch:
                    if not item.future.done():
                        item.future.set_exception(self._make_error(spec.endpoint, e))
                return
            for item, share in zip(batch, shares, strict=True):
                if not item.future.done():
                    if isinstance(share, PlaitError):
                        item.future.set_exception(share)
                    else:
                        item.future.set_result((item.docs, share))
        finally:
            self._fail(batch, spec.endpoint)  # cancelled mid-call (shutdown): nobody is left waiting

    def _split(self, spec: EndpointSpec, batch: list[_Pending], total: int, result: Any) -> list[Any]:
        """Each request's share of ``result``, by position; errors for all when the count is off."""
        if result is None or not isinstance(result, Sequence) or isinstance(result, str | bytes):
            # None keeps each request's (changed) input docs; a dict goes to every request; any
            # other value is refused per request by the response builder, as for unbatched calls.
            return [result] * len(batch)
        if len(result) != total:
            return [
                ExecutorError(
                    f"a @dynamic_batching endpoint must return one document per input document, in "
                    f"order (or None): {spec.method_name} returned {len(result)} for a batch of {total}",
                    executor=self.executor,
                    endpoint=spec.endpoint,
                )
                for _ in batch
            ]
        shares: list[Sequence[Document]] = []
        start = 0
        for item in batch:
            end = start + len(item.docs)
            shares.append(result[start:end])
            start = end
        return shares

    def _fail(self, items: Sequence[_Pending] | deque[_Pending], endpoint: str) -> None:
        for item in items:
            if not item.future.done():
                item.future.set_exception(
                    UnavailableError(
                        f"executor {self.executor!r} is shutting down; the request was not run",
                        executor=self.executor,
                        endpoint=endpoint,
                    )
                )

    async def aclose(self) -> None:
        """Refuse new requests, cancel the drain tasks and wait for them to end."""
        self._closed = True
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def close(self) -> None:
        """:meth:`aclose` from any thread (the server closes its handler from a worker thread)."""
        self._closed = True
        loop = self._loop
        if loop is None or loop.is_closed() or not self._tasks:
            return
        try:
            running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is not loop and loop.is_running():
            asyncio.run_coroutine_threadsafe(self.aclose(), loop).result(timeout=CLOSE_TIMEOUT_S)
            return
        for task in list(self._tasks):  # on the loop's own thread: cancel; the tasks finish soon
            task.cancel()
