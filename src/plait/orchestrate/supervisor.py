"""Supervision: a thread, owned by a Deployment or a Flow, that restarts processes that die.

A process that exits without having been asked to is logged with why (its exit code or the signal
that killed it, and its last output lines) and started again with the same command and config —
so on the same port(s), and callers' channels reconnect to it by themselves. Restarts back off
exponentially (``RestartPolicy``: 0.5 s doubling to 10 s; a process that stayed up 30 s starts
over at 0.5 s), so a replica that crashes at start-up does not spin. Processes the owner stops on
purpose (``close()``, a rolling update) are detached first and never restarted.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import signal
import threading
import time
from collections.abc import Sequence

from plait.errors import StartupError
from plait.orchestrate.process import ChildProcess, stop_all, wait_ready

log = logging.getLogger("plait.orchestrate")

POLL_S = 0.1
"""How often the supervisor looks at its processes."""
LOG_LINES = 15
"""Last output lines quoted when a process dies."""


@dataclasses.dataclass(frozen=True, slots=True)
class RestartPolicy:
    """When to restart a process that exited unexpectedly."""

    initial_backoff: float = 0.5
    """Seconds before the first restart."""
    max_backoff: float = 10.0
    """The delay doubles with every quick death, up to this."""
    reset_after: float = 30.0
    """A process that stayed up this long is healthy again: its next restart waits ``initial_backoff``."""

    def delay(self, quick_deaths: int) -> float:
        return float(min(self.max_backoff, self.initial_backoff * 2 ** max(0, quick_deaths - 1)))


@dataclasses.dataclass(frozen=True, slots=True)
class ReplicaStatus:
    """One process of a Deployment or Flow, as ``status()`` reports it."""

    label: str
    """``'encoder'``, ``'encoder/rep-1'``, ``'indexer/shard-0'``, ``'gateway'``."""
    address: str
    """Where callers reach it (``host:port``); it keeps this address across restarts and updates."""
    pid: int | None
    alive: bool
    restarts: int
    """How often the supervisor restarted it."""
    last_exit: str | None
    """Why it last exited unexpectedly (``'killed by SIGKILL'``, ``'exited with code 1'``), or None."""


def exit_reason(returncode: int) -> str:
    """``'killed by SIGKILL'`` for a negative return code, ``'exited with code N'`` otherwise."""
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exited with code {returncode}"


@dataclasses.dataclass(slots=True)
class _Watch:
    """The supervisor's record of one process (guarded by the supervisor's lock)."""

    child: ChildProcess
    started_at: float
    restarts: int = 0
    quick_deaths: int = 0
    last_exit: str | None = None
    restart_at: float | None = None
    given_up: bool = False


class Supervisor:
    """Watches processes from one thread; restarts those that die when ``policy`` is set.

    ``start()`` starts the thread, ``stop()`` stops and joins it; the owner calls ``stop()`` before
    stopping the processes. With ``policy=None`` deaths are still logged and reported, not acted on.
    """

    def __init__(self, name: str, policy: RestartPolicy | None, *, poll: float = POLL_S) -> None:
        self.name = name
        self.policy = policy
        self._poll = poll
        self._lock = threading.Lock()
        self._watches: list[_Watch] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- what is watched -------------------------------------------------------------------------

    def watch(self, children: Sequence[ChildProcess]) -> None:
        now = time.monotonic()
        with self._lock:
            self._watches.extend(_Watch(child, now) for child in children)

    def replace(self, old: ChildProcess, new: ChildProcess) -> None:
        """``new`` takes ``old``'s place (a rolling update); ``old`` is no longer watched."""
        with self._lock:
            for i, w in enumerate(self._watches):
                if w.child is old:
                    self._watches[i] = _Watch(new, time.monotonic())
                    return
            self._watches.append(_Watch(new, time.monotonic()))

    def children(self) -> list[ChildProcess]:
        """The processes watched now (a rolling update may have swapped some since ``watch``)."""
        with self._lock:
            return [w.child for w in self._watches]

    def status(self) -> list[ReplicaStatus]:
        with self._lock:
            watches = [dataclasses.replace(w) for w in self._watches]
        return [
            ReplicaStatus(
                label=w.child.label,
                address=w.child.address,
                pid=w.child.pid,
                alive=w.child.alive(),
                restarts=w.restarts,
                last_exit=w.last_exit,
            )
            for w in watches
        ]

    # -- the thread ------------------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=f"plait-supervisor-{self.name}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop watching (nothing is restarted after this returns) and join the thread."""
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self._poll):
            with self._lock:
                for watch in self._watches:
                    if self._stop.is_set():
                        return
                    self._check(watch, time.monotonic())

    def _check(self, watch: _Watch, now: float) -> None:
        child = watch.child
        if watch.given_up:
            return
        if watch.restart_at is None:
            code = child.returncode()
            if code is None:
                return
            self._record_exit(watch, code, now)
            return
        if now >= watch.restart_at:
            watch.restart_at = None
            watch.restarts += 1
            watch.started_at = now
            try:
                child.start()
            except OSError as e:  # the interpreter itself could not start: try again later
                log.error("%s: could not restart %r: %s", self.name, child.label, e)
                self._record_exit(watch, 127, now)
                return
            log.info(
                "%s: restarted %r (pid %s, restart %d)", self.name, child.label, child.pid, watch.restarts
            )

    def _record_exit(self, watch: _Watch, code: int, now: float) -> None:
        child = watch.child
        reason = exit_reason(code)
        watch.last_exit = reason
        child.wait(1.0)  # reaped already; this lets the relay thread take its last lines
        tail = "\n".join(child.last_lines().splitlines()[-LOG_LINES:])
        if self.policy is None:
            watch.given_up = True
            log.error(
                "%s: %r (pid %s) %s; not restarting it (restarts=False). Its last output:\n%s",
                self.name,
                child.label,
                child.pid,
                reason,
                tail,
            )
            return
        if now - watch.started_at >= self.policy.reset_after:
            watch.quick_deaths = 0
        watch.quick_deaths += 1
        delay = self.policy.delay(watch.quick_deaths)
        watch.restart_at = now + delay
        log.warning(
            "%s: %r (pid %s) %s; restarting it in %.1fs. Its last output:\n%s",
            self.name,
            child.label,
            child.pid,
            reason,
            delay,
            tail,
        )


