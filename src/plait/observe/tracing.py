"""OpenTelemetry tracing: spans client → gateway → each executor, exported over OTLP/gRPC.

Importing this module costs nothing: OpenTelemetry is imported when a :class:`Tracing` is made,
which happens only in processes started with ``tracing=True``.

Trace context travels as W3C ``traceparent``/``tracestate``: in gRPC metadata (client → gateway,
gateway → executor) and in HTTP headers (client → HTTP gateway). A protocol server puts what
arrived into :data:`incoming` (only when tracing is on); the :class:`Traced` processor wrapper
makes the server span its child. A dynamic batch's execution span is a root span with one link
to each request span it served.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from contextvars import ContextVar
from typing import Any

from plait.wire import plait_pb2 as pb

TRACE_HEADERS = ("traceparent", "tracestate")
"""The W3C trace context keys (lower case, as gRPC metadata and HTTP/2 require)."""

incoming: ContextVar[Mapping[str, str] | None] = ContextVar("plait_incoming_trace", default=None)
"""The trace context the current request arrived with; set by protocol servers when tracing."""


def trace_headers(pairs: Sequence[tuple[Any, Any]]) -> dict[str, str]:
    """The W3C trace context among ``pairs`` (gRPC metadata or ASGI headers, str or bytes)."""
    found: dict[str, str] = {}
    for key, value in pairs:
        k = key.decode("latin-1") if isinstance(key, bytes) else str(key)
        if k.lower() in TRACE_HEADERS:
            found[k.lower()] = value.decode("latin-1") if isinstance(value, bytes) else str(value)
    return found


class Tracing:
    """One process's tracer provider, exporting to an OTLP/gRPC receiver or to ``exporter``.

    ``exporter`` (any ``SpanExporter``, e.g. the SDK's in-memory one) replaces OTLP: for tests.
    ``use_global``: use the application's global tracer provider instead of making one.
    """

    def __init__(
        self,
        service_name: str,
        *,
        host: str | None = None,
        port: int | None = None,
        exporter: Any = None,
        use_global: bool = False,
    ) -> None:
        from opentelemetry import context as otel_context
        from opentelemetry import trace
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self._trace = trace
        self._context = otel_context
        self._propagator = TraceContextTextMapPropagator()
        self._owned = not use_global
        if use_global:  # a client inside an application that set up OpenTelemetry itself
            self.provider: Any = trace.get_tracer_provider()
            self.tracer = self.provider.get_tracer("plait")
            return
        self.provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
        if exporter is not None:
            self.provider.add_span_processor(SimpleSpanProcessor(exporter))
        else:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

            endpoint = f"http://{host or '127.0.0.1'}:{port or 4317}"
            otlp = OTLPSpanExporter(endpoint=endpoint, insecure=True)
            self.provider.add_span_processor(BatchSpanProcessor(otlp, schedule_delay_millis=500))
        self.tracer = self.provider.get_tracer("plait")

    def server_span(
        self, name: str, carrier: Mapping[str, str] | None, attributes: Mapping[str, Any]
    ) -> contextlib.AbstractContextManager[Any]:
        """A SERVER span, child of the context in ``carrier`` (a new trace without one)."""
        parent = self._propagator.extract(carrier) if carrier else self._context.Context()
        return self.tracer.start_as_current_span(
            name, context=parent, kind=self._trace.SpanKind.SERVER, attributes=dict(attributes)
        )

    def client_span(self, name: str, attributes: Mapping[str, Any]) -> contextlib.AbstractContextManager[Any]:
        """A CLIENT span, child of the current one (one outgoing call)."""
        return self.tracer.start_as_current_span(
            name, kind=self._trace.SpanKind.CLIENT, attributes=dict(attributes)
        )

    def outgoing(self) -> tuple[tuple[str, str], ...]:
        """The current span's context as gRPC metadata / HTTP headers."""
        carrier: dict[str, str] = {}
        self._propagator.inject(carrier)
        return tuple(carrier.items())

    def current_link(self) -> Any:
        """A link to the current span (a batch's span links to every request it served)."""
        span_context = self._trace.get_current_span().get_span_context()
        return self._trace.Link(span_context) if span_context.is_valid else None

    def batch_span(
        self, name: str, links: Sequence[Any], attributes: Mapping[str, Any]
    ) -> contextlib.AbstractContextManager[Any]:
        """A new trace's root span for one batch execution, linked to the requests' spans."""
        return self.tracer.start_as_current_span(
            name,
            context=self._context.Context(),
            kind=self._trace.SpanKind.INTERNAL,
            links=[link for link in links if link is not None],
            attributes=dict(attributes),
        )

    def shutdown(self) -> None:
        """Export what is buffered, then stop (a global provider is left to its owner)."""
        if self._owned:
            self.provider.shutdown()


class Traced:
    """A Processor wrapper that serves each request inside a SERVER span (``tracing=True``)."""

    wants_trace_context = True
    """Tells protocol servers to read the incoming trace context into :data:`incoming`."""

    def __init__(self, inner: Any, tracing: Tracing, *, role: str) -> None:
        self.inner = inner
        self.name: str = inner.name
        self.tracing = tracing
        self.role = role

    def _span(self, request: pb.Request) -> contextlib.AbstractContextManager[Any]:
        return self.tracing.server_span(
            f"{self.role} {self.name} {request.endpoint}",
            incoming.get(),
            {
                "plait.role": self.role,
                "plait.server": self.name,
                "plait.endpoint": request.endpoint,
                "plait.request_id": request.request_id,
            },
        )

    async def process(self, request: pb.Request, *, timeout: float | None = None) -> pb.Response:
        with self._span(request):
            response: pb.Response = await self.inner.process(request, timeout=timeout)
            return response

    async def stream(
        self, request: pb.Request, *, timeout: float | None = None
    ) -> AsyncIterator[pb.Response]:
        with self._span(request):
            async for response in self.inner.stream(request, timeout=timeout):
                yield response

    def describe(self) -> pb.DescribeResponse:
        response: pb.DescribeResponse = self.inner.describe()
        return response

    def ready(self) -> bool:
        return bool(self.inner.ready())


@contextlib.contextmanager
def carrying(carrier: Mapping[str, str] | None) -> Iterator[None]:
    """Make ``carrier`` the incoming trace context for the code inside."""
    token = incoming.set(carrier)
    try:
        yield
    finally:
        incoming.reset(token)
