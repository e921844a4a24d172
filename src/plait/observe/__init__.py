"""Observability of plait's servers: Prometheus metrics and OpenTelemetry tracing.

Nothing here is imported until used: a server with ``monitoring`` and ``tracing`` off never loads
prometheus_client or OpenTelemetry.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from plait._lazy import lazy_getattr

if TYPE_CHECKING:
    from plait.observe.instruments import Instruments
    from plait.observe.metrics import METRIC_NAMES, Measured, ServerMetrics
    from plait.observe.tracing import Traced, Tracing

__all__ = ["METRIC_NAMES", "Instruments", "Measured", "ServerMetrics", "Traced", "Tracing"]

_HOMES = {
    "Instruments": "plait.observe.instruments",
    "METRIC_NAMES": "plait.observe.metrics",
    "Measured": "plait.observe.metrics",
    "ServerMetrics": "plait.observe.metrics",
    "Traced": "plait.observe.tracing",
    "Tracing": "plait.observe.tracing",
}


__getattr__ = lazy_getattr(__name__, globals(), _HOMES)
