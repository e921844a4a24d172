"""Helpers of the security tests: certificates made on the spot, tokens, and a whole gateway stack
(an executor replica and a gateway serving gRPC, HTTP and WebSocket) run in one loop thread."""

from __future__ import annotations

import datetime
import ipaddress
import secrets
import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from plait import Flow
from plait.client.loop_thread import LoopThread
from plait.config import (
    ExecutorConfig,
    GatewayConfig,
    GatewayExecutor,
    MutualTLS,
    ReplicaConfig,
    ServerOptions,
)
from plait.gateway.runtime import Gateway
from plait.orchestrate.process import free_port
from plait.serve import ExecutorServer

H = "127.0.0.1"
PROTOCOLS = ("grpc", "http", "websocket")


@dataclass(frozen=True)
class Pair:
    cert: str
    key: str


@dataclass(frozen=True)
class Certs:
    """A CA; a server and a client certificate it signed; a rogue client signed by another CA."""

    ca: str
    server: Pair
    client: Pair
    other_ca: str
    rogue: Pair

    def mutual_tls(self) -> MutualTLS:
        return MutualTLS(ca_file=self.ca, certfile=self.server.cert, keyfile=self.server.key)

    def client_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=self.ca)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _save(folder: Path, stem: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> Pair:
    cert_path, key_path = folder / f"{stem}.pem", folder / f"{stem}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return Pair(str(cert_path), str(key_path))


def _builder(
    subject: str, issuer: x509.Name, public_key: ec.EllipticCurvePublicKey
) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
    )


def _ca(folder: Path, stem: str) -> tuple[str, x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    usage = x509.KeyUsage(
        digital_signature=True,
        key_cert_sign=True,
        crl_sign=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        encipher_only=False,
        decipher_only=False,
    )
    cert = (
        _builder(stem, _name(stem), key.public_key())
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(usage, critical=True)
        .sign(key, hashes.SHA256())
    )
    return _save(folder, stem, cert, key).cert, cert, key


def _leaf(folder: Path, stem: str, ca_cert: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey) -> Pair:
    key = ec.generate_private_key(ec.SECP256R1())
    names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address(H))]
    usage = x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH])
    cert = (
        _builder(stem, ca_cert.subject, key.public_key())
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(usage, critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return _save(folder, stem, cert, key)


def make_certs(folder: Path) -> Certs:
    folder.mkdir(parents=True, exist_ok=True)
    ca, ca_cert, ca_key = _ca(folder, "test-ca")
    other, other_cert, other_key = _ca(folder, "other-ca")
    return Certs(
        ca=ca,
        server=_leaf(folder, "server", ca_cert, ca_key),
        client=_leaf(folder, "client", ca_cert, ca_key),
        other_ca=other,
        rogue=_leaf(folder, "rogue", other_cert, other_key),
    )


def make_token(folder: Path) -> tuple[str, str]:
    """A token file (with a comment and a second, older token) and the token to use."""
    token = secrets.token_urlsafe(24)
    path = folder / "tokens"
    path.write_text(f"# rotated monthly\n{token}\n{secrets.token_urlsafe(24)}\n", encoding="utf-8")
    return str(path), token


def tls_flow(certs: Certs, *, gateway: bool = True, internal: bool = True, **kwargs: Any) -> Flow:
    """A Flow to export with TLS on the gateway and/or mutual TLS inside (replicas and shards)."""
    security: dict[str, Any] = {}
    if gateway:
        security.update(ssl_certfile=certs.server.cert, ssl_keyfile=certs.server.key, ssl_ca_file=certs.ca)
    if internal:
        security["internal_tls"] = MutualTLS(
            ca_file=certs.ca, certfile=certs.client.cert, keyfile=certs.client.key
        )
    return (
        Flow(name="secure", **{"protocol": ["grpc", "http"], **security, **kwargs})
        .add(name="encoder", uses="executors:Echo", replicas=2)
        .add(name="indexer", uses="executors:ShardCounter", shards=2)
    )


@dataclass
class Stack:
    ports: dict[str, int]
    executor_port: int
    loop: LoopThread


@contextmanager
def gateway_stack(
    options: ServerOptions,
    *,
    internal_tls: MutualTLS | None = None,
    uses: str = "executors:Echo",
    protocols: tuple[str, ...] = PROTOCOLS,
) -> Iterator[Stack]:
    """An executor replica and a gateway in front of it, both in this process's loop thread."""
    loop = LoopThread("plait-test-security")
    executor_port = free_port()
    replica = ExecutorServer(
        ReplicaConfig(
            executor=ExecutorConfig(uses=uses, name="echo"),
            port=executor_port,
            internal_tls=internal_tls,
            grace_period=0.5,
        )
    )
    ports = {p: free_port() for p in protocols}
    config = GatewayConfig(
        host=H,
        protocols=protocols,
        ports=tuple(ports.values()),
        options=options,
        executors=(GatewayExecutor(name="echo", shards=((f"{H}:{executor_port}",),)),),
        timeout_ready=15,
        internal_tls=internal_tls,
    )

    async def make_gateway() -> Gateway:  # its channels belong to the loop they are made on
        return Gateway(config)

    gateway = loop.run(make_gateway())
    try:
        loop.run(replica.start(), timeout=30)
        loop.run(gateway.start(), timeout=30)
        yield Stack(ports, executor_port, loop)
    finally:
        loop.run(gateway.stop(), timeout=30)
        loop.run(replica.stop(), timeout=30)
        loop.stop()
