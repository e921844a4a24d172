"""What the Kubernetes and Compose exports share: names, container paths, and the config each
exported process runs with.

Every exported process runs the command a local Flow runs, ``plait executor|gateway --config
<file>``, from the same kind of serialized config (built by ``FlowConfig.replica_config`` and
``FlowConfig.gateway_config``, as locally). Only the placement differs: in a container an executor
binds ``0.0.0.0`` on one fixed port, its workspace is ``/workspace``, and the gateway reaches each
shard by one DNS name that resolves to all of the shard's replicas.

TLS files (the gateway's certificate and key, the mutual-TLS CA, certificate and key) are never
part of an export: each process's config names them at a fixed path under ``/etc/plait-tls``, where
the export mounts them from a Secret (Kubernetes) or a host file (Compose ``secrets:``). Health
checks of TLS processes run ``plait ping`` with the same files, since the native probes cannot.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from plait.config import (
    ExecutorConfig,
    FlowConfig,
    FlowExecutorConfig,
    FrozenModel,
    GatewayConfig,
    GatewayExecutor,
    MutualTLS,
    Observability,
    ReplicaConfig,
)
from plait.errors import ConfigError
from plait.export.options import ExportOptions

log = logging.getLogger("plait.export")

CONFIG_DIR = "/etc/plait"
CONFIG_FILE = "config.json"
CONFIG_PATH = f"{CONFIG_DIR}/{CONFIG_FILE}"
WORKSPACE = "/workspace"
ENTRYPOINT = "plait"
SHUTDOWN_MARGIN_S = 5
"""Seconds a container gets beyond its grace period: the drain notice, ``Executor.close()``, exit."""
FIRST_GATEWAY_PORT = 8080
TLS_DIR = "/etc/plait-tls"
"""Where the TLS files appear in a container; beside the config's folder, not inside it (a mount
inside a read-only ConfigMap mount cannot be made)."""
GATEWAY_TLS_DIR = f"{TLS_DIR}/gateway"
"""The gateway's own certificate and key (``ssl_certfile``/``ssl_keyfile``)."""
INTERNAL_TLS_DIR = f"{TLS_DIR}/internal"
"""Mutual TLS between the gateway and the executors (``internal_tls``): in every container."""
TLS_CA = "ca.crt"
TLS_CERT = "tls.crt"
TLS_KEY = "tls.key"
"""File names in those folders, which are also the keys of the Kubernetes Secrets they come from
(those of a ``kubernetes.io/tls`` Secret)."""
PROBE_HOST = "127.0.0.1"
PING_TIMEOUT_S = 3
"""Seconds a ``plait ping`` health check waits for the answer (the check itself gets more)."""
_CUDA_VISIBLE_DEVICES = "CUDA_VISIBLE_DEVICES"
_LABEL_MAX = 63


def dns_label(name: str, *, what: str) -> str:
    """``name`` as a DNS label (lowercase letters, digits, '-'; starts with a letter), which
    Kubernetes object names and Compose service names must be."""
    label = re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")
    if not label or not label[0].isalpha():
        label = f"x-{label}".rstrip("-")
    if len(label) > _LABEL_MAX:
        raise ConfigError(f"{what} {name!r} gives the name {label!r}, longer than {_LABEL_MAX} characters")
    return label


@dataclass(frozen=True, slots=True)
class ShardGroup:
    """One shard of one executor: the replicas that one DNS name (a headless Service, a Compose
    network alias) resolves to."""

    node: FlowExecutorConfig
    shard_id: int
    name: str
    """DNS label: the executor's name, plus ``-<shard>`` when it has several shards."""


def shard_groups(flow: FlowConfig) -> list[ShardGroup]:
    """Every shard of every executor, in the order they were added; names are checked to be unique."""
    if not flow.executors:
        raise ConfigError("the Flow has no executors: add one before exporting it")
    groups = []
    taken = {"gateway": "the gateway"}
    for node in flow.executors:
        base = dns_label(node.name, what="executor")
        for shard_id in range(node.shards):
            name = dns_label(f"{base}-{shard_id}" if node.shards > 1 else base, what="executor")
            who = f"executor {node.name!r}" + (f" shard {shard_id}" if node.shards > 1 else "")
            if name in taken:
                raise ConfigError(
                    f"{who} and {taken[name]} would share the name {name!r} in the export; rename one"
                )
            taken[name] = who
            groups.append(ShardGroup(node=node, shard_id=shard_id, name=name))
    return groups


