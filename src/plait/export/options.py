"""How a Flow is exported: images, ports, names. Frozen, like every other config."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from plait._version import __version__
from plait.config import FrozenModel

DEFAULT_IMAGE = f"plait:{__version__}"
"""The base image the repository's ``Dockerfile`` builds (``docker build -t plait:<version> .``)."""
EXECUTOR_PORT = 8080
"""The port every executor listens on inside its own container."""
METRICS_PORT = 9090
"""The port every exported process serves Prometheus ``/metrics`` on, inside its container."""
DEFAULT_MAX_CONNECTION_AGE = 300.0
"""Seconds before an exported server asks its callers to reconnect (and so to resolve again)."""


class ExportOptions(FrozenModel):
    """Settings every export shares."""

    image: str = Field(
        default=DEFAULT_IMAGE,
        description="image for executors that name none (`image:` on an executor in the Flow YAML)",
    )
    gateway_image: str = Field(default=DEFAULT_IMAGE, description="image of the gateway (plait alone)")
    executor_port: int = Field(default=EXECUTOR_PORT, ge=1, le=65535, description="in-container port")
    monitoring: bool = Field(
        default=True,
        description="every process serves Prometheus metrics on `monitoring_port` (an executor's own "
        "`port_monitoring` wins); False: only where the Flow turns `monitoring` on",
    )
    monitoring_port: int = Field(
        default=METRICS_PORT, ge=1, le=65535, description="in-container port of /metrics"
    )
    max_connection_age: float | None = Field(
        default=DEFAULT_MAX_CONNECTION_AGE,
        gt=0,
        description="seconds before servers ask callers to reconnect, so the gateway's DNS "
        "round_robin finds new replicas; None: never",
    )
    base_dir: str | None = Field(
        default=None,
        description="host folder the Flow's files are relative to (the Flow YAML's folder); `uses` "
        "and `py_modules` paths inside it become relative to the container's working directory, "
        "where the image has a copy of it. None: paths are kept as they are",
    )


class KubernetesOptions(ExportOptions):
    """Settings of the Kubernetes export."""

    namespace: str | None = Field(
        default=None, description="namespace of every object; None: the Flow's name"
    )
    gateway_replicas: int = Field(default=1, ge=1, description="gateway pods (they hold no state)")
    gateway_service_type: Literal["ClusterIP", "NodePort", "LoadBalancer"] = Field(
        default="ClusterIP", description="how the gateway's Service is exposed"
    )
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] | None = Field(
        default=None, description="None: Kubernetes' default for the image's tag"
    )
    env_from_secrets: tuple[str, ...] = Field(
        default=(),
        description="names of Secrets whose keys every container gets as environment variables "
        "(credentials stay in Secrets, never in the exported files)",
    )
    gpu_resource: str = Field(
        default="nvidia.com/gpu", description="extended resource an executor's `gpus` asks for"
    )
    auth_secret: str = Field(
        default="plait-auth",
        description="Secret holding the gateway's bearer tokens under the key `tokens` (one per line), "
        "created by you (`kubectl create secret generic plait-auth --from-file=tokens=FILE`): mounted "
        "at the Flow's `auth_token_file`, or read into its `auth_token_env` variable",
    )
    tls_secret: str = Field(
        default="plait-tls",
        description="Secret holding the gateway's certificate and key under the keys `tls.crt` and "
        "`tls.key` (a kubernetes.io/tls Secret: `kubectl create secret tls plait-tls --cert=FILE "
        "--key=FILE`), mounted read-only in the gateway's pod where its config names "
        "`ssl_certfile`/`ssl_keyfile` (/etc/plait-tls/gateway); used when the Flow has TLS",
    )
    internal_tls_secret: str = Field(
        default="plait-internal-tls",
        description="Secret holding the mutual-TLS CA, certificate and key under the keys `ca.crt`, "
        "`tls.crt` and `tls.key` (`kubectl create secret generic plait-internal-tls "
        "--from-file=ca.crt=FILE --from-file=tls.crt=FILE --from-file=tls.key=FILE`), mounted "
        "read-only in every pod where the configs' `internal_tls` names them "
        "(/etc/plait-tls/internal); used when the Flow has `internal_tls`",
    )


class ComposeOptions(ExportOptions):
    """Settings of the Docker Compose export."""

    project_name: str | None = Field(default=None, description="Compose project name; None: the Flow's name")
    network_name: str = Field(default="plait", description="the bridge network every service joins")
    env_files: tuple[str, ...] = Field(
        default=(),
        description="files of KEY=VALUE lines every service reads (for credentials, which stay out "
        "of the exported file)",
    )
