"""Kubernetes export: the objects that run a Flow, as plain dicts (then YAML), from its config alone.

Per executor shard: a ConfigMap with the serialized :class:`~plait.config.ReplicaConfig`, a
Deployment running ``plait executor --config`` with ``replicas`` pods, and a **headless** Service
(no cluster IP: its DNS name resolves to every ready pod). For the gateway: a ConfigMap with its
:class:`~plait.config.GatewayConfig`, a Deployment and a Service. Plus the Namespace.

The gateway dials each shard as ``dns:///<service>.<namespace>.svc:<port>`` with gRPC's
client-side ``round_robin``, so each call goes to the next ready pod; a pod that drains or dies
leaves the rotation at once (gRPC health checks). Servers close connections after
``max_connection_age``; the gateway then resolves the name again and finds pods that came up in
the meantime. No service mesh is needed.

TLS files come from Secrets the user creates (``tls_secret``, ``internal_tls_secret``), mounted
read-only where the configs name them; the export holds their names, never their contents. Native
``grpc`` probes cannot speak TLS, so TLS processes are probed by ``plait ping`` (an ``exec`` probe)
with those files, or an HTTP-only TLS gateway by ``httpGet`` over HTTPS.
"""

from __future__ import annotations

import math
import os
from pathlib import Path, PurePosixPath
from typing import Any

