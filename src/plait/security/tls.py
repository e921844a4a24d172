"""TLS material: certificates read from the paths a config names, as gRPC credentials and SSL contexts.

Files are read when a server or channel is built, so an unreadable one fails start-up with an
error naming it (and never later, mid-request). The server side of HTTP and WebSocket hands the
paths to uvicorn; gRPC gets credentials built here. Mutual TLS (:class:`~plait.config.MutualTLS`)
is one CA, one certificate and one key per process, used both ways: executors require callers to
present a certificate the CA signed, and the gateway checks the executors' against the same CA.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

import grpc

from plait.config import MutualTLS
from plait.errors import ConfigError


def read_pem(path: str, what: str) -> bytes:
    """The bytes of a PEM file; ConfigError naming ``what`` and the path when it cannot be read."""
    try:
        data = Path(path).expanduser().read_bytes()
    except OSError as e:
        raise ConfigError(f"{what} {path!r} cannot be read: {e.strerror}") from None
    if b"-----BEGIN" not in data:
        raise ConfigError(f"{what} {path!r} is not a PEM file (no '-----BEGIN' line)")
    return data


def grpc_server_credentials(
    certfile: str, keyfile: str, client_ca_file: str | None = None
) -> grpc.ServerCredentials:
    """Server credentials; with ``client_ca_file``, callers must present a certificate it signed."""
    pair = (read_pem(keyfile, "TLS key file"), read_pem(certfile, "TLS certificate file"))
    roots = read_pem(client_ca_file, "TLS CA file") if client_ca_file else None
    return grpc.ssl_server_credentials([pair], root_certificates=roots, require_client_auth=roots is not None)


def grpc_channel_credentials(
    ca_file: str | None = None, certfile: str | None = None, keyfile: str | None = None
) -> grpc.ChannelCredentials:
    """Channel credentials trusting ``ca_file`` (None: gRPC's bundled roots), presenting
    ``certfile``/``keyfile`` when given (mutual TLS)."""
    roots = read_pem(ca_file, "TLS CA file") if ca_file else None
    key = read_pem(keyfile, "TLS key file") if keyfile else None
    chain = read_pem(certfile, "TLS certificate file") if certfile else None
    return grpc.ssl_channel_credentials(root_certificates=roots, private_key=key, certificate_chain=chain)


def client_ssl_context(
    ca_file: str | None = None, certfile: str | None = None, keyfile: str | None = None
) -> ssl.SSLContext:
    """A client SSL context (TLS 1.2+, hostname checked) trusting ``ca_file`` or the system's CAs."""
    if ca_file:
        read_pem(ca_file, "TLS CA file")  # a clear error before ssl's terse one
    context = ssl.create_default_context(cafile=ca_file)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if certfile:
        read_pem(certfile, "TLS certificate file")
        try:
            context.load_cert_chain(certfile, keyfile)
        except ssl.SSLError as e:
            raise ConfigError(f"TLS certificate {certfile!r} and key {keyfile!r} do not load: {e}") from None
    return context


def check_server_files(certfile: str, keyfile: str) -> None:
    """Read a server's certificate and key now, so a wrong path fails start-up with its name."""
    read_pem(certfile, "ssl_certfile")
    read_pem(keyfile, "ssl_keyfile")


def internal_server_credentials(mtls: MutualTLS) -> grpc.ServerCredentials:
    """An executor's credentials under mutual TLS: only callers whose certificate the CA signed."""
    return grpc_server_credentials(mtls.certfile, mtls.keyfile, client_ca_file=mtls.ca_file)


def internal_channel_credentials(mtls: MutualTLS) -> grpc.ChannelCredentials:
    """The gateway's (or a probe's) credentials towards executors under mutual TLS."""
    return grpc_channel_credentials(mtls.ca_file, mtls.certfile, mtls.keyfile)


def internal_channel_kwargs(mtls: MutualTLS | None) -> dict[str, Any]:
    """Keyword arguments of :func:`plait.wire.channels.open_channel` for a gateway's channels to its
    executors: credentials and the name to check under mutual TLS, nothing without it."""
    if mtls is None:
        return {}
    return {"credentials": internal_channel_credentials(mtls), "server_name": mtls.server_name}
