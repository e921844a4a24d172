"""TLS and authentication on the gateway's three protocols, against a real gateway stack in this
process: unauthenticated requests are refused (gRPC UNAUTHENTICATED, HTTP 401, WebSocket handshake
401), authenticated ones are served, health and readiness stay open, and no token leaks."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest
from executors import Text
from grpc_health.v1 import health_pb2, health_pb2_grpc
from security_support import Certs, H, Stack, gateway_stack, make_certs, make_token
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from plait import Client, DocList
from plait.config import ServerOptions
from plait.errors import ConfigError, UnauthenticatedError, UnavailableError
from plait.security import Authenticator, AuthRequest, ClientSecurity
from plait.security.auth import auth_reference, authenticator_for

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="module")
def token_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    return make_token(tmp_path_factory.mktemp("tokens"))


@pytest.fixture(scope="module")
def stack(certs: Certs, token_file: tuple[str, str]) -> Iterator[Stack]:
    options = ServerOptions(
        ssl_certfile=certs.server.cert,
        ssl_keyfile=certs.server.key,
        auth_token_file=token_file[0],
        auth="security_executors:allow_api_key",
        grace_period=1,
    )
    with gateway_stack(options, internal_tls=certs.mutual_tls()) as s:
        yield s


def _grpc_health(port: int, certs: Certs) -> int:
    with grpc.secure_channel(f"{H}:{port}", grpc.ssl_channel_credentials(Path(certs.ca).read_bytes())) as ch:
        reply = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5)
    return int(reply.status)


def _ws(port: int, certs: Certs, headers: dict[str, str] | None = None) -> str:
    async def run() -> str:
        async with connect(
            f"wss://localhost:{port}/", ssl=certs.client_context(), additional_headers=headers, proxy=None
        ) as ws:
            await ws.send('{"request_id": "r1", "endpoint": "/echo", "data": [{"text": "hi"}]}')
            return str(await asyncio.wait_for(ws.recv(), 10))

    return asyncio.run(run())


# -- refused without credentials, on every protocol ---------------------------------------------


def test_grpc_refuses_unauthenticated_and_serves_authenticated(
    stack: Stack, certs: Certs, token_file: tuple[str, str]
) -> None:
    docs = DocList[Text]([Text(text="hi")])
    port = stack.ports["grpc"]
    with (
        Client(H, port, tls=True, ca_file=certs.ca) as client,
        pytest.raises(UnauthenticatedError, match="authorization: Bearer"),
    ):
        client.post("/echo", docs, return_type=DocList[Text])
        with pytest.raises(UnauthenticatedError):
            client.describe()
        assert client.health() == "SERVING"  # health stays open
    with Client(f"grpcs://{H}:{port}", ca_file=certs.ca, token="wrong-token") as client:
        with pytest.raises(UnauthenticatedError, match="refused") as info:
            client.post("/echo", docs)
        assert "wrong-token" not in str(info.value)
    with Client(H, port, tls=True, ca_file=certs.ca, token=token_file[1]) as client:
        assert client.post("/echo", docs, return_type=DocList[Text]).text == ["hi"]
        assert "/echo" in client.describe().endpoints
    assert _grpc_health(port, certs) == health_pb2.HealthCheckResponse.SERVING


def test_http_refuses_unauthenticated_and_serves_authenticated(
    stack: Stack, certs: Certs, token_file: tuple[str, str]
) -> None:
    base = f"https://localhost:{stack.ports['http']}"
    with httpx.Client(base_url=base, verify=certs.client_context(), trust_env=False, timeout=10) as http:
        for path in ("/health", "/ready"):
            assert http.get(path).status_code == 200
        preflight = {"origin": "https://app.example", "access-control-request-method": "POST"}
        assert http.options("/echo", headers=preflight).status_code != 401  # carries no credentials
        for method, path in (("POST", "/echo"), ("GET", "/describe"), ("GET", "/status"), ("GET", "/docs")):
            r = http.request(method, path, json={"data": [{"text": "hi"}]})
            assert r.status_code == 401, (method, path)
            assert r.headers["www-authenticate"].startswith("Bearer")
            assert r.json()["error"]["type"] == "UnauthenticatedError"
        r = http.post("/echo", json={"data": [{"text": "hi"}]}, headers={"authorization": "Bearer nope"})
        assert r.status_code == 401 and "nope" not in r.text
        r = http.post(
            "/echo", json={"data": [{"text": "hi"}]}, headers={"authorization": f"Bearer {token_file[1]}"}
        )
        assert r.status_code == 200 and r.json()["data"][0]["text"] == "hi"
        assert (
            http.get("/openapi.json", headers={"authorization": f"bearer {token_file[1]}"}).status_code == 200
        )


def test_websocket_refuses_unauthenticated_handshake_and_serves_authenticated(
    stack: Stack, certs: Certs, token_file: tuple[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    port = stack.ports["websocket"]
    for headers in (None, {"authorization": "Bearer nope"}):
        with pytest.raises(InvalidStatus) as info:
            _ws(port, certs, headers)
        assert info.value.response.status_code == 401
        assert b"UnauthenticatedError" in info.value.response.body
    assert "ERROR" not in caplog.text  # a refusal is not a server error
    assert '"text":"hi"' in _ws(port, certs, {"authorization": f"Bearer {token_file[1]}"})
    with httpx.Client(verify=certs.client_context(), trust_env=False) as http:
        assert http.get(f"https://localhost:{port}/ready").status_code == 200


def test_custom_auth_check_lets_its_own_scheme_in(stack: Stack, certs: Certs) -> None:
    docs = DocList[Text]([Text(text="k")])
    with Client(
        H, stack.ports["grpc"], tls=True, ca_file=certs.ca, headers={"x-api-key": "let-me-in"}
    ) as client:
        assert client.post("/echo", docs, return_type=DocList[Text]).text == ["k"]
    with httpx.Client(verify=certs.client_context(), trust_env=False) as http:
        url = f"https://localhost:{stack.ports['http']}/echo"
        assert http.post(url, json={"data": []}, headers={"x-api-key": "let-me-in"}).status_code == 200
        assert http.post(url, json={"data": []}, headers={"x-api-key": "raise"}).status_code == 401
    assert '"request_id":"r1"' in _ws(stack.ports["websocket"], certs, {"x-api-key": "let-me-in"})


@pytest.mark.parametrize("protocol", ["grpc", "http", "websocket"])
def test_plait_client_brings_tls_and_token_on_every_protocol(
    stack: Stack, certs: Certs, token_file: tuple[str, str], protocol: str
) -> None:
    port = stack.ports[protocol]
    docs = DocList[Text]([Text(text="a"), Text(text="b")])
    with Client("localhost", port, protocol=protocol, tls=True, ca_file=certs.ca) as client:
        assert client.health() == "SERVING"  # open without credentials
        with pytest.raises(UnauthenticatedError):
            client.post("/echo", docs)
    with Client(
        "localhost", port, protocol=protocol, tls=True, ca_file=certs.ca, token=token_file[1]
    ) as client:
        assert client.post("/echo", docs, return_type=DocList[Text]).text == ["a", "b"]
        assert "/echo" in client.describe().endpoints
    scheme = {"grpc": "grpcs", "http": "https", "websocket": "wss"}[protocol]
    with Client(
        f"{scheme}://localhost:{port}", protocol=protocol, ca_file=certs.ca, token=token_file[1]
    ) as client:
        assert client.post("/echo", docs, return_type=DocList[Text]).text == ["a", "b"]
    with (
        Client(
            "localhost",
            port,
            protocol=protocol,
            tls=True,
            ca_file=certs.other_ca,
            token=token_file[1],
            timeout=2,
        ) as client,
        pytest.raises(UnavailableError),
    ):
        client.post("/echo", docs)


# -- TLS -------------------------------------------------------------------------------------


def test_tls_is_required_and_verified(stack: Stack, certs: Certs, token_file: tuple[str, str]) -> None:
    with (
        httpx.Client(trust_env=False, timeout=5) as http,
        pytest.raises(httpx.HTTPError),
    ):  # plain HTTP to a TLS port
        http.get(f"http://{H}:{stack.ports['http']}/health")
    with (
        httpx.Client(verify=ssl_context_for(certs.other_ca), trust_env=False, timeout=5) as http,
        pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"),
    ):
        http.get(f"https://localhost:{stack.ports['http']}/health")
    no_tls = Client(H, stack.ports["grpc"], token=token_file[1], timeout=1)
    with no_tls as client, pytest.raises(UnavailableError):
        client.post("/echo", DocList[Text]([Text()]))
    with (
        Client(
            H, stack.ports["grpc"], tls=True, ca_file=certs.other_ca, token=token_file[1], timeout=1
        ) as client,
        pytest.raises(UnavailableError),
    ):
        client.post("/echo", DocList[Text]([Text()]))


def ssl_context_for(ca: str) -> object:
    import ssl

    return ssl.create_default_context(cafile=ca)


def test_executor_under_mutual_tls_refuses_callers_without_a_certificate_it_trusts(
    stack: Stack, certs: Certs
) -> None:
    address = f"{H}:{stack.executor_port}"
    docs = DocList[Text]([Text(text="m")])
    # The gateway holds the CA-signed certificate: requests through it were served above. Direct:
    for kwargs in (
        {},  # in the clear
        {"tls": True, "ca_file": certs.ca},  # TLS, no client certificate
        {"tls": True, "ca_file": certs.ca, "certfile": certs.rogue.cert, "keyfile": certs.rogue.key},
    ):
        with Client(address, timeout=0.5, **kwargs) as client, pytest.raises(UnavailableError):  # type: ignore[arg-type]
            client.post("/echo", docs)
    with Client(
        address, tls=True, ca_file=certs.ca, certfile=certs.client.cert, keyfile=certs.client.key
    ) as client:
        assert client.post("/echo", docs, return_type=DocList[Text]).text == ["m"]


# -- secrets stay secret ---------------------------------------------------------------------


def test_tokens_never_show_in_reprs_configs_or_logs(
    stack: Stack, certs: Certs, token_file: tuple[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    token = token_file[1]
    security = ClientSecurity(tls=True, ca_file=certs.ca, token=token, headers=(("x-api-key", "k"),))
    assert token not in repr(security) and "x-api-key" not in repr(security)
    authenticator = authenticator_for(ServerOptions(auth_token_file=token_file[0]))
    assert authenticator is not None and token not in repr(authenticator)
    request = AuthRequest("http", "/x", {"authorization": f"Bearer {token}"})
    assert token not in repr(request)
    options = ServerOptions(auth_token_file=token_file[0])
    assert token not in options.model_dump_json()
    with caplog.at_level(logging.DEBUG):
        with (
            Client(H, stack.ports["grpc"], tls=True, ca_file=certs.ca, token="leaked-guess") as client,
            pytest.raises(UnauthenticatedError),
        ):
            client.post("/echo", DocList[Text]([Text()]))
        with Client(H, stack.ports["grpc"], tls=True, ca_file=certs.ca, token=token) as client:
            client.post("/echo", DocList[Text]([Text()]))
    assert token not in caplog.text and "leaked-guess" not in caplog.text


def test_authenticator_compares_every_token_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    import hmac

    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    auth = Authenticator(["first", "second", "third"])
    assert auth.token_matches("first") and not auth.token_matches("fourth")
    assert len(calls) == 6  # all three compared each time, even after a match


def test_token_sources_and_their_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from plait.config.secrets import read_tokens

    path = tmp_path / "t"
    path.write_text("# comment\n\n a1 \nb2,c3\n")
    assert read_tokens(str(path), None) == ("a1", "b2", "c3")
    assert read_tokens(None, "PLAIT_T", {"PLAIT_T": "x1, y2"}) == ("x1", "y2")
    with pytest.raises(ConfigError, match="is not set"):
        read_tokens(None, "PLAIT_T", {})
    empty = tmp_path / "empty"
    empty.write_text("# nothing\n")
    with pytest.raises(ConfigError, match="holds no token"):
        read_tokens(str(empty), None)
    with pytest.raises(ConfigError, match="cannot be read"):
        read_tokens(str(tmp_path / "missing"), None)
    with pytest.raises(ValueError, match="never put a token") as info:
        ServerOptions(auth_token_env="abc.def-secret")
    assert "abc.def-secret" not in str(info.value)
    with pytest.raises(ValueError, match="both ssl_certfile and ssl_keyfile"):
        ServerOptions(ssl_certfile="a.pem")


def test_auth_references_name_importable_functions() -> None:
    from security_executors import allow_api_key

    assert auth_reference(allow_api_key) == "security_executors:allow_api_key"
    with pytest.raises(ConfigError, match="module level"):
        auth_reference(lambda request: True)
    assert asyncio.run(
        Authenticator(check=allow_api_key).allows(AuthRequest("grpc", "/m", {"x-api-key": "let-me-in"}))
    )
