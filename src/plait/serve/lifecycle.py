"""The lifecycle every plait server process shares: start, serve until told to stop, drain; while
serving, memory freed by bursts goes back to the system (:mod:`plait.serve.memory`)."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Awaitable, Callable

from plait.serve.memory import trim_after_bursts

log = logging.getLogger("plait.serve")

PARENT_POLL_S = 0.25
"""How often a child checks that the process that started it is still there."""


async def _watch_parent(parent_pid: int, stop: asyncio.Event, who: str) -> None:
    while not stop.is_set():
        if os.getppid() != parent_pid:
            log.warning("%s: parent process %d went away; shutting down", who, parent_pid)
            stop.set()
            return
        await asyncio.sleep(PARENT_POLL_S)


async def run_until_stopped(
    start: Callable[[], Awaitable[None]],
    stop: Callable[[], Awaitable[None]],
    stop_event: asyncio.Event,
    *,
    parent_pid: int | None,
    who: str,
) -> None:
    """``start()``, then wait for SIGTERM/SIGINT, ``stop_event`` or the parent's exit; then ``stop()``.

    ``stop()`` runs even when ``start()`` fails, so half-started servers are cleaned up.
    """
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop_event.set)
    watcher = None
    if parent_pid is not None:
        watcher = asyncio.create_task(_watch_parent(parent_pid, stop_event, who))
    trimmer = None
    try:
        await start()
        # Memory a burst freed goes back to the system (plait.serve.memory).
        trimmer = asyncio.create_task(trim_after_bursts(), name="plait-malloc-trim")
        await stop_event.wait()
    finally:
        if watcher is not None:
            watcher.cancel()
        if trimmer is not None:
            trimmer.cancel()
        await stop()
