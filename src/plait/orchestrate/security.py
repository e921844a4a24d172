"""What a local Flow or Deployment needs to talk to the processes it secured.

The orchestrator is a client of its own gateway (``flow.post``, readiness probes) and of its
executors (their probes): it trusts the gateway's certificate (``ssl_ca_file``, or the certificate
itself when self-signed), presents the first configured token, and under mutual TLS probes the
executors with the Flow's own certificate.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from plait.config import FlowConfig, MutualTLS, ServerOptions
from plait.config.secrets import read_tokens
from plait.errors import ConfigError
from plait.security.auth import AuthCheck, auth_reference
from plait.security.client import ClientSecurity

SECURITY_OPTIONS = (
    "ssl_certfile",
    "ssl_keyfile",
    "auth_token_file",
    "auth_token_env",
    "auth",
    "max_docs_per_request",
    "max_connections",
    "max_header_bytes",
    "header_timeout",
    "idle_timeout",
    "request_timeout",
)
"""The ServerOptions a Flow (and a Deployment with a gateway) takes as keyword arguments."""


def security_options(*, auth: AuthCheck | str | None = None, **options: Any) -> dict[str, Any]:
    """ServerOptions fields from keyword arguments: an auth function becomes its import name."""
    unknown = set(options) - set(SECURITY_OPTIONS)
    if unknown:
        raise ConfigError(f"unknown security option(s) {sorted(unknown)}")
    out = dict(options)
    if auth is not None:
        out["auth"] = auth_reference(auth)
    return out


def mutual_tls(value: MutualTLS | Mapping[str, Any] | None) -> MutualTLS | None:
    """``internal_tls=`` as given (a MutualTLS, a mapping from YAML, or None)."""
    if value is None or isinstance(value, MutualTLS):
        return value
    try:
        return MutualTLS(**value)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"internal_tls: {e}") from None


def gateway_client_security(options: ServerOptions, ca_file: str | None) -> ClientSecurity:
    """How the orchestrator reaches its gateway: TLS trusting ``ca_file`` (default: the gateway's
    certificate, when self-signed), with the first configured token."""
    tokens: tuple[str, ...] = ()
    if options.auth_token_file or options.auth_token_env:
        tokens = read_tokens(options.auth_token_file, options.auth_token_env)
    if not options.tls:
        return ClientSecurity(token=tokens[0] if tokens else None)
    return ClientSecurity(
        tls=True, ca_file=ca_file or options.ssl_certfile, token=tokens[0] if tokens else None
    )


def flow_client_kwargs(config: FlowConfig) -> dict[str, Any]:
    """Client keyword arguments for a Flow's own client of its gateway."""
    security = gateway_client_security(config.options, config.ssl_ca_file)
    return client_kwargs(security)


def client_kwargs(security: ClientSecurity) -> dict[str, Any]:
    return {
        "tls": security.tls,
        "ca_file": security.ca_file,
        "certfile": security.certfile,
        "keyfile": security.keyfile,
        "server_name": security.server_name,
        "token": security.token,
    }


def executor_probe_security(mtls: MutualTLS | None) -> ClientSecurity | None:
    """How the orchestrator reaches executors under mutual TLS (None: in the clear)."""
    if mtls is None:
        return None
    return ClientSecurity(
        tls=True,
        ca_file=mtls.ca_file,
        certfile=mtls.certfile,
        keyfile=mtls.keyfile,
        server_name=mtls.server_name,
    )