def replace_child(
    supervisor: Supervisor,
    old: ChildProcess,
    new: ChildProcess,
    *,
    overlap: bool,
    timeout_ready: float,
    grace_period: float,
) -> None:
    """One step of a rolling update: ``new`` (the same replica with a new config) takes ``old``'s place.

    ``overlap=True``: ``new`` shares ``old``'s ports (SO_REUSEPORT) and has a probe port of its own;
    it starts and gets ready while ``old`` still serves, then ``old`` drains (NOT_SERVING, so
    health-watching callers move their new calls away; in-flight calls finish) and exits, and
    callers' channels reconnect to the same address, reaching ``new``. No moment without a replica
    behind the address. ``overlap=False`` (a port that cannot be shared): ``old`` drains first,
    then ``new`` starts; the address is down meanwhile.

    If ``new`` does not come up, ``old`` keeps (or goes back to) serving and StartupError is raised.
    """
    if overlap:
        new.start()
        try:
            wait_ready([new], timeout_ready)
        except BaseException:
            stop_all([new], grace_period)
            raise
        supervisor.replace(old, new)
        stop_all([old], grace_period)
        return
    supervisor.replace(old, new)
    stop_all([old], grace_period)
    try:
        new.start()
        wait_ready([new], timeout_ready)
    except BaseException:
        supervisor.replace(new, old)
        stop_all([new], grace_period)
        old.start()
        with contextlib.suppress(StartupError):  # if it does not come back, the supervisor retries
            wait_ready([old], timeout_ready)
        raise
