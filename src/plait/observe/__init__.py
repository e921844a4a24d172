"""Observability of plait's servers: Prometheus metrics and OpenTelemetry tracing."""

from plait.observe.instruments import Instruments
from plait.observe.metrics import METRIC_NAMES, Measured, ServerMetrics
from plait.observe.tracing import Traced, Tracing

__all__ = ["METRIC_NAMES", "Instruments", "Measured", "ServerMetrics", "Traced", "Tracing"]
