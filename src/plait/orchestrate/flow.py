"""``Flow``: executors composed into a DAG behind one gateway that speaks gRPC, HTTP and WebSocket.

A Flow is an immutable description (``add`` returns a new Flow, as Jina's ``copy_flow`` does) until
``start()``: then every executor shard and replica becomes a process, and once they are all ready the
gateway process starts, discovers their endpoints, and serves. ``post`` talks to the gateway.

Each executor replica keeps one address (``127.0.0.1:<port>``, the one the gateway dials) for the
Flow's life: a restarted replica binds it again, and during ``rolling_update`` the new replica binds
it next to the old one (SO_REUSEPORT) — each also has a probe port of its own for readiness — so
the gateway never needs new addresses.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Self

from plait.client import Client
from plait.config import (
    DEFAULT_MAX_CONCURRENT,
    DEFAULT_MAX_MESSAGE_SIZE,
    DEFAULT_MAX_QUEUE,
    FlowConfig,
    FlowExecutorConfig,
    GatewayExecutor,
    MutualTLS,
    Observability,
    ReplicaConfig,
    Resources,
    ServerOptions,
    dump_yaml,
    load_yaml,
)
from plait.errors import ConfigError
from plait.executor import Executor
from plait.executor.loader import importing_user_code
from plait.export import ComposeOptions, KubernetesOptions, write_compose, write_kubernetes
from plait.gateway.conditions import compile_condition
from plait.orchestrate.base import Orchestration
from plait.orchestrate.devices import DevicePlacement, read_parent_setting, without_round_robin
from plait.orchestrate.forkserver import ForkServer, start_fork_server
from plait.orchestrate.plot import PlotNode, to_mermaid, to_svg
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
    executor_probe_security,
    flow_client_kwargs,
    gateway_client_security,
    mutual_tls,
    security_options,
)
from plait.orchestrate.supervisor import RestartPolicy, Supervisor, replace_child
from plait.orchestrate.uses import executor_config_for
from plait.security.auth import AuthCheck

log = logging.getLogger("plait.orchestrate")

START = "gateway"
_SERVER = ServerOptions()  # the gateway's defaults, for Flow's keyword arguments


def _as_tuple(value: Any) -> tuple[Any, ...]:
    if value is None:
        return ()
    if isinstance(value, str | int):
        return (value,)
    return tuple(value)


class Flow(Orchestration):
    """``Flow(port=12345, protocol=['grpc', 'http']).add(uses=A).add(uses=B)``; then ``with flow: ...``."""

    def __init__(
        self,
        *,
        name: str = "flow",
        port: int | Sequence[int | None] | None = None,
        protocol: str | Sequence[str] = "grpc",
        host: str = "0.0.0.0",
        cors: bool = False,
        title: str | None = None,
        description: str | None = None,
        max_request_bytes: int = DEFAULT_MAX_MESSAGE_SIZE,
        timeout_ready: float = 60.0,
        grace_period: float = 10.0,
        env: Mapping[str, str] | None = None,
        quiet: bool = False,
        restarts: bool | RestartPolicy = True,
        devices: Sequence[str] | None = None,
        ssl_certfile: str | None = None,
        ssl_keyfile: str | None = None,
        ssl_ca_file: str | None = None,
        auth_token_file: str | None = None,
        auth_token_env: str | None = None,
        auth: AuthCheck | str | None = None,
        internal_tls: MutualTLS | Mapping[str, Any] | None = None,
        max_docs_per_request: int | None = _SERVER.max_docs_per_request,
        max_connections: int | None = _SERVER.max_connections,
        max_header_bytes: int = _SERVER.max_header_bytes,
        header_timeout: float = _SERVER.header_timeout,
        idle_timeout: float = _SERVER.idle_timeout,
        request_timeout: float | None = _SERVER.request_timeout,
        monitoring: bool = False,
        port_monitoring: int | None = None,
        tracing: bool = False,
        traces_exporter_host: str | None = None,
        traces_exporter_port: int | None = None,
        config: FlowConfig | None = None,
    ) -> None:
        """``restarts``: restart processes that die (a :class:`RestartPolicy` tunes the backoff).
        ``devices``: the GPUs ``CUDA_VISIBLE_DEVICES=RR`` cycles over (default: detected).

        Security (``docs/security.md``): ``ssl_certfile``/``ssl_keyfile`` serve TLS on every
        protocol (``ssl_ca_file``: the CA ``flow.post`` trusts for it); ``auth_token_file`` or
        ``auth_token_env`` name where the accepted bearer tokens are read, ``auth`` a custom check;
        ``internal_tls`` turns on mutual TLS between the gateway and the executors; the ``max_*``
        and ``*_timeout`` options are the gateway's limits.

        ``monitoring``/``tracing`` (with ``port_monitoring``, ``traces_exporter_host/port``): the
        gateway's, inherited by every executor unless ``add`` says otherwise."""
        if config is None:
            protocols = _as_tuple(protocol) or ("grpc",)
            ports = _as_tuple(port) or (None,) * len(protocols)
            if len(ports) != len(protocols):
                raise ConfigError(
                    f"Flow: {len(protocols)} protocol(s) {protocols} but {len(ports)} port(s) {ports}"
                )
            options: dict[str, Any] = {
                "cors": cors,
                "max_request_bytes": max_request_bytes,
                "grace_period": grace_period,
            }
            if title is not None:
                options["title"] = title
            if description is not None:
                options["description"] = description
            options.update(
                security_options(
                    ssl_certfile=ssl_certfile,
                    ssl_keyfile=ssl_keyfile,
                    auth_token_file=auth_token_file,
                    auth_token_env=auth_token_env,
                    auth=auth,
                    max_docs_per_request=max_docs_per_request,
                    max_connections=max_connections,
                    max_header_bytes=max_header_bytes,
                    header_timeout=header_timeout,
                    idle_timeout=idle_timeout,
                    request_timeout=request_timeout,
                )
            )
            try:
                config = FlowConfig(
                    name=name,
                    host=host,
                    protocols=protocols,
                    ports=ports,
                    options=ServerOptions(**options),
                    timeout_ready=timeout_ready,
                    env=dict(env or {}),
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
                raise ConfigError(f"Flow: {e}") from e
        self.config = config
        self._quiet = quiet
        self._children: list[ChildProcess] = []
        self._gateway: ChildProcess | None = None
        self._forkserver: ForkServer | None = None
        self._client: Client | None = None
        self._ports: tuple[int, ...] = ()
        self._restarts = restarts
        self._devices = tuple(devices) if devices is not None else None
        self._supervisor: Supervisor | None = None
        self._updating = threading.Lock()
        self._monitoring_ports: dict[str, int] = {}

    # -- building ------------------------------------------------------------------------------

    def add(
        self,
        uses: type[Executor] | str | None = None,
        *,
        name: str | None = None,
        uses_with: Mapping[str, Any] | None = None,
        uses_metas: Mapping[str, Any] | None = None,
        py_modules: Sequence[str] = (),
        workspace: str | None = None,
        allow_concurrent: bool = False,
        uses_dynamic_batching: Mapping[str, Mapping[str, Any]] | None = None,
        replicas: int = 1,
        shards: int = 1,
        polling: str | Mapping[str, str] = "ANY",
        needs: str | Sequence[str] | None = None,
        when: Mapping[str, Any] | None = None,
        env: Mapping[str, str] | None = None,
        timeout_send: float | None = None,
        exit_on_exceptions: Sequence[str] = (),
        max_concurrent: int | None = DEFAULT_MAX_CONCURRENT,
        max_queue: int = DEFAULT_MAX_QUEUE,
        image: str | None = None,
        gpus: int = 0,
        resources: Resources | Mapping[str, Mapping[str, Any]] | None = None,
        monitoring: bool | None = None,
        port_monitoring: int | None = None,
        tracing: bool | None = None,
        traces_exporter_host: str | None = None,
        traces_exporter_port: int | None = None,
    ) -> Flow:
        """A new Flow with one more executor. By default it follows the previously added one;
        ``needs='gateway'`` starts a parallel branch and ``needs=['a', 'b']`` joins branches.
        ``exit_on_exceptions=['RuntimeError', 'mymodule.FatalError']``: a replica whose endpoint
        raises one of these answers with the error, then exits to be restarted.
        ``image``, ``gpus`` and ``resources`` (``{'requests': {'cpu': '1'}, 'limits': {'memory':
        '2Gi'}}``) apply to exports (``to_kubernetes_yaml``, ``to_docker_compose_yaml``)."""
        if uses is None:
            raise ConfigError("Flow.add needs `uses` (an Executor class, 'module:Class' or a YAML path)")
        existing = [e.name for e in self.config.executors]
        node_name = name or f"executor{len(existing)}"
        if node_name in existing or node_name == START:
            raise ConfigError(f"Flow.add: the name {node_name!r} is taken; executor names must be unique")
        upstream = _as_tuple(needs) or ((existing[-1],) if existing else (START,))
        for need in upstream:
            if need != START and need not in existing:
                raise ConfigError(f"Flow.add({node_name!r}): needs {need!r}, which was not added before it")
        if when:
            compile_condition(when, where=f"Flow.add({node_name!r}).when")  # report a bad spec now
        executor = executor_config_for(
            uses,
            uses_with=uses_with,
            uses_metas=uses_metas,
            py_modules=py_modules,
            name=node_name,
            workspace=workspace,
            allow_concurrent=allow_concurrent,
            uses_dynamic_batching=uses_dynamic_batching,
        )
        if exit_on_exceptions:
            executor = executor.model_copy(update={"exit_on_exceptions": tuple(exit_on_exceptions)})
        try:
            node = FlowExecutorConfig(
                executor=executor,
                replicas=replicas,
                shards=shards,
                polling=polling,
                needs=upstream,
                when=dict(when) if when else None,
                env=dict(env or {}),
                timeout_send=timeout_send,
                max_concurrent=max_concurrent,
                max_queue=max_queue,
                image=image,
                gpus=gpus,
                resources=resources or Resources(),
                observe={
                    k: v
                    for k, v in (
                        ("monitoring", monitoring),
                        ("port_monitoring", port_monitoring),
                        ("tracing", tracing),
                        ("traces_exporter_host", traces_exporter_host),
                        ("traces_exporter_port", traces_exporter_port),
                    )
                    if v is not None
                },
            )
        except ValueError as e:
            raise ConfigError(f"Flow.add({node_name!r}): {e}") from e
        config = self.config.model_copy(update={"executors": (*self.config.executors, node)})
        return Flow(config=config, quiet=self._quiet, restarts=self._restarts, devices=self._devices)

    # -- YAML ----------------------------------------------------------------------------------

    @classmethod
    def load_config(cls, source: str | os.PathLike[str], *, quiet: bool = False) -> Flow:
        """A Flow from YAML: ``jtype: Flow``, options under ``with:`` (or ``gateway:``), ``executors:``."""
        data = load_yaml(source)
        where = str(source)
        if data.get("jtype", "Flow") != "Flow":
            raise ConfigError(f"{where}: jtype is {data.get('jtype')!r}, expected 'Flow'")
        unknown = set(data) - {"jtype", "version", "with", "gateway", "executors", "deployments"}
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {sorted(unknown)}")
        base = Path(source).resolve().parent if Path(source).is_file() else Path.cwd()
        options = {**(data.get("with") or {}), **(data.get("gateway") or {})}
        try:
            flow = cls(**options, quiet=quiet)
        except TypeError as e:
            raise ConfigError(f"{where}: {e}") from e
        for index, item in enumerate(data.get("executors") or data.get("deployments") or []):
            if not isinstance(item, dict):
                raise ConfigError(f"{where}: executors[{index}] must be a mapping")
            entry = dict(item)
            entry.pop("method", None)
            if "with" in entry:  # Jina's spelling of uses_with inside an executor entry
                entry["uses_with"] = {**entry.pop("with"), **entry.get("uses_with", {})}
            entry["py_modules"] = [_resolve(m, base) for m in _as_tuple(entry.get("py_modules"))]
            if isinstance(entry.get("workspace"), str) and not os.path.isabs(entry["workspace"]):
                entry["workspace"] = str((base / entry["workspace"]).resolve())
            if isinstance(entry.get("uses"), str) and entry["uses"].endswith((".yml", ".yaml")):
                entry["uses"] = _resolve(entry["uses"], base)
            try:
                flow = flow.add(**entry)
            except TypeError as e:
                raise ConfigError(f"{where}: executors[{index}]: {e}") from e
        return flow

    def to_dict(self) -> dict[str, Any]:
        """The Flow as the mapping its YAML holds (``load_config`` reads it back)."""
        cfg = self.config
        defaults = ServerOptions()
        options: dict[str, Any] = {
            "name": cfg.name,
            "host": cfg.host,
            "protocol": list(cfg.protocols),
            "port": list(cfg.ports),
            "timeout_ready": cfg.timeout_ready,
        }
        for key in ("cors", "title", "description", "max_request_bytes", "grace_period", *SECURITY_OPTIONS):
            value = getattr(cfg.options, key)
            if value != getattr(defaults, key):
                options[key] = value  # file paths and variable names only: never a token
        if cfg.internal_tls is not None:
            options["internal_tls"] = cfg.internal_tls.model_dump(exclude_none=True)
        if cfg.ssl_ca_file is not None:
            options["ssl_ca_file"] = cfg.ssl_ca_file
        if cfg.env:
            options["env"] = dict(cfg.env)
        options.update(cfg.observe.model_dump(exclude_defaults=True))
        executors = []
        for node in cfg.executors:
            ex = node.executor
            entry: dict[str, Any] = {"name": ex.name, "uses": ex.uses}
            optional = {
                "uses_with": ex.uses_with,
                "uses_metas": ex.uses_metas,
                "py_modules": list(ex.py_modules),
                "workspace": ex.workspace,
                "allow_concurrent": ex.allow_concurrent or None,
                "uses_dynamic_batching": ex.uses_dynamic_batching,
                "exit_on_exceptions": list(ex.exit_on_exceptions),
                "replicas": node.replicas if node.replicas != 1 else None,
                "shards": node.shards if node.shards != 1 else None,
                "polling": (node.polling["*"] if list(node.polling) == ["*"] else node.polling)
                if node.polling != {"*": "ANY"}
                else None,
                "needs": list(node.needs),
                "when": node.when,
                "env": node.env,
                "timeout_send": node.timeout_send,
                "max_concurrent": node.max_concurrent
                if node.max_concurrent != DEFAULT_MAX_CONCURRENT
                else None,
                "max_queue": node.max_queue if node.max_queue != DEFAULT_MAX_QUEUE else None,
                "image": node.image,
                "gpus": node.gpus,
                "resources": node.resources.model_dump(exclude_defaults=True),
            }
            entry.update({k: v for k, v in optional.items() if v})
            entry.update(node.observe)
            executors.append(entry)
        return {"jtype": "Flow", "version": "1", "with": options, "executors": executors}

    def save_config(self, path: str | os.PathLike[str]) -> None:
        """Write the Flow as YAML (``Flow.load_config(path)`` gives the same Flow back)."""
        Path(path).write_text(dump_yaml(self.to_dict()), encoding="utf-8")

    # -- exporting -----------------------------------------------------------------------------

    def to_kubernetes_yaml(
        self,
        output_base_path: str | os.PathLike[str],
        namespace: str | None = None,
        *,
        base_dir: str | os.PathLike[str] | None = None,
        **options: Any,
    ) -> list[Path]:
        """Write the Kubernetes objects that run this Flow into the folder ``output_base_path``
        (``00-namespace.yml``, ``gateway.yml``, one ``<executor>.yml`` each) and return the files;
        ``kubectl apply -f <folder>`` runs it. ``namespace`` defaults to the Flow's name. Paths of
        the Flow under ``base_dir`` (default: the current directory) become relative to the
        image's working directory. More settings (``image=``, ``gateway_replicas=``,
        ``env_from_secrets=``...): :class:`plait.export.KubernetesOptions`."""
        settings = {"namespace": namespace, "base_dir": os.fspath(base_dir or os.getcwd()), **options}
        try:
            export_options = KubernetesOptions(**settings)
        except ValueError as e:
            raise ConfigError(f"to_kubernetes_yaml: {e}") from e
        return write_kubernetes(self.config, output_base_path, export_options)

    def to_docker_compose_yaml(
        self,
        output_path: str | os.PathLike[str] = "docker-compose.yml",
        network_name: str | None = None,
        *,
        base_dir: str | os.PathLike[str] | None = None,
        **options: Any,
    ) -> Path:
        """Write a Compose file that runs this Flow (a service per executor replica and shard,
        plus the gateway) and return its path; ``docker compose -f <file> up`` runs it. More
        settings (``image=``, ``env_files=``...): :class:`plait.export.ComposeOptions`."""
        settings: dict[str, Any] = {"base_dir": os.fspath(base_dir or os.getcwd()), **options}
        if network_name is not None:
            settings["network_name"] = network_name
        try:
            export_options = ComposeOptions(**settings)
        except ValueError as e:
            raise ConfigError(f"to_docker_compose_yaml: {e}") from e
        return write_compose(self.config, output_path, export_options)

    # -- plotting ------------------------------------------------------------------------------

    def _plot_nodes(self) -> list[PlotNode]:
        return [
            PlotNode(name=n.name, needs=n.needs, label=n.executor.uses, replicas=n.replicas, shards=n.shards)
            for n in self.config.executors
        ]

    def plot(self, output: str | os.PathLike[str] | None = None, *, vertical: bool = False) -> str:
        """The DAG as Mermaid text; with ``output`` ending in ``.svg``, also write an SVG drawing
        (rendered locally, no network service); any other ``output`` gets the Mermaid text."""
        mermaid = to_mermaid(self._plot_nodes(), vertical=vertical)
        if output is not None:
            path = Path(output)
            text = to_svg(self._plot_nodes(), vertical=vertical) if path.suffix == ".svg" else mermaid
            path.write_text(text, encoding="utf-8")
        return mermaid

    # -- lifecycle -----------------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The gateway's first port (the one ``post`` uses)."""
        return self.ports[0]

    @property
    def ports(self) -> tuple[int, ...]:
        if not self._ports:
            raise RuntimeError("the Flow has not started yet; its ports are chosen at start")
        return self._ports

    @property
    def protocols(self) -> tuple[str, ...]:
        return self.config.protocols

    @property
    def children(self) -> Sequence[ChildProcess]:
        return tuple(self._children) + ((self._gateway,) if self._gateway else ())

    @property
    def monitoring_ports(self) -> dict[str, int]:
        """Where each process serves ``/metrics`` (``monitoring=True``): ``{'gateway': 9090,
        'encoder': 41234, 'indexer/shard-1': ...}``, once started."""
        return dict(self._monitoring_ports)

    @property
    def client(self) -> Client:
        if self._client is None:
            raise RuntimeError("start the Flow first (`with flow:` or flow.start())")
        return self._client

    def _supervision(self) -> Supervisor | None:
        return self._supervisor

    def _executor_children(self) -> tuple[list[ChildProcess], list[GatewayExecutor]]:
        cfg = self.config
        placement = DevicePlacement(devices=self._devices, parent_setting=read_parent_setting())
        children: list[ChildProcess] = []
        routes: list[GatewayExecutor] = []
        for node in cfg.executors:
            observe = cfg.executor_observe(node)
            copies = node.shards * node.replicas
            shards: list[tuple[str, ...]] = []
            envs = placement.environments(
                {**cfg.env, **node.env}, node.shards * node.replicas, who=f"executor {node.name!r}"
            )
            for shard_id in range(node.shards):
                addresses = []
                for replica_id in range(node.replicas):
                    # The gateway dials `port`, which a replacement binds too (SO_REUSEPORT: it is
                    # the "public" port); readiness is probed on a port of the process's own.
                    port, own_port = free_port(), free_port()
                    replica = cfg.replica_config(
                        node,
                        shard_id=shard_id,
                        replica_id=replica_id,
                        port=own_port,
                        public_host="127.0.0.1",
                        public_port=port,
                        parent_pid=os.getpid(),
                        observe=with_monitoring_port(
                            observe, observe.port_monitoring if copies == 1 else None
                        ),
                    )
                    label = node.name
                    if node.shards > 1:
                        label += f"/shard-{shard_id}"
                    if node.replicas > 1:
                        label += f"/rep-{replica_id}"
                    if replica.observe.port_monitoring is not None:
                        self._monitoring_ports[label] = replica.observe.port_monitoring
                    address = f"127.0.0.1:{port}"
                    children.append(
                        ChildProcess(
                            label,
                            "executor",
                            replica,
                            address,
                            envs[shard_id * node.replicas + replica_id],
                            probe_address=f"127.0.0.1:{own_port}",
                            probe_security=executor_probe_security(cfg.internal_tls),
                            quiet=self._quiet,
                        )
                    )
                    addresses.append(address)
                shards.append(tuple(addresses))
            routes.append(
                GatewayExecutor(
                    name=node.name,
                    shards=tuple(shards),
                    polling=node.polling,
                    needs=node.needs,
                    when=node.when,
                    timeout_send=node.timeout_send,
                )
            )
        return children, routes

    def start(self) -> Self:
        if self._children:
            return self
        if not self.config.executors:
            raise ConfigError("the Flow has no executors: add one with flow.add(uses=...)")
        if importing_user_code():
            raise ConfigError(
                "a Flow was started while an executor module was being imported in a child process; "
                "start it under `if __name__ == '__main__':`"
            )
        cfg = self.config
        client_kwargs = flow_client_kwargs(cfg)  # reads the token now: a missing one fails early
        children, routes = self._executor_children()
        self._children = children
        # First: it imports while the configs are built and the gateway starts.
        self._forkserver = start_fork_server(child_env({}), len(children))
        for child in children:
            child.forkserver = self._forkserver
        try:
            gateway_host = connect_host(cfg.host)
            self._ports = tuple(p or free_port(gateway_host) for p in cfg.ports)
            gateway_cfg = cfg.gateway_config(
                tuple(routes),
                ports=self._ports,
                parent_pid=os.getpid(),
                observe=with_monitoring_port(cfg.observe, cfg.observe.port_monitoring),
            )
            if gateway_cfg.observe.port_monitoring is not None:
                self._monitoring_ports["gateway"] = gateway_cfg.observe.port_monitoring
            address = f"{gateway_host}:{self._ports[0]}"
            probe = "grpc" if cfg.protocols[0] == "grpc" else "http"
            gateway_env = without_round_robin(cfg.env)
            gateway = ChildProcess(
                "gateway",
                "gateway",
                gateway_cfg,
                address,
                gateway_env,
                probe=probe,
                probe_security=gateway_client_security(cfg.options, cfg.ssl_ca_file),
                quiet=self._quiet,
            )
            self._gateway = gateway
            # Everything starts at once: the gateway keeps asking the executors for their endpoints
            # until they answer, so start-up costs one process start, not two in a row. The gateway
            # first: an executor's start waits for the fork server's imports.
            for child in (gateway, *children):
                child.start()
            wait_ready([*children, gateway], cfg.timeout_ready)
            self._client = Client(
                address,
                protocol=cfg.protocols[0],
                max_message_size=cfg.options.max_request_bytes,
                **client_kwargs,
            )
        except BaseException:
            self.close()
            raise
        policy = RestartPolicy() if self._restarts is True else self._restarts or None
        self._supervisor = Supervisor(f"flow {cfg.name!r}", policy)
        self._supervisor.watch([*children, gateway])
        self._supervisor.start()
        return self

    def rolling_update(self, name: str, uses_with: Mapping[str, Any]) -> None:
        """Replace executor ``name``'s replicas one at a time (shard by shard) with ones built with
        ``uses_with`` (it replaces the old ``uses_with``); return when all run the new config.

        Each new replica starts next to the old one on the address the gateway dials (SO_REUSEPORT)
        and gets ready; then the old one drains — it reports NOT_SERVING, so the gateway's
        health-checking channel sends new calls to the other replicas, and in-flight calls finish —
        and exits; the gateway reconnects to the same address and reaches the new one. With
        ``replicas >= 2`` no request fails; with one replica per shard, a call racing the switch
        may. If a new replica does not come up, the old one keeps serving and StartupError is
        raised (replicas already replaced stay replaced).
        """
        supervisor = self._supervisor
        if supervisor is None:
            raise RuntimeError("start the Flow before a rolling update")
        index = next((i for i, n in enumerate(self.config.executors) if n.name == name), None)
        if index is None:
            known = ", ".join(n.name for n in self.config.executors)
            raise ConfigError(f"rolling_update: the Flow has no executor {name!r} (it has: {known})")
        with self._updating:
            node = self.config.executors[index]
            executor = node.executor.model_copy(update={"uses_with": dict(uses_with)})
            grace = self.config.options.grace_period
            for i, old in enumerate(list(self._children)):
                if not isinstance(old.config, ReplicaConfig) or old.config.executor.name != name:
                    continue
                config = old.config.model_copy(
                    update={
                        "executor": executor,
                        "port": free_port(),
                        "observe": with_monitoring_port(old.config.observe, None),
                    }
                )
                if config.observe.port_monitoring is not None:
                    self._monitoring_ports[old.label] = config.observe.port_monitoring
                new = ChildProcess(
                    old.label,
                    "executor",
                    config,
                    old.address,
                    old.env,
                    probe_address=f"127.0.0.1:{config.port}",
                    probe_security=old.probe_security,
                    quiet=self._quiet,
                    forkserver=old.forkserver,
                )
                replace_child(
                    supervisor,
                    old,
                    new,
                    overlap=True,
                    timeout_ready=self.config.timeout_ready,
                    grace_period=grace,
                )
                self._children[i] = new
                log.info("flow %r: %s updated (pid %s)", self.config.name, new.label, new.pid)
            executors = list(self.config.executors)
            executors[index] = node.model_copy(update={"executor": executor})
            self.config = self.config.model_copy(update={"executors": tuple(executors)})

    def close(self) -> None:
        supervisor, self._supervisor = self._supervisor, None
        if supervisor is not None:
            supervisor.stop()  # first: nothing is restarted while the processes stop
            # A rolling update cut short (Ctrl-C) may have swapped in a replica not listed yet.
            watched = [c for c in supervisor.children() if c is not self._gateway]
            self._children += [c for c in watched if c not in self._children]
        client, self._client = self._client, None
        if client is not None:
            client.close()
        grace = self.config.options.grace_period
        # The gateway first, so nothing new reaches executors that are about to drain.
        if self._gateway is not None:
            stop_all([self._gateway], grace)
            self._gateway = None
        stop_all(self._children, grace)
        self._children = []
        forkserver, self._forkserver = self._forkserver, None
        if forkserver is not None:
            forkserver.close()


def _resolve(entry: str, base: Path) -> str:
    """A path in a Flow YAML is relative to the YAML file; module names are kept as they are."""
    if entry.endswith((".py", ".yml", ".yaml")) and not os.path.isabs(entry):
        return str((base / entry).resolve())
    return entry
