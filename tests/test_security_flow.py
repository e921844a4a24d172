"""End to end, real processes: a Flow whose gateway serves gRPC, HTTP and WebSocket over TLS with
bearer tokens (read from an environment variable), and talks to its executors over mutual TLS."""

from __future__ import annotations

import os
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import plait_cmd, subprocess_env
from executors import Text
from security_support import Certs, H, make_certs

from plait import Client, Deployment, DocList, Flow
from plait.config import ReplicaConfig
from plait.errors import UnauthenticatedError, UnavailableError

pytestmark = pytest.mark.timeout(180)

TOKEN_ENV = "PLAIT_TEST_GATEWAY_TOKENS"


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("flow-certs"))


@pytest.fixture(scope="module")
def token() -> Iterator[str]:
    value = secrets.token_urlsafe(24)
    patch = pytest.MonkeyPatch()
    patch.setenv(TOKEN_ENV, f"{value},{secrets.token_urlsafe(24)}")  # the gateway inherits it
    yield value
    patch.undo()


@pytest.fixture(scope="module")
def flow(certs: Certs, token: str) -> Iterator[Flow]:
    secured = Flow(
        host=H,
        protocol=["grpc", "http", "websocket"],
        ssl_certfile=certs.server.cert,
        ssl_keyfile=certs.server.key,
        ssl_ca_file=certs.ca,
        auth_token_env=TOKEN_ENV,
        internal_tls=certs.mutual_tls(),
        quiet=True,
        grace_period=1,
    ).add(name="echo", uses="executors:Echo", replicas=2)
    with secured:
        yield secured


def _port(flow: Flow, protocol: str) -> int:
    return flow.ports[flow.protocols.index(protocol)]


def test_the_flows_own_client_uses_tls_and_the_token(flow: Flow) -> None:
    docs = flow.post("/echo", DocList[Text]([Text(text="own")]), return_type=DocList[Text])
    assert docs.text == ["own"]


@pytest.mark.parametrize("protocol", ["grpc", "http", "websocket"])
def test_unauthenticated_refused_authenticated_served(
    flow: Flow, certs: Certs, token: str, protocol: str
) -> None:
    port = _port(flow, protocol)
    docs = DocList[Text]([Text(text="x")])
    with Client(H, port, protocol=protocol, tls=True, ca_file=certs.ca) as client:
        assert client.health() == "SERVING"
        with pytest.raises(UnauthenticatedError):
            client.post("/echo", docs)
    with (
        Client(H, port, protocol=protocol, tls=True, ca_file=certs.ca, token="not-" + token) as client,
        pytest.raises(UnauthenticatedError),
    ):
        client.post("/echo", docs)
    with Client(H, port, protocol=protocol, tls=True, ca_file=certs.ca, token=token) as client:
        assert client.post("/whoami", docs, return_type=DocList[Text]).text[0].startswith("echo:")
    no_tls = Client(H, port, protocol=protocol, token=token, timeout=2)
    with no_tls as client, pytest.raises(UnavailableError):
        client.post("/echo", docs)


def test_executors_bind_loopback_and_demand_a_client_certificate(flow: Flow, certs: Certs) -> None:
    executors = [c for c in flow.children if c.command == "executor"]
    assert len(executors) == 2
    docs = DocList[Text]([Text(text="direct")])
    for child in executors:
        config = child.config
        assert isinstance(config, ReplicaConfig)
        assert config.host == "127.0.0.1" and config.public_host == "127.0.0.1"
        assert config.internal_tls is not None
        with Client(child.address, timeout=0.5) as client, pytest.raises(UnavailableError):
            client.post("/echo", docs)
        with (
            Client(child.address, tls=True, ca_file=certs.ca, timeout=0.5) as client,
            pytest.raises(UnavailableError),
        ):
            client.post("/echo", docs)
        mutual = {
            "tls": True,
            "ca_file": certs.ca,
            "certfile": certs.client.cert,
            "keyfile": certs.client.key,
        }
        with Client(child.address, **mutual) as client:  # type: ignore[arg-type]
            assert client.post("/echo", docs, return_type=DocList[Text]).text == ["direct"]


def test_ping_speaks_tls_and_mutual_tls(flow: Flow, certs: Certs) -> None:
    def ping(*args: str) -> int:
        run = subprocess.run(plait_cmd("ping", *args), env=subprocess_env(), capture_output=True, timeout=60)
        return run.returncode

    assert ping(f"grpcs://{H}:{_port(flow, 'grpc')}", "--ca-file", certs.ca) == 0
    executor = next(c for c in flow.children if c.command == "executor").address
    assert ping(executor, "--timeout", "2") == 1
    mutual = ("--ca-file", certs.ca, "--cert-file", certs.client.cert, "--key-file", certs.client.key)
    assert ping(executor, *mutual, "--server-name", "localhost") == 0
    assert (
        ping(
            executor, "--ca-file", certs.ca, "--cert-file", certs.client.cert, "--key-file", certs.client.key
        )
        == 0
    )


def test_no_token_in_saved_yaml_or_process_output(flow: Flow, token: str, tmp_path: Path) -> None:
    path = tmp_path / "flow.yml"
    flow.save_config(path)
    text = path.read_text()
    assert token not in text and f"auth_token_env: {TOKEN_ENV}" in text
    assert "ssl_certfile:" in text and "internal_tls:" in text
    assert Flow.load_config(path).config == flow.config
    for child in flow.children:
        assert token not in child.last_lines(), child.label
        assert token not in " ".join(child.argv)  # the config passed on the command line
    assert os.environ[TOKEN_ENV].startswith(token)


def test_deployments_secured(certs: Certs, tmp_path: Path) -> None:
    token = secrets.token_urlsafe(16)
    (tmp_path / "tokens").write_text(token + "\n")
    docs = DocList[Text]([Text(text="d")])
    # TLS and a token: a gateway stands in front; the replica binds loopback behind it.
    with Deployment(
        uses="executors:Echo",
        host=H,
        protocol=["grpc", "http"],
        ssl_certfile=certs.server.cert,
        ssl_keyfile=certs.server.key,
        ssl_ca_file=certs.ca,
        auth_token_file=str(tmp_path / "tokens"),
        quiet=True,
        grace_period=1,
    ) as dep:
        assert dep.post("/echo", docs, return_type=DocList[Text]).text == ["d"]
        with Client(H, dep.port, tls=True, ca_file=certs.ca) as client, pytest.raises(UnauthenticatedError):
            client.post("/echo", docs)
        assert {c.config.host for c in dep.children if c.command == "executor"} == {"127.0.0.1"}  # type: ignore[attr-defined]
    # Mutual TLS alone: the replicas serve it themselves, and `post` presents the certificate.
    with Deployment(
        uses="executors:Echo", host=H, internal_tls=certs.mutual_tls(), quiet=True, grace_period=1
    ) as dep:
        assert dep.post("/echo", docs, return_type=DocList[Text]).text == ["d"]
        with Client(H, dep.port, timeout=0.5) as client, pytest.raises(UnavailableError):
            client.post("/echo", docs)
