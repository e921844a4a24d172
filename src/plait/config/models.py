"""Configuration models.

Every process plait starts (locally, in Docker Compose, on Kubernetes) is started by the same CLI
entry point from a serialized :class:`ReplicaConfig`, so these models are the contract between the
orchestrator and the processes it runs. They are frozen: a changed value is a new object
(``cfg.model_copy(update=...)``).
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

DEFAULT_MAX_MESSAGE_SIZE = 64 * 1024 * 1024
"""Largest gRPC message a server accepts by default (64 MiB); ``max_message_size`` changes it."""

_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")


class FrozenModel(BaseModel):
    """Base for config: immutable, unknown keys rejected so typos are caught at the edge."""

    model_config = ConfigDict(frozen=True, extra="forbid")


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


class DeploymentConfig(FrozenModel):
    """One Executor served as ``replicas`` identical processes."""

    executor: ExecutorConfig
    host: str = Field(default="0.0.0.0", description="interface the public port binds")
    port: int | None = Field(default=None, ge=0, le=65535, description="public port; a free one when None")
    protocol: str = "grpc"
    replicas: int = Field(default=1, ge=1)
    shards: int = Field(default=1, ge=1)
    timeout_ready: float = Field(default=60.0, description="seconds to wait for readiness; <0 waits forever")
    max_message_size: int = Field(default=DEFAULT_MAX_MESSAGE_SIZE, gt=0)
    grace_period: float = Field(default=10.0, ge=0)
    env: dict[str, str] = Field(
        default_factory=dict, description="extra environment for the executor processes"
    )

    @field_validator("protocol")
    @classmethod
    def _check_protocol(cls, v: str) -> str:
        if v.lower() != "grpc":
            raise ValueError(
                f"protocol {v!r}: a Deployment serves gRPC; HTTP and WebSocket are served by a Flow's gateway"
            )
        return v.lower()
