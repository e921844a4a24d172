"""``Deployment``: one Executor served as N replica processes, with the Flow's post/block surface."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Mapping, Sequence
from typing import Any

from plait.client import Client
from plait.config import (
    DEFAULT_MAX_CONCURRENT,
    DEFAULT_MAX_MESSAGE_SIZE,
    DEFAULT_MAX_QUEUE,
    DeploymentConfig,
    FlowExecutorConfig,
    MutualTLS,
    Observability,
    ReplicaConfig,
    ServerOptions,
    load_yaml,
)
from plait.errors import ConfigError
from plait.executor import Executor
from plait.executor.loader import importing_user_code
from plait.orchestrate.base import Orchestration
from plait.orchestrate.devices import DevicePlacement, read_parent_setting
from plait.orchestrate.flow import Flow
from plait.orchestrate.forkserver import ForkServer, start_fork_server
from plait.orchestrate.process import (
    ChildProcess,
    child_env,
    connect_host,
    free_port,
    stop_all,
    wait_ready,
    with_monitoring_port,
)
from plait.orchestrate.security import (
    SECURITY_OPTIONS,
    client_kwargs,
    executor_probe_security,
    mutual_tls,
    security_options,
)
from plait.orchestrate.supervisor import RestartPolicy, Supervisor, replace_child
from plait.orchestrate.uses import executor_config_for
from plait.security.auth import AuthCheck

log = logging.getLogger("plait.orchestrate")


class Deployment(Orchestration):
    """Serve one Executor: ``with Deployment(uses=MyExecutor, port=12345, replicas=2) as dep: ...``.

    Each replica is its own process, started through ``plait executor``. Over plain gRPC there is
    no extra hop: with one replica it binds ``host:port`` itself; with several, every replica binds
    the shared public port (the kernel spreads connections) plus a private loopback port over which
    ``post`` balances each request (and a probe port of its own, for readiness). With
    ``shards > 1`` or an HTTP/WebSocket ``protocol``, a gateway process stands in front (a
    one-executor Flow): it scatters to shards and speaks those protocols.

    A supervisor thread restarts replicas that die (``restarts=False`` turns that off; a
    :class:`RestartPolicy` tunes the backoff); ``status()`` reports on them, and
    ``rolling_update(uses_with=...)`` replaces them one at a time.
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
        uses_dynamic_batching: Mapping[str, Mapping[str, Any]] | None = None,
        replicas: int = 1,
        shards: int = 1,
        port: int | None = None,
        host: str = "0.0.0.0",
        protocol: str | Sequence[str] = "grpc",
        polling: str | Mapping[str, str] = "ANY",
        timeout_ready: float = 60.0,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        grace_period: float = 10.0,
        env: Mapping[str, str] | None = None,
        exit_on_exceptions: Sequence[str] = (),
        restarts: bool | RestartPolicy = True,
        devices: Sequence[str] | None = None,
        max_concurrent: int | None = DEFAULT_MAX_CONCURRENT,
        max_queue: int = DEFAULT_MAX_QUEUE,
        monitoring: bool = False,
        port_monitoring: int | None = None,
        tracing: bool = False,
        traces_exporter_host: str | None = None,
        traces_exporter_port: int | None = None,
        quiet: bool = False,
        ssl_certfile: str | None = None,
        ssl_keyfile: str | None = None,
        ssl_ca_file: str | None = None,
        auth_token_file: str | None = None,
        auth_token_env: str | None = None,
        auth: AuthCheck | str | None = None,
        internal_tls: MutualTLS | Mapping[str, Any] | None = None,
        config: DeploymentConfig | None = None,
    ) -> None:
        """TLS (``ssl_certfile``, ``ssl_keyfile``, ``ssl_ca_file``) and authentication
        (``auth_token_file``, ``auth_token_env``, ``auth``) put a gateway in front, as in a Flow;
        ``internal_tls`` serves the replicas with mutual TLS (see ``docs/security.md``)."""
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
                uses_dynamic_batching=uses_dynamic_batching,
            )
            if exit_on_exceptions:
                executor = executor.model_copy(update={"exit_on_exceptions": tuple(exit_on_exceptions)})
            secured = security_options(
                ssl_certfile=ssl_certfile,
                ssl_keyfile=ssl_keyfile,
                auth_token_file=auth_token_file,
                auth_token_env=auth_token_env,
                auth=auth,
            )
            try:
                config = DeploymentConfig(
                    executor=executor,
                    host=host,
                    port=port,
                    protocol=protocol,
                    replicas=replicas,
                    shards=shards,
                    polling=polling,
                    timeout_ready=timeout_ready,
                    max_message_size=max_message_size,
                    grace_period=grace_period,
                    env=dict(env or {}),
                    max_concurrent=max_concurrent,
                    max_queue=max_queue,
                    gateway_options=ServerOptions(**secured) if any(secured.values()) else None,
                    internal_tls=mutual_tls(internal_tls),
                    ssl_ca_file=ssl_ca_file,
                    observe=Observability(
                        monitoring=monitoring,
                        port_monitoring=port_monitoring,
                        tracing=tracing,
                        traces_exporter_host=traces_exporter_host,
                        traces_exporter_port=traces_exporter_port,
                    ),
                )
            except ValueError as e:
                raise ConfigError(f"Deployment: {e}") from e
        self.config = config
        self._quiet = quiet
        self._children: list[ChildProcess] = []
        self._client: Client | None = None
        self._port: int | None = config.port
        self._flow: Flow | None = None
        self._forkserver: ForkServer | None = None
        self._restarts = restarts
        self._devices = tuple(devices) if devices is not None else None
        self._supervisor: Supervisor | None = None
        self._updating = threading.Lock()
        self._monitoring_ports: dict[str, int] = {}

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
        if self._flow is not None:
            return self._flow.port
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
        if self._flow is not None:
            return self._flow.children
        return tuple(self._children)

    @property
    def monitoring_ports(self) -> dict[str, int]:
        """Where each process serves ``/metrics`` (``monitoring=True``), once started."""
        if self._flow is not None:
            return self._flow.monitoring_ports
        return dict(self._monitoring_ports)

    @property
    def client(self) -> Client:
        if self._flow is not None:
            return self._flow.client
        if self._client is None:
            raise RuntimeError("start the Deployment first (`with Deployment(...) as dep:` or dep.start())")
        return self._client

    def _supervision(self) -> Supervisor | None:
        return self._flow._supervision() if self._flow is not None else self._supervisor

    def _replica_children(self, port: int) -> list[ChildProcess]:
        """One process per replica. Several replicas each bind: a probe port of their own, a
        private port ``post`` balances over (its address, kept by a replacement) and the public port."""
        cfg = self.config
        placement = DevicePlacement(devices=self._devices, parent_setting=read_parent_setting())
        envs = placement.environments(cfg.env, cfg.replicas, who=f"deployment {cfg.executor.name!r}")
        name = cfg.executor.name
        children = []
        for replica, env in zip(self._replica_configs(port), envs, strict=True):
            probe_security = executor_probe_security(cfg.internal_tls)
            if replica.observe.port_monitoring is not None:
                label = name if cfg.replicas == 1 else f"{name}/rep-{replica.replica_id}"
                self._monitoring_ports[label] = replica.observe.port_monitoring
            if cfg.replicas == 1:
                address = f"{connect_host(replica.host)}:{replica.port}"
                children.append(
                    ChildProcess(
                        name,
                        "executor",
                        replica,
                        address,
                        env,
                        probe_security=probe_security,
                        quiet=self._quiet,
                    )
                )
                continue
            children.append(
                ChildProcess(
                    f"{name}/rep-{replica.replica_id}",
                    "executor",
                    replica,
                    f"127.0.0.1:{replica.extra_ports[0]}",
                    env,
                    probe_address=f"127.0.0.1:{replica.port}",
                    probe_security=probe_security,
                    quiet=self._quiet,
                )
            )
        return children

    def _replica_configs(self, port: int) -> list[ReplicaConfig]:
        cfg = self.config
        common: dict[str, Any] = {
            "executor": cfg.executor,
            "replicas": cfg.replicas,
            "shards": cfg.shards,
            "max_message_size": cfg.max_message_size,
            "grace_period": cfg.grace_period,
            "max_concurrent": cfg.max_concurrent,
            "max_queue": cfg.max_queue,
            "parent_pid": os.getpid(),
            "internal_tls": cfg.internal_tls,
        }
        if cfg.replicas == 1:
            observe = with_monitoring_port(cfg.observe, cfg.observe.port_monitoring)
            return [ReplicaConfig(host=cfg.host, port=port, observe=observe, **common)]
        return [
            ReplicaConfig(
                observe=with_monitoring_port(cfg.observe, None),
                host="127.0.0.1",
                port=free_port(),
                extra_ports=(free_port(),),
                public_host=cfg.host,
                public_port=port,
                replica_id=i,
                **common,
            )
            for i in range(cfg.replicas)
        ]

    def start(self) -> Deployment:
        """Start every replica and return once all report SERVING (or raise StartupError)."""
        if self._children or self._flow is not None:
            return self
        if importing_user_code():
            raise ConfigError(
                "a Deployment was started while its executor module was being imported in a child process; "
                "start it under `if __name__ == '__main__':`"
            )
        cfg = self.config
        if cfg.needs_gateway:
            self._flow = self._as_flow().start()
            return self
        port = cfg.port or free_port(connect_host(cfg.host))
        self._port = port
        name = cfg.executor.name
        self._children = self._replica_children(port)
        self._forkserver = start_fork_server(child_env({}), cfg.replicas)
        try:
            for child in self._children:
                child.forkserver = self._forkserver
                child.start()
            wait_ready(self._children, cfg.timeout_ready)
        except BaseException:
            self.close()
            raise
        policy = RestartPolicy() if self._restarts is True else self._restarts or None
        self._supervisor = Supervisor(f"deployment {name!r}", policy)
        self._supervisor.watch(self._children)
        self._supervisor.start()
        security = executor_probe_security(cfg.internal_tls)  # mutual TLS: post as a peer would
        extra = client_kwargs(security) if security is not None else {}
        self._client = Client(self.addresses, max_message_size=cfg.max_message_size, **extra)
        log.info("deployment %r ready on %s:%d (%d replica(s))", name, cfg.host, port, cfg.replicas)
        return self

    def _as_flow(self) -> Flow:
        cfg = self.config
        ports: tuple[int | None, ...] = (cfg.port, *(None,) * (len(cfg.protocol) - 1))
        flow = Flow(
            name=cfg.executor.name,
            host=cfg.host,
            port=ports,
            protocol=cfg.protocol,
            max_request_bytes=cfg.max_message_size,
            timeout_ready=cfg.timeout_ready,
            grace_period=cfg.grace_period,
            quiet=self._quiet,
            restarts=self._restarts,
            devices=self._devices,
            **cfg.observe.model_dump(),
        )
        node = FlowExecutorConfig(
            executor=cfg.executor,
            replicas=cfg.replicas,
            shards=cfg.shards,
            polling=cfg.polling,
            needs=("gateway",),
            env=cfg.env,
            max_concurrent=cfg.max_concurrent,
            max_queue=cfg.max_queue,
        )
        options = flow.config.options
        if cfg.gateway_options is not None:
            secured = {key: getattr(cfg.gateway_options, key) for key in SECURITY_OPTIONS}
            options = options.model_copy(update=secured)
        update = {
            "executors": (node,),
            "options": options,
            "internal_tls": cfg.internal_tls,
            "ssl_ca_file": cfg.ssl_ca_file,
        }
        return Flow(
            config=flow.config.model_copy(update=update),
            quiet=self._quiet,
            restarts=self._restarts,
            devices=self._devices,
        )

    def rolling_update(self, uses_with: Mapping[str, Any]) -> None:
        """Replace the replicas one at a time with ones built with ``uses_with`` (it replaces the
        old ``uses_with``); return when all run the new config.

        With ``replicas >= 2`` no request fails: each new replica starts next to the old one on the
        same private and public ports (SO_REUSEPORT) and gets ready; then the old one drains —
        it reports NOT_SERVING, so balancing clients send new calls to the others, and in-flight
        calls finish — and exits; clients reconnect to the same address and reach the new one.
        With one replica (its port cannot be shared) the old one drains before the new one starts:
        requests in between fail. If a new replica does not come up, the old one keeps serving and
        StartupError is raised (replicas already replaced stay replaced).
        """
        if self._flow is not None:
            self._flow.rolling_update(self.config.executor.name, uses_with)
            self.config = self.config.model_copy(update={"executor": self._flow.config.executors[0].executor})
            return
        supervisor = self._supervisor
        if supervisor is None:
            raise RuntimeError("start the Deployment before a rolling update")
        with self._updating:
            cfg = self.config
            executor = cfg.executor.model_copy(update={"uses_with": dict(uses_with)})
            for i, old in enumerate(list(self._children)):
                assert isinstance(old.config, ReplicaConfig)
                overlap = cfg.replicas > 1
                update: dict[str, Any] = {"executor": executor}
                if overlap:
                    update["port"] = free_port()
                    update["observe"] = with_monitoring_port(old.config.observe, None)
                config = old.config.model_copy(update=update)
                probe = f"127.0.0.1:{config.port}" if overlap else None
                new = ChildProcess(
                    old.label,
                    "executor",
                    config,
                    old.address,
                    old.env,
                    probe_address=probe,
                    probe_security=old.probe_security,
                    quiet=self._quiet,
                    forkserver=old.forkserver,
                )
                replace_child(
                    supervisor,
                    old,
                    new,
                    overlap=overlap,
                    timeout_ready=cfg.timeout_ready,
                    grace_period=cfg.grace_period,
                )
                self._children[i] = new
                log.info("deployment %r: %s updated (pid %s)", executor.name, new.label, new.pid)
            self.config = cfg.model_copy(update={"executor": executor})

    def close(self) -> None:
        """Stop every replica (graceful drain, then SIGKILL after the grace period)."""
        supervisor, self._supervisor = self._supervisor, None
        if supervisor is not None:
            supervisor.stop()  # first: nothing is restarted while it stops
            # A rolling update cut short (Ctrl-C) may have swapped in a replica not listed yet.
            self._children += [c for c in supervisor.children() if c not in self._children]
        flow, self._flow = self._flow, None
        if flow is not None:
            flow.close()
        client, self._client = self._client, None
        if client is not None:
            client.close()
        stop_all(self._children, self.config.grace_period)
        self._children = []
        forkserver, self._forkserver = self._forkserver, None
        if forkserver is not None:
            forkserver.close()
