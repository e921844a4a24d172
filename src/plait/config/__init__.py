"""Frozen, typed configuration: built once at the edge (kwargs, YAML, CLI), never mutated."""

from plait.config.models import (
    DEFAULT_MAX_MESSAGE_SIZE,
    DeploymentConfig,
    ExecutorConfig,
    FrozenModel,
    ReplicaConfig,
    RuntimeArgs,
)
from plait.config.yaml import dump_yaml, expand_env, load_executor_yaml, load_yaml

__all__ = [
    "DEFAULT_MAX_MESSAGE_SIZE",
    "DeploymentConfig",
    "ExecutorConfig",
    "FrozenModel",
    "ReplicaConfig",
    "RuntimeArgs",
    "dump_yaml",
    "expand_env",
    "load_executor_yaml",
    "load_yaml",
]
