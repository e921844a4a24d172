"""The ``status`` label of a failed request (no metrics library needed to compute it)."""

from __future__ import annotations

import asyncio

from plait.errors import PlaitError


def status_of(error: BaseException) -> str:
    """The ``status`` label for a failure: the gRPC status name of a PlaitError, else ``UNKNOWN``."""
    if isinstance(error, PlaitError):
        return str(error.grpc_code.name)
    if isinstance(error, TimeoutError):
        return "DEADLINE_EXCEEDED"
    if isinstance(error, asyncio.CancelledError | GeneratorExit):  # the caller went away
        return "CANCELLED"
    return "UNKNOWN"