from plait.config import FlowConfig, FlowExecutorConfig, ServerOptions
from plait.errors import ConfigError
from plait.export.common import (
    CONFIG_DIR,
    CONFIG_FILE,
    CONFIG_PATH,
    ENTRYPOINT,
    GATEWAY_TLS_DIR,
    INTERNAL_TLS_DIR,
    PING_TIMEOUT_S,
    WORKSPACE,
    ShardGroup,
    balanced_address,
    config_hash,
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
from plait.export.options import KubernetesOptions

NAMESPACE_FILE = "00-namespace.yml"
"""Listed first, so ``kubectl apply -f <dir>`` creates the namespace before what lives in it."""
GATEWAY_FILE = "gateway.yml"
PROBE_PERIOD_S = 5
EXEC_PROBE_TIMEOUT_S = PING_TIMEOUT_S + 2
"""Seconds an ``exec`` probe (``plait ping``) gets: its own wait plus the interpreter's start."""
SECRET_MODE = 0o440
FS_GROUP = 10001
"""The group of the image's user (see the Dockerfile): given to pods that mount Secrets, whose
files are then readable by that group and nobody else."""
_WAIT_FOREVER_PROBES = 720  # startup attempts when timeout_ready < 0: an hour at PROBE_PERIOD_S


class _Context:
    """What every object of one export needs: the namespace, the options, the Flow's labels."""

    def __init__(self, flow: FlowConfig, options: KubernetesOptions) -> None:
        self.flow = flow
        self.options = options
        self.part_of = dns_label(flow.name, what="Flow name")
        self.namespace = dns_label(options.namespace or flow.name, what="namespace")
        if options.namespace is not None and self.namespace != options.namespace:
            raise ConfigError(
                f"namespace {options.namespace!r} is not a DNS label (lowercase letters, digits and "
                f"'-', starting with a letter); {self.namespace!r} would be"
            )

    def metadata(self, name: str, labels: dict[str, str]) -> dict[str, Any]:
        return {"name": name, "namespace": self.namespace, "labels": labels}

    def selector(self, name: str) -> dict[str, str]:
        return {"app.kubernetes.io/part-of": self.part_of, "app.kubernetes.io/name": name}

    def labels(self, name: str, component: str, extra: dict[str, str] | None = None) -> dict[str, str]:
        return {
            **self.selector(name),
            "app.kubernetes.io/component": component,
            "app.kubernetes.io/managed-by": "plait",
            **(extra or {}),
        }

    def host(self, group: ShardGroup) -> str:
        """The DNS name of a shard's headless Service: what the gateway dials."""
        return f"{group.name}.{self.namespace}.svc"

    def address(self, group: ShardGroup) -> str:
        return balanced_address(self.host(group), self.options.executor_port)

    def startup_attempts(self) -> int:
        timeout = self.flow.timeout_ready
        if timeout < 0:
            return _WAIT_FOREVER_PROBES
        return max(3, math.ceil(timeout / PROBE_PERIOD_S))


def _probes(check: dict[str, Any], live_check: dict[str, Any], startup_attempts: int) -> dict[str, Any]:
    """Startup (a slow model load is not a failure), readiness (a draining replica reports
    NOT_SERVING and leaves the Service's endpoints) and liveness (a hung process is restarted)."""
    return {
        "startupProbe": {**check, "periodSeconds": PROBE_PERIOD_S, "failureThreshold": startup_attempts},
        "readinessProbe": {**check, "periodSeconds": PROBE_PERIOD_S, "failureThreshold": 2},
        "livenessProbe": {**live_check, "periodSeconds": 10, "timeoutSeconds": 5, "failureThreshold": 3},
    }


def _grpc_check(port: int) -> dict[str, Any]:
    # Kubernetes' native gRPC probe asks the standard grpc.health.v1 service every server runs.
    return {"grpc": {"port": port}}


def _exec_check(argv: list[str]) -> dict[str, Any]:
    # A native gRPC probe speaks no TLS; `plait ping` in the container does, with its files.
    return {"exec": {"command": argv}, "timeoutSeconds": EXEC_PROBE_TIMEOUT_S}


def _tls_secret(
    name: str, secret: str, folder: str, files: dict[str, str]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The read-only mount and the Secret volume that put ``files`` (their names, which are the
    Secret's keys) into ``folder``."""
    volume = {
        "name": name,
        "secret": {
            "secretName": secret,
            "items": [{"key": key, "path": key} for key in files],
            "defaultMode": SECRET_MODE,
        },
    }
    return {"name": name, "mountPath": folder, "readOnly": True}, volume


def _internal_tls(ctx: _Context) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Mounts and volumes of the mutual-TLS files, in every pod when the Flow has ``internal_tls``."""
    files = internal_tls_files(ctx.flow)
    if not files:
        return [], []
    mount, volume = _tls_secret("internal-tls", ctx.options.internal_tls_secret, INTERNAL_TLS_DIR, files)
    return [mount], [volume]


def _resources(node: FlowExecutorConfig, options: KubernetesOptions) -> dict[str, Any]:
    requests = dict(node.resources.requests)
    limits = dict(node.resources.limits)
    if node.gpus:
        limits[options.gpu_resource] = str(node.gpus)  # extended resources: request = limit
    out: dict[str, Any] = {}
    if requests:
        out["requests"] = requests
    if limits:
        out["limits"] = limits
    return out


def _container(
    ctx: _Context,
    *,
    name: str,
    image: str,
    command: str,
    ports: list[dict[str, Any]],
    env: dict[str, str],
    probes: dict[str, Any],
    resources: dict[str, Any],
    mounts: list[dict[str, Any]],
) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": name,
        "image": image,
        # Set here, not left to the image, so an executor image whose entry point runs something
        # else (`plait executor --uses ...` on its own) runs the exported config all the same.
        "command": [ENTRYPOINT],
        "args": [command, "--config", CONFIG_PATH],
        "ports": ports,
    }
    if ctx.options.image_pull_policy:
        container["imagePullPolicy"] = ctx.options.image_pull_policy
    if env:
        container["env"] = [{"name": k, "value": v} for k, v in env.items()]
    if ctx.options.env_from_secrets:
        # Credentials come from Secrets by reference; their values never appear in the export.
        container["envFrom"] = [{"secretRef": {"name": s}} for s in ctx.options.env_from_secrets]
    if resources:
        container["resources"] = resources
    container.update(probes)
    container["volumeMounts"] = [{"name": "config", "mountPath": CONFIG_DIR, "readOnly": True}, *mounts]
    container["securityContext"] = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}
    return container


def _workload(
    ctx: _Context,
    *,
    name: str,
    labels: dict[str, str],
    replicas: int,
    config_text: str,
    container: dict[str, Any],
    grace_period: float,
    volumes: list[dict[str, Any]],
    metrics: int | None,
) -> list[dict[str, Any]]:
    """A ConfigMap holding the process's config and the Deployment that runs it."""
    annotations = {"plait/config-hash": config_hash(config_text)}
    if metrics is not None:
        # The convention Prometheus' Kubernetes service discovery is usually configured with.
        annotations.update(
            {
                "prometheus.io/scrape": "true",
                "prometheus.io/port": str(metrics),
                "prometheus.io/path": "/metrics",
            }
        )
        container["ports"] = [
            *container["ports"],
            {"name": "metrics", "containerPort": metrics, "protocol": "TCP"},
        ]
    pod_security: dict[str, Any] = {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}
    if any("secret" in volume for volume in volumes):
        # Secret files are root's, mode 0440: the image's user reads them through this group.
        pod_security["fsGroup"] = FS_GROUP
    config_map = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": ctx.metadata(f"{name}-config", labels),
        "data": {CONFIG_FILE: config_text},
    }
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": ctx.metadata(name, labels),
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": ctx.selector(name)},
            # One new pod at a time, and an old one goes only once a new one is ready.
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "template": {
                # A changed config changes the pod template, so `kubectl apply` rolls the pods.
                "metadata": {
                    "labels": labels,
                    "annotations": annotations,
                },
                "spec": {
                    # SIGTERM starts the drain (grace_period); SIGKILL comes only after it.
                    "terminationGracePeriodSeconds": termination_grace(grace_period),
                    "securityContext": pod_security,
                    "containers": [container],
                    "volumes": [{"name": "config", "configMap": {"name": f"{name}-config"}}, *volumes],
                },
            },
        },
    }
    return [config_map, deployment]


