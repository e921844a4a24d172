"""Server processes hand memory freed by a burst back to the system (plait.serve.memory)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from plait.serve.memory import malloc_trim, resident_bytes

pytestmark = pytest.mark.skipif(
    malloc_trim() is None or resident_bytes() is None, reason="needs Linux with glibc"
)

# A burst of heap allocations (below malloc's mmap threshold, so they come from the heap), then a
# small block allocated after them, then the burst is freed: malloc keeps those pages (free()
# trimming nothing by itself, as under a busy server's grown trim threshold) until
# trim_after_bursts trims.
_BURST = textwrap.dedent(
    """
    import asyncio, ctypes, json
    from plait.serve.memory import resident_bytes, trim_after_bursts

    libc = ctypes.CDLL(None)
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    libc.memset.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]
    libc.mallopt(-1, 1 << 30)  # M_TRIM_THRESHOLD: free() never shrinks the heap by itself

    async def main():
        trimmer = asyncio.create_task(trim_after_bursts(check_s=%(check)s, growth=4 * 2**20))
        await asyncio.sleep(0.05)
        before = resident_bytes()
        blocks = [libc.malloc(64 * 1024) for _ in range(800)]  # 50 MB
        for b in blocks:
            libc.memset(b, 1, 64 * 1024)
        pin = libc.malloc(1024)
        for b in blocks:
            libc.free(b)
        freed = resident_bytes()
        await asyncio.sleep(0.6)
        after = resident_bytes()
        trimmer.cancel()
        print(json.dumps({"before": before, "freed": freed, "after": after}))

    asyncio.run(main())
    """
)


def _burst(check_s: float) -> dict[str, int]:
    out = subprocess.run(
        [sys.executable, "-c", _BURST % {"check": check_s}],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    import json

    result: dict[str, int] = json.loads(out.stdout)
    return result


def test_memory_freed_by_a_burst_goes_back_to_the_system() -> None:
    mb = 2**20
    kept = _burst(check_s=60)  # no look in time: malloc keeps the freed burst
    assert kept["freed"] - kept["before"] > 40 * mb
    assert kept["after"] - kept["before"] > 40 * mb
    trimmed = _burst(check_s=0.1)
    assert trimmed["freed"] - trimmed["before"] > 40 * mb  # freed, still resident...
    assert trimmed["after"] - trimmed["before"] < 10 * mb  # ...until the trim gave it back


def test_every_server_process_trims_while_it_serves() -> None:
    import asyncio

    from plait.serve.lifecycle import run_until_stopped

    trimmers: list[asyncio.Task[None]] = []

    async def main() -> None:
        stop = asyncio.Event()

        async def start() -> None:
            async def look() -> None:
                await asyncio.sleep(0)
                trimmers.extend(t for t in asyncio.all_tasks() if t.get_name() == "plait-malloc-trim")
                stop.set()

            asyncio.get_running_loop().create_task(look())

        async def stop_server() -> None:
            pass

        await asyncio.wait_for(run_until_stopped(start, stop_server, stop, parent_pid=None, who="test"), 10)
        await asyncio.sleep(0)
        assert len(trimmers) == 1  # started once the server was up...
        assert trimmers[0].cancelled()  # ...and stopped with it

    asyncio.run(main())
