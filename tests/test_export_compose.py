"""Docker Compose export: the file validates against the Compose Specification's JSON schema
(vendored in tests/data, see its README), and each service runs what the Flow says."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from typer.testing import CliRunner

from plait import Flow
from plait.cli.main import app
from plait.config import GatewayConfig, ReplicaConfig
from plait.errors import ConfigError
from plait.export import ComposeOptions, compose_project

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