def _service(
    ctx: _Context, name: str, labels: dict[str, str], ports: list[dict[str, Any]], *, headless: bool
) -> dict[str, Any]:
    spec: dict[str, Any] = {"selector": ctx.selector(name), "ports": ports}
    if headless:
        spec = {"clusterIP": "None", **spec}
    elif ctx.options.gateway_service_type != "ClusterIP":
        spec = {"type": ctx.options.gateway_service_type, **spec}
    return {"apiVersion": "v1", "kind": "Service", "metadata": ctx.metadata(name, labels), "spec": spec}


def _executor_objects(ctx: _Context, group: ShardGroup) -> list[dict[str, Any]]:
    node, options = group.node, ctx.options
    port = options.executor_port
    extra = {"plait/executor": dns_label(node.name, what="executor"), "plait/shard": str(group.shard_id)}
    labels = ctx.labels(group.name, "executor", extra)
    # Every pod of a shard runs the same config (replica_id 0): on Kubernetes replicas are
    # interchangeable and the Deployment, not plait, counts them.
    config = replica_config(ctx.flow, group, 0, options)
    text = config_json(config)
    if config.internal_tls is None:
        probes = _probes(_grpc_check(port), _grpc_check(port), ctx.startup_attempts())
    else:
        check = _exec_check(executor_ping(config, ctx.host(group)))
        probes = _probes(check, check, ctx.startup_attempts())
    tls_mounts, tls_volumes = _internal_tls(ctx)
    container = _container(
        ctx,
        name="executor",
        image=node.image or options.image,
        command="executor",
        ports=[{"name": "grpc", "containerPort": port, "protocol": "TCP"}],
        env=process_env(ctx.flow, node),
        probes=probes,
        resources=_resources(node, options),
        mounts=[{"name": "workspace", "mountPath": WORKSPACE}, *tls_mounts],
    )
    service_port = {
        "name": "grpc",
        "port": port,
        "targetPort": port,
        "protocol": "TCP",
        "appProtocol": "grpc",
    }
    return [
        *_workload(
            ctx,
            name=group.name,
            labels=labels,
            replicas=node.replicas,
            config_text=text,
            container=container,
            grace_period=ctx.flow.options.grace_period,
            # Scratch space that lives as long as the pod; mount a PersistentVolumeClaim here for
            # state that must outlive it.
            volumes=[{"name": "workspace", "emptyDir": {}}, *tls_volumes],
            metrics=metrics_port(config),
        ),
        _service(ctx, group.name, labels, [service_port], headless=True),
    ]


AUTH_SECRET_KEY = "tokens"


