"""Observability of plait's servers: Prometheus metrics and OpenTelemetry tracing.

Nothing here is imported until used: a server with ``monitoring`` and ``tracing`` off never loads
prometheus_client or OpenTelemetry.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

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


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'plait.observe' has no attribute {name!r}")
    return getattr(importlib.import_module(home), name)
