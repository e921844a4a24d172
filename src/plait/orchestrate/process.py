"""Child processes: started from the ``plait`` CLI entry point, their output kept and relayed.

Every process plait runs locally is ``python -m plait executor --config '<json>'``: the same
command a container runs, from the same serialized config.
"""

from __future__ import annotations

import collections
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from typing import IO

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from plait.config import ReplicaConfig

LOG_TAIL_LINES = 40


def free_port(host: str = "127.0.0.1") -> int:
    """A port the OS says is free right now on ``host``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def connect_host(host: str) -> str:
    """The address to dial for a server bound to ``host`` (wildcards become loopback)."""
    return "127.0.0.1" if host in ("0.0.0.0", "", "::") else host


def child_env(extra: Mapping[str, str]) -> dict[str, str]:
    """Environment for a child: ours, plus our import path (so classes we imported import there too)."""
    env = dict(os.environ)
    paths = [p for p in sys.path if p and os.path.isdir(p)]
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


class ChildProcess:
    """One executor process: started, watched, its last output lines kept, stopped."""

    def __init__(
        self, label: str, config: ReplicaConfig, env: Mapping[str, str], *, quiet: bool = False
    ) -> None:
        self.label = label
        self.config = config
        self._env = env
        self._quiet = quiet
        self._tail: collections.deque[str] = collections.deque(maxlen=LOG_TAIL_LINES)
        self._proc: subprocess.Popen[bytes] | None = None
        self._relay: threading.Thread | None = None

    @property
    def argv(self) -> list[str]:
        return [sys.executable, "-m", "plait", "executor", "--config", self.config.model_dump_json()]

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def address(self) -> str:
        return f"{connect_host(self.config.host)}:{self.config.port}"

    def start(self) -> None:
        self._proc = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=child_env(self._env),
            # Own session: a Ctrl-C in the terminal reaches only us, and we stop children in order.
            start_new_session=True,
        )
        assert self._proc.stdout is not None
        self._relay = threading.Thread(
            target=self._relay_output, args=(self._proc.stdout,), name=f"plait-log-{self.label}", daemon=True
        )
        self._relay.start()

    def _relay_output(self, stream: IO[bytes]) -> None:
        for raw in iter(stream.readline, b""):
            line = raw.decode("utf-8", "replace").rstrip("\n")
            self._tail.append(line)
            if not self._quiet:
                sys.stderr.write(f"[{self.label}] {line}\n")
        stream.close()

    def returncode(self) -> int | None:
        return None if self._proc is None else self._proc.poll()

    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def last_lines(self) -> str:
        return "\n".join(self._tail)

    def is_serving(self, timeout: float = 0.5) -> bool:
        with grpc.insecure_channel(self.address) as channel:
            try:
                reply = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(service=""), timeout=timeout
                )
            except grpc.RpcError:
                return False
        return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)

    def terminate(self) -> None:
        if self.alive():
            assert self._proc is not None
            self._proc.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        if self.alive():
            assert self._proc is not None
            self._proc.kill()

    def wait(self, timeout: float) -> bool:
        """True when the process has exited within ``timeout`` seconds."""
        if self._proc is None:
            return True
        try:
            self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return False
        if self._relay is not None:
            self._relay.join(timeout=1.0)
        return True


def stop_all(children: Sequence[ChildProcess], grace: float) -> None:
    """SIGTERM every child, wait ``grace`` (+ a margin), then SIGKILL what is left."""
    for child in children:
        child.terminate()
    deadline = time.monotonic() + grace + 5.0
    for child in children:
        if not child.wait(max(0.0, deadline - time.monotonic())):
            child.kill()
            child.wait(5.0)