def _auth_from_secret(
    options: ServerOptions, secret: str
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """Mounts, volumes and env entries that hand the gateway its tokens from a Secret.

    The export names the Secret and never holds a token: ``auth_token_file`` becomes a read-only
    file projected from the Secret's ``tokens`` key, ``auth_token_env`` a variable read from it."""
    mounts: list[dict[str, Any]] = []
    volumes: list[dict[str, Any]] = []
    env: list[dict[str, Any]] = []
    if options.auth_token_file:
        path = PurePosixPath(options.auth_token_file)
        volumes.append(
            {
                "name": "auth-tokens",
                "secret": {
                    "secretName": secret,
                    "items": [{"key": AUTH_SECRET_KEY, "path": path.name}],
                    "defaultMode": 0o440,
                },
            }
        )
        mounts.append({"name": "auth-tokens", "mountPath": str(path.parent), "readOnly": True})
    if options.auth_token_env:
        ref = {"secretKeyRef": {"name": secret, "key": AUTH_SECRET_KEY}}
        env.append({"name": options.auth_token_env, "valueFrom": ref})
    return mounts, volumes, env


def _gateway_objects(ctx: _Context, groups: list[ShardGroup]) -> list[dict[str, Any]]:
    addresses: dict[str, list[str]] = {}
    for group in groups:
        addresses.setdefault(group.node.name, []).append(ctx.address(group))
    config = gateway_config(ctx.flow, addresses, ctx.options)
    protocol, port = probe_port(config)
    tls = config.options.tls
    if protocol == "grpc":
        check = _exec_check(gateway_ping(config, port)) if tls else _grpc_check(port)
        probes = _probes(check, check, ctx.startup_attempts())
    else:
        # The kubelet's HTTPS probes do not check the certificate: any name, any CA will do.
        scheme = {"scheme": "HTTPS"} if tls else {}
        ready = {"httpGet": {"path": "/ready", "port": port, **scheme}}
        live = {"httpGet": {"path": "/health", "port": port, **scheme}}
        probes = _probes(ready, live, ctx.startup_attempts())
    ports = list(zip(config.protocols, config.ports, strict=True))
    mounts, volumes, secret_env = _auth_from_secret(config.options, ctx.options.auth_secret)
    files = gateway_tls_files(ctx.flow)
    if files:
        mount, volume = _tls_secret("gateway-tls", ctx.options.tls_secret, GATEWAY_TLS_DIR, files)
        mounts.append(mount)
        volumes.append(volume)
    internal_mounts, internal_volumes = _internal_tls(ctx)
    mounts.extend(internal_mounts)
    volumes.extend(internal_volumes)
    container = _container(
        ctx,
        name="gateway",
        image=ctx.options.gateway_image,
        command="gateway",
        ports=[{"name": p, "containerPort": n, "protocol": "TCP"} for p, n in ports],
        env=process_env(ctx.flow, None),
        probes=probes,
        resources={},
        mounts=mounts,
    )
    if secret_env:
        container["env"] = [*container.get("env", []), *secret_env]
    labels = ctx.labels("gateway", "gateway")
    service_ports = [
        {
            "name": p,
            "port": n,
            "targetPort": n,
            "protocol": "TCP",
            **({"appProtocol": "grpc"} if p == "grpc" else {}),
        }
        for p, n in ports
    ]
    return [
        *_workload(
            ctx,
            name="gateway",
            labels=labels,
            replicas=ctx.options.gateway_replicas,
            config_text=config_json(config),
            container=container,
            grace_period=config.options.grace_period,
            volumes=volumes,
            metrics=metrics_port(config),
        ),
        _service(ctx, "gateway", labels, service_ports, headless=False),
    ]


def kubernetes_manifests(
    flow: FlowConfig, options: KubernetesOptions | None = None
) -> dict[str, list[dict[str, Any]]]:
    """The objects that run ``flow`` on Kubernetes, by file name: ``00-namespace.yml``,
    ``gateway.yml`` and one ``<executor>.yml`` per executor (all of its shards)."""
    ctx = _Context(flow, options or KubernetesOptions())
    groups = shard_groups(flow)
    namespace = {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": ctx.namespace, "labels": {"app.kubernetes.io/part-of": ctx.part_of}},
    }
    files: dict[str, list[dict[str, Any]]] = {NAMESPACE_FILE: [namespace]}
    for group in groups:
        file = f"{dns_label(group.node.name, what='executor')}.yml"
        files.setdefault(file, []).extend(_executor_objects(ctx, group))
    files[GATEWAY_FILE] = _gateway_objects(ctx, groups)
    return files


def write_kubernetes(
    flow: FlowConfig, output_dir: str | os.PathLike[str], options: KubernetesOptions | None = None
) -> list[Path]:
    """Write :func:`kubernetes_manifests` into ``output_dir`` (created if missing); return the files.
    Apply them with ``kubectl apply -f <output_dir>``."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, documents in kubernetes_manifests(flow, options).items():
        path = out / name
        path.write_text(dump_documents(documents), encoding="utf-8")
        written.append(path)
    return written
