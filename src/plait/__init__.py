"""plait: build multimodal AI services and pipelines.

Write Executors whose endpoints process typed Documents, serve them as Deployments, and call them
with a Client.
"""

from plait._version import __version__
from plait.client import AsyncClient, Client
from plait.docs import AnyDoc, DocList, Document
from plait.executor import Executor, requests
from plait.orchestrate import Deployment

__all__ = [
    "AnyDoc",
    "AsyncClient",
    "Client",
    "Deployment",
    "DocList",
    "Document",
    "Executor",
    "__version__",
    "requests",
]
