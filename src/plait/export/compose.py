"""Docker Compose export: one service per executor replica (of each shard) plus the gateway, each
running ``plait executor|gateway --config`` with its serialized config, as a local Flow does.

The replicas of a shard share a network alias (the shard's name), which Docker's DNS resolves to
all of them; the gateway dials ``dns:///<alias>:<port>`` and balances with gRPC ``round_robin``,
exactly as on Kubernetes, where the alias is a headless Service.

TLS files are Compose ``secrets:`` read from the host files the Flow names, mounted read-only
where the configs name them (``/etc/plait-tls/...``); healthchecks of TLS processes speak TLS.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from plait.config import FlowConfig, FlowExecutorConfig, GatewayConfig, ReplicaConfig
from plait.config.models import QUANTITY_RE
from plait.errors import ConfigError
from plait.export.common import (
    CONFIG_PATH,
    ENTRYPOINT,
    GATEWAY_TLS_DIR,
    INTERNAL_TLS_DIR,
    PING_TIMEOUT_S,
    PROBE_HOST,
    WORKSPACE,
    balanced_address,
    config_json,
    dns_label,
    dump_documents,
    executor_ping,
    gateway_config,
    gateway_ping,
    gateway_tls_files,
    internal_tls_files,
    metrics_port,
    probe_port,
    process_env,
    replica_config,
    shard_groups,
    termination_grace,
)
from plait.export.options import ComposeOptions

_SCALE = {
    "": 1.0, "n": 1e-9, "u": 1e-6, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "E": 1e18,
    "Ki": 2.0**10, "Mi": 2.0**20, "Gi": 2.0**30, "Ti": 2.0**40, "Pi": 2.0**50, "Ei": 2.0**60,
}  # fmt: skip


def _quantity(text: str) -> float:
    """A Kubernetes quantity ('500m', '1Gi', '1e3') as a number."""
    match = QUANTITY_RE.match(text)
    if match is None:
        raise ConfigError(f"{text!r} is not a quantity")
    number, suffix = match.group(1), match.group(2) or ""
    if suffix[:1] in ("e", "E"):
        return float(number + suffix)
    return float(number) * _SCALE[suffix]


def _cpus(text: str) -> str:
    return f"{_quantity(text):g}"


def _memory(text: str) -> str:
    """Bytes in the largest unit Docker reads (its k, m, g are powers of 1024) that holds them exactly."""
    value = round(_quantity(text))
    for unit, size in (("g", 2**30), ("m", 2**20), ("k", 2**10)):
        if value and value % size == 0:
            return f"{value // size}{unit}"
    return f"{value}b"


def _deploy(node: FlowExecutorConfig) -> dict[str, Any]:
    """``deploy.resources`` from the executor's requests (reservations), limits and GPUs."""
    resources: dict[str, Any] = {}
    for key, quantities in (("reservations", node.resources.requests), ("limits", node.resources.limits)):
        part: dict[str, Any] = {}
        if "cpu" in quantities:
            part["cpus"] = _cpus(quantities["cpu"])
        if "memory" in quantities:
            part["memory"] = _memory(quantities["memory"])
        if part:
            resources[key] = part
    if node.gpus:
        devices = [{"driver": "nvidia", "count": node.gpus, "capabilities": ["gpu"]}]
        resources.setdefault("reservations", {})["devices"] = devices
    return {"resources": resources} if resources else {}


def _literal(text: str) -> str:
    """Compose substitutes ``${VAR}`` in every value; ``$$`` keeps a ``$`` as it is."""
    return text.replace("$", "$$")


def _seconds(value: float) -> str:
    return f"{max(0, round(value))}s"


def _service(
    flow: FlowConfig,
    options: ComposeOptions,
    *,
    image: str,
    command: str,
    config_name: str,
    env: dict[str, str],
    healthcheck: list[str],
    grace_period: float,
) -> dict[str, Any]:
    service: dict[str, Any] = {
        "image": image,
        "entrypoint": [ENTRYPOINT],
        "command": [command, "--config", CONFIG_PATH],
        "configs": [{"source": config_name, "target": CONFIG_PATH}],
    }
    if env:
        service["environment"] = {k: _literal(v) for k, v in env.items()}
    if options.env_files:
        service["env_file"] = list(options.env_files)  # credentials stay in these files
    start = flow.timeout_ready if flow.timeout_ready >= 0 else 3600
    service["healthcheck"] = {
        "test": ["CMD", *healthcheck],
        "interval": "10s",
        "timeout": "5s",
        "retries": 3,
        "start_period": _seconds(start),
    }
    service["restart"] = "unless-stopped"
    # SIGTERM starts the drain; SIGKILL comes only after the grace period.
    service["stop_grace_period"] = _seconds(termination_grace(grace_period))
    return service


AUTH_TOKENS_PATH = "/run/secrets/plait-auth-tokens"
"""Where the gateway's bearer tokens file (``auth_token_file``) is mounted in its container."""

_SECRET_ROLES = {"ca.crt": "ca", "tls.crt": "cert", "tls.key": "key"}


def _tls_secrets(prefix: str, folder: str, files: dict[str, str]) -> dict[str, tuple[str, str]]:
    """Compose secrets of TLS files: name → (the Flow's host path, the path in the container). A
    relative host path is made absolute against the current directory, where a local run of the
    Flow reads it (Compose would take it relative to the Compose file's folder)."""
    return {
        f"{prefix}-{_SECRET_ROLES[name]}": (os.path.abspath(path), f"{folder}/{name}")
        for name, path in files.items()
    }


def _mount_secrets(service: dict[str, Any], secrets: dict[str, tuple[str, str]]) -> None:
    if secrets:
        service["secrets"] = [{"source": name, "target": target} for name, (_, target) in secrets.items()]


