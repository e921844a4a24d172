"""gRPC channels to one or several replicas, shared by clients and the gateway.

Several addresses become one channel with the ``round_robin`` policy, so each call goes to the
next ready replica and a dead replica is skipped until it comes back.
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


def channel_target(addresses: Sequence[str]) -> tuple[str, list[tuple[str, Any]]]:
    """The gRPC target string (and extra options) for one or several ``host:port`` addresses."""
    if len(addresses) == 1:
        return addresses[0], []
    resolved = []
    for address in addresses:
        host, _, port = address.rpartition(":")
        resolved.append(f"{_ip_of(host.strip('[]'))}:{port}")
    # Health checks take a replica out of rotation as soon as it reports NOT_SERVING (draining,
    # say) and bring it back when it serves again.
    config = json.dumps(
        {"loadBalancingConfig": [{"round_robin": {}}], "healthCheckConfig": {"serviceName": ""}}
    )
    return "ipv4:" + ",".join(resolved), [("grpc.service_config", config)]


def open_channel(addresses: Sequence[str], max_message_size: int | None = None) -> grpc.aio.Channel:
    """A ``grpc.aio`` channel to ``addresses`` (balanced per call when there are several)."""
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
    return grpc.aio.insecure_channel(target, options=options)
