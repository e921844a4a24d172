"""The gRPC server that hosts one Executor replica.

Lifecycle: load the Executor, bind the ports, report SERVING on the standard ``grpc.health.v1``
service, serve until SIGTERM/SIGINT (or until the parent process goes away), then drain: health
turns NOT_SERVING, callers that watch health (plait's channels do) get ``DRAIN_NOTICE_S`` to move
their new calls to other replicas, then new RPCs are refused, in-flight ones get ``grace_period``
seconds, and ``Executor.close()`` runs.

``exit_on_exceptions``: when an endpoint raises a listed exception, that request is answered with
its ExecutorError as usual, then the replica drains and the process exits with code 1, so whatever
supervises it (a Deployment, a Flow, Kubernetes) starts a fresh one.
"""

from __future__ import annotations

import asyncio
import collections
import gc
import logging
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from plait.config import ReplicaConfig
from plait.errors import (
    DeadlineExceededError,
    ExecutorError,
    PlaitError,
    StartupError,
    UnavailableError,
)
from plait.executor.loader import expand_yaml_uses, load_executor
from plait.observe.tracing import incoming, trace_headers
from plait.security.tls import internal_server_credentials
from plait.serve.handler import RequestHandler
from plait.serve.lifecycle import run_until_stopped
from plait.serve.limits import AdmissionLimit, limited
from plait.serve.processor import Processor
from plait.serve.service import MalformedMessage, add_plait_servicer
from plait.wire import SERVICE_NAME, abort_with, fail_with, plait_pb2_grpc
from plait.wire import plait_pb2 as pb
from plait.wire.lanes import batch_limit, batch_metadata, join_responses, take_batch
from plait.wire.retry import SHUTTING_DOWN
from plait.wire.status import error_reply, message_timeout

if TYPE_CHECKING:
    from plait.observe.instruments import Instruments

log = logging.getLogger("plait.serve")

DRAIN_NOTICE_S = 0.25
"""Between turning NOT_SERVING and refusing new calls: health-watching callers move away first, so
a call sent just as a replica stops is not lost (capped at ``grace_period``)."""

STREAM_WINDOW = 64
"""Requests one ProcessStream call runs at once; further ones wait to be read (backpressure)."""
UNLIMITED_STREAM_WINDOW = 4096
"""Requests one stream may have running on a replica without an admission limit (max_concurrent=None)."""


_EMPTY = pb.Response()


def _remaining(context: Any) -> float | None:
    remaining = context.time_remaining()
    return None if remaining is None else max(0.0, float(remaining))


