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

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

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


class MutualTLS(FrozenModel):
    """Mutual TLS between a gateway and its executors (see ``docs/security.md``).

    Every process presents ``certfile`` and accepts only peers whose certificate ``ca_file``
    signed: executors refuse callers without one, the gateway refuses executors without one.
    The config holds paths; each process reads the files itself (a mounted Secret, in exports).
    """

    ca_file: str = Field(description="PEM CA certificate(s); a peer's certificate must be signed by one")
    certfile: str = Field(description="PEM certificate (chain) this process presents")
    keyfile: str = Field(description="PEM private key of certfile")
    server_name: str | None = Field(
        default=None,
        description="name the gateway checks in executors' certificates; None: the host it dials",
    )


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
    internal_tls: MutualTLS | None = Field(
        default=None, description="serve with mutual TLS: only callers whose certificate its CA signed"
    )
    max_connection_age: float | None = Field(
        default=None,
        gt=0,
        description="seconds after which the server asks a client to reconnect (HTTP/2 GOAWAY), so "
        "callers balancing over DNS pick up new replicas; None: connections live on (set by exports)",
    )
    max_connection_age_grace: float | None = Field(
        default=None,
        gt=0,
        description="seconds calls already running on an aged connection may still take; None: no limit",
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
    gateway_options: ServerOptions | None = Field(
        default=None, description="options of the gateway in front, if any (TLS, auth, limits)"
    )
    internal_tls: MutualTLS | None = Field(default=None, description="mutual TLS to and between replicas")
    ssl_ca_file: str | None = Field(
        default=None, description="CA that signed gateway_options.ssl_certfile, trusted by `post`"
    )
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
        """Shards (scatter/reduce), HTTP/WebSocket, TLS and auth are served through a gateway in front."""
        secured = self.gateway_options is not None and (
            self.gateway_options.tls or self.gateway_options.authenticates
        )
        return self.shards > 1 or self.protocol != ("grpc",) or secured


DEFAULT_MAX_REQUEST_BYTES = 64 * 1024 * 1024
DEFAULT_MAX_DOCS = 10_000
"""Documents one request may carry at a gateway by default (``max_docs_per_request``)."""
_ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class ServerOptions(FrozenModel):
    """Options every protocol server of a gateway shares (HTTP-only ones are ignored by gRPC)."""

    # A token pasted where a file or variable name belongs must not be echoed by the error.
    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)

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
    # Security (docs/security.md): TLS, authentication and limits on every protocol.
    ssl_certfile: str | None = Field(
        default=None, description="PEM certificate (chain) the gateway presents: TLS on every protocol"
    )
    ssl_keyfile: str | None = Field(default=None, description="PEM private key of ssl_certfile")
    auth_token_file: str | None = Field(
        default=None,
        description="file holding the accepted bearer tokens, one per line; the config names the file, "
        "never a token",
    )
    auth_token_env: str | None = Field(
        default=None,
        description="name of the environment variable holding the accepted bearer token(s), one per "
        "line or comma-separated",
    )
    auth: str | None = Field(
        default=None,
        description="custom check, 'module:function' or 'path/file.py:function': called with an "
        "AuthRequest, returns True to let the request in",
    )
    max_docs_per_request: int | None = Field(
        default=DEFAULT_MAX_DOCS, ge=1, description="documents one request may carry; None: no limit"
    )
    max_connections: int | None = Field(
        default=1024, ge=1, description="connections each protocol's port keeps open at once; None: no limit"
    )
    max_header_bytes: int = Field(
        default=16 * 1024, ge=1024, description="request line + headers (HTTP, WebSocket) or metadata (gRPC)"
    )
    header_timeout: float = Field(
        default=10.0, gt=0, description="seconds a connection gets for its TLS handshake and request headers"
    )
    idle_timeout: float = Field(
        default=120.0, gt=0, description="seconds a connection with nothing in flight stays open"
    )
    request_timeout: float | None = Field(
        default=600.0,
        gt=0,
        description="seconds one request (a whole stream) may take; caps the client's timeout; None: "
        "no limit",
    )
    max_connection_age: float | None = Field(
        default=None,
        gt=0,
        description="gRPC: seconds after which a client is asked to reconnect (spreads clients over "
        "gateway replicas); None: connections live on",
    )
    max_connection_age_grace: float | None = Field(
        default=None, gt=0, description="gRPC: seconds running calls may take on an aged connection"
    )

    @field_validator("auth_token_env")
    @classmethod
    def _check_env_name(cls, v: str | None) -> str | None:
        if v is not None and not _ENV_NAME_RE.match(v):
            raise ValueError(
                f"auth_token_env names an environment variable (like PLAIT_TOKENS); {len(v)} characters "
                "that are not a variable name were given (never put a token itself in the config)"
            )
        return v

    @field_validator("auth")
    @classmethod
    def _check_auth(cls, v: str | None) -> str | None:
        if v is not None and not v.rpartition(":")[0]:
            raise ValueError(f"auth={v!r}: write 'package.module:function' or 'path/file.py:function'")
        return v

    @model_validator(mode="after")
    def _check_tls_pair(self) -> ServerOptions:
        if (self.ssl_certfile is None) != (self.ssl_keyfile is None):
            raise ValueError("TLS needs both ssl_certfile and ssl_keyfile")
        return self

    @property
    def tls(self) -> bool:
        """True when the gateway serves TLS."""
        return self.ssl_certfile is not None

    @property
    def authenticates(self) -> bool:
        """True when requests must authenticate (tokens or a custom check)."""
        return bool(self.auth_token_file or self.auth_token_env or self.auth)


