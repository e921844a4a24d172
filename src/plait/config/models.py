"""Configuration models.

Every process plait starts (locally, in Docker Compose, on Kubernetes) is started by the same CLI
entry point from a serialized :class:`ReplicaConfig`, so these models are the contract between the
orchestrator and the processes it runs. They are frozen: a changed value is a new object
(``cfg.model_copy(update=...)``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

DEFAULT_MAX_MESSAGE_SIZE = 64 * 1024 * 1024
DEFAULT_MAX_CONCURRENT = 64
"""Requests an executor replica runs at once by default (``max_concurrent``)."""
DEFAULT_MAX_QUEUE = 256
"""Requests that may wait for a slot by default (``max_queue``); more are refused (429)."""
"""Largest gRPC message a server accepts by default (64 MiB); ``max_message_size`` changes it."""

_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")


class FrozenModel(BaseModel):
    """Base for config: immutable, unknown keys rejected so typos are caught at the edge."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class Observability(FrozenModel):
    """Metrics and tracing of one process (Jina's names: ``monitoring``, ``port_monitoring``, ...)."""

    monitoring: bool = Field(default=False, description="serve Prometheus metrics on `port_monitoring`")
    port_monitoring: int | None = Field(
        default=None, ge=0, le=65535, description="the /metrics port; a free one when None"
    )
    tracing: bool = Field(default=False, description="send OpenTelemetry spans to the OTLP/gRPC exporter")
    traces_exporter_host: str | None = Field(default=None, description="OTLP/gRPC receiver host")
    traces_exporter_port: int | None = Field(default=None, ge=0, le=65535, description="its port")

    @property
    def enabled(self) -> bool:
        return self.monitoring or self.tracing


OBSERVABILITY_KEYS = tuple(Observability.model_fields)
"""The keyword arguments Flow, Flow.add and Deployment take for metrics and tracing."""


class ExecutorConfig(FrozenModel):
    """What to load: which Executor class, with which constructor arguments."""

    uses: str = Field(
        description="'package.module:Class', a class name found in py_modules, or an Executor YAML path"
    )
    uses_with: dict[str, Any] = Field(default_factory=dict, description="constructor keyword arguments")
    uses_metas: dict[str, Any] = Field(
        default_factory=dict, description="metas overrides (name, description)"
    )
    py_modules: tuple[str, ...] = Field(
        default=(), description="Python files or modules imported before `uses`"
    )
    name: str = "executor"
    workspace: str | None = None
    allow_concurrent: bool = Field(
        default=False,
        description="run sync endpoints concurrently in a thread pool (default: one at a time, in order)",
    )
    exit_on_exceptions: tuple[str, ...] = Field(
        default=(),
        description="exception class names ('RuntimeError', 'mymodule.FatalError'; subclasses match too): "
        "when an endpoint raises one, the request gets its ExecutorError and the process exits (code 1) "
        "to be restarted",
    )
    uses_dynamic_batching: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="per endpoint ('/embed') or method name: {'preferred_batch_size': 32, "
        "'timeout': 2 (ms)}; overrides @dynamic_batching",
    )

    @field_validator("name")
    @classmethod
    def _check_name(cls, v: str) -> str:
        if not _NAME_RE.match(v):
            raise ValueError(
                f"executor name {v!r} must start with a letter or '_' and hold only [A-Za-z0-9_-]"
            )
        return v


class RuntimeArgs(FrozenModel):
    """Read-only facts about the running replica, available as ``executor.runtime_args``."""

    name: str = "executor"
    replicas: int = 1
    shards: int = 1
    replica_id: int = 0
    shard_id: int = 0
    workspace: str | None = None
    py_modules: tuple[str, ...] = ()