def _in_container(path: str, base: Path | None, what: str) -> str:
    """A host path from the Flow as the container sees it: relative to ``base`` (which the image
    holds at its working directory) when it lies inside it."""
    if base is None or not os.path.isabs(path):
        return path
    try:
        return Path(path).resolve().relative_to(base).as_posix()
    except ValueError:
        log.warning("%s %r lies outside %s: the image must hold it at that same path", what, path, base)
        return path


def container_executor(executor: ExecutorConfig, options: ExportOptions) -> ExecutorConfig:
    """``executor`` as it runs in a container: paths relative to the image's working directory,
    its workspace under ``/workspace`` (a volume)."""
    base = Path(options.base_dir).resolve() if options.base_dir else None
    uses = executor.uses
    if uses.endswith((".yml", ".yaml")):
        uses = _in_container(uses, base, f"executor {executor.name!r}: uses")
    modules = tuple(
        _in_container(m, base, f"executor {executor.name!r}: py_module") if m.endswith(".py") else m
        for m in executor.py_modules
    )
    return executor.model_copy(update={"uses": uses, "py_modules": modules, "workspace": WORKSPACE})


def observability(flow: FlowConfig, node: FlowExecutorConfig | None, options: ExportOptions) -> Observability:
    """Metrics and tracing of one exported process: the Flow's (and the executor's own), with
    monitoring on by default on the fixed in-container port (Prometheus finds it by annotation)."""
    own = flow.observe if node is None else flow.executor_observe(node)
    if not (own.monitoring or options.monitoring):
        return own
    return own.model_copy(
        update={"monitoring": True, "port_monitoring": own.port_monitoring or options.monitoring_port}
    )


def gateway_tls_files(flow: FlowConfig) -> dict[str, str]:
    """The gateway's certificate and key as the Flow names them (host paths), by their file name in
    :data:`GATEWAY_TLS_DIR`; empty when the gateway serves no TLS."""
    options = flow.options
    if options.ssl_certfile is None or options.ssl_keyfile is None:
        return {}
    return {TLS_CERT: options.ssl_certfile, TLS_KEY: options.ssl_keyfile}


def internal_tls_files(flow: FlowConfig) -> dict[str, str]:
    """The mutual-TLS CA, certificate and key as the Flow names them (host paths), by their file
    name in :data:`INTERNAL_TLS_DIR`; empty without ``internal_tls``."""
    mtls = flow.internal_tls
    if mtls is None:
        return {}
    return {TLS_CA: mtls.ca_file, TLS_CERT: mtls.certfile, TLS_KEY: mtls.keyfile}


def container_internal_tls(mtls: MutualTLS | None) -> MutualTLS | None:
    """``internal_tls`` as a container sees it: the files in :data:`INTERNAL_TLS_DIR`."""
    if mtls is None:
        return None
    return mtls.model_copy(
        update={
            "ca_file": f"{INTERNAL_TLS_DIR}/{TLS_CA}",
            "certfile": f"{INTERNAL_TLS_DIR}/{TLS_CERT}",
            "keyfile": f"{INTERNAL_TLS_DIR}/{TLS_KEY}",
        }
    )


def replica_config(
    flow: FlowConfig, group: ShardGroup, replica_id: int, options: ExportOptions
) -> ReplicaConfig:
    """The config of one exported executor process."""
    return flow.replica_config(
        group.node,
        shard_id=group.shard_id,
        replica_id=replica_id,
        executor=container_executor(group.node.executor, options),
        host="0.0.0.0",
        port=options.executor_port,
        max_connection_age=options.max_connection_age,
        internal_tls=container_internal_tls(flow.internal_tls),
        observe=_own_port(observability(flow, group.node, options), options.executor_port, group.name),
    )


def _own_port(observe: Observability, port: int, who: str) -> Observability:
    if observe.monitoring and observe.port_monitoring == port:
        raise ConfigError(f"{who}: its metrics port {port} is also the port it serves on; pick another")
    return observe


def gateway_ports(flow: FlowConfig) -> tuple[int, ...]:
    """The gateway's ports: the Flow's, and for any left to chance the first free from 8080 up."""
    taken = {p for p in flow.ports if p}
    ports = []
    candidate = FIRST_GATEWAY_PORT
    for port in flow.ports:
        if not port:
            while candidate in taken:
                candidate += 1
            port = candidate
            taken.add(port)
        ports.append(port)
    return tuple(ports)


