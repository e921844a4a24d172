"""The lifecycle every plait server process shares: start, serve until told to stop, drain."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Awaitable, Callable

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
    try:
        await start()
        await stop_event.wait()
    finally:
        if watcher is not None:
            watcher.cancel()
        await stop()