class PlaitServicer(plait_pb2_grpc.PlaitServicer):  # type: ignore[misc]
    """``plait.v1.Plait`` over any :class:`Processor` (an executor's handler or a Flow's router)."""

    def __init__(
        self, processor: Processor, *, stream_window: int = STREAM_WINDOW, receive_limit: int | None = None
    ) -> None:
        """``receive_limit``: the server's largest message received, in bytes (None: no limit);
        callers keep joined requests under it."""
        self.handler = processor
        self._batch_metadata = batch_metadata(receive_limit)
        self._stream_window = stream_window
        self._description = processor.describe()
        self._trace_context = bool(getattr(processor, "wants_trace_context", False))
        self._draining = False
        self._streams: set[Callable[[], None]] = set()

    def begin_drain(self) -> None:
        """Shutting down: every ``ProcessStream`` refuses new requests (UNAVAILABLE, "server is
        shutting down", which callers send again elsewhere) and ends once its requests in flight
        are answered, so the server's stop need not wait out its grace period for open streams."""
        self._draining = True
        for wake in list(self._streams):
            wake()

    async def Process(self, request: pb.Request | MalformedMessage, context: Any) -> pb.Response:
        if isinstance(request, MalformedMessage):
            fail_with(context, request.error)
            return _EMPTY
        if self._trace_context:  # each RPC runs in its own task: its context is this call's alone
            incoming.set(trace_headers(context.invocation_metadata() or ()))
        try:
            return await self.handler.process(request, timeout=_remaining(context))
        except PlaitError as e:
            fail_with(context, e)
            return _EMPTY

    async def Stream(
        self, request: pb.Request | MalformedMessage, context: Any
    ) -> AsyncIterator[pb.Response]:
        if isinstance(request, MalformedMessage):
            await abort_with(context, request.error)
        if self._trace_context:
            incoming.set(trace_headers(context.invocation_metadata() or ()))
        try:
            async for response in self.handler.stream(request, timeout=_remaining(context)):
                yield response
        except PlaitError as e:
            await abort_with(context, e)

    async def ProcessStream(self, request_iterator: Any, context: Any) -> AsyncIterator[bytes]:
        """Requests as messages of one long-lived call (how plait's gRPC client sends unary calls):
        each runs concurrently (up to ``STREAM_WINDOW`` per stream) under its own ``timeout`` and
        the stream's deadline; a ``cancel`` message stops the request it names, unanswered. A failed
        request is answered with ``error``; the stream goes on. When the caller goes away, every
        request of the stream is cancelled. A caller that reads joined responses (``plait-batch``
        in its metadata) gets those that are ready at once in one message; joined requests
        (``Request.batch``) are read as if they had come one by one. Yields serialized responses."""
        metadata = context.invocation_metadata() or ()
        if self._trace_context:
            incoming.set(trace_headers(metadata))
        limit = batch_limit(metadata)  # None: the caller reads no joined responses
        # At once, so the caller knows its stream was accepted before it sends (plait.wire.lanes),
        # and that it may join requests.
        await context.send_initial_metadata(self._batch_metadata)
        ready: collections.deque[bytes | PlaitError | None] = collections.deque()
        wake = asyncio.Event()
        window = asyncio.Semaphore(self._stream_window)
        running: dict[str, asyncio.Task[None]] = {}
        drained = False

        def put(item: pb.Response | PlaitError | None) -> None:
            ready.append(item.SerializeToString() if isinstance(item, pb.Response) else item)
            wake.set()

        def end_if_drained() -> None:
            nonlocal drained
            if self._draining and not running and not drained:
                drained = True
                put(None)

        async def one(request: pb.Request) -> None:
            try:
                response = await self._one_of_stream(request, context)
            finally:
                window.release()
                if running.get(request.request_id) is asyncio.current_task():
                    del running[request.request_id]
            put(response)
            end_if_drained()

        async def read_all() -> None:
            try:
                async with asyncio.TaskGroup() as tasks:
                    async for message in request_iterator:
                        if isinstance(message, MalformedMessage):  # its id is unknown: end the call
                            put(message.error)
                            return
                        for request in message.batch or (message,):
                            if request.cancel:  # the caller gave up on this one: stop its work
                                task = running.pop(request.request_id, None)
                                if task is not None:
                                    task.cancel()
                                continue
                            if self._draining:
                                put(_shutting_down(request.request_id))
                                continue
                            await window.acquire()
                            running[request.request_id] = tasks.create_task(one(request))
            finally:
                put(None)

        self._streams.add(end_if_drained)
        reader = asyncio.create_task(read_all())
        try:
            end_if_drained()
            while True:
                while not ready:
                    wake.clear()
                    await wake.wait()
                head = ready[0]
                if head is None:
                    break
                if isinstance(head, PlaitError):
                    await abort_with(context, head)
                if limit is not None:
                    yield join_responses(take_batch(ready, len, _is_bytes, limit))
                else:
                    yield ready.popleft()  # type: ignore[misc]
            if not drained:
                await reader
        finally:
            self._streams.discard(end_if_drained)
            reader.cancel()

    async def _one_of_stream(self, request: pb.Request, context: Any) -> pb.Response:
        """One request of a ``ProcessStream``: its response, or one that carries its error."""
        try:
            own = message_timeout(request)
            left = _remaining(context)
            if not own:  # no timeout of its own: the stream's deadline, if any, is the call's
                return await self.handler.process(request, timeout=left)
            try:
                async with asyncio.timeout(own):
                    return await self.handler.process(
                        request, timeout=own if left is None else min(own, left)
                    )
            except TimeoutError:
                raise DeadlineExceededError(
                    f"no response within the request's timeout of {own}s", timeout=own
                ) from None
        except PlaitError as e:
            return error_reply(request.request_id, e)

    async def Describe(
        self, request: pb.DescribeRequest | MalformedMessage, context: Any
    ) -> pb.DescribeResponse:
        if isinstance(request, MalformedMessage):
            await abort_with(context, request.error)
        return self._description


def _is_bytes(item: object) -> bool:
    return type(item) is bytes


def _shutting_down(request_id: str) -> pb.Response:
    error = UnavailableError(f"{SHUTTING_DOWN}: send the request again, to another replica")
    return error_reply(request_id, error)


