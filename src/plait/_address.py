"""``host:port`` addresses as plait writes them (an IPv6 host in brackets: ``[::1]:8080``)."""

from __future__ import annotations


def host_and_port(address: str) -> tuple[str, int]:
    """``("::1", 8080)`` for ``"[::1]:8080"``; ValueError when the port is not a number."""
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)
