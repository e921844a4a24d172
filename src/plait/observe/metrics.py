"""Prometheus metrics of a gateway or an executor replica, served on ``port_monitoring``.

Everything here exists only when ``monitoring=True``: a server without it builds no metric and
wraps nothing, so its requests pay nothing. Every metric is labelled by ``server`` (the executor's
or the gateway's name) so one dashboard can show a whole Flow.

| metric | type | labels |
|---|---|---|
| ``plait_requests_total`` | counter | server, endpoint, status (``OK`` or the gRPC status name) |
| ``plait_request_duration_seconds`` | histogram | server, endpoint |
| ``plait_requests_in_flight`` | gauge | server |
| ``plait_requests_queued`` | gauge | server (waiting for an admission slot) |
| ``plait_request_bytes_total`` / ``plait_response_bytes_total`` | counter | server, endpoint |
| ``plait_executor_call_duration_seconds`` | histogram | executor, endpoint, status (gateway: each hop) |
| ``plait_batch_size`` / ``plait_batch_wait_seconds`` | histogram | executor, endpoint (batching) |
| ``plait_batch_queued_requests`` | gauge | executor (waiting in batching queues) |
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from plait.observe.status import status_of
from plait.wire import plait_pb2 as pb

LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)

METRIC_NAMES = (
    "plait_requests_total",
    "plait_request_duration_seconds",
    "plait_requests_in_flight",
    "plait_requests_queued",
    "plait_request_bytes_total",
    "plait_response_bytes_total",
    "plait_executor_call_duration_seconds",
    "plait_batch_size",
    "plait_batch_wait_seconds",
    "plait_batch_queued_requests",
)
"""Every metric family plait exposes (what the Grafana dashboard may refer to)."""

OK = "OK"


class ServerMetrics:
    """The metric families of one server process, in its own registry."""

    def __init__(self, server: str, registry: CollectorRegistry | None = None) -> None:
        self.server = server
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        reg = self.registry
        self.requests = Counter(
            "plait_requests", "Requests served, by endpoint and status", ("server", "endpoint", "status"),
            registry=reg,
        )  # fmt: skip
        self.duration = Histogram(
            "plait_request_duration_seconds",
            "Time from receiving a request to its response (admission wait included)",
            ("server", "endpoint"),
            buckets=LATENCY_BUCKETS,
            registry=reg,
        )
        self.in_flight = Gauge(
            "plait_requests_in_flight", "Requests being served now", ("server",), registry=reg
        ).labels(server)
        self._queued = Gauge(
            "plait_requests_queued", "Requests waiting for an admission slot", ("server",), registry=reg
        )
        self.bytes_in = Counter(
            "plait_request_bytes", "Request payload bytes (documents and parameters)", ("server", "endpoint"),
            registry=reg,
        )  # fmt: skip
        self.bytes_out = Counter(
            "plait_response_bytes", "Response payload bytes (documents and parameters)",
            ("server", "endpoint"), registry=reg,
        )  # fmt: skip
        self._hop: Histogram | None = None
        self._per_endpoint: dict[str, tuple[Any, Any, Any, Any]] = {}

    def watch_queue(self, depth: Callable[[], float]) -> None:
        """Report ``depth()`` (read at scrape time, so it costs requests nothing) as the queue gauge."""
        self._queued.labels(self.server).set_function(depth)

    def watch_batch_queue(self, executor: str, pending: Callable[[], float]) -> None:
        """Report requests waiting in an executor's batching queues (read at scrape time)."""
        Gauge(
            "plait_batch_queued_requests",
            "Requests waiting in dynamic-batching queues",
            ("executor",),
            registry=self.registry,
        ).labels(executor).set_function(pending)

    def endpoint(self, endpoint: str) -> tuple[Any, Any, Any, Any]:
        """(duration, bytes in, bytes out, OK count) children for ``endpoint``, made once."""
        children = self._per_endpoint.get(endpoint)
        if children is None:
            labels = (self.server, endpoint)
            children = (
                self.duration.labels(*labels),
                self.bytes_in.labels(*labels),
                self.bytes_out.labels(*labels),
                self.requests.labels(*labels, OK),
            )
            self._per_endpoint[endpoint] = children
        return children

    def hop(self) -> Histogram:
        """The gateway's per-executor call histogram (made on first use: executors have none)."""
        if self._hop is None:
            self._hop = Histogram(
                "plait_executor_call_duration_seconds",
                "Time of each call from the gateway to an executor (one hop), retries included",
                ("executor", "endpoint", "status"),
                buckets=LATENCY_BUCKETS,
                registry=self.registry,
            )
        return self._hop

    def serve(self, host: str, port: int) -> Any:
        """Serve ``/metrics`` on ``host:port`` (a daemon thread); returns the HTTP server."""
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        return server


def _size(message: Any) -> int:
    return len(message.docs) + len(message.parameters)


class Measured:
    """A Processor wrapper that counts, times and sizes every request (``monitoring=True``)."""

    def __init__(self, inner: Any, metrics: ServerMetrics) -> None:
        self.inner = inner
        self.name: str = inner.name
        self.metrics = metrics

    def _begin(self, request: pb.Request) -> tuple[Any, Any, Any, float]:
        """Count a request in: its endpoint's duration histogram, bytes-out and OK counters, start."""
        m = self.metrics
        duration, bytes_in, bytes_out, ok = m.endpoint(request.endpoint)
        bytes_in.inc(_size(request))
        m.in_flight.inc()
        return duration, bytes_out, ok, time.perf_counter()

    def _end(self, request: pb.Request, duration: Any, ok: Any, start: float, failed: str | None) -> None:
        m = self.metrics
        duration.observe(time.perf_counter() - start)
        m.in_flight.dec()
        if failed is None:
            ok.inc()
        else:
            m.requests.labels(m.server, request.endpoint, failed).inc()

    async def process(self, request: pb.Request, *, timeout: float | None = None) -> pb.Response:
        duration, bytes_out, ok, start = self._begin(request)
        failed: str | None = None
        try:
            response: pb.Response = await self.inner.process(request, timeout=timeout)
            bytes_out.inc(_size(response))
            return response
        except BaseException as e:
            failed = status_of(e)
            raise
        finally:
            self._end(request, duration, ok, start, failed)

    async def stream(
        self, request: pb.Request, *, timeout: float | None = None
    ) -> AsyncIterator[pb.Response]:
        duration, bytes_out, ok, start = self._begin(request)
        failed: str | None = None
        try:
            async for response in self.inner.stream(request, timeout=timeout):
                bytes_out.inc(_size(response))
                yield response
        except BaseException as e:
            failed = status_of(e)
            raise
        finally:
            self._end(request, duration, ok, start, failed)

    def describe(self) -> pb.DescribeResponse:
        response: pb.DescribeResponse = self.inner.describe()
        return response

    def ready(self) -> bool:
        return bool(self.inner.ready())