QUANTITY_RE = re.compile(r"^\+?(\d+\.?\d*|\.\d+)(Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E|[eE][+-]?\d+)?$")
"""A Kubernetes resource quantity: a number, then a binary (Ki, Mi, Gi...) or decimal (m, k, M, G...)
suffix or an exponent."""


def _quantities(value: Any) -> dict[str, str]:
    if not isinstance(value, Mapping):
        raise ValueError(f"expected a mapping such as {{'cpu': '500m', 'memory': '1Gi'}}, got {value!r}")
    out = {}
    for name, quantity in value.items():
        text = str(quantity)
        if isinstance(quantity, bool) or not QUANTITY_RE.match(text):
            raise ValueError(f"{name}: {quantity!r} is not a quantity ('500m', '2', '1.5', '512Mi', '1Gi')")
        out[str(name)] = text
    return out


class Resources(FrozenModel):
    """Compute resources of one exported container, in Kubernetes quantities.

    Used by the Kubernetes and Docker Compose exports (``cpu`` and ``memory`` become Compose's
    ``cpus`` and ``memory``); a local run ignores them.
    """

    requests: dict[str, str] = Field(
        default_factory=dict, description="reserved for the container: {'cpu': '500m', 'memory': '1Gi'}"
    )
    limits: dict[str, str] = Field(default_factory=dict, description="the most the container may use")

    @field_validator("requests", "limits", mode="before")
    @classmethod
    def _check_quantities(cls, v: Any) -> dict[str, str]:
        return _quantities(v)


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
    image: str | None = Field(
        default=None,
        description="container image that serves it in exports (Kubernetes, Compose); None: the "
        "export's default image",
    )
    gpus: int = Field(
        default=0,
        ge=0,
        description="GPUs per replica in exports (a `nvidia.com/gpu` limit on Kubernetes, a device "
        "reservation in Compose); locally, env CUDA_VISIBLE_DEVICES='RR' places processes on GPUs",
    )
    resources: Resources = Field(
        default_factory=Resources, description="CPU and memory requests and limits per replica in exports"
    )
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
    shards: tuple[tuple[str, ...], ...] = Field(
        description="per shard, the 'host:port' of each replica, or one 'dns:///name:port' whose name "
        "resolves to every replica (a Kubernetes headless Service)"
    )
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
    internal_tls: MutualTLS | None = Field(default=None, description="dial the executors with mutual TLS")
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
    internal_tls: MutualTLS | None = Field(
        default=None, description="mutual TLS between the gateway and the executors"
    )
    ssl_ca_file: str | None = Field(
        default=None,
        description="CA that signed options.ssl_certfile, trusted by the Flow's own client and readiness "
        "probes; None: the certificate itself (self-signed)",
    )
    observe: Observability = Field(
        default_factory=Observability,
        description="the gateway's; executors inherit monitoring and tracing (each gets its own port)",
    )

    @field_validator("protocols")
    @classmethod
    def _check_protocols(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        return _validate_protocols(v)

    def executor_observe(self, node: FlowExecutorConfig) -> Observability:
        """An executor's metrics and tracing: the Flow's, overridden by its own; the metrics port
        is never inherited (the Flow's is the gateway's)."""
        return self.observe.model_copy(update={"port_monitoring": None, **node.observe})

    def replica_config(
        self, node: FlowExecutorConfig, *, shard_id: int, replica_id: int, **placement: Any
    ) -> ReplicaConfig:
        """The config of one of ``node``'s processes. ``placement`` (``port``, ``host``,
        ``parent_pid``...) is what differs between a local run and an export; the rest is the
        Flow's, so every way of running a Flow starts its processes with the same settings."""
        settings: dict[str, Any] = {
            "executor": node.executor,
            "replicas": node.replicas,
            "shards": node.shards,
            "replica_id": replica_id,
            "shard_id": shard_id,
            "max_message_size": self.options.max_request_bytes,
            "grace_period": self.options.grace_period,
            "max_concurrent": node.max_concurrent,
            "max_queue": node.max_queue,
            "internal_tls": self.internal_tls,
        }
        return ReplicaConfig(**{**settings, **placement})

    def gateway_config(self, executors: tuple[GatewayExecutor, ...], **placement: Any) -> GatewayConfig:
        """The gateway's config, routing to ``executors``; ``placement`` needs ``ports`` and may set
        ``host``, ``options``, ``parent_pid``."""
        settings: dict[str, Any] = {
            "name": "gateway",
            "host": self.host,
            "protocols": self.protocols,
            "options": self.options,
            "executors": executors,
            "timeout_ready": self.timeout_ready,
            "internal_tls": self.internal_tls,
            "observe": self.observe,
        }
        return GatewayConfig(**{**settings, **placement})
