"""What a client brings to a secured server: TLS settings and credentials, for every transport.

:class:`ClientSecurity` is built once from the client's keyword arguments and handed to its
transport, which takes what it needs: gRPC credentials and call metadata, or an SSL context and
HTTP headers (also sent with the WebSocket handshake). The token never appears in its repr.
"""

from __future__ import annotations

import re
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property

import grpc

from plait.errors import ConfigError
from plait.security.tls import client_ssl_context, grpc_channel_credentials

_HEADER_NAME = re.compile(r"^[a-z0-9!#$%&'*+.^_`|~-]+$")
_TOKEN = re.compile(r"^[A-Za-z0-9\-._~+/]+=*$")  # RFC 6750 b64token


@dataclass(frozen=True)
class ClientSecurity:
    """TLS and credentials of a client. ``ClientSecurity()`` is a plain, unauthenticated client."""

    tls: bool = False
    """Connect with TLS (grpcs/https/wss)."""
    ca_file: str | None = None
    """PEM CA certificate(s) to trust instead of the system's (a private CA, a self-signed server)."""
    certfile: str | None = None
    """A client certificate to present (mutual TLS)."""
    keyfile: str | None = None
    server_name: str | None = None
    """Name expected in the server's certificate when it differs from the host dialled (gRPC)."""
    token: str | None = field(default=None, repr=False)
    """Sent as ``authorization: Bearer <token>`` on every call."""
    headers: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    """More headers (HTTP, WebSocket handshake) or metadata (gRPC), for custom auth schemes."""

    def __post_init__(self) -> None:
        if self.token is not None and not _TOKEN.match(self.token):
            raise ConfigError("token: a bearer token is letters, digits and -._~+/ (then '=' padding)")
        for name, value in self.headers:
            if not _HEADER_NAME.match(name) or name.endswith("-bin"):
                raise ConfigError(f"headers: {name!r} is not a lower-case header name")
            if "\r" in value or "\n" in value:
                raise ConfigError(f"headers: the value of {name!r} holds a line break")
        if (self.certfile is None) != (self.keyfile is None):
            raise ConfigError("a client certificate needs both certfile and keyfile")
        if not self.tls and (self.ca_file or self.certfile or self.server_name):
            raise ConfigError("ca_file, certfile and server_name need tls=True")

    @classmethod
    def from_options(
        cls,
        *,
        tls: bool = False,
        ca_file: str | None = None,
        certfile: str | None = None,
        keyfile: str | None = None,
        server_name: str | None = None,
        token: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> ClientSecurity:
        """From the client's keyword arguments; header names are lower-cased."""
        pairs = tuple((str(k).lower(), str(v)) for k, v in (headers or {}).items())
        return cls(tls, ca_file, certfile, keyfile, server_name, token, pairs)

    @property
    def http_scheme(self) -> str:
        return "https" if self.tls else "http"

    @property
    def ws_scheme(self) -> str:
        return "wss" if self.tls else "ws"

    @cached_property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        """gRPC metadata (or HTTP headers) every call carries: the token, then the extra headers."""
        auth = (("authorization", f"Bearer {self.token}"),) if self.token is not None else ()
        return auth + tuple(kv for kv in self.headers if kv[0] != "authorization" or not auth)

    @cached_property
    def http_headers(self) -> dict[str, str]:
        return dict(self.metadata)

    @cached_property
    def ssl_context(self) -> ssl.SSLContext | None:
        """The client SSL context (HTTP, WebSocket); None without TLS. Built once: ~ms each."""
        if not self.tls:
            return None
        return client_ssl_context(self.ca_file, self.certfile, self.keyfile)

    def grpc_credentials(self) -> grpc.ChannelCredentials | None:
        """gRPC channel credentials; None without TLS."""
        if not self.tls:
            return None
        return grpc_channel_credentials(self.ca_file, self.certfile, self.keyfile)


PLAIN = ClientSecurity()
"""No TLS, no credentials."""