def server_options(
    max_message_size: int,
    reuse_port: bool,
    *,
    max_connection_age: float | None = None,
    max_connection_age_grace: float | None = None,
) -> list[tuple[str, Any]]:
    options: list[tuple[str, Any]] = [
        ("grpc.max_receive_message_length", max_message_size),
        ("grpc.max_send_message_length", -1),
        # gRPC turns SO_REUSEPORT on by default, which hides "port already in use"; only replicas
        # that deliberately share a public port get it.
        ("grpc.so_reuseport", 1 if reuse_port else 0),
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
    ]
    # A caller balancing over DNS (a gateway in front of a headless Service) resolves again when a
    # connection closes: closing connections now and then (gRPC adds +-10% jitter) is how new
    # replicas get traffic. Calls already running finish (within the grace, if one is set).
    if max_connection_age is not None:
        options.append(("grpc.max_connection_age_ms", int(max_connection_age * 1000)))
    if max_connection_age_grace is not None:
        options.append(("grpc.max_connection_age_grace_ms", int(max_connection_age_grace * 1000)))
    return options


class ExecutorServer:
    """One replica: executor + gRPC server + health, with an explicit start/stop lifecycle."""

    def __init__(self, config: ReplicaConfig, *, span_exporter: Any = None) -> None:
        """``span_exporter``: where spans go instead of OTLP when tracing (tests, in-process use)."""
        self.config = config
        self._span_exporter = span_exporter
        self.handler: RequestHandler | None = None
        self.instruments: Instruments | None = None
        self.metrics_port: int | None = None
        self._server: grpc.aio.Server | None = None
        self._servicer: PlaitServicer | None = None
        self._health = health.aio.HealthServicer()
        self._stop = asyncio.Event()
        self.exit_reason: str | None = None
        """Set when a listed exception (``exit_on_exceptions``) makes this replica exit."""

    @property
    def name(self) -> str:
        return self.config.executor.name

    def _addresses(self) -> list[tuple[str, int]]:
        cfg = self.config
        addrs = [(cfg.host, cfg.port), *((cfg.host, p) for p in cfg.extra_ports)]
        if cfg.public_port is not None:
            addrs.append((cfg.public_host or cfg.host, cfg.public_port))
        return addrs

    async def start(self) -> None:
        cfg = self.config
        loop = asyncio.get_running_loop()
        # Read an Executor YAML here, so its settings (`dynamic_batching:`) reach the handler too.
        executor_cfg = expand_yaml_uses(cfg.executor)
        # Constructing an Executor may load a model: keep it off the loop so signals still work.
        executor = await loop.run_in_executor(None, load_executor, executor_cfg, cfg.runtime_args())
        instruments = None
        if cfg.observe.enabled:  # only then are the metrics and tracing libraries loaded
            from plait.observe.instruments import Instruments

            instruments = Instruments(
                cfg.observe, name=self.name, role="executor", exporter=self._span_exporter
            )
        self.instruments = instruments
        self.handler = RequestHandler(
            executor,
            name=self.name,
            allow_concurrent=executor_cfg.allow_concurrent,
            dynamic_batching=executor_cfg.uses_dynamic_batching,
            registry=instruments.metrics.registry if instruments and instruments.metrics else None,
            tracing=instruments.tracing if instruments else None,
        )
        if cfg.executor.exit_on_exceptions:
            self._watch_for_exit_exceptions(self.handler, cfg.executor.exit_on_exceptions)
        # What is loaded now (the model, the imports) lives as long as the process: take it out of
        # the cyclic GC's sight so full collections stay short (p99 with batching: 68 -> 28 ms).
        gc.freeze()
        server = grpc.aio.server(
            options=server_options(
                cfg.max_message_size,
                reuse_port=cfg.public_port is not None,
                max_connection_age=cfg.max_connection_age,
                max_connection_age_grace=cfg.max_connection_age_grace,
            )
        )
        processor = limited(self.handler, cfg.max_concurrent, cfg.max_queue)
        if instruments is not None:
            if instruments.metrics is not None:
                instruments.metrics.watch_queue(queue_depth(processor))
                instruments.metrics.watch_batch_queue(self.name, self.handler.batch_pending)
            processor = instruments.wrap(processor)
            self.metrics_port = instruments.serve_metrics(cfg.host)
        # A gateway sends every request for this replica on one stream: let the admission limit,
        # not the stream's window, decide what waits and what is refused (RESOURCE_EXHAUSTED).
        window = (cfg.max_concurrent or UNLIMITED_STREAM_WINDOW) + cfg.max_queue + 1
        self._servicer = PlaitServicer(processor, stream_window=window, receive_limit=cfg.max_message_size)
        add_plait_servicer(self._servicer, server)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        credentials = internal_server_credentials(cfg.internal_tls) if cfg.internal_tls else None
        for host, port in self._addresses():
            try:
                bound = (
                    server.add_secure_port(f"{host}:{port}", credentials)
                    if credentials is not None
                    else server.add_insecure_port(f"{host}:{port}")
                )
            except RuntimeError as e:
                raise StartupError(
                    f"executor {self.name!r} cannot bind {host}:{port} (port in use?): {e}",
                    executor=self.name,
                ) from e
            if port and bound != port:
                raise StartupError(f"executor {self.name!r} cannot bind {host}:{port}", executor=self.name)
        await server.start()
        self._server = server
        for service in ("", SERVICE_NAME):
            await self._health.set(service, health_pb2.HealthCheckResponse.SERVING)
        addrs = ", ".join(f"{h}:{p}" for h, p in self._addresses())
        log.info("executor %r (%s) ready on %s", self.name, type(executor).__name__, addrs)

    def request_stop(self) -> None:
        self._stop.set()

    def _watch_for_exit_exceptions(self, handler: RequestHandler, names: tuple[str, ...]) -> None:
        """``exit_on_exceptions``: a listed exception from an endpoint stops this replica (the
        request still gets its ExecutorError: the drain lets in-flight calls finish)."""
        loop = asyncio.get_running_loop()

        def check(exc: BaseException) -> None:
            listed = listed_exception(exc, names)
            if listed is None or self.exit_reason is not None:
                return
            self.exit_reason = (
                f"endpoint raised {type(exc).__module__}.{type(exc).__qualname__} ({listed!r} is in "
                f"exit_on_exceptions): {exc}"
            )
            log.error("executor %r: %s; draining and exiting", self.name, self.exit_reason)
            loop.call_soon_threadsafe(self._stop.set)

        handler.on_endpoint_error = check

    async def stop(self) -> None:
        """Drain: refuse new work, give in-flight requests the grace period, close the Executor."""
        await self._health.enter_graceful_shutdown()
        if self._server is not None:
            await asyncio.sleep(min(DRAIN_NOTICE_S, self.config.grace_period))
            if self._servicer is not None:
                self._servicer.begin_drain()
            await self._server.stop(self.config.grace_period)
        if self.handler is not None:
            await asyncio.get_running_loop().run_in_executor(None, self.handler.close)
        if self.instruments is not None:
            await asyncio.get_running_loop().run_in_executor(None, self.instruments.close)
        log.info("executor %r stopped", self.name)

    async def serve(self) -> None:
        """Start, serve until asked to stop (signal, parent gone, request_stop), then drain."""
        await run_until_stopped(
            self.start,
            self.stop,
            self._stop,
            parent_pid=self.config.parent_pid,
            who=f"executor {self.name!r}",
        )


def queue_depth(processor: Processor) -> Callable[[], float]:
    """Requests waiting for an admission slot in ``processor`` (0 when it has no limit)."""
    if isinstance(processor, AdmissionLimit):
        return lambda: float(processor.waiting)
    return lambda: 0.0


def listed_exception(exc: BaseException, names: tuple[str, ...]) -> str | None:
    """The entry of ``names`` that ``exc``'s class or one of its bases matches, by name
    (``'RuntimeError'``) or module-qualified name (``'mymodule.FatalError'``); None if none does."""
    for cls in type(exc).__mro__:
        for name in (cls.__name__, cls.__qualname__, f"{cls.__module__}.{cls.__qualname__}"):
            if name in names:
                return name
    return None


async def serve_replica(config: ReplicaConfig) -> None:
    """Entry point of an executor process (``plait executor``).

    Raises ExecutorError (the CLI exits with code 1) after draining when a listed exception
    (``exit_on_exceptions``) stopped the replica.
    """
    server = ExecutorServer(config)
    await server.serve()
    if server.exit_reason is not None:
        raise ExecutorError(f"executor {server.name!r} exits: {server.exit_reason}", executor=server.name)