class ReplicaConfig(FrozenModel):
    """Everything one executor process needs: the serialized form passed to ``plait executor --config``."""

    executor: ExecutorConfig
    host: str = "127.0.0.1"
    port: int = Field(ge=0, le=65535)
    extra_ports: tuple[int, ...] = Field(
        default=(), description="more ports on `host`; used so replicas can share a public port"
    )
    public_host: str | None = Field(default=None, description="host for the shared public port, if any")
    public_port: int | None = Field(default=None, description="port shared by every replica (SO_REUSEPORT)")
    replicas: int = Field(default=1, ge=1)
    shards: int = Field(default=1, ge=1)
    replica_id: int = Field(default=0, ge=0)
    shard_id: int = Field(default=0, ge=0)
    max_message_size: int = Field(default=DEFAULT_MAX_MESSAGE_SIZE, gt=0)
    grace_period: float = Field(default=10.0, ge=0, description="seconds in-flight requests get on SIGTERM")
    parent_pid: int | None = Field(default=None, description="exit when this process goes away")
    max_concurrent: int | None = Field(
        default=DEFAULT_MAX_CONCURRENT, ge=1, description="requests run at once; None: no limit"
    )
    max_queue: int = Field(
        default=DEFAULT_MAX_QUEUE, ge=0, description="requests waiting for a slot, then refused"
    )
    observe: Observability = Field(default_factory=Observability)

    def runtime_args(self) -> RuntimeArgs:
        return RuntimeArgs(
            name=self.executor.name,
            replicas=self.replicas,
            shards=self.shards,
            replica_id=self.replica_id,
            shard_id=self.shard_id,
            workspace=self.executor.workspace,
            py_modules=self.executor.py_modules,
        )


PROTOCOLS = ("grpc", "http", "websocket")
POLLING = ("ANY", "ALL")


def _normalize_polling(value: str | Mapping[str, str]) -> dict[str, str]:
    """``'ANY'`` or ``{'/index': 'ANY', '/search': 'ALL'}`` → a mapping with a ``'*'`` default."""
    table = {"*": value} if isinstance(value, str) else dict(value)
    table.setdefault("*", "ANY")
    out = {}
    for endpoint, mode in table.items():
        if not isinstance(mode, str) or mode.upper() not in POLLING:
            raise ValueError(f"polling for {endpoint!r} must be ANY or ALL, got {mode!r}")
        out[endpoint] = mode.upper()
    return out


def _validate_protocols(v: tuple[str, ...]) -> tuple[str, ...]:
    out = tuple(p.lower() for p in v)
    for p in out:
        if p not in PROTOCOLS:
            raise ValueError(f"protocol {p!r}: choose from {', '.join(PROTOCOLS)}")
    if len(set(out)) != len(out):
        raise ValueError(f"protocols {v} repeat a protocol")
    return out


class DeploymentConfig(FrozenModel):
    """One Executor served as ``replicas`` identical processes."""

    executor: ExecutorConfig
    host: str = Field(default="0.0.0.0", description="interface the public port binds")
    port: int | None = Field(default=None, ge=0, le=65535, description="public port; a free one when None")
    protocol: tuple[str, ...] = Field(
        default=("grpc",), description="gRPC alone is served by the replicas; anything else by a gateway"
    )
    replicas: int = Field(default=1, ge=1)
    shards: int = Field(default=1, ge=1)
    polling: dict[str, str] = Field(default_factory=lambda: {"*": "ANY"})
    timeout_ready: float = Field(default=60.0, description="seconds to wait for readiness; <0 waits forever")
    max_message_size: int = Field(default=DEFAULT_MAX_MESSAGE_SIZE, gt=0)
    grace_period: float = Field(default=10.0, ge=0)
    env: dict[str, str] = Field(
        default_factory=dict, description="extra environment for the executor processes"
    )
    max_concurrent: int | None = Field(default=DEFAULT_MAX_CONCURRENT, ge=1)
    max_queue: int = Field(default=DEFAULT_MAX_QUEUE, ge=0)
    observe: Observability = Field(default_factory=Observability)

    @field_validator("protocol", mode="before")
    @classmethod
    def _check_protocol(cls, v: Any) -> tuple[str, ...]:
        return _validate_protocols((v,) if isinstance(v, str) else tuple(v))

    @field_validator("polling", mode="before")
    @classmethod
    def _check_polling(cls, v: Any) -> dict[str, str]:
        return _normalize_polling(v)

    @property
    def needs_gateway(self) -> bool:
        """Shards (scatter/reduce) and HTTP/WebSocket are served through a gateway in front."""
        return self.shards > 1 or self.protocol != ("grpc",)


DEFAULT_MAX_REQUEST_BYTES = 64 * 1024 * 1024


