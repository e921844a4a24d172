"""What one server process has switched on: its metrics, its tracer, the /metrics HTTP server."""

from __future__ import annotations

import logging
from typing import Any

from prometheus_client import CollectorRegistry

from plait.config import Observability
from plait.observe.metrics import Measured, ServerMetrics
from plait.observe.tracing import Traced, Tracing

log = logging.getLogger("plait.observe")


class Instruments:
    """Built once per process from its :class:`Observability` config; all None when it is off."""

    def __init__(
        self,
        config: Observability,
        *,
        name: str,
        role: str,
        registry: CollectorRegistry | None = None,
        exporter: Any = None,
    ) -> None:
        self.config = config
        self.name = name
        self.role = role
        self.metrics = ServerMetrics(name, registry) if config.monitoring else None
        self.tracing = (
            Tracing(
                f"{role}/{name}",
                host=config.traces_exporter_host,
                port=config.traces_exporter_port,
                exporter=exporter,
            )
            if config.tracing
            else None
        )
        self._http: Any = None

    def wrap(self, processor: Any) -> Any:
        """``processor`` measured and traced as configured (as it is when both are off)."""
        if self.metrics is not None:
            processor = Measured(processor, self.metrics)
        if self.tracing is not None:
            processor = Traced(processor, self.tracing, role=self.role)
        return processor

    def serve_metrics(self, host: str) -> int | None:
        """Start ``/metrics`` on ``host:port_monitoring``; returns the port (None when off)."""
        if self.metrics is None:
            return None
        self._http = self.metrics.serve(host, self.config.port_monitoring or 0)
        port = int(self._http.server_port)
        log.info("%s %r: metrics on http://%s:%d/metrics", self.role, self.name, host, port)
        return port

    def close(self) -> None:
        """Stop serving metrics; export the spans still buffered."""
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None
        if self.tracing is not None:
            self.tracing.shutdown()
