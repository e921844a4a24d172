"""Executors: user classes whose ``@requests`` methods process lists of Documents."""

from plait.executor.base import Executor, Metas
from plait.executor.batching import BatchingConfig, dynamic_batching
from plait.executor.decorators import DEFAULT_ENDPOINT, requests
from plait.executor.endpoints import EndpointSpec

__all__ = [
    "DEFAULT_ENDPOINT",
    "BatchingConfig",
    "EndpointSpec",
    "Executor",
    "Metas",
    "dynamic_batching",
    "requests",
]
