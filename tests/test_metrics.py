"""Prometheus metrics (``monitoring=True``): a real Flow's processes serve /metrics; read it back."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from batching_executors import Item
from conftest import ROOT, subprocess_env
from executors import Text
from prometheus_client.parser import text_string_to_metric_families

from plait import AsyncClient, DocList, Flow
from plait.config import Observability
from plait.errors import ExecutorError
from plait.observe import METRIC_NAMES

H = "127.0.0.1"
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(port: int) -> tuple[Samples, set[str]]:
    """Every sample at ``http://127.0.0.1:port/metrics`` and the metric family names."""
    with urllib.request.urlopen(f"http://{H}:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    samples: Samples = {}
    families = set()
    for family in text_string_to_metric_families(text):
        families.add(family.name)
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples, families


def value(samples: Samples, name: str, **labels: str) -> float:
    """The one sample of ``name`` whose labels include ``labels`` (0 when there is none)."""
    found = [v for (n, ls), v in samples.items() if n == name and set(labels.items()) <= set(ls)]
    assert len(found) <= 1, (name, labels, found)
    return found[0] if found else 0.0


@pytest.fixture(scope="module")
def flow() -> Iterator[Flow]:
    f = (
        Flow(host=H, protocol=["grpc", "http"], monitoring=True, quiet=True, grace_period=1)
        .add(name="echo", uses="executors:Echo")
        .add(name="batched", uses="batching_executors:Batched")
    )
    with f:
        yield f


def test_every_process_serves_metrics_on_its_own_port(flow: Flow) -> None:
    ports = flow.monitoring_ports
    assert set(ports) == {"gateway", "echo", "batched"}
    assert len(set(ports.values())) == 3
    for port in ports.values():
        _, families = scrape(port)
        assert "plait_requests" in families  # the counter's family name (samples end in _total)


def test_requests_latency_and_bytes_by_endpoint_and_status(flow: Flow) -> None:
    ports = flow.monitoring_ports
    gw0, _ = scrape(ports["gateway"])
    ex0, _ = scrape(ports["echo"])
    client = flow.client
    docs = DocList[Text]([Text(text="a" * 100), Text(text="b" * 100)])
    for _ in range(3):
        client.post("/echo", docs, return_type=DocList[Text])
    with pytest.raises(ExecutorError):
        client.post("/fail", docs)
    gw, _ = scrape(ports["gateway"])
    ex, _ = scrape(ports["echo"])

    def delta(after: Samples, before: Samples, name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    ok = {"endpoint": "/echo", "status": "OK"}
    assert delta(gw, gw0, "plait_requests_total", server="gateway", **ok) == 3
    assert delta(gw, gw0, "plait_requests_total", server="gateway", endpoint="/fail", status="INTERNAL") == 1
    assert delta(ex, ex0, "plait_requests_total", server="echo", **ok) == 3
    assert delta(ex, ex0, "plait_requests_total", server="echo", endpoint="/fail", status="INTERNAL") == 1
    # Latency histograms: one observation per request, at the gateway and per hop.
    hist = "plait_request_duration_seconds_count"
    assert delta(gw, gw0, hist, server="gateway", endpoint="/echo") == 3
    assert delta(ex, ex0, hist, server="echo", endpoint="/echo") == 3
    hop = "plait_executor_call_duration_seconds_count"
    assert delta(gw, gw0, hop, executor="echo", endpoint="/echo", status="OK") == 3
    assert delta(gw, gw0, hop, executor="echo", endpoint="/fail", status="INTERNAL") == 1
    assert delta(gw, gw0, "plait_executor_call_duration_seconds_sum", executor="echo", endpoint="/echo") > 0
    # Bytes: at least the 200 characters of text per request, both ways.
    for samples, before, server in ((gw, gw0, "gateway"), (ex, ex0, "echo")):
        for name in ("plait_request_bytes_total", "plait_response_bytes_total"):
            assert delta(samples, before, name, server=server, endpoint="/echo") >= 3 * 200
    assert value(gw, "plait_requests_in_flight", server="gateway") == 0
    assert value(gw, "plait_requests_queued", server="gateway") == 0


def test_http_requests_are_counted_too(flow: Flow) -> None:
    port = flow.monitoring_ports["gateway"]
    before, _ = scrape(port)
    body = json.dumps({"data": [{"text": "hi"}]}).encode()
    request = urllib.request.Request(
        f"http://{H}:{flow.ports[1]}/echo", data=body, headers={"content-type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200
    missing = urllib.request.Request(
        f"http://{H}:{flow.ports[1]}/nowhere", data=body, headers={"content-type": "application/json"}
    )
    with pytest.raises(urllib.error.HTTPError):
        urllib.request.urlopen(missing, timeout=10)
    after, _ = scrape(port)
    labels = {"server": "gateway", "endpoint": "/echo", "status": "OK"}
    total = "plait_requests_total"
    assert value(after, total, **labels) - value(before, total, **labels) == 1
    nf = {"server": "gateway", "endpoint": "/nowhere", "status": "NOT_FOUND"}
    assert value(after, total, **nf) - value(before, total, **nf) == 1


def test_in_flight_while_requests_run(flow: Flow) -> None:
    ports = flow.monitoring_ports
    client = flow.client
    done = threading.Event()

    def slow() -> None:
        try:
            client.post("/sleep", DocList[Text]([Text()]), parameters={"seconds": 1.5})
        finally:
            done.set()

    worker = threading.Thread(target=slow)
    worker.start()
    try:
        seen = {"gateway": 0.0, "echo": 0.0}
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not done.is_set() and min(seen.values()) < 1:
            for name in seen:
                samples, _ = scrape(ports[name])
                seen[name] = max(seen[name], value(samples, "plait_requests_in_flight", server=name))
            time.sleep(0.05)
        assert seen == {"gateway": 1, "echo": 1}
    finally:
        worker.join(10)
    samples, _ = scrape(ports["gateway"])
    assert value(samples, "plait_requests_in_flight", server="gateway") == 0


def test_batch_sizes(flow: Flow) -> None:
    port = flow.monitoring_ports["batched"]
    before, _ = scrape(port)

    async def burst() -> None:
        async with AsyncClient(H, flow.port) as client:
            await asyncio.gather(
                *(client.post("/batch", DocList[Item]([Item(text=str(i))])) for i in range(8))
            )

    asyncio.run(asyncio.wait_for(burst(), 30))
    after, _ = scrape(port)
    labels = {"executor": "batched", "endpoint": "/batch"}
    count = "plait_batch_size_count"
    batches = value(after, count, **labels) - value(before, count, **labels)
    docs = value(after, "plait_batch_size_sum", **labels) - value(before, "plait_batch_size_sum", **labels)
    assert docs == 8
    assert 1 <= batches < 8  # concurrent requests shared batches
    waits = "plait_batch_wait_seconds_count"
    assert value(after, waits, **labels) - value(before, waits, **labels) == 8
    assert value(after, "plait_batch_queued_requests", executor="batched") == 0


def test_the_grafana_dashboard_uses_only_metrics_the_servers_expose(flow: Flow) -> None:
    dashboard = json.loads((ROOT / "deploy" / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel.get("targets", [])]
    assert exprs
    referenced = {name for expr in exprs for name in re.findall(r"\bplait_[a-z_]+", expr)}
    exposed: set[str] = set()
    for port in flow.monitoring_ports.values():
        samples, families = scrape(port)
        exposed |= families | {name for name, _ in samples}
    assert referenced <= exposed, referenced - exposed
    families_used = {re.sub(r"_(bucket|count|sum|total)$", "", n) for n in referenced}
    documented = {re.sub(r"_total$", "", n) for n in METRIC_NAMES}
    assert families_used <= documented
    # Every family plait documents is on the dashboard.
    assert documented <= families_used, documented - families_used


def test_options_reach_yaml_and_executors_inherit_them(tmp_path: Path) -> None:
    flow = (
        Flow(
            monitoring=True,
            port_monitoring=9100,
            tracing=True,
            traces_exporter_host="otel",
            traces_exporter_port=4317,
        )
        .add(name="a", uses="executors:Echo")
        .add(name="b", uses="executors:Echo", monitoring=False, port_monitoring=9200)
    )
    path = tmp_path / "flow.yml"
    flow.save_config(str(path))
    again = Flow.load_config(str(path))
    assert again.config == flow.config
    a, b = (flow.config.executor_observe(node) for node in flow.config.executors)
    assert a == Observability(
        tracing=True, monitoring=True, traces_exporter_host="otel", traces_exporter_port=4317
    )
    assert (b.monitoring, b.port_monitoring, b.tracing) == (False, 9200, True)


def test_servers_without_tracing_never_import_opentelemetry() -> None:
    code = (
        "import sys, plait, plait.serve.server, plait.gateway.runtime, plait.client, plait.observe\n"
        "assert not [m for m in sys.modules if m.startswith('opentelemetry')]"
    )
    subprocess.run([sys.executable, "-c", code], check=True, env=subprocess_env(), timeout=60)


def test_servers_without_monitoring_or_batching_never_import_prometheus() -> None:
    # The process commands' whole import graph, HTTP and WebSocket servers included.
    code = (
        "import sys, plait._entry, plait.serve.server, plait.gateway.runtime, plait.gateway.protocols\n"
        "import plait.gateway.http_server, plait.gateway.websocket_server, plait.observe\n"
        "loaded = [m for m in sys.modules if m.startswith('prometheus_client')]\n"
        "assert not loaded, loaded"
    )
    subprocess.run([sys.executable, "-c", code], check=True, env=subprocess_env(), timeout=60)
