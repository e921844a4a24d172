"""plait: build multimodal AI services and pipelines.

Write Executors whose endpoints process typed Documents, serve them as Deployments or chain them
into Flows, and call them with a Client.

The names below are imported on first use, so a process that needs only part of plait (an
executor replica, the CLI) does not pay for the rest at start-up.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from plait._lazy import lazy_getattr
from plait._version import __version__

if TYPE_CHECKING:
    from plait.client import AsyncClient, Client
    from plait.docs import AnyDoc, DocList, Document
    from plait.executor import Executor, dynamic_batching, requests
    from plait.orchestrate import Deployment, Flow

_EXPORTS = {
    "AnyDoc": "plait.docs",
    "AsyncClient": "plait.client",
    "Client": "plait.client",
    "DocList": "plait.docs",
    "Deployment": "plait.orchestrate",
    "Document": "plait.docs",
    "Executor": "plait.executor",
    "Flow": "plait.orchestrate",
    "dynamic_batching": "plait.executor",
    "requests": "plait.executor",
}

__all__ = [
    "AnyDoc",
    "AsyncClient",
    "Client",
    "Deployment",
    "DocList",
    "Document",
    "Executor",
    "Flow",
    "__version__",
    "dynamic_batching",
    "requests",
]


__getattr__ = lazy_getattr(__name__, globals(), _EXPORTS)


def __dir__() -> list[str]:
    return sorted(__all__)