class ServerOptions(FrozenModel):
    """Options every protocol server of a gateway shares (HTTP-only ones are ignored by gRPC)."""

    title: str = "plait service"
    description: str = "A plait Flow: typed documents in, typed documents out."
    cors: bool = Field(default=False, description="allow cross-origin browser requests (HTTP, WebSocket)")
    max_request_bytes: int = Field(
        default=DEFAULT_MAX_REQUEST_BYTES, gt=0, description="largest request body"
    )
    max_in_flight: int = Field(default=64, ge=1, description="requests one WebSocket connection runs at once")
    max_concurrent: int | None = Field(default=1024, ge=1, description="requests the gateway runs at once")
    max_queue: int = Field(default=4096, ge=0, description="requests waiting at the gateway, then refused")
    grace_period: float = Field(default=10.0, ge=0)


class FlowExecutorConfig(FrozenModel):
    """One executor node of a Flow: what to run, how many copies, and where it sits in the DAG."""

    executor: ExecutorConfig
    replicas: int = Field(default=1, ge=1)
    shards: int = Field(default=1, ge=1)
    polling: dict[str, str] = Field(
        default_factory=lambda: {"*": "ANY"},
        description="per endpoint: ANY sends a request to one shard, ALL to every shard (then merges)",
    )
    needs: tuple[str, ...] = Field(default=(), description="upstream node names; 'gateway' is the start")
    when: dict[str, Any] | None = Field(
        default=None, description="only documents matching this condition reach it"
    )
    env: dict[str, str] = Field(default_factory=dict)
    timeout_send: float | None = Field(default=None, gt=0, description="seconds the gateway waits for it")
    max_concurrent: int | None = Field(default=DEFAULT_MAX_CONCURRENT, ge=1)
    max_queue: int = Field(default=DEFAULT_MAX_QUEUE, ge=0)
    observe: dict[str, Any] = Field(
        default_factory=dict,
        description="this executor's own Observability settings; the rest come from the Flow",
    )

    @field_validator("observe")
    @classmethod
    def _check_observe(cls, v: dict[str, Any]) -> dict[str, Any]:
        Observability(**v)  # unknown keys and bad values are caught here
        return v

    @property
    def name(self) -> str:
        return self.executor.name

    @field_validator("polling", mode="before")
    @classmethod
    def _check_polling(cls, v: Any) -> dict[str, str]:
        return _normalize_polling(v)


class GatewayExecutor(FrozenModel):
    """What the gateway knows of one executor node: where its shards are and how to route to it."""

    name: str
    shards: tuple[tuple[str, ...], ...] = Field(description="per shard, the 'host:port' of each replica")
    polling: dict[str, str] = Field(default_factory=lambda: {"*": "ANY"})
    needs: tuple[str, ...] = ("gateway",)
    when: dict[str, Any] | None = None
    timeout_send: float | None = None
    retries: int = Field(default=3, ge=0, description="resends of a call that failed over to another replica")


class GatewayConfig(FrozenModel):
    """Everything a gateway process needs: the serialized form passed to ``plait gateway --config``."""

    name: str = "gateway"
    host: str = "0.0.0.0"
    protocols: tuple[str, ...] = ("grpc",)
    ports: tuple[int, ...]
    options: ServerOptions = Field(default_factory=ServerOptions)
    executors: tuple[GatewayExecutor, ...]
    timeout_ready: float = Field(default=60.0, description="seconds to wait for every executor to answer")
    parent_pid: int | None = None
    observe: Observability = Field(default_factory=Observability)

    @field_validator("protocols")
    @classmethod
    def _check_protocols(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        return _validate_protocols(v)


class FlowConfig(FrozenModel):
    """A whole Flow: gateway settings and the executor nodes, in the order they were added."""

    name: str = "flow"
    host: str = "0.0.0.0"
    protocols: tuple[str, ...] = ("grpc",)
    ports: tuple[int | None, ...] = (None,)
    options: ServerOptions = Field(default_factory=ServerOptions)
    executors: tuple[FlowExecutorConfig, ...] = ()
    timeout_ready: float = 60.0
    env: dict[str, str] = Field(default_factory=dict, description="environment for every process of the Flow")
    observe: Observability = Field(
        default_factory=Observability,
        description="the gateway's; executors inherit monitoring and tracing (each gets its own port)",
    )

    @field_validator("protocols")
    @classmethod
    def _check_protocols(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        return _validate_protocols(v)
