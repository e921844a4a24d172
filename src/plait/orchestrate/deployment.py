"""``Deployment``: one Executor served as N replica processes, with the Flow's post/block surface."""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any, TypeVar, overload

from plait.client import Client
from plait.client.async_client import DocInputs
from plait.config import DEFAULT_MAX_MESSAGE_SIZE, DeploymentConfig, ExecutorConfig, ReplicaConfig, load_yaml
from plait.docs import DocList, Document
from plait.errors import ConfigError, StartupError, UnavailableError
from plait.executor import Executor
from plait.executor.loader import importing_user_code
from plait.orchestrate.process import ChildProcess, connect_host, free_port, stop_all

T = TypeVar("T", bound=Document)
log = logging.getLogger("plait.orchestrate")

READY_POLL_S = 0.05


def executor_config_for(
    uses: type[Executor] | str,
    *,
    uses_with: Mapping[str, Any] | None = None,
    uses_metas: Mapping[str, Any] | None = None,
    py_modules: Sequence[str] = (),
    name: str | None = None,
    workspace: str | None = None,
    allow_concurrent: bool = False,
) -> ExecutorConfig:
    """The :class:`ExecutorConfig` for ``uses`` given as a class, ``'module:Class'`` or YAML path.

    A class defined in the user's own script (``__main__``) is found again in the child process by
    importing that script as a module (its ``if __name__ == '__main__':`` block does not run).
    """
    modules = tuple(py_modules)
    if isinstance(uses, type):
        if not issubclass(uses, Executor):
            raise ConfigError(f"uses={uses!r} is not an Executor subclass")
        if "<locals>" in uses.__qualname__:
            raise ConfigError(
                f"{uses.__qualname__} is defined inside a function; executors run in their own process, "
                "so define the class at module level"
            )
        if uses.__module__ == "__main__":
            script = getattr(sys.modules["__main__"], "__file__", None)
            if script is None:
                raise ConfigError(
                    f"{uses.__qualname__} was defined in an interactive session; put it in a .py file "
                    "and pass uses='module:Class' (or py_modules=[...])"
                )
            uses_str = uses.__qualname__
            modules = (os.path.abspath(script), *modules)
        else:
            uses_str = f"{uses.__module__}:{uses.__qualname__}"
    elif isinstance(uses, str):
        uses_str = uses
    else:
        raise ConfigError(f"uses must be an Executor class or a string, got {type(uses).__name__}")
    fields: dict[str, Any] = {
        "uses": uses_str,
        "uses_with": dict(uses_with or {}),
        "uses_metas": dict(uses_metas or {}),
        "py_modules": modules,
        "workspace": workspace,
        "allow_concurrent": allow_concurrent,
    }
    if name is not None:
        fields["name"] = name
    try:
        return ExecutorConfig(**fields)
    except ValueError as e:
        raise ConfigError(str(e)) from e


