"""OpenTelemetry tracing (``tracing=True``): spans client → gateway → executor, batch span links.

In-process servers with the SDK's in-memory exporter check the span tree; a real Flow's processes
send theirs over OTLP/gRPC to a receiver on loopback (a tiny TraceService server made here).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest
from batching_executors import Item
from executors import Text
from opentelemetry import trace
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from plait import AsyncClient, Client, DocList, Flow
from plait.config import ExecutorConfig, GatewayConfig, GatewayExecutor, Observability, ReplicaConfig
from plait.gateway.runtime import Gateway
from plait.orchestrate.process import free_port
from plait.serve import ExecutorServer

H = "127.0.0.1"
TRACING = Observability(tracing=True)

_client_exporter = InMemorySpanExporter()


@pytest.fixture(scope="module")
def client_spans() -> InMemorySpanExporter:
    """The application's own (global) tracer provider, which a client with tracing=True uses."""
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(_client_exporter))
    trace.set_tracer_provider(provider)
    return _client_exporter


def _by_name(spans: Any, prefix: str) -> list[Any]:
    return [s for s in spans if s.name.startswith(prefix)]


def test_spans_flow_from_client_to_gateway_to_executor_and_batches_link_requests(
    client_spans: InMemorySpanExporter,
) -> None:
    server_spans = InMemorySpanExporter()

    async def main() -> None:
        port, gw_port = free_port(), free_port()
        executor = ExecutorServer(
            ReplicaConfig(
                executor=ExecutorConfig(uses="batching_executors:Batched", name="batched"),
                port=port,
                observe=TRACING,
            ),
            span_exporter=server_spans,
        )
        gateway = Gateway(
            GatewayConfig(
                host=H,
                ports=(gw_port,),
                executors=(GatewayExecutor(name="batched", shards=((f"{H}:{port}",),)),),
                observe=TRACING,
                timeout_ready=10,
            ),
            span_exporter=server_spans,
        )
        await executor.start()
        try:
            await gateway.start()
            try:
                async with AsyncClient(H, gw_port, tracing=True) as client:
                    await asyncio.gather(
                        *(client.post("/batch", DocList[Item]([Item(text=str(i))])) for i in range(4))
                    )
            finally:
                await gateway.stop()
        finally:
            await executor.stop()

    asyncio.run(asyncio.wait_for(main(), 60))
    spans = [*client_spans.get_finished_spans(), *server_spans.get_finished_spans()]
    by_id = {s.context.span_id: s for s in spans}
    clients = _by_name(spans, "client /batch")
    assert len(clients) == 4
    executor_spans = _by_name(spans, "executor batched /batch")
    assert len(executor_spans) == 4
    for root in clients:
        # Walk up from each executor span to its client span: executor ← gateway call ← gateway ← client.
        mine = [s for s in executor_spans if s.context.trace_id == root.context.trace_id]
        assert len(mine) == 1
        call = by_id[mine[0].parent.span_id]
        assert call.name == "call batched /batch"
        assert call.kind == trace.SpanKind.CLIENT
        served = by_id[call.parent.span_id]
        assert served.name == "gateway gateway /batch"
        assert served.kind == trace.SpanKind.SERVER
        assert served.parent.span_id == root.context.span_id
        assert mine[0].resource.attributes["service.name"] == "executor/batched"
        assert served.resource.attributes["service.name"] == "gateway/gateway"
    batches = _by_name(spans, "batch batched /batch")
    assert batches
    linked = [link.context.span_id for b in batches for link in b.links]
    assert sorted(linked) == sorted(s.context.span_id for s in executor_spans)  # each request once
    assert sum(b.attributes["plait.batch.documents"] for b in batches) == 4
    for b in batches:
        assert b.parent is None  # a batch is its own trace, linked to the requests it served


def test_an_error_marks_the_spans(client_spans: InMemorySpanExporter) -> None:
    server_spans = InMemorySpanExporter()

    async def main() -> None:
        port = free_port()
        executor = ExecutorServer(
            ReplicaConfig(
                executor=ExecutorConfig(uses="executors:Echo", name="echo"), port=port, observe=TRACING
            ),
            span_exporter=server_spans,
        )
        await executor.start()
        try:
            async with AsyncClient(H, port, tracing=True) as client:
                with pytest.raises(Exception, match="boom"):
                    await client.post("/fail", DocList[Text]([Text()]))
        finally:
            await executor.stop()

    asyncio.run(asyncio.wait_for(main(), 60))
    (span,) = _by_name(server_spans.get_finished_spans(), "executor echo /fail")
    assert span.status.status_code == trace.StatusCode.ERROR
    assert any(e.name == "exception" for e in span.events)


class _Receiver(trace_service_pb2_grpc.TraceServiceServicer):  # type: ignore[misc]
    """An OTLP/gRPC trace receiver that keeps what it is sent."""

    def __init__(self) -> None:
        self.spans: list[tuple[str, Any]] = []  # (service.name, span)
        self.lock = threading.Lock()

    def Export(self, request: Any, context: Any) -> Any:
        with self.lock:
            for resource_spans in request.resource_spans:
                attrs = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
                for scope_spans in resource_spans.scope_spans:
                    for span in scope_spans.spans:
                        self.spans.append((attrs.get("service.name", ""), span))
        return trace_service_pb2.ExportTraceServiceResponse()


@pytest.fixture()
def receiver() -> Iterator[tuple[_Receiver, int]]:
    servicer = _Receiver()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port(f"{H}:0")
    server.start()
    try:
        yield servicer, port
    finally:
        server.stop(0)


def test_a_flow_exports_its_spans_over_otlp_grpc(receiver: tuple[_Receiver, int]) -> None:
    servicer, port = receiver
    otlp = {"tracing": True, "traces_exporter_host": H, "traces_exporter_port": port}
    flow = (
        Flow(host=H, protocol=["grpc", "http"], quiet=True, grace_period=1, **otlp)
        .add(name="upper", uses="executors:Upper")
        .add(name="echo", uses="executors:Echo")
    )
    with flow:
        with Client(H, flow.port, **otlp) as client:
            client.post("/echo", DocList[Text]([Text(text="hi")]))
        with Client(H, flow.ports[1], protocol="http", **otlp) as client:
            client.post("/echo", DocList[Text]([Text(text="hi")]))
    # Closing flushes: the client on close, each process as it stops.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with servicer.lock:
            services = {service for service, _ in servicer.spans}
        if {"client", "gateway/gateway", "executor/echo"} <= services:
            break
        time.sleep(0.1)
    with servicer.lock:
        spans = list(servicer.spans)
    roots = [s for service, s in spans if service == "client"]
    assert len(roots) == 2  # one per protocol
    for root in roots:
        tree = [(service, s) for service, s in spans if s.trace_id == root.trace_id]
        by_id = {s.span_id: (service, s) for service, s in tree}
        (executor,) = [s for service, s in tree if service == "executor/echo"]
        call_service, call = by_id[executor.parent_span_id]
        assert (call_service, call.name) == ("gateway/gateway", "call echo /echo")
        gateway_service, served = by_id[call.parent_span_id]
        assert (gateway_service, served.name) == ("gateway/gateway", "gateway gateway /echo")
        assert served.parent_span_id == root.span_id
