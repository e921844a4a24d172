"""The pieces the exports rely on: DNS round_robin channels, the servers' maximum connection age,
and the executor settings that only exports use (image, gpus, resources)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from plait import Flow
from plait.config import Resources, ServerOptions
from plait.errors import ConfigError
from plait.serve import server_options
from plait.wire.channels import DNS_RERESOLVE_MS, channel_target


def test_a_dns_address_is_balanced_over_everything_its_name_resolves_to() -> None:
    target, options = channel_target(["dns:///encoder.search.svc:8080"])
    assert target == "dns:///encoder.search.svc:8080"
    settings = dict(options)
    config = json.loads(settings["grpc.service_config"])
    assert config["loadBalancingConfig"] == [{"round_robin": {}}]
    assert config["healthCheckConfig"] == {"serviceName": ""}
    assert settings["grpc.dns_min_time_between_resolutions_ms"] == DNS_RERESOLVE_MS
    # A single plain address keeps gRPC's defaults; a list is balanced as before.
    assert channel_target(["127.0.0.1:5000"]) == ("127.0.0.1:5000", [])
    target, options = channel_target(["127.0.0.1:5000", "localhost:5001"])
    assert target == "ipv4:127.0.0.1:5000,127.0.0.1:5001" and options[0][0] == "grpc.service_config"
    with pytest.raises(ValueError, match="stands alone"):
        channel_target(["dns:///a:1", "127.0.0.1:2"])


def test_servers_close_connections_at_the_maximum_age_only_when_asked() -> None:
    plain = dict(server_options(1024, reuse_port=False))
    assert "grpc.max_connection_age_ms" not in plain
    assert "grpc.max_connection_age_grace_ms" not in plain
    aged = dict(server_options(1024, reuse_port=False, max_connection_age=300, max_connection_age_grace=30.5))
    assert aged["grpc.max_connection_age_ms"] == 300_000
    assert aged["grpc.max_connection_age_grace_ms"] == 30_500
    with pytest.raises(ValidationError):
        ServerOptions(max_connection_age=0)


def test_resources_take_kubernetes_quantities() -> None:
    resources = Resources(requests={"cpu": 0.5, "memory": "512Mi"}, limits={"cpu": "2", "memory": "1e9"})
    assert resources.requests == {"cpu": "0.5", "memory": "512Mi"}
    for bad in ("lots", "1GB", "-1", True):
        with pytest.raises(ValidationError, match="not a quantity"):
            Resources(limits={"memory": bad})
    with pytest.raises(ConfigError, match="not a quantity"):
        Flow().add(uses="executors:Echo", resources={"limits": {"cpu": "two"}})
    with pytest.raises(ConfigError, match="gpus"):
        Flow().add(uses="executors:Echo", gpus=-1)


def test_image_gpus_and_resources_survive_the_flow_yaml(tmp_path: Path) -> None:
    flow = Flow().add(
        name="encoder",
        uses="executors:Echo",
        image="shop/encoder:1.2",
        gpus=2,
        resources={"requests": {"cpu": "1"}, "limits": {"memory": "2Gi"}},
    )
    flow.save_config(tmp_path / "flow.yml")
    text = (tmp_path / "flow.yml").read_text()
    assert "image: shop/encoder:1.2" in text and "gpus: 2" in text
    node = Flow.load_config(tmp_path / "flow.yml").config.executors[0]
    assert (node.image, node.gpus) == ("shop/encoder:1.2", 2)
    assert node.resources == Resources(requests={"cpu": "1"}, limits={"memory": "2Gi"})
    plain = Flow().add(name="plain", uses="executors:Echo")
    plain.save_config(tmp_path / "plain.yml")
    assert "resources" not in (tmp_path / "plain.yml").read_text()


def test_local_and_exported_processes_share_one_config_builder() -> None:
    flow = Flow(grace_period=3).add(name="enc", uses="executors:Echo", replicas=2, max_queue=7)
    node = flow.config.executors[0]
    replica = flow.config.replica_config(node, shard_id=0, replica_id=1, port=9, parent_pid=1)
    assert (replica.replica_id, replica.replicas, replica.grace_period, replica.max_queue) == (1, 2, 3, 7)
    assert (replica.port, replica.parent_pid, replica.max_connection_age) == (9, 1, None)