class Deployment:
    """Serve one Executor: ``with Deployment(uses=MyExecutor, port=12345, replicas=2) as dep: ...``.

    Each replica is its own process, started through ``plait executor``. With one replica it binds
    ``host:port`` itself; with several, every replica binds the shared public port (the kernel
    spreads connections) plus a private loopback port over which ``post`` balances each request.
    """

    def __init__(
        self,
        uses: type[Executor] | str | None = None,
        *,
        uses_with: Mapping[str, Any] | None = None,
        uses_metas: Mapping[str, Any] | None = None,
        py_modules: Sequence[str] = (),
        name: str | None = None,
        workspace: str | None = None,
        allow_concurrent: bool = False,
        replicas: int = 1,
        shards: int = 1,
        port: int | None = None,
        host: str = "0.0.0.0",
        protocol: str = "grpc",
        timeout_ready: float = 60.0,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        grace_period: float = 10.0,
        env: Mapping[str, str] | None = None,
        quiet: bool = False,
        config: DeploymentConfig | None = None,
    ) -> None:
        if config is None:
            if uses is None:
                raise ConfigError(
                    "Deployment needs `uses` (an Executor class, 'module:Class' or a YAML path)"
                )
            executor = executor_config_for(
                uses,
                uses_with=uses_with,
                uses_metas=uses_metas,
                py_modules=py_modules,
                name=name,
                workspace=workspace,
                allow_concurrent=allow_concurrent,
            )
            try:
                config = DeploymentConfig(
                    executor=executor,
                    host=host,
                    port=port,
                    protocol=protocol,
                    replicas=replicas,
                    shards=shards,
                    timeout_ready=timeout_ready,
                    max_message_size=max_message_size,
                    grace_period=grace_period,
                    env=dict(env or {}),
                )
            except ValueError as e:
                raise ConfigError(f"Deployment: {e}") from e
        if config.shards > 1:
            raise ConfigError("shards > 1 are served through a Flow, whose gateway scatters and reduces")
        self.config = config
        self._quiet = quiet
        self._children: list[ChildProcess] = []
        self._client: Client | None = None
        self._port: int | None = config.port

    @classmethod
    def load_config(cls, source: str | os.PathLike[str], **overrides: Any) -> Deployment:
        """A Deployment from YAML: ``jtype: Deployment`` with its options under ``with:``."""
        data = load_yaml(source)
        if data.get("jtype", "Deployment") != "Deployment":
            raise ConfigError(f"{source}: jtype is {data.get('jtype')!r}, expected 'Deployment'")
        options = {k: v for k, v in data.items() if k not in ("jtype", "with", "version")}
        options.update(data.get("with") or {})
        options.update(overrides)
        base = os.path.dirname(os.path.abspath(source)) if os.path.isfile(source) else os.getcwd()
        modules = options.pop("py_modules", ())
        modules = [modules] if isinstance(modules, str) else list(modules)
        options["py_modules"] = [
            os.path.join(base, m) if m.endswith(".py") and not os.path.isabs(m) else m for m in modules
        ]
        uses = options.get("uses")
        if isinstance(uses, str) and uses.endswith((".yml", ".yaml")) and not os.path.isabs(uses):
            options["uses"] = os.path.join(base, uses)
        try:
            return cls(**options)
        except TypeError as e:
            raise ConfigError(f"{source}: {e}") from e

    # -- lifecycle -----------------------------------------------------------------------------

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("the Deployment has not started yet; its port is chosen at start")
        return self._port

    @property
    def host(self) -> str:
        return self.config.host

    @property
    def addresses(self) -> list[str]:
        """The per-replica addresses ``post`` balances over."""
        return [child.address for child in self._children]

    @property
    def children(self) -> Sequence[ChildProcess]:
        return tuple(self._children)

    def _replica_configs(self, port: int) -> list[ReplicaConfig]:
        cfg = self.config
        common: dict[str, Any] = {
            "executor": cfg.executor,
            "replicas": cfg.replicas,
            "shards": cfg.shards,
            "max_message_size": cfg.max_message_size,
            "grace_period": cfg.grace_period,
            "parent_pid": os.getpid(),
        }
        if cfg.replicas == 1:
            return [ReplicaConfig(host=cfg.host, port=port, **common)]
        return [
            ReplicaConfig(
                host="127.0.0.1",
                port=free_port(),
                public_host=cfg.host,
                public_port=port,
                replica_id=i,
                **common,
            )
            for i in range(cfg.replicas)
        ]

    def start(self) -> Deployment:
        """Start every replica and return once all report SERVING (or raise StartupError)."""
        if self._children:
            return self
        if importing_user_code():
            raise ConfigError(
                "a Deployment was started while its executor module was being imported in a child process; "
                "start it under `if __name__ == '__main__':`"
            )
        cfg = self.config
        port = cfg.port or free_port(connect_host(cfg.host))
        self._port = port
        name = cfg.executor.name
        for replica in self._replica_configs(port):
            label = name if cfg.replicas == 1 else f"{name}/rep-{replica.replica_id}"
            self._children.append(ChildProcess(label, replica, cfg.env, quiet=self._quiet))
        try:
            for child in self._children:
                child.start()
            self._wait_ready()
        except BaseException:
            self.close()
            raise
        self._client = Client(self.addresses, max_message_size=cfg.max_message_size)
        log.info("deployment %r ready on %s:%d (%d replica(s))", name, cfg.host, port, cfg.replicas)
        return self

    def _wait_ready(self) -> None:
        timeout = self.config.timeout_ready
        deadline = None if timeout < 0 else time.monotonic() + timeout
        waiting = list(self._children)
        while waiting:
            for child in list(waiting):
                code = child.returncode()
                if code is not None:
                    raise StartupError(
                        f"executor {child.label!r} exited with code {code} while starting. Its last output:\n"
                        f"{child.last_lines()}",
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
                    f"executor {child.label!r} was not ready within timeout_ready={timeout}s. "
                    f"Its last output:\n{child.last_lines()}",
                    executor=child.label,
                )
            time.sleep(READY_POLL_S)

    def close(self) -> None:
        """Stop every replica (graceful drain, then SIGKILL after the grace period)."""
        client, self._client = self._client, None
        if client is not None:
            client.close()
        stop_all(self._children, self.config.grace_period)
        self._children = []

    def __enter__(self) -> Deployment:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def block(self, stop_event: threading.Event | None = None) -> None:
        """Serve until ``stop_event`` is set or Ctrl-C; raises if every replica has died."""
        event = stop_event or threading.Event()
        try:
            while not event.wait(0.5):
                alive = [c for c in self._children if c.alive()]
                if self._children and not alive:
                    last = self._children[-1]
                    raise UnavailableError(
                        f"every replica of {self.config.executor.name!r} has exited. Last output:\n"
                        f"{last.last_lines()}"
                    )
        except KeyboardInterrupt:
            pass

    # -- calls ---------------------------------------------------------------------------------

    @property
    def client(self) -> Client:
        if self._client is None:
            raise RuntimeError("start the Deployment first (`with Deployment(...) as dep:` or dep.start())")
        return self._client

    @overload
    def post(
        self,
        on: str,
        inputs: DocInputs = ...,
        parameters: Mapping[str, Any] | None = ...,
        *,
        return_type: type[DocList[T]] | type[T],
        **kwargs: Any,
    ) -> DocList[T]: ...
    @overload
    def post(
        self,
        on: str,
        inputs: DocInputs = ...,
        parameters: Mapping[str, Any] | None = ...,
        *,
        return_type: None = ...,
        **kwargs: Any,
    ) -> DocList[Any]: ...

    def post(
        self,
        on: str,
        inputs: DocInputs = None,
        parameters: Mapping[str, Any] | None = None,
        *,
        return_type: type[DocList[Any]] | type[Document] | None = None,
        **kwargs: Any,
    ) -> DocList[Any]:
        """``Client.post`` against this Deployment's replicas (balanced per request)."""
        return self.client.post(on, inputs, parameters, return_type=return_type, **kwargs)
