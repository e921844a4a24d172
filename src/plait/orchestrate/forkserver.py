"""The orchestrator's side of the executor fork server (the server is :mod:`plait._forkserver`).

A Flow or Deployment that starts two or more executor processes starts one fork server first; it
imports the executor process's libraries once and forks each executor from there, so the
executors skip ~0.3 s of CPU each at start-up (on 2 cores, a 2-executor Flow is ready in ~0.4 s
instead of ~0.6 s). A forked executor is the same process command with the same argv, environment,
working directory, output pipe and exit codes as a plainly started one; :class:`ForkedProcess` is
its handle, with the part of :class:`subprocess.Popen` that :class:`~plait.orchestrate.process.
ChildProcess` uses.

An executor is started plainly instead when its environment differs from the fork server's in a
variable a library reads once, when it loads (:data:`READ_AT_LOAD`: ``OPENBLAS_NUM_THREADS``,
``PYTHON*``...), when the working directory changed since the server started, when the server
failed, or everywhere when ``PLAIT_FORKSERVER=0`` (or on a system without ``fork``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from typing import IO, Any

log = logging.getLogger("plait.orchestrate")

FORKSERVER_ENV = "PLAIT_FORKSERVER"
"""``PLAIT_FORKSERVER=0`` starts every executor as a plain process."""

READ_AT_LOAD = (
    "PYTHON",  # the interpreter's own settings (PYTHONPATH, PYTHONHASHSEED, PYTHONMALLOC...)
    "OPENBLAS",  # numpy's BLAS: threads, busy-wait
    "GOTO",
    "OMP_",
    "MKL_",
    "BLIS_",
    "NUMPY",
    "NPY_",
    "GRPC_",
    "LD_",
    "MALLOC_",
    "GLIBC_",
    "PYDANTIC",
    "LANG",
    "LC_",
    "TZ",
)
"""Prefixes of environment variables a preloaded library (or the interpreter) reads once, at start:
an executor whose value differs from the fork server's is started plainly."""

SPAWN_TIMEOUT_S = 60.0
"""How long a start waits for the fork server (its imports included) before starting plainly."""

LOST_EXIT_CODE = 255
"""Reported for a forked child that ended after its fork server did (its real code is unknown)."""


def enabled() -> bool:
    """Whether Flows and Deployments use a fork server here (Linux, and not turned off)."""
    if sys.platform != "linux" or not hasattr(os, "fork"):
        return False
    return os.environ.get(FORKSERVER_ENV, "1").strip().lower() not in ("0", "false", "no", "off")


def _gone(pid: int) -> bool:
    """The process has exited (a zombie nobody reaps counts as exited)."""
    try:
        os.kill(pid, 0)
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except (ProcessLookupError, FileNotFoundError):
        return True
    except OSError:
        return False


class ForkedProcess:
    """A child forked by the fork server: ``pid``, ``stdout`` (its output), ``poll``, ``wait``,
    ``send_signal``, ``kill``, as :class:`subprocess.Popen` has them."""

    def __init__(self, server: ForkServer, pid: int, stdout: IO[bytes]) -> None:
        self.pid = pid
        self.stdout = stdout
        self.returncode: int | None = None
        self._server = server
        self._exited = threading.Event()

    def _ended(self, code: int) -> None:
        self.returncode = code
        self._exited.set()

    def poll(self) -> int | None:
        if self.returncode is None and self._server.lost and _gone(self.pid):
            # No one reports this child's exit any more: it was orphaned, and stopped itself.
            self._ended(LOST_EXIT_CODE)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise subprocess.TimeoutExpired(f"pid {self.pid}", timeout or 0.0)
            self._exited.wait(0.05 if self._server.lost else left)
        assert self.returncode is not None
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


