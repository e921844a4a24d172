"""Protocol name → Transport class. A new protocol is one module and one entry here."""

from __future__ import annotations

from plait.client.grpc_transport import GrpcTransport
from plait.client.http_transport import HttpTransport
from plait.client.transport import Transport
from plait.client.websocket_transport import WebSocketTransport
from plait.errors import ConfigError

TRANSPORTS: dict[str, type[Transport]] = {
    "grpc": GrpcTransport,
    "http": HttpTransport,
    "websocket": WebSocketTransport,
    "ws": WebSocketTransport,  # the URL scheme: Client('ws://host:port')
}


def transport_for(protocol: str) -> type[Transport]:
    try:
        return TRANSPORTS[protocol]
    except KeyError:
        raise ConfigError(
            f"protocol {protocol!r} is not supported; choose one of {sorted(TRANSPORTS)}"
        ) from None
