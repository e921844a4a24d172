"""Frozen, typed configuration: built once at the edge (kwargs, YAML, CLI), never mutated."""

from plait.config.models import (
    DEFAULT_MAX_CONCURRENT,
    DEFAULT_MAX_MESSAGE_SIZE,
    DEFAULT_MAX_QUEUE,
    OBSERVABILITY_KEYS,
    PROTOCOLS,
    DeploymentConfig,
    ExecutorConfig,
    FlowConfig,
    FlowExecutorConfig,
    FrozenModel,
    GatewayConfig,
    GatewayExecutor,
    Observability,
    ReplicaConfig,
    RuntimeArgs,
    ServerOptions,
)
from plait.config.yaml import dump_yaml, expand_env, load_executor_yaml, load_yaml

__all__ = [
    "DEFAULT_MAX_CONCURRENT",
    "DEFAULT_MAX_MESSAGE_SIZE",
    "DEFAULT_MAX_QUEUE",
    "OBSERVABILITY_KEYS",
    "PROTOCOLS",
    "DeploymentConfig",
    "ExecutorConfig",
    "FlowConfig",
    "FlowExecutorConfig",
    "FrozenModel",
    "GatewayConfig",
    "GatewayExecutor",
    "Observability",
    "ReplicaConfig",
    "RuntimeArgs",
    "ServerOptions",
    "dump_yaml",
    "expand_env",
    "load_executor_yaml",
    "load_yaml",
]