def _gateway_check(gateway: GatewayConfig) -> list[str]:
    """The gateway's healthcheck: ``plait ping`` on its gRPC port, else GET /ready; over TLS when it
    serves TLS, trusting exactly its own certificate under whatever name that carries."""
    protocol, port = probe_port(gateway)
    tls_cert = gateway.options.ssl_certfile
    if protocol == "grpc":
        return gateway_ping(gateway, port) if tls_cert else [ENTRYPOINT, "ping", f"{PROBE_HOST}:{port}"]
    if tls_cert is None:
        url = f"http://{PROBE_HOST}:{port}/ready"
        return ["python", "-c", f"import urllib.request; urllib.request.urlopen({url!r}, timeout=3)"]
    url = f"https://{PROBE_HOST}:{port}/ready"
    code = (
        f"import ssl, urllib.request; c = ssl.create_default_context(cafile={tls_cert!r}); "
        "c.check_hostname = False; c.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN; "
        f"urllib.request.urlopen({url!r}, timeout={PING_TIMEOUT_S}, context=c)"
    )
    return ["python", "-c", code]


def _expose_metrics(service: dict[str, Any], config: ReplicaConfig | GatewayConfig) -> None:
    """A process's /metrics port, reachable from the project's network (a Prometheus service
    added to it scrapes ``<service>:<port>``), not published on the host."""
    port = metrics_port(config)
    if port is not None:
        service["expose"] = [str(port)]


def compose_project(flow: FlowConfig, options: ComposeOptions | None = None) -> dict[str, Any]:
    """The Compose file that runs ``flow`` (as a dict)."""
    options = options or ComposeOptions()
    port = options.executor_port
    network = options.network_name
    services: dict[str, Any] = {}
    configs: dict[str, Any] = {}
    volumes: dict[str, Any] = {}
    addresses: dict[str, list[str]] = {}
    taken = {"gateway"}
    internal = _tls_secrets("internal-tls", INTERNAL_TLS_DIR, internal_tls_files(flow))
    public = _tls_secrets("gateway-tls", GATEWAY_TLS_DIR, gateway_tls_files(flow))
    for group in shard_groups(flow):
        node = group.node
        addresses.setdefault(node.name, []).append(balanced_address(group.name, port))
        taken.add(group.name)
        for replica_id in range(node.replicas):
            name = group.name if node.replicas == 1 else f"{group.name}-rep-{replica_id}"
            if name in services or (name != group.name and name in taken):
                raise ConfigError(f"two services of the export would be named {name!r}; rename an executor")
            config = replica_config(flow, group, replica_id, options)
            text = config_json(config)
            configs[f"{name}-config"] = {"content": _literal(text)}
            service = _service(
                flow,
                options,
                image=node.image or options.image,
                command="executor",
                config_name=f"{name}-config",
                env=process_env(flow, node),
                healthcheck=executor_ping(config, group.name),
                grace_period=flow.options.grace_period,
            )
            _mount_secrets(service, internal)
            # The shard's name resolves to every replica; the gateway balances over them.
            aliases = [group.name] if name != group.name else []
            service["networks"] = {network: {"aliases": aliases}} if aliases else [network]
            service["volumes"] = [f"{name}-workspace:{WORKSPACE}"]
            volumes[f"{name}-workspace"] = {}
            _expose_metrics(service, config)
            deploy = _deploy(node)
            if deploy:
                service["deploy"] = deploy
            services[name] = service
    gateway = gateway_config(flow, addresses, options)
    tokens: dict[str, tuple[str, str]] = {}
    if gateway.options.auth_token_file:
        # The tokens file the Flow names, as a Compose secret where the gateway's config says.
        tokens = {"gateway-auth-tokens": (os.path.abspath(gateway.options.auth_token_file), AUTH_TOKENS_PATH)}
        gateway = gateway.model_copy(
            update={"options": gateway.options.model_copy(update={"auth_token_file": AUTH_TOKENS_PATH})}
        )
    configs["gateway-config"] = {"content": _literal(config_json(gateway))}
    gateway_service = _service(
        flow,
        options,
        image=options.gateway_image,
        command="gateway",
        config_name="gateway-config",
        env=process_env(flow, None),
        healthcheck=_gateway_check(gateway),
        grace_period=gateway.options.grace_period,
    )
    _mount_secrets(gateway_service, {**public, **internal, **tokens})
    gateway_service["ports"] = [f"{p}:{p}" for p in gateway.ports]
    gateway_service["networks"] = [network]
    _expose_metrics(gateway_service, gateway)
    # Order only: the gateway waits for the executors itself (up to timeout_ready).
    gateway_service["depends_on"] = {name: {"condition": "service_started"} for name in services}
    services["gateway"] = gateway_service
    project: dict[str, Any] = {
        "name": dns_label(options.project_name or flow.name, what="Compose project name"),
        "services": services,
        "networks": {network: {"driver": "bridge"}},
        "configs": configs,
    }
    if volumes:
        project["volumes"] = volumes
    if public or internal or tokens:
        # Read from the host when the project starts; the file names, never the contents.
        project["secrets"] = {
            name: {"file": _literal(path)} for name, (path, _) in {**public, **internal, **tokens}.items()
        }
    return project


def write_compose(
    flow: FlowConfig, output_path: str | os.PathLike[str], options: ComposeOptions | None = None
) -> Path:
    """Write :func:`compose_project` to ``output_path``; run it with ``docker compose -f <file> up``."""
    path = Path(output_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(dump_documents([compose_project(flow, options)]), encoding="utf-8")
    return path
