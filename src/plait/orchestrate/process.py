"""Child processes: started from the ``plait`` CLI entry point, their output kept and relayed.

Every process plait runs locally is ``python -m plait executor|gateway --config '<json>'``: the
same command a container runs, from the same serialized config. Executors of an orchestrator that
has a fork server (:mod:`plait.orchestrate.forkserver`) run that command in a process forked from
it instead of a new interpreter.
"""

from __future__ import annotations

import collections
import http.client
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from typing import IO, TYPE_CHECKING, Protocol

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from plait._address import host_and_port
from plait.config import FrozenModel, Observability
from plait.errors import StartupError
from plait.security.client import ClientSecurity

if TYPE_CHECKING:
    from plait.orchestrate.forkserver import ForkServer

LOG_TAIL_LINES = 40


class _Process(Protocol):
    """What ChildProcess uses of a process: subprocess.Popen, or a ForkedProcess."""

    @property
    def pid(self) -> int: ...
    def poll(self) -> int | None: ...
    def wait(self, timeout: float | None = None) -> int: ...
    def send_signal(self, sig: int) -> None: ...
    def kill(self) -> None: ...


_GIVEN_PORTS: set[int] = set()


def free_port(host: str = "127.0.0.1") -> int:
    """A port the OS says is free right now on ``host``, never one this process handed out before
    (a Flow asks for all its ports before any process binds one: two equal answers would leave the
    gateway unable to bind while an executor answers its readiness probe)."""
    port = 0
    for _ in range(64):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((host, 0))
            port = int(s.getsockname()[1])
        if port not in _GIVEN_PORTS:
            break
    _GIVEN_PORTS.add(port)
    return port


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
    """One executor or gateway process: started (again, after it died), its last output lines
    kept, stopped.

    ``address`` is where callers reach it; ``probe_address`` (default: ``address``) is where its
    readiness is checked — a port only this process binds, where ``address`` may be shared with the
    replica it replaces during a rolling update.
    """

    def __init__(
        self,
        label: str,
        command: str,
        config: FrozenModel,
        address: str,
        env: Mapping[str, str],
        *,
        probe: str = "grpc",
        probe_address: str | None = None,
        probe_security: ClientSecurity | None = None,
        quiet: bool = False,
        forkserver: ForkServer | None = None,
    ) -> None:
        self.label = label
        self.command = command
        self.config = config
        self.address = address
        self.probe_address = probe_address or address
        self.probe = probe
        self.probe_security = probe_security
        """TLS (and client certificate) the readiness probe uses; None: in the clear."""
        self._env = env
        self._quiet = quiet
        self._tail: collections.deque[str] = collections.deque(maxlen=LOG_TAIL_LINES)
        self.forkserver = forkserver
        """Where an executor is forked from (:mod:`plait.orchestrate.forkserver`); None: started plainly."""
        self._proc: _Process | None = None
        self._relay: threading.Thread | None = None

    @property
    def argv(self) -> list[str]:
        return [sys.executable, "-m", "plait", *self._args(self.config)]

    def _args(self, config: FrozenModel) -> list[str]:
        return [self.command, "--config", config.model_dump_json()]

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def env(self) -> Mapping[str, str]:
        """The extra environment this process gets on top of ours."""
        return self._env

    def start(self) -> None:
        """Start the process (again, once the previous one has exited: same command, config, ports)."""
        if self.alive():
            raise RuntimeError(f"{self.label!r} is already running (pid {self.pid})")
        env = child_env(self._env)
        stdout = self._fork(env) or self._popen(env)
        self._relay = threading.Thread(
            target=self._relay_output, args=(stdout,), name=f"plait-log-{self.label}", daemon=True
        )
        self._relay.start()

    def _fork(self, env: dict[str, str]) -> IO[bytes] | None:
        server = self.forkserver
        if server is None or self.command != "executor" or not server.can_fork(env):
            return None
        # It stops when its parent, the fork server, does (which stops when we do).
        config = self.config.model_copy(update={"parent_pid": server.pid})
        proc = server.spawn(self._args(config), env)
        if proc is None:
            return None
        self._proc = proc
        return proc.stdout

    def _popen(self, env: dict[str, str]) -> IO[bytes]:
        proc = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
            # Own session: a Ctrl-C in the terminal reaches only us, and we stop children in order.
            start_new_session=True,
        )
        self._proc = proc
        assert proc.stdout is not None
        return proc.stdout

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
        """Ready to serve: gRPC health says SERVING, or HTTP ``GET /ready`` answers 200."""
        if not listening(self.probe_address):
            return False  # not yet: a refused TCP connect costs less than a refused probe
        security = self.probe_security
        if self.probe != "grpc":
            return _http_ready(self.probe_address, timeout, security.ssl_context if security else None)
        with _probe_channel(self.probe_address, security) as channel:
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


def listening(address: str, timeout: float = 0.2) -> bool:
    """Whether something accepts TCP connections at ``address`` (``host:port``)."""
    try:
        with socket.create_connection(host_and_port(address), timeout=timeout):
            return True
    except (OSError, ValueError):
        return False


def _probe_channel(address: str, security: ClientSecurity | None) -> grpc.Channel:
    credentials = security.grpc_credentials() if security is not None else None
    if security is None or credentials is None:
        return grpc.insecure_channel(address)
    options = [("grpc.ssl_target_name_override", security.server_name)] if security.server_name else []
    return grpc.secure_channel(address, credentials, options=options)


def _http_ready(address: str, timeout: float, context: ssl.SSLContext | None = None) -> bool:
    host, port = host_and_port(address)  # http.client wants an IPv6 host without its brackets
    connection = (
        http.client.HTTPSConnection(host, port, timeout=timeout, context=context)
        if context is not None
        else http.client.HTTPConnection(host, port, timeout=timeout)
    )
    try:
        connection.request("GET", "/ready")
        return connection.getresponse().status == 200
    except OSError:
        return False
    finally:
        connection.close()


def wait_ready(children: Sequence[ChildProcess], timeout: float, poll: float = 0.005) -> None:
    """Return once every child is serving; raise StartupError naming the first that is not.

    ``timeout`` < 0 waits forever. The error carries the child's last output lines.
    """
    deadline = None if timeout < 0 else time.monotonic() + timeout
    waiting = list(children)
    while waiting:
        for child in list(waiting):
            code = child.returncode()
            if code is not None:
                raise StartupError(
                    f"{child.command} {child.label!r} exited with code {code} while starting. "
                    f"Its last output:\n{child.last_lines()}",
                    executor=child.label,
                    exit_code=code,
                )
            if child.is_serving():
                waiting.remove(child)
        if not waiting:
            return
        if deadline is not None and time.monotonic() > deadline:
            child = waiting[0]
            raise StartupError(
                f"{child.command} {child.label!r} was not ready within timeout_ready={timeout}s. "
                f"Its last output:\n{child.last_lines()}",
                executor=child.label,
            )
        time.sleep(poll)


def stop_all(children: Sequence[ChildProcess], grace: float) -> None:
    """SIGTERM every child, wait ``grace`` (+ a margin), then SIGKILL what is left."""
    for child in children:
        child.terminate()
    deadline = time.monotonic() + grace + 5.0
    for child in children:
        if not child.wait(max(0.0, deadline - time.monotonic())):
            child.kill()
            child.wait(5.0)


def with_monitoring_port(observe: Observability, port: int | None) -> Observability:
    """``observe`` with ``port`` (a free one when None) as its metrics port, when monitoring is on."""
    if not observe.monitoring:
        return observe
    return observe.model_copy(update={"port_monitoring": port or free_port()})
