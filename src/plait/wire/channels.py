"""gRPC channels to one or several replicas, shared by clients and the gateway.

Several addresses become one channel with the ``round_robin`` policy, so each call goes to the
next ready replica and a dead replica is skipped until it comes back. So does one ``dns:///name:port``
address: every address the name resolves to is a replica. That is how a gateway reaches the pods
behind a Kubernetes headless Service (or a Compose network alias) without a service mesh: gRPC
re-resolves the name when a connection closes, and servers close connections after
``max_connection_age``, so new pods get traffic.
"""

from __future__ import annotations

import ipaddress
import json
import socket
from collections.abc import Sequence
from typing import Any

import grpc


def _ip_of(host: str) -> str:
    try:
        ipaddress.ip_address(host)
        return host
    except ValueError:
        return str(socket.getaddrinfo(host, None, socket.AF_INET)[0][4][0])


_BALANCED = json.dumps(
    # Health checks take a replica out of rotation as soon as it reports NOT_SERVING (draining,
    # say) and bring it back when it serves again.
    {"loadBalancingConfig": [{"round_robin": {}}], "healthCheckConfig": {"serviceName": ""}}
)
DNS_RERESOLVE_MS = 5_000
"""Least time between two DNS look-ups of a ``dns:`` target (gRPC's default is 30 s): a replaced
pod's successor is found within seconds."""


def channel_target(addresses: Sequence[str]) -> tuple[str, list[tuple[str, Any]]]:
    """The gRPC target string (and extra options) for one or several ``host:port`` addresses, or
    one ``dns:///name:port`` address whose name resolves to several replicas."""
    if len(addresses) == 1 and addresses[0].startswith("dns:"):
        options: list[tuple[str, Any]] = [
            ("grpc.service_config", _BALANCED),
            ("grpc.dns_min_time_between_resolutions_ms", DNS_RERESOLVE_MS),
        ]
        return addresses[0], options
    if len(addresses) == 1:
        return addresses[0], []
    if any(a.startswith("dns:") for a in addresses):
        raise ValueError(f"a 'dns:' address stands alone (its name resolves to the replicas): {addresses}")
    resolved = []
    for address in addresses:
        host, _, port = address.rpartition(":")
        resolved.append(f"{_ip_of(host.strip('[]'))}:{port}")
    return "ipv4:" + ",".join(resolved), [("grpc.service_config", _BALANCED)]


def open_channel(
    addresses: Sequence[str],
    max_message_size: int | None = None,
    *,
    credentials: grpc.ChannelCredentials | None = None,
    server_name: str | None = None,
) -> grpc.aio.Channel:
    """A ``grpc.aio`` channel to ``addresses`` (balanced per call when there are several); over
    TLS with ``credentials``, checking ``server_name`` in the certificates (default: the host)."""
    target, options = channel_target(addresses)
    limit = max_message_size or -1
    options += [
        ("grpc.max_receive_message_length", limit),
        ("grpc.max_send_message_length", limit),
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.enable_retries", 0),
        # gRPC's default reconnect backoff starts at 1 s: a gateway started alongside its executors
        # (or a client of a replica being restarted) would idle that long after a refused attempt.
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.min_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", 1000),
    ]
    if credentials is None:
        return grpc.aio.insecure_channel(target, options=options)
    if server_name is None and len(addresses) > 1:
        # An 'ipv4:a,b' target names no host: check the one the caller wrote.
        server_name = addresses[0].rpartition(":")[0].strip("[]")
    if server_name is not None:
        options.append(("grpc.ssl_target_name_override", server_name))
    return grpc.aio.secure_channel(target, credentials, options=options)