class ForkServer:
    """One fork server process, started at once; :meth:`spawn` waits until it has imported."""

    def __init__(self, env: Mapping[str, str]) -> None:
        """``env``: the fork server's environment, the one a plain executor of this orchestrator
        gets (``child_env({})``)."""
        self.env = dict(env)
        self.cwd = os.getcwd()
        self.lost = False
        """The server has exited (or failed): nothing more is forked or reported."""
        self._closing = False
        self._error: str | None = None
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self._sock = ours
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "plait._forkserver", str(theirs.fileno())],
                pass_fds=[theirs.fileno()],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                env=self.env,
                start_new_session=True,
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        self.pid = self._proc.pid
        self._lock = threading.Lock()
        self._next_id = 0
        self._replies: dict[int, dict[str, Any]] = {}
        self._replied = threading.Condition(self._lock)
        self._children: dict[int, ForkedProcess] = {}
        self._early_exits: dict[int, int] = {}
        self._reader = threading.Thread(target=self._read, name="plait-forkserver", daemon=True)
        self._reader.start()

    def can_fork(self, env: Mapping[str, str]) -> bool:
        """Whether a child with environment ``env`` may be forked (else: start it plainly)."""
        if self.lost or os.getcwd() != self.cwd:
            return False
        for name in set(env) | set(self.env):
            if name.startswith(READ_AT_LOAD) and env.get(name) != self.env.get(name):
                return False
        return True

    def spawn(self, args: Sequence[str], env: Mapping[str, str]) -> ForkedProcess | None:
        """Fork ``python -m plait <args>`` with ``env``; None when the server cannot (start it plainly)."""
        with self._lock:
            if self.lost:
                return None
            self._next_id += 1
            request_id = self._next_id
        read_end, write_end = os.pipe()
        message = json.dumps({"id": request_id, "argv": list(args), "env": dict(env), "cwd": self.cwd})
        try:
            socket.send_fds(self._sock, [message.encode()], [write_end])
        except OSError as e:
            os.close(read_end)
            self._fail(f"cannot send it a request: {e}")
            return None
        finally:
            os.close(write_end)
        deadline = time.monotonic() + SPAWN_TIMEOUT_S
        with self._replied:
            while request_id not in self._replies and not self.lost and time.monotonic() < deadline:
                self._replied.wait(max(0.0, deadline - time.monotonic()))
            reply = self._replies.pop(request_id, None)
        pid = reply.get("pid") if reply else None
        if not isinstance(pid, int):
            os.close(read_end)
            if reply is None:
                self._fail(f"no answer within {SPAWN_TIMEOUT_S:g}s")
            return None
        child = ForkedProcess(self, pid, os.fdopen(read_end, "rb"))
        with self._lock:
            code = self._early_exits.pop(pid, None)
            if code is None:
                self._children[pid] = child
        if code is not None:
            child._ended(code)
        return child

    def _read(self) -> None:
        while True:
            try:
                data = self._sock.recv(1 << 16)
            except OSError:
                data = b""
            if not data:
                self._fail("it exited" if self._proc.poll() is not None else "it closed its socket")
                return
            message = json.loads(data)
            with self._replied:
                if "exit" in message:
                    pid, code = int(message["exit"]), int(message["code"])
                    child = self._children.pop(pid, None)
                    if child is not None:
                        child._ended(code)
                    else:  # its spawn reply is still on its way to the caller
                        self._early_exits[pid] = code
                elif "id" in message:
                    self._replies[int(message["id"])] = message
                    self._replied.notify_all()
                elif "error" in message:  # its imports failed: it exits, and _fail says why
                    self._error = str(message["error"])

    def _fail(self, why: str) -> None:
        with self._replied:
            if self.lost:
                return
            self.lost = True
            self._replied.notify_all()
        if not self._closing:
            why = self._error or why
            log.warning("executor fork server stopped (%s); executors start as plain processes now", why)
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)

    def close(self, timeout: float = 5.0) -> None:
        """Stop the server (stop its children first: they stop with it)."""
        self._closing = True
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        try:
            self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait(timeout)
        self._reader.join(timeout)
        self._sock.close()


def start_fork_server(env: Mapping[str, str], executors: int) -> ForkServer | None:
    """A fork server for an orchestrator about to start ``executors`` executor processes, or None
    (turned off, no fork here, or fewer than two: one executor gains nothing from it)."""
    if executors < 2 or not enabled():
        return None
    try:
        return ForkServer(env)
    except OSError as e:
        log.warning("cannot start the executor fork server (%s); starting executors as plain processes", e)
        return None
