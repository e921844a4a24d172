"""The executor fork server: ``python -m plait._forkserver FD``.

A Flow (or Deployment) that starts several executor processes starts this process first. It
imports what every executor process imports before it loads the user's code (asyncio, uvloop,
grpc, pydantic, numpy, plait's config and serving layers: ~0.3 s of CPU), once, and then forks one
child per executor. Each child runs ``plait executor --config ...`` as if it had been started with
``python -m plait``: same argv, same environment, same exit codes, its output on the pipe the
orchestrator handed over. Executors then start in ~0.05 s of CPU instead of ~0.35 s each.

Protocol, on the ``AF_UNIX``/``SOCK_SEQPACKET`` socket inherited as ``FD`` (one JSON object per
message):

- orchestrator → here: ``{"id", "argv", "env", "cwd"}`` with one file descriptor attached (the
  write end of the child's output pipe); here → orchestrator: ``{"id", "pid"}`` or ``{"id",
  "error"}``.
- here → orchestrator, whenever a child ends: ``{"exit": pid, "code": n}`` (``-signal`` when a
  signal ended it, as :mod:`subprocess` reports it).
- here → orchestrator, when its imports fail (it exits then): ``{"error": why}``.

The server exits when the orchestrator closes its end (or dies); its children watch it as their
parent (``parent_pid``) and stop then too. The orchestrator side is
:mod:`plait.orchestrate.forkserver`.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import selectors
import signal
import socket
import sys
import warnings
from typing import Any

MAX_MESSAGE = 1 << 20
"""Largest request accepted (argv and environment); the command line limit is far lower."""


def preload() -> None:
    """Import what an executor process imports before it loads the user's code."""
    from plait._entry import set_serving_env

    set_serving_env()  # before numpy loads, as the process command does
    import plait.config
    import plait.serve
    import plait.serve.server  # noqa: F401
    from plait._loop import new_event_loop

    new_event_loop().close()  # imports uvloop, creates nothing that outlives the call
    gc.freeze()  # what the children share stays out of their garbage collections (and shared)


def _send(sock: socket.socket, message: dict[str, Any]) -> None:
    with contextlib.suppress(OSError):  # the orchestrator is gone: the loop sees it next
        sock.send(json.dumps(message).encode())


def serve(sock: socket.socket) -> dict[str, Any] | None:
    """Fork a child per request until the orchestrator hangs up (then None). In a child, returns
    its request: the caller runs it."""
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)  # only to wake the selector
    selector = selectors.DefaultSelector()
    selector.register(sock, selectors.EVENT_READ, "request")
    selector.register(wake_r, selectors.EVENT_READ, "child")
    while True:
        for key, _ in selector.select():
            if key.data == "child":
                os.read(wake_r, 4096)
                _reap(sock)
                continue
            try:
                data, fds, _, _ = socket.recv_fds(sock, MAX_MESSAGE, 1)
            except OSError:
                data, fds = b"", []
            if not data:
                return None
            request = json.loads(data)
            pid = _fork(request, fds)
            if pid == 0:  # the child: leave the server behind
                selector.close()
                signal.set_wakeup_fd(-1)
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                for fd in (wake_r, wake_w):
                    os.close(fd)
                sock.close()
                return dict(request)
            reply = {"pid": pid} if pid > 0 else {"error": "fork failed"}
            _send(sock, {"id": request["id"], **reply})


def _fork(request: dict[str, Any], fds: list[int]) -> int:
    """Fork; in the child, take over the output pipe, the environment and the working directory."""
    if len(fds) != 1:
        for fd in fds:
            os.close(fd)
        return -1
    (out,) = fds
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        with warnings.catch_warnings():
            # Python 3.12+ warns of fork() in a process with threads: here only numpy's OpenBLAS
            # workers, which OpenBLAS itself stops around a fork.
            warnings.simplefilter("ignore", DeprecationWarning)
            pid = os.fork()
    except OSError:
        os.close(out)
        return -1
    if pid:
        os.close(out)
        return pid
    os.setsid()  # its own session, as subprocess's start_new_session gives the others
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.dup2(out, 1)
    os.dup2(out, 2)
    os.close(devnull)
    os.close(out)
    os.chdir(request["cwd"])
    # What exec's envp does for a plain process (DESIGN rule 2's exception): this is the child's own
    # environment, set before it runs anything, never a user's process.
    os.environ.clear()
    os.environ.update(request["env"])
    return 0


def _reap(sock: socket.socket) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        _send(sock, {"exit": pid, "code": os.waitstatus_to_exitcode(status)})


def main() -> None:
    sock = socket.socket(fileno=int(sys.argv[1]))
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the orchestrator stops us by hanging up
    try:
        preload()
    except BaseException as e:  # the orchestrator starts plain processes instead
        _send(sock, {"error": f"preload failed: {type(e).__name__}: {e}"})
        raise
    request = serve(sock)
    if request is None:
        return
    signal.signal(signal.SIGINT, signal.default_int_handler)
    if "numpy.random" in sys.modules:  # its global generator would repeat the server's in every child
        sys.modules["numpy.random"].seed()
    sys.argv = ["plait", *request["argv"]]
    from plait._entry import main as plait_main

    plait_main()


if __name__ == "__main__":
    main()
