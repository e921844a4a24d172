"""Failover: when to send a failed call again, and doing so within the request's deadline.

A call that failed with UNAVAILABLE is sent again (to the next ready replica: channels balance
with round_robin and health checks) when it never reached an executor — the connection was
refused or no replica was ready — or, whatever happened, when the endpoint is idempotent. A call
that may have started work on a replica that then died is not repeated unless the endpoint says
repeating it is safe.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import grpc

R = TypeVar("R")

DEFAULT_RETRIES = 3
SHUTTING_DOWN = "server is shutting down"
"""How a draining server's refusals begin (gRPC's own, and plait's answer to a streamed request it
did not start): the request never ran, so it is sent again elsewhere."""
_NOT_STARTED = (
    "failed to connect",
    "connection refused",
    "connections to all backends failing",
    "no ready",
    SHUTTING_DOWN,
    # A server closing an aged connection (max_connection_age) sends GOAWAY; calls that crossed it
    # on the wire are removed unprocessed (measured: none of them reached the handler).
    "goaway received",
)
_BACKOFF_S = (0.0, 0.2, 0.6)
"""Pause before retry 1, 2, 3...: the first goes at once (the channel has already moved on to
another replica: one extra hop); later ones give a restarting replica time to come back."""


def never_started(err: grpc.RpcError) -> bool:
    """True when the failed call cannot have run on any replica."""
    if err.code() != grpc.StatusCode.UNAVAILABLE:
        return False
    details = (err.details() or "").lower()
    return any(marker in details for marker in _NOT_STARTED)


def may_retry(err: grpc.RpcError, *, idempotent: bool) -> bool:
    if err.code() != grpc.StatusCode.UNAVAILABLE:
        return False
    return idempotent or never_started(err)


async def with_retries(
    invoke: Callable[[float | None], Awaitable[R]],
    *,
    timeout: float | None,
    retries: int = DEFAULT_RETRIES,
    idempotent: bool = False,
) -> R:
    """``await invoke(remaining_timeout)``, again after a retryable failure, up to ``retries`` times.

    The deadline covers every attempt. The first retry is immediate; later ones wait 0.2 s, then
    0.6 s (see ``_BACKOFF_S``).
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    attempt = 0
    while True:
        remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
        try:
            return await invoke(remaining)
        except grpc.RpcError as err:
            if attempt >= retries or not may_retry(err, idempotent=idempotent):
                raise
            pause = _BACKOFF_S[min(attempt, len(_BACKOFF_S) - 1)]
            if deadline is not None and time.monotonic() + pause >= deadline:
                raise
            attempt += 1
            if pause:  # the first retry goes at once, without a trip around the event loop
                await asyncio.sleep(pause)
