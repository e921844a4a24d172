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
import gc
import logging
from typing import TYPE_CHECKING, Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from plait.config import ReplicaConfig
from plait.errors import ExecutorError, StartupError
from plait.executor.loader import expand_yaml_uses, load_executor
from plait.security.tls import internal_server_credentials
from plait.serve.handler import RequestHandler
from plait.serve.lifecycle import run_until_stopped
from plait.serve.limits import limited, queue_depth
from plait.serve.service import add_plait_servicer
from plait.serve.servicer import (  # re-exported: their home was here
    STREAM_WINDOW,
    UNLIMITED_STREAM_WINDOW,
    PlaitServicer,
    server_options,
)
from plait.wire import SERVICE_NAME

if TYPE_CHECKING:
    from plait.observe.instruments import Instruments

log = logging.getLogger("plait.serve")

DRAIN_NOTICE_S = 0.25
"""Between turning NOT_SERVING and refusing new calls: health-watching callers move away first, so
a call sent just as a replica stops is not lost (capped at ``grace_period``)."""

__all__ = [
    "DRAIN_NOTICE_S",
    "STREAM_WINDOW",
    "UNLIMITED_STREAM_WINDOW",
    "ExecutorServer",
    "PlaitServicer",
    "listed_exception",
    "queue_depth",
    "serve_replica",
    "server_options",
]


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
