"""Docker Compose export: the file validates against the Compose Specification's JSON schema
(vendored in tests/data, see its README), and each service runs what the Flow says."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from conftest import plait_cmd, subprocess_env
from security_support import Certs, Stack, gateway_stack, make_certs, tls_flow
from typer.testing import CliRunner

from plait import Flow
from plait.cli.main import app
from plait.config import GatewayConfig, ReplicaConfig, ServerOptions
from plait.errors import ConfigError
from plait.export import ComposeOptions, compose_project
from plait.export.common import dump_documents

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = json.loads((Path(__file__).parent / "data" / "compose-spec.json").read_text())


def validate(project: dict[str, Any]) -> None:
    validator = jsonschema.Draft7Validator(SCHEMA)
    errors = [f"{'.'.join(map(str, e.path))}: {e.message}" for e in validator.iter_errors(project)]
    assert not errors, errors


def rich_flow() -> Flow:
    return (
        Flow(name="Shop", protocol=["grpc", "http"], port=[None, 9000], env={"CUDA_VISIBLE_DEVICES": "RR"})
        .add(
            name="encoder",
            uses="executors:Echo",
            replicas=2,
            gpus=1,
            image="shop/encoder:1.2",
            resources={"requests": {"cpu": "500m", "memory": "512Mi"}, "limits": {"cpu": 2, "memory": "1G"}},
            env={"PRICE": "$5"},
            uses_with={"greeting": "costs $5"},
        )
        .add(name="indexer", uses="executors:ShardCounter", shards=2, polling="ALL")
    )


def unescape(text: str) -> str:
    return text.replace("$$", "$")


def test_the_schema_is_a_real_check() -> None:
    jsonschema.Draft7Validator.check_schema(SCHEMA)
    project = compose_project(rich_flow().config)
    project["services"]["gateway"]["restart_policy"] = "always"
    with pytest.raises(AssertionError, match="restart_policy"):
        validate(project)


@pytest.mark.parametrize("source", ["rich", "search-example", "http-only"])
def test_the_compose_file_validates_against_the_compose_specification(source: str) -> None:
    if source == "rich":
        flow = rich_flow()
    elif source == "search-example":
        flow = Flow.load_config(ROOT / "examples/search/flow.yml")
    else:
        flow = Flow(protocol="http").add(uses="executors:Echo")
    validate(compose_project(flow.config, ComposeOptions(env_files=("secrets.env",))))


def test_a_service_per_replica_and_shard_sharing_the_shards_dns_alias() -> None:
    project = compose_project(rich_flow().config)
    services = project["services"]
    assert list(services) == ["encoder-rep-0", "encoder-rep-1", "indexer-0", "indexer-1", "gateway"]
    assert services["encoder-rep-0"]["networks"] == {"plait": {"aliases": ["encoder"]}}
    assert services["encoder-rep-1"]["networks"] == {"plait": {"aliases": ["encoder"]}}
    assert services["indexer-1"]["networks"] == ["plait"]
    assert project["networks"] == {"plait": {"driver": "bridge"}}
    assert project["name"] == "shop"
    gateway = GatewayConfig.model_validate_json(unescape(project["configs"]["gateway-config"]["content"]))
    routes = {e.name: e.shards for e in gateway.executors}
    assert routes == {
        "encoder": (("dns:///encoder:8080",),),
        "indexer": (("dns:///indexer-0:8080",), ("dns:///indexer-1:8080",)),
    }
    assert services["gateway"]["ports"] == ["8080:8080", "9000:9000"]
    assert set(services["gateway"]["depends_on"]) == set(services) - {"gateway"}


def test_services_run_plait_with_their_own_config() -> None:
    project = compose_project(rich_flow().config)
    for name, service in project["services"].items():
        kind = "gateway" if name == "gateway" else "executor"
        assert service["entrypoint"] == ["plait"]
        assert service["command"] == [kind, "--config", "/etc/plait/config.json"]
        assert service["configs"] == [{"source": f"{name}-config", "target": "/etc/plait/config.json"}]
        assert service["restart"] == "unless-stopped"
        assert service["stop_grace_period"] == "15s"
        assert service["healthcheck"]["test"][:3] == ["CMD", "plait", "ping"]
    configs = {k: unescape(v["content"]) for k, v in project["configs"].items()}
    replicas = [ReplicaConfig.model_validate_json(configs[f"encoder-rep-{i}-config"]) for i in (0, 1)]
    assert [(r.replica_id, r.replicas, r.host, r.port) for r in replicas] == [
        (0, 2, "0.0.0.0", 8080),
        (1, 2, "0.0.0.0", 8080),
    ]
    assert replicas[0].executor.uses_with == {"greeting": "costs $5"}
    assert ReplicaConfig.model_validate_json(configs["indexer-1-config"]).shard_id == 1
    # Compose would substitute `$5`: every `$` is written `$$`.
    assert "costs $$5" in project["configs"]["encoder-rep-0-config"]["content"]


def test_gpus_resources_env_and_workspaces() -> None:
    project = compose_project(rich_flow().config, ComposeOptions(env_files=("secrets.env",)))
    encoder = project["services"]["encoder-rep-1"]
    assert encoder["image"] == "shop/encoder:1.2"
    assert encoder["deploy"] == {
        "resources": {
            "reservations": {
                "cpus": "0.5",
                "memory": "512m",
                "devices": [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}],
            },
            "limits": {"cpus": "2", "memory": "1000000000b"},
        }
    }
    assert encoder["environment"] == {"PRICE": "$$5"}
    assert encoder["env_file"] == ["secrets.env"]
    assert encoder["volumes"] == ["encoder-rep-1-workspace:/workspace"]
    assert "encoder-rep-1-workspace" in project["volumes"]
    assert "deploy" not in project["services"]["indexer-0"]
    assert "environment" not in project["services"]["gateway"]


def test_an_http_only_gateway_is_checked_over_http() -> None:
    project = compose_project(Flow(protocol="http", port=8000).add(uses="executors:Echo").config)
    test = project["services"]["gateway"]["healthcheck"]["test"]
    assert test[:3] == ["CMD", "python", "-c"] and "http://127.0.0.1:8000/ready" in test[3]


def test_service_name_clashes_are_refused() -> None:
    flow = (
        Flow().add(name="enc", uses="executors:Echo", replicas=2).add(name="enc-rep-0", uses="executors:Echo")
    )
    with pytest.raises(ConfigError, match="enc-rep-0"):
        compose_project(flow.config)


def test_flow_to_docker_compose_yaml_and_the_cli(tmp_path: Path) -> None:
    path = rich_flow().to_docker_compose_yaml(tmp_path / "compose.yml", network_name="shop-net")
    project = yaml.safe_load(path.read_text())
    validate(project)
    assert project["networks"] == {"shop-net": {"driver": "bridge"}}

    out = tmp_path / "search-compose.yml"
    search = str(ROOT / "examples/search/flow.yml")
    result = CliRunner().invoke(app, ["export", "docker-compose", search, str(out), "--env-file", "prod.env"])
    assert result.exit_code == 0, result.output
    project = yaml.safe_load(out.read_text())
    validate(project)
    assert sorted(project["services"]) == ["encoder", "gateway", "indexer-0", "indexer-1", "ranker"]
    encoder = ReplicaConfig.model_validate_json(unescape(project["configs"]["encoder-config"]["content"]))
    assert encoder.executor.py_modules == ("executors.py",)
    assert project["services"]["ranker"]["env_file"] == ["prod.env"]


def test_every_service_exposes_its_metrics_port_to_the_network() -> None:
    project = compose_project(rich_flow().config)
    validate(project)
    configs = {k: unescape(v["content"]) for k, v in project["configs"].items()}
    for name, service in project["services"].items():
        assert service["expose"] == ["9090"], name
        assert json.loads(configs[f"{name}-config"])["observe"] == {
            "monitoring": True,
            "port_monitoring": 9090,
        }
    assert "9090:9090" not in project["services"]["gateway"]["ports"]  # scraped in the network only
    quiet = compose_project(rich_flow().config, ComposeOptions(monitoring=False))
    validate(quiet)
    assert not any("expose" in s for s in quiet["services"].values())


# -- TLS: Compose secrets from the Flow's files, healthchecks that speak TLS ----------------------


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("compose-certs"))


def service_config(project: dict[str, Any], name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(unescape(project["configs"][f"{name}-config"]["content"]))
    return data


def tls_paths(config: dict[str, Any]) -> list[str]:
    paths = [config.get("options", {}).get(k) for k in ("ssl_certfile", "ssl_keyfile")]
    mtls = config.get("internal_tls") or {}
    paths += [mtls.get(k) for k in ("ca_file", "certfile", "keyfile")]
    return [p for p in paths if p]


def host_file(project: dict[str, Any], service: str, path: str) -> str:
    """The host file a service sees at ``path`` (through a Compose secret); fails when none."""
    (source,) = [s["source"] for s in project["services"][service]["secrets"] if s["target"] == path]
    return unescape(project["secrets"][source]["file"])


def test_tls_files_are_compose_secrets_at_the_paths_the_configs_name(certs: Certs) -> None:
    project = compose_project(tls_flow(certs).config)
    validate(project)
    text = dump_documents([project])
    for path in (certs.ca, certs.server.cert, certs.server.key, certs.client.cert, certs.client.key):
        assert Path(path).read_text().strip() not in text
    assert "-----BEGIN" not in text, "the export names the files, never their contents"
    expected = {
        "/etc/plait-tls/gateway/tls.crt": certs.server.cert,
        "/etc/plait-tls/gateway/tls.key": certs.server.key,
        "/etc/plait-tls/internal/ca.crt": certs.ca,
        "/etc/plait-tls/internal/tls.crt": certs.client.cert,
        "/etc/plait-tls/internal/tls.key": certs.client.key,
    }
    for name in ("encoder-rep-0", "encoder-rep-1", "indexer-0", "indexer-1", "gateway"):
        paths = tls_paths(service_config(project, name))
        assert len(paths) == (5 if name == "gateway" else 3), name
        assert len(project["services"][name]["secrets"]) == len(paths), "only the files it uses"
        for path in paths:
            assert host_file(project, name, path) == expected[path], (name, path)
    gateway = GatewayConfig.model_validate(service_config(project, "gateway"))
    assert gateway.options.ssl_keyfile == "/etc/plait-tls/gateway/tls.key"
    # Without TLS: no secrets anywhere.
    plain = compose_project(rich_flow().config)
    assert "secrets" not in plain and not any("secrets" in s for s in plain["services"].values())


def test_relative_tls_paths_are_read_from_where_the_flow_runs(
    certs: Certs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    flow = Flow(ssl_certfile="certs/gateway.pem", ssl_keyfile="certs/gateway.key").add(uses="executors:Echo")
    project = compose_project(flow.config)
    validate(project)
    assert host_file(project, "gateway", "/etc/plait-tls/gateway/tls.crt") == str(
        tmp_path / "certs/gateway.pem"
    )


def test_tls_healthchecks(certs: Certs) -> None:
    project = compose_project(tls_flow(certs).config)
    for name in ("encoder-rep-1", "indexer-0"):
        mtls = service_config(project, name)["internal_tls"]
        alias = name.removesuffix("-rep-1")
        assert project["services"][name]["healthcheck"]["test"] == [
            "CMD", "plait", "ping", "127.0.0.1:8080",
            "--ca-file", mtls["ca_file"], "--cert-file", mtls["certfile"], "--key-file", mtls["keyfile"],
            "--server-name", alias, "--timeout", "3",
        ]  # fmt: skip
    assert project["services"]["gateway"]["healthcheck"]["test"] == [
        "CMD", "plait", "ping", "grpcs://127.0.0.1:8080",
        "--ca-file", "/etc/plait-tls/gateway/tls.crt", "--any-server-name", "--timeout", "3",
    ]  # fmt: skip
    http_only = compose_project(tls_flow(certs, internal=False, protocol="http", port=8443).config)
    validate(http_only)
    test = http_only["services"]["gateway"]["healthcheck"]["test"]
    assert test[:3] == ["CMD", "python", "-c"] and "https://127.0.0.1:8443/ready" in test[3]
    assert "/etc/plait-tls/gateway/tls.crt" in test[3]
    assert http_only["services"]["encoder-rep-0"]["healthcheck"]["test"] == [
        "CMD", "plait", "ping", "127.0.0.1:8080"
    ]  # fmt: skip


# -- the healthchecks an export writes, run against real TLS servers -------------------------------


@pytest.fixture(scope="module")
def tls_stack(certs: Certs) -> Iterator[Stack]:
    options = ServerOptions(ssl_certfile=certs.server.cert, ssl_keyfile=certs.server.key, grace_period=0.5)
    with gateway_stack(options, internal_tls=certs.mutual_tls(), protocols=("grpc", "http")) as stack:
        yield stack


def run_check(test: list[str], project: dict[str, Any], service: str, **swap: str) -> int:
    """Run a service's healthcheck here, each in-container TLS path replaced by the host file its
    Compose secret names (or by ``swap[<secret>]``)."""
    assert test[0] == "CMD"
    files = {
        s["target"]: swap.get(s["source"], unescape(project["secrets"][s["source"]]["file"]))
        for s in project["services"][service]["secrets"]
    }
    args = []
    for arg in test[1:]:
        for inside, here in files.items():
            arg = arg.replace(inside, here)
        args.append(arg)
    command = plait_cmd(*args[1:]) if args[0] == "plait" else [sys.executable, *args[1:]]
    return subprocess.run(command, env=subprocess_env(), capture_output=True, timeout=60).returncode


@pytest.mark.timeout(120)
def test_the_exported_healthchecks_pass_against_real_tls_servers(certs: Certs, tls_stack: Stack) -> None:
    mtls = {"ca_file": certs.ca, "certfile": certs.server.cert, "keyfile": certs.server.key}
    grpc_port, http_port = tls_stack.ports["grpc"], tls_stack.ports["http"]
    server_name = {"server_name": "localhost"}  # a name the test certificate carries
    flow = tls_flow(
        certs, internal=False, internal_tls={**mtls, **server_name}, protocol="grpc", port=grpc_port
    )
    project = compose_project(flow.config, ComposeOptions(executor_port=tls_stack.executor_port))
    services = project["services"]
    gateway = services["gateway"]["healthcheck"]["test"]
    executor = services["indexer-1"]["healthcheck"]["test"]
    assert run_check(gateway, project, "gateway") == 0
    assert run_check(executor, project, "indexer-1") == 0
    quick = [*gateway[:-1], "1"]  # a failure waits out --timeout
    assert run_check(quick, project, "gateway", **{"gateway-tls-cert": certs.other_ca}) == 1
    rogue = {"internal-tls-cert": certs.rogue.cert, "internal-tls-key": certs.rogue.key}
    assert run_check([*executor[:-1], "1"], project, "indexer-1", **rogue) == 1
    # An HTTP-only gateway is checked with GET /ready over HTTPS, trusting its own certificate.
    http_only = tls_flow(certs, internal=False, protocol="http", port=http_port)
    project = compose_project(http_only.config)
    check = project["services"]["gateway"]["healthcheck"]["test"]
    assert run_check(check, project, "gateway") == 0
    assert run_check(check, project, "gateway", **{"gateway-tls-cert": certs.other_ca}) != 0
    with gateway_stack(ServerOptions(grace_period=0.5), protocols=("grpc",)) as plain:
        target = f"127.0.0.1:{plain.ports['grpc']}"
        quick = [arg.replace(f"127.0.0.1:{grpc_port}", target) for arg in quick]
        assert run_check(quick, compose_project(flow.config), "gateway") == 1
    assert os.path.isabs(unescape(project["secrets"]["gateway-tls-key"]["file"]))


def test_the_gateways_tokens_file_is_a_compose_secret_never_in_the_file(tmp_path: Path) -> None:
    token = "s3cr3t-" + "x" * 20
    tokens = tmp_path / "tokens"
    tokens.write_text(token + "\n")
    flow = Flow(auth_token_file=str(tokens)).add(name="a", uses="executors:Echo")
    project = compose_project(flow.config)
    validate(project)
    target = "/run/secrets/plait-auth-tokens"
    assert project["secrets"]["gateway-auth-tokens"]["file"] == str(tokens)
    assert {"source": "gateway-auth-tokens", "target": target} in project["services"]["gateway"]["secrets"]
    assert "secrets" not in project["services"]["a"], "executors never see the tokens"
    gateway = GatewayConfig.model_validate_json(unescape(project["configs"]["gateway-config"]["content"]))
    assert gateway.options.auth_token_file == target
    assert token not in yaml.safe_dump(project)
