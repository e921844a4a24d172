"""GPU placement: ``CUDA_VISIBLE_DEVICES=RR`` spreads an executor's replicas over the GPUs.

The forms follow Jina's:

- ``RR``: every GPU this process may use — the ids in its own ``CUDA_VISIBLE_DEVICES`` when that is
  set (``'0,1'`` gives ``0, 1``; set but empty gives no GPU), else the GPUs ``nvidia-smi -L`` lists
  (``0 .. n-1``). When neither finds a GPU the variable is left out: the replicas see what this
  process sees (on a machine without GPUs, nothing), and a warning says so.
- ``RR1,3``: the listed devices, ids or ``GPU-…`` UUIDs, as ``CUDA_VISIBLE_DEVICES`` names them.
- ``RR0:2``: the range ``0, 1`` (end excluded, as Python's ``range``).

Process ``i`` of an executor (shard-major: shard 0's replicas, then shard 1's) gets
``devices[i % len(devices)]``; a restarted or updated replica keeps its device.

``RR`` may sit in the ``env=`` of a Deployment, a Flow or ``Flow.add``, or — as Jina users set it —
in this process's own ``CUDA_VISIBLE_DEVICES`` (then it applies to every executor that sets no
value of its own). :func:`read_parent_setting` is the one place that reads the variable.
"""

from __future__ import annotations

import logging
import os
import subprocess
from collections.abc import Mapping, Sequence

from plait.errors import ConfigError

log = logging.getLogger("plait.orchestrate")

CUDA_VISIBLE_DEVICES = "CUDA_VISIBLE_DEVICES"
ROUND_ROBIN = "RR"
NVIDIA_SMI_TIMEOUT_S = 10.0


def read_parent_setting() -> str | None:
    """This process's ``CUDA_VISIBLE_DEVICES`` (None when unset): the settings read for placement."""
    return os.environ.get(CUDA_VISIBLE_DEVICES)


def is_round_robin(value: str | None) -> bool:
    return value is not None and value.strip().upper().startswith(ROUND_ROBIN)


def gpus_from_nvidia_smi() -> tuple[str, ...]:
    """``'0' .. 'n-1'`` for the ``n`` GPUs ``nvidia-smi -L`` lists; empty without nvidia-smi."""
    try:
        listing = subprocess.run(
            ["nvidia-smi", "-L"], capture_output=True, text=True, timeout=NVIDIA_SMI_TIMEOUT_S, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return ()
    count = sum(1 for line in listing.splitlines() if line.startswith("GPU "))
    return tuple(str(i) for i in range(count))


def parse_round_robin(spec: str, available: Sequence[str]) -> tuple[str, ...]:
    """The devices an ``RR…`` spec cycles over; bare ``RR`` takes ``available``."""
    body = spec.strip()[len(ROUND_ROBIN) :].strip()
    if not body:
        return tuple(available)
    if ":" in body:
        start, _, end = body.partition(":")
        try:
            first, stop = int(start), int(end)
        except ValueError:
            raise ConfigError(
                f"{CUDA_VISIBLE_DEVICES}={spec!r}: a range is RR<start>:<end>, e.g. RR0:2"
            ) from None
        if first < 0 or stop <= first:
            raise ConfigError(f"{CUDA_VISIBLE_DEVICES}={spec!r}: the range {first}:{stop} is empty")
        return tuple(str(i) for i in range(first, stop))
    devices = tuple(d.strip() for d in body.split(",") if d.strip())
    if not devices:
        raise ConfigError(f"{CUDA_VISIBLE_DEVICES}={spec!r}: list devices as RR1,3")
    return devices


class DevicePlacement:
    """Resolves ``RR`` specs for one start of a Deployment or Flow.

    ``devices`` overrides what bare ``RR`` cycles over (detection is skipped); ``parent_setting`` is
    this process's own ``CUDA_VISIBLE_DEVICES`` (see :func:`read_parent_setting`). nvidia-smi runs
    at most once, and only when a bare ``RR`` needs it.
    """

    def __init__(self, *, devices: Sequence[str] | None, parent_setting: str | None) -> None:
        self._devices = tuple(devices) if devices is not None else None
        self._parent = parent_setting

    def _available(self) -> tuple[str, ...] | None:
        """What bare ``RR`` cycles over; None when nothing says."""
        if self._devices is None:
            if self._parent is not None and not is_round_robin(self._parent):
                self._devices = tuple(d.strip() for d in self._parent.split(",") if d.strip())
            else:
                self._devices = gpus_from_nvidia_smi() or None
        return self._devices

    def environments(self, env: Mapping[str, str], count: int, *, who: str) -> list[dict[str, str]]:
        """``count`` copies of ``env``, with an ``RR`` spec (in ``env`` or inherited) resolved per process."""
        spec = env.get(CUDA_VISIBLE_DEVICES)
        if spec is None and is_round_robin(self._parent):
            spec = self._parent
        if spec is None or not is_round_robin(spec):
            return [dict(env) for _ in range(count)]
        available = self._available()
        if available is None and not spec.strip()[len(ROUND_ROBIN) :].strip():
            log.warning(
                "%s: %s=%s but no GPU was found (%s is unset and nvidia-smi lists none); "
                "its processes get no device assignment",
                who,
                CUDA_VISIBLE_DEVICES,
                spec,
                CUDA_VISIBLE_DEVICES,
            )
            base = {k: v for k, v in env.items() if k != CUDA_VISIBLE_DEVICES}
            return [dict(base) for _ in range(count)]
        devices = parse_round_robin(spec, available or ())
        if not devices:  # the parent itself sees no GPU (CUDA_VISIBLE_DEVICES=''): nor do they
            return [{**env, CUDA_VISIBLE_DEVICES: ""} for _ in range(count)]
        return [{**env, CUDA_VISIBLE_DEVICES: devices[i % len(devices)]} for i in range(count)]


def without_round_robin(env: Mapping[str, str]) -> dict[str, str]:
    """``env`` minus an ``RR`` spec (for processes that get no GPU, such as a Flow's gateway)."""
    return {k: v for k, v in env.items() if not (k == CUDA_VISIBLE_DEVICES and is_round_robin(v))}
