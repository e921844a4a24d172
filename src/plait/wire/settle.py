"""Waiting until gRPC has delivered the last event of a call that was cancelled.

grpc.aio polls gRPC core from the first event loop that used it in a process and relays each
event to the loop that started the call. ``call.cancel()`` sets the call's status at once, but
gRPC core still delivers it later to the call's status watcher, a task grpc.aio starts for every
streaming call. If the caller's loop closes before that event arrives (``asyncio.run`` returns
right after a client closes, next to a Deployment whose loop used gRPC first), the relay fails
in the polling loop and prints "RuntimeError: Event loop is closed". Closing a stream therefore
waits, bounded, for its status watcher.
"""

from __future__ import annotations

import asyncio
import gc
from typing import Any

STATUS_WATCHER = "_AioCall._handle_status_once_received"
"""The qualified name of grpc.aio's status watcher coroutine."""


def status_watcher(rpc: Any) -> asyncio.Task[Any] | None:
    """The running status watcher of ``rpc`` (a grpc.aio streaming call), or None.

    grpc.aio keeps no reference to the task, so it is found among the loop's tasks by what its
    coroutine holds: the call's core object. None also when grpc.aio changes how it does this;
    closing then waits for nothing more than it did before.
    """
    core = getattr(rpc, "_cython_call", None)
    if core is None:
        return None
    for task in asyncio.all_tasks():
        coro = task.get_coro()
        if getattr(coro, "__qualname__", "") != STATUS_WATCHER:
            continue
        for scope in gc.get_referents(coro):
            if any(ref is core for ref in gc.get_referents(scope)):
                return task
    return None


SETTLE_S = 1.0
"""How long closing a stream waits, at most, for gRPC's last event of it."""


async def settled(rpc: Any, timeout: float = SETTLE_S) -> None:
    """Cancel ``rpc`` (if still running) and wait up to ``timeout`` s for gRPC's last event of it."""
    rpc.cancel()
    watcher = status_watcher(rpc)
    if watcher is not None:
        await asyncio.wait({watcher}, timeout=timeout)
