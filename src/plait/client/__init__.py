"""Clients: ``Client`` (blocking) and ``AsyncClient`` over one ``Transport`` interface."""

from plait.client.async_client import AsyncClient, Response
from plait.client.sync_client import Client
from plait.client.transport import Call, EndpointDescription, Reply, ServiceDescription, Transport

__all__ = [
    "AsyncClient",
    "Call",
    "Client",
    "EndpointDescription",
    "Reply",
    "Response",
    "ServiceDescription",
    "Transport",
]