def gateway_config(
    flow: FlowConfig, addresses: dict[str, list[str]], options: ExportOptions
) -> GatewayConfig:
    """The exported gateway's config; ``addresses`` maps each executor's name to the address of
    each of its shards."""
    routes = tuple(
        GatewayExecutor(
            name=node.name,
            shards=tuple((address,) for address in addresses[node.name]),
            polling=node.polling,
            needs=node.needs,
            when=node.when,
            timeout_send=node.timeout_send,
        )
        for node in flow.executors
    )
    update: dict[str, Any] = {"max_connection_age": options.max_connection_age}
    if gateway_tls_files(flow):
        update.update(
            ssl_certfile=f"{GATEWAY_TLS_DIR}/{TLS_CERT}", ssl_keyfile=f"{GATEWAY_TLS_DIR}/{TLS_KEY}"
        )
    server_options = flow.options.model_copy(update=update)
    ports = gateway_ports(flow)
    observe = observability(flow, None, options)
    if observe.monitoring and observe.port_monitoring in ports:
        raise ConfigError(
            f"gateway: its metrics port {observe.port_monitoring} is also one of its ports {ports}; "
            "pick another"
        )
    return flow.gateway_config(
        routes,
        host="0.0.0.0",
        ports=ports,
        options=server_options,
        internal_tls=container_internal_tls(flow.internal_tls),
        observe=observe,
    )


def metrics_port(config: ReplicaConfig | GatewayConfig) -> int | None:
    """The port an exported process serves /metrics on, if it does."""
    return config.observe.port_monitoring if config.observe.monitoring else None


def balanced_address(name: str, port: int) -> str:
    """The address a gateway dials to balance over every replica ``name`` resolves to."""
    return f"dns:///{name}:{port}"


def process_env(flow: FlowConfig, node: FlowExecutorConfig | None) -> dict[str, str]:
    """Environment of one exported process: the Flow's, then the executor's. A round-robin
    ``CUDA_VISIBLE_DEVICES=RR`` is a local placement rule; exports ask for GPUs with ``gpus``."""
    env = {**flow.env, **(node.env if node else {})}
    value = env.get(_CUDA_VISIBLE_DEVICES)
    if value is not None and value.strip().upper().startswith("RR"):
        del env[_CUDA_VISIBLE_DEVICES]
    return dict(sorted(env.items()))


def config_json(config: FrozenModel) -> str:
    """A process's config as the JSON file its ``--config`` reads (defaults left out)."""
    return config.model_dump_json(indent=2, exclude_defaults=True) + "\n"


def config_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def termination_grace(grace_period: float) -> int:
    """Whole seconds a container gets from SIGTERM to SIGKILL: its drain plus a margin."""
    return math.ceil(grace_period) + SHUTDOWN_MARGIN_S


def probe_port(config: GatewayConfig) -> tuple[str, int]:
    """The protocol and port that answer the gateway's health probes (gRPC if it speaks it)."""
    for protocol, port in zip(config.protocols, config.ports, strict=True):
        if protocol == "grpc":
            return protocol, port
    return config.protocols[0], config.ports[0]


def executor_ping(config: ReplicaConfig, dialed_name: str) -> list[str]:
    """argv of the health check of an executor from inside its container. In the clear: ``plait
    ping`` (Kubernetes probes such an executor natively). Under mutual TLS it presents the
    process's own certificate and expects the name the gateway checks, ``internal_tls.server_name``
    or else ``dialed_name``, the host the gateway dials."""
    argv = [ENTRYPOINT, "ping", f"{PROBE_HOST}:{config.port}"]
    mtls = config.internal_tls
    if mtls is None:
        return argv
    return [
        *argv,
        "--ca-file",
        mtls.ca_file,
        "--cert-file",
        mtls.certfile,
        "--key-file",
        mtls.keyfile,
        "--server-name",
        mtls.server_name or dialed_name,
        "--timeout",
        str(PING_TIMEOUT_S),
    ]


def gateway_ping(config: GatewayConfig, port: int) -> list[str]:
    """argv of the health check of a TLS gateway's gRPC port from inside its container: it trusts
    exactly the gateway's own certificate and takes whatever name that carries (a public host name
    rather than 127.0.0.1)."""
    if config.options.ssl_certfile is None:
        raise ValueError("the gateway serves no TLS: its probes need no plait ping")
    return [
        ENTRYPOINT,
        "ping",
        f"grpcs://{PROBE_HOST}:{port}",
        "--ca-file",
        config.options.ssl_certfile,
        "--any-server-name",
        "--timeout",
        str(PING_TIMEOUT_S),
    ]


class _Dumper(yaml.SafeDumper):
    """Block style, keys in the order written, no anchors; multi-line strings (configs) as literal
    blocks."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def dump_documents(documents: list[dict[str, Any]]) -> str:
    """YAML for ``documents``, separated by ``---``."""
    return yaml.dump_all(documents, Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=100)
