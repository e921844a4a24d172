"""Giving memory freed by a burst back to the operating system.

glibc's malloc keeps what a burst of large requests freed (in its heap and in the arenas of the
threads gRPC runs) for reuse, so a replica that served one big batch would hold that memory until
it exits. Every ``CHECK_S`` seconds a server process reads its resident size; when it has grown by
``GROWTH_BYTES`` over its lowest since the last trim, it calls ``malloc_trim(0)``, which hands
free pages back.
Steady traffic reuses what it frees, so this seldom runs. Where there is no glibc (musl, macOS),
nothing is done.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable

log = logging.getLogger("plait.serve")

CHECK_S = 2.0
"""Seconds between two looks at the process's resident size."""
GROWTH_BYTES = 2 * 1024 * 1024
"""Growth of the resident size (over its lowest since the last trim) that triggers a trim."""

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def resident_bytes() -> int | None:
    """This process's resident size (Linux), or None where ``/proc`` does not say."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return None


def malloc_trim() -> Callable[[], object] | None:
    """glibc's ``malloc_trim(0)``, or None without glibc."""
    try:
        import ctypes

        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError, ImportError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return lambda: trim(0)


async def trim_after_bursts(check_s: float = CHECK_S, growth: int = GROWTH_BYTES) -> None:
    """Run for the life of a server process: trim the heap after the resident size grew."""
    trim = malloc_trim()
    last = resident_bytes()
    if trim is None or last is None:
        return
    while True:
        await asyncio.sleep(check_s)
        now = resident_bytes()
        if now is None:
            return
        if now - last >= growth:
            trim()  # a few milliseconds at most; it runs rarely, after a burst
            after = resident_bytes() or now
            log.debug("malloc_trim: %.1f -> %.1f MB resident", now / 2**20, after / 2**20)
            last = after  # what is still resident now is in use: measure growth from here
        else:
            last = min(last, now)
