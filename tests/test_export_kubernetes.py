"""Kubernetes export: every object validates offline against the Kubernetes schemas that
kubernetes-validate ships, and the objects say what the Flow says."""

from __future__ import annotations

import datetime
import json
import math
import posixpath
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from conftest import plait_cmd, subprocess_env
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from kubernetes_validate.utils import latest_version
from security_support import Certs, Stack, gateway_stack, make_certs, tls_flow
from typer.testing import CliRunner

from plait import Flow
from plait.cli.main import app
from plait.config import GatewayConfig, ReplicaConfig, ServerOptions
from plait.errors import ConfigError
from plait.export import KubernetesOptions, kubernetes_manifests
from plait.export.common import dump_documents

ROOT = Path(__file__).resolve().parent.parent
K8S_VERSION = latest_version()  # the newest schemas the installed package ships (offline)


def rich_flow() -> Flow:
    """Replicas, shards, a branch and a join, GPUs, resources, env, two protocols."""
    return (
        Flow(
            name="Shop_Search",
            protocol=["grpc", "http"],
            port=[None, 9000],
            grace_period=20,
            env={"LOG_FORMAT": "json", "CUDA_VISIBLE_DEVICES": "RR"},
        )
        .add(
            name="my_encoder",
            uses="executors:Echo",
            replicas=3,
            gpus=1,
            image="shop/encoder:1.2",
            resources={"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"memory": "2Gi"}},
            env={"PRICE": "$5"},
        )
        .add(name="indexer", uses="executors:ShardCounter", shards=2, replicas=2, polling={"/count": "ALL"})
        .add(name="tagger", uses="executors:Tagger", needs="gateway", when={"tags__lang": {"$eq": "en"}})
        .add(name="joiner", uses="executors:Joiner", needs=["indexer", "tagger"])
    )


def validate_all(files: dict[str, list[dict[str, Any]]]) -> int:
    """Strict validation (unknown fields are errors) of every object; the number checked."""
    count = 0
    for name, documents in files.items():
        for obj in documents:
            try:
                kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
            except kubernetes_validate.ValidationError as e:
                path = ".".join(str(p) for p in e.path)
                pytest.fail(f"{name}: {obj['kind']}/{obj['metadata']['name']}: {path}: {e.message}")
            count += 1
    return count


def by_kind(files: dict[str, list[dict[str, Any]]], kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for docs in files.values() for o in docs if o["kind"] == kind}


def config_of(files: dict[str, list[dict[str, Any]]], name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(by_kind(files, "ConfigMap")[f"{name}-config"]["data"]["config.json"])
    return data


def test_the_validator_is_not_vacuous() -> None:
    files = kubernetes_manifests(rich_flow().config)
    deployment = dict(by_kind(files, "Deployment")["indexer-0"])
    deployment["spec"] = {**deployment["spec"], "replicaz": 2}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)


@pytest.mark.parametrize("source", ["rich", "search-example", "http-only"])
def test_every_object_validates_against_the_kubernetes_schemas(source: str) -> None:
    if source == "rich":
        flow = rich_flow()
    elif source == "search-example":
        flow = Flow.load_config(ROOT / "examples/search/flow.yml")
    else:
        flow = Flow(protocol="http").add(name="echo", uses="executors:Echo")
    files = kubernetes_manifests(flow.config, KubernetesOptions(env_from_secrets=("api-keys",)))
    assert validate_all(files) >= 7
    # Round trip: what was written is what a YAML reader gets back.
    for documents in files.values():
        assert list(yaml.safe_load_all(dump_documents(documents))) == documents


def test_objects_per_shard_and_the_gateway() -> None:
    flow = rich_flow()
    files = kubernetes_manifests(flow.config)
    assert sorted(files) == [
        "00-namespace.yml",
        "gateway.yml",
        "indexer.yml",
        "joiner.yml",
        "my-encoder.yml",
        "tagger.yml",
    ]
    namespace = files["00-namespace.yml"][0]
    assert namespace["kind"] == "Namespace" and namespace["metadata"]["name"] == "shop-search"
    deployments = by_kind(files, "Deployment")
    services = by_kind(files, "Service")
    shards = ["my-encoder", "indexer-0", "indexer-1", "tagger", "joiner"]
    assert sorted(deployments) == sorted([*shards, "gateway"])
    assert {d["metadata"]["namespace"] for d in deployments.values()} == {"shop-search"}
    assert deployments["my-encoder"]["spec"]["replicas"] == 3
    assert deployments["indexer-1"]["spec"]["replicas"] == 2
    for name in shards:
        service = services[name]["spec"]
        assert service["clusterIP"] == "None", "executor Services are headless: DNS returns every pod"
        assert service["selector"] == deployments[name]["spec"]["selector"]["matchLabels"]
        labels = deployments[name]["spec"]["template"]["metadata"]["labels"]
        assert service["selector"].items() <= labels.items()
        assert service["ports"] == [
            {"name": "grpc", "port": 8080, "targetPort": 8080, "protocol": "TCP", "appProtocol": "grpc"}
        ]
    assert "clusterIP" not in services["gateway"]["spec"]
    assert [p["port"] for p in services["gateway"]["spec"]["ports"]] == [8080, 9000]


def test_each_process_runs_plait_with_its_config_from_a_config_map() -> None:
    files = kubernetes_manifests(rich_flow().config)
    for name, deployment in by_kind(files, "Deployment").items():
        pod = deployment["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        kind = "gateway" if name == "gateway" else "executor"
        assert container["command"] == ["plait"]
        assert container["args"] == [kind, "--config", "/etc/plait/config.json"]
        mount = container["volumeMounts"][0]
        assert mount == {"name": "config", "mountPath": "/etc/plait", "readOnly": True}
        assert pod["volumes"][0] == {"name": "config", "configMap": {"name": f"{name}-config"}}
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert container["securityContext"]["allowPrivilegeEscalation"] is False
    replica = ReplicaConfig.model_validate(config_of(files, "indexer-1"))
    assert (replica.host, replica.port, replica.shard_id, replica.shards) == ("0.0.0.0", 8080, 1, 2)
    assert replica.max_connection_age == 300.0
    assert replica.executor.uses == "executors:ShardCounter"
    assert replica.executor.workspace == "/workspace"
    assert replica.parent_pid is None and replica.public_port is None


def test_the_gateway_balances_each_shard_over_its_headless_service_dns_name() -> None:
    files = kubernetes_manifests(rich_flow().config, KubernetesOptions(namespace="prod"))
    gateway = GatewayConfig.model_validate(config_of(files, "gateway"))
    routes = {e.name: e for e in gateway.executors}
    assert routes["my_encoder"].shards == (("dns:///my-encoder.prod.svc:8080",),)
    assert routes["indexer"].shards == (
        ("dns:///indexer-0.prod.svc:8080",),
        ("dns:///indexer-1.prod.svc:8080",),
    )
    assert routes["indexer"].polling == {"/count": "ALL", "*": "ANY"}
    assert routes["joiner"].needs == ("indexer", "tagger")
    assert routes["tagger"].when == {"tags__lang": {"$eq": "en"}}
    assert gateway.host == "0.0.0.0" and gateway.ports == (8080, 9000)
    assert gateway.protocols == ("grpc", "http")
    assert gateway.options.max_connection_age == 300.0
    assert gateway.options.grace_period == 20


def test_probes_use_the_grpc_health_service_and_termination_waits_for_the_drain() -> None:
    files = kubernetes_manifests(rich_flow().config)
    for name, deployment in by_kind(files, "Deployment").items():
        pod = deployment["spec"]["template"]["spec"]
        container = pod["containers"][0]
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert container[probe]["grpc"] == {"port": 8080}, (name, probe)
        assert (
            container["startupProbe"]["failureThreshold"] * container["startupProbe"]["periodSeconds"] >= 60
        )
        assert pod["terminationGracePeriodSeconds"] == math.ceil(20) + 5
    http_only = kubernetes_manifests(Flow(protocol="http").add(uses="executors:Echo").config)
    gateway = by_kind(http_only, "Deployment")["gateway"]["spec"]["template"]["spec"]["containers"][0]
    assert gateway["readinessProbe"]["httpGet"] == {"path": "/ready", "port": 8080}
    assert gateway["livenessProbe"]["httpGet"] == {"path": "/health", "port": 8080}


def test_resources_gpus_env_and_secrets() -> None:
    options = KubernetesOptions(
        env_from_secrets=("api-keys",), image="shop/base:1", image_pull_policy="Always"
    )
    files = kubernetes_manifests(rich_flow().config, options)
    deployments = by_kind(files, "Deployment")
    encoder = deployments["my-encoder"]["spec"]["template"]["spec"]["containers"][0]
    assert encoder["image"] == "shop/encoder:1.2"
    assert encoder["imagePullPolicy"] == "Always"
    assert encoder["resources"] == {
        "requests": {"cpu": "500m", "memory": "1Gi"},
        "limits": {"memory": "2Gi", "nvidia.com/gpu": "1"},
    }
    # The Flow's env then the executor's; the local round-robin GPU rule is dropped (gpus= asks).
    assert encoder["env"] == [{"name": "LOG_FORMAT", "value": "json"}, {"name": "PRICE", "value": "$5"}]
    assert encoder["envFrom"] == [{"secretRef": {"name": "api-keys"}}]
    indexer = deployments["indexer-0"]["spec"]["template"]["spec"]["containers"][0]
    assert indexer["image"] == "shop/base:1"
    assert "resources" not in indexer
    gateway = deployments["gateway"]["spec"]["template"]["spec"]["containers"][0]
    assert gateway["image"].startswith("plait:")
    assert gateway["envFrom"] == [{"secretRef": {"name": "api-keys"}}]


def test_a_changed_config_rolls_the_pods() -> None:
    before = by_kind(kubernetes_manifests(rich_flow().config), "Deployment")
    changed = rich_flow().add(name="extra", uses="executors:Echo")
    after = by_kind(kubernetes_manifests(changed.config), "Deployment")

    def digest(objects: dict[str, Any], name: str) -> str:
        return str(objects[name]["spec"]["template"]["metadata"]["annotations"]["plait/config-hash"])

    assert digest(before, "indexer-0") == digest(after, "indexer-0")
    assert digest(before, "gateway") != digest(after, "gateway")
    strategy = after["gateway"]["spec"]["strategy"]
    assert strategy["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}


def test_paths_become_relative_to_the_image_working_directory(tmp_path: Path) -> None:
    (tmp_path / "executors.py").write_text("")
    (tmp_path / "enc.yml").write_text("jtype: Echo\n")
    flow = Flow().add(name="enc", uses=str(tmp_path / "enc.yml"), py_modules=[str(tmp_path / "executors.py")])
    files = kubernetes_manifests(flow.config, KubernetesOptions(base_dir=str(tmp_path)))
    executor = config_of(files, "enc")["executor"]
    assert executor["uses"] == "enc.yml" and executor["py_modules"] == ["executors.py"]


def test_names_are_made_dns_safe_and_clashes_are_refused() -> None:
    flow = Flow().add(name="_My_Enc", uses="executors:Echo")
    assert "my-enc" in by_kind(kubernetes_manifests(flow.config), "Deployment")
    clash = Flow().add(name="a_b", uses="executors:Echo").add(name="a-b", uses="executors:Echo")
    with pytest.raises(ConfigError, match="'a-b'"):
        kubernetes_manifests(clash.config)
    with pytest.raises(ConfigError, match="not a DNS label"):
        kubernetes_manifests(flow.config, KubernetesOptions(namespace="Prod_1"))
    with pytest.raises(ConfigError, match="no executors"):
        kubernetes_manifests(Flow().config)


def test_flow_to_kubernetes_yaml_and_the_cli(tmp_path: Path) -> None:
    paths = rich_flow().to_kubernetes_yaml(tmp_path / "py", namespace="staging", gateway_replicas=2)
    assert paths[0].name == "00-namespace.yml"
    gateway = list(yaml.safe_load_all((tmp_path / "py" / "gateway.yml").read_text()))
    assert {o["metadata"]["namespace"] for o in gateway} == {"staging"}
    assert by_kind({"g": gateway}, "Deployment")["gateway"]["spec"]["replicas"] == 2
    with pytest.raises(ConfigError, match="gateway_replicas"):
        rich_flow().to_kubernetes_yaml(tmp_path / "bad", gateway_replicas=0)

    out = tmp_path / "cli"
    search = str(ROOT / "examples/search/flow.yml")
    args = ["export", "kubernetes", search, str(out), "--namespace", "demo", "--secret", "api-keys"]
    result = CliRunner().invoke(app, [*args, "--image", "plait-search:0.1.0"])
    assert result.exit_code == 0, result.output
    files = {p.name: list(yaml.safe_load_all(p.read_text())) for p in sorted(out.iterdir())}
    assert sorted(files) == ["00-namespace.yml", "encoder.yml", "gateway.yml", "indexer.yml", "ranker.yml"]
    validate_all(files)
    encoder = config_of(files, "encoder")["executor"]
    assert encoder["py_modules"] == ["executors.py"], "relative to the Flow YAML's folder"
    container = by_kind(files, "Deployment")["encoder"]["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "plait-search:0.1.0"
    assert container["envFrom"] == [{"secretRef": {"name": "api-keys"}}]
    assert {"name": "metrics", "containerPort": 9090, "protocol": "TCP"} in container["ports"]
    quiet = tmp_path / "quiet"
    result = CliRunner().invoke(app, ["export", "kubernetes", search, str(quiet), "--no-monitoring"])
    assert result.exit_code == 0, result.output
    assert "prometheus.io" not in (quiet / "encoder.yml").read_text()

    bad = CliRunner().invoke(app, ["export", "kubernetes", str(ROOT / "README.md"), str(tmp_path / "x")])
    assert bad.exit_code != 0


@pytest.mark.parametrize("where", ["file", "env"])
def test_the_gateways_tokens_come_from_a_secret_never_the_export(where: str, monkeypatch: Any) -> None:
    monkeypatch.setenv("PLAIT_TEST_TOKENS", "s3cret-token-value")
    source = {"auth_token_file": "/var/run/plait/tokens"} if where == "file" else {}
    if where == "env":
        source = {"auth_token_env": "PLAIT_TEST_TOKENS"}
    flow = Flow(**source).add(name="echo", uses="executors:Echo")  # type: ignore[arg-type]
    files = kubernetes_manifests(flow.config, KubernetesOptions(auth_secret="team-tokens"))
    validate_all(files)
    assert "s3cret-token-value" not in dump_documents([o for docs in files.values() for o in docs])
    gateway = by_kind(files, "Deployment")["gateway"]["spec"]["template"]["spec"]
    container = gateway["containers"][0]
    if where == "file":
        volume = next(v for v in gateway["volumes"] if v["name"] == "auth-tokens")
        assert volume["secret"] == {
            "secretName": "team-tokens",
            "items": [{"key": "tokens", "path": "tokens"}],
            "defaultMode": 0o440,
        }
        mount = next(m for m in container["volumeMounts"] if m["name"] == "auth-tokens")
        assert mount == {"name": "auth-tokens", "mountPath": "/var/run/plait", "readOnly": True}
    else:
        entry = next(e for e in container["env"] if e["name"] == "PLAIT_TEST_TOKENS")
        assert entry == {
            "name": "PLAIT_TEST_TOKENS",
            "valueFrom": {"secretKeyRef": {"name": "team-tokens", "key": "tokens"}},
        }
    # Executors never get the tokens.
    echo = by_kind(files, "Deployment")["echo"]["spec"]["template"]["spec"]["containers"][0]
    assert "auth-tokens" not in json.dumps(echo) and "PLAIT_TEST_TOKENS" not in json.dumps(echo)


def test_every_pod_serves_metrics_that_prometheus_finds_by_annotation() -> None:
    files = kubernetes_manifests(rich_flow().config)
    for name, deployment in by_kind(files, "Deployment").items():
        template = deployment["spec"]["template"]
        annotations = template["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true", name
        assert annotations["prometheus.io/path"] == "/metrics"
        (container,) = template["spec"]["containers"]
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert ports["metrics"] == int(annotations["prometheus.io/port"]) == 9090
        config = config_of(files, name)
        assert config["observe"] == {"monitoring": True, "port_monitoring": 9090}
    # The gateway's metrics port may not be one it serves on; an executor's own port wins.
    clash = Flow(protocol=["grpc", "http"], port=[8080, 9090]).add(name="a", uses="executors:Echo")
    with pytest.raises(ConfigError, match="metrics port 9090 is also one of its ports"):
        kubernetes_manifests(clash.config)
    own = Flow().add(name="a", uses="executors:Echo", monitoring=True, port_monitoring=9100)
    files = kubernetes_manifests(own.config, KubernetesOptions(monitoring_port=9200))
    assert config_of(files, "a")["observe"]["port_monitoring"] == 9100
    assert config_of(files, "gateway")["observe"]["port_monitoring"] == 9200
    # Turned off: no metrics port, no annotation, nothing in the config (tracing stays as set).
    traced = Flow(tracing=True, traces_exporter_host="otel", traces_exporter_port=4317).add(
        name="a", uses="executors:Echo"
    )
    files = kubernetes_manifests(traced.config, KubernetesOptions(monitoring=False))
    assert validate_all(files) > 0
    for name, deployment in by_kind(files, "Deployment").items():
        template = deployment["spec"]["template"]
        assert "prometheus.io/scrape" not in template["metadata"]["annotations"]
        assert "metrics" not in {p["name"] for p in template["spec"]["containers"][0]["ports"]}
        assert config_of(files, name)["observe"] == {
            "tracing": True,
            "traces_exporter_host": "otel",
            "traces_exporter_port": 4317,
        }


# -- TLS: Secrets mounted where the configs look, probes that speak TLS ---------------------------


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("export-certs"))


def pod_of(files: dict[str, list[dict[str, Any]]], name: str) -> dict[str, Any]:
    pod: dict[str, Any] = by_kind(files, "Deployment")[name]["spec"]["template"]["spec"]
    return pod


def tls_paths(config: dict[str, Any]) -> list[str]:
    """Every TLS file a process's config names."""
    paths = [config.get("options", {}).get(k) for k in ("ssl_certfile", "ssl_keyfile")]
    mtls = config.get("internal_tls") or {}
    paths += [mtls.get(k) for k in ("ca_file", "certfile", "keyfile")]
    return [p for p in paths if p]


def mounted_from(pod: dict[str, Any], path: str) -> tuple[str, str]:
    """(Secret, key) whose file the pod's container sees at ``path``; fails when none does."""
    (container,) = pod["containers"]
    folder, name = posixpath.split(path)
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == folder]
    assert mount["readOnly"] is True
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    secret = volume["secret"]
    assert secret["defaultMode"] == 0o440
    (item,) = [i for i in secret["items"] if i["path"] == name]
    return secret["secretName"], item["key"]


def pem_texts(certs: Certs) -> list[str]:
    files = [certs.ca, certs.server.cert, certs.server.key, certs.client.cert, certs.client.key]
    return [Path(f).read_text().strip() for f in files]


def test_tls_files_are_mounted_from_secrets_where_the_configs_name_them(certs: Certs) -> None:
    options = KubernetesOptions(tls_secret="shop-tls", internal_tls_secret="shop-mtls")
    files = kubernetes_manifests(tls_flow(certs).config, options)
    assert validate_all(files) >= 9
    text = dump_documents([o for docs in files.values() for o in docs])
    for pem in pem_texts(certs):
        assert pem not in text
    assert "-----BEGIN" not in text and certs.server.key not in text, "names of Secrets, never files"
    expected = {
        "/etc/plait-tls/gateway/tls.crt": ("shop-tls", "tls.crt"),
        "/etc/plait-tls/gateway/tls.key": ("shop-tls", "tls.key"),
        "/etc/plait-tls/internal/ca.crt": ("shop-mtls", "ca.crt"),
        "/etc/plait-tls/internal/tls.crt": ("shop-mtls", "tls.crt"),
        "/etc/plait-tls/internal/tls.key": ("shop-mtls", "tls.key"),
    }
    for name in ("encoder", "indexer-0", "indexer-1", "gateway"):
        config, pod = config_of(files, name), pod_of(files, name)
        paths = tls_paths(config)
        assert len(paths) == (5 if name == "gateway" else 3), name
        for path in paths:
            assert mounted_from(pod, path) == expected[path], (name, path)
        # Secret files are root's with mode 0440: the image's user reads them as the pod's fsGroup.
        assert pod["securityContext"]["fsGroup"] == 10001
        assert pod["securityContext"]["runAsNonRoot"] is True
    gateway = GatewayConfig.model_validate(config_of(files, "gateway"))
    assert gateway.options.ssl_certfile == "/etc/plait-tls/gateway/tls.crt"
    assert (
        gateway.internal_tls is not None and gateway.internal_tls.ca_file == "/etc/plait-tls/internal/ca.crt"
    )
    replica = ReplicaConfig.model_validate(config_of(files, "indexer-1"))
    assert replica.internal_tls is not None
    assert replica.internal_tls.keyfile == "/etc/plait-tls/internal/tls.key"
    # The defaults, and executors never get the gateway's own key.
    files = kubernetes_manifests(tls_flow(certs).config)
    assert mounted_from(pod_of(files, "gateway"), "/etc/plait-tls/gateway/tls.key") == (
        "plait-tls",
        "tls.key",
    )
    secrets = {v["secret"]["secretName"] for v in pod_of(files, "encoder")["volumes"] if "secret" in v}
    assert secrets == {"plait-internal-tls"}


def test_tls_processes_are_probed_by_plait_ping_and_plain_ones_natively(certs: Certs) -> None:
    files = kubernetes_manifests(tls_flow(certs).config, KubernetesOptions(namespace="prod"))
    for name in ("encoder", "indexer-1"):
        container = pod_of(files, name)["containers"][0]
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert "grpc" not in container[probe]
            assert container[probe]["timeoutSeconds"] >= 5
        command = container["readinessProbe"]["exec"]["command"]
        mtls = config_of(files, name)["internal_tls"]
        # Its own certificate (a caller must present one) and the name the gateway checks.
        assert command == [
            "plait", "ping", "127.0.0.1:8080",
            "--ca-file", mtls["ca_file"], "--cert-file", mtls["certfile"], "--key-file", mtls["keyfile"],
            "--server-name", f"{name}.prod.svc", "--timeout", "3",
        ]  # fmt: skip
    gateway = pod_of(files, "gateway")["containers"][0]
    assert gateway["livenessProbe"]["exec"]["command"] == [
        "plait", "ping", "grpcs://127.0.0.1:8080",
        "--ca-file", "/etc/plait-tls/gateway/tls.crt", "--any-server-name", "--timeout", "3",
    ]  # fmt: skip
    # internal_tls.server_name is what the gateway checks, so the probes check it too.
    named = tls_flow(
        certs,
        internal=False,
        internal_tls={"ca_file": "ca", "certfile": "c", "keyfile": "k", "server_name": "plait.internal"},
    )
    command = pod_of(kubernetes_manifests(named.config), "encoder")["containers"][0]["startupProbe"]["exec"][
        "command"
    ]
    assert command[command.index("--server-name") + 1] == "plait.internal"

    # TLS on the gateway only: executors are probed natively and mount nothing.
    files = kubernetes_manifests(tls_flow(certs, internal=False).config)
    validate_all(files)
    encoder = pod_of(files, "encoder")
    assert encoder["containers"][0]["readinessProbe"]["grpc"] == {"port": 8080}
    assert [v["name"] for v in encoder["volumes"]] == ["config", "workspace"]
    assert "fsGroup" not in encoder["securityContext"]
    assert "exec" in pod_of(files, "gateway")["containers"][0]["readinessProbe"]
    # Mutual TLS only: the gateway's own port is plain (native probe) but it mounts the mTLS files.
    files = kubernetes_manifests(tls_flow(certs, gateway=False).config)
    validate_all(files)
    gateway_pod = pod_of(files, "gateway")
    assert gateway_pod["containers"][0]["readinessProbe"]["grpc"] == {"port": 8080}
    assert mounted_from(gateway_pod, "/etc/plait-tls/internal/tls.crt") == ("plait-internal-tls", "tls.crt")
    assert "exec" in pod_of(files, "encoder")["containers"][0]["readinessProbe"]
    # An HTTP-only TLS gateway: the kubelet's own HTTPS probes.
    files = kubernetes_manifests(tls_flow(certs, protocol="http").config)
    validate_all(files)
    gateway = pod_of(files, "gateway")["containers"][0]
    assert gateway["readinessProbe"]["httpGet"] == {"path": "/ready", "port": 8080, "scheme": "HTTPS"}
    assert gateway["livenessProbe"]["httpGet"] == {"path": "/health", "port": 8080, "scheme": "HTTPS"}


def test_without_tls_nothing_is_mounted_and_probes_stay_native() -> None:
    files = kubernetes_manifests(rich_flow().config)
    text = dump_documents([o for docs in files.values() for o in docs])
    assert "plait-tls" not in text and "fsGroup" not in text and "exec:" not in text


def test_the_cli_names_the_tls_secrets(certs: Certs, tmp_path: Path) -> None:
    flow_yml = tmp_path / "flow.yml"
    tls_flow(certs).save_config(flow_yml)
    out = tmp_path / "k8s"
    args = ["--tls-secret", "edge-cert", "--internal-tls-secret", "mesh-cert"]
    result = CliRunner().invoke(app, ["export", "kubernetes", str(flow_yml), str(out), *args])
    assert result.exit_code == 0, result.output
    files = {p.name: list(yaml.safe_load_all(p.read_text())) for p in sorted(out.iterdir())}
    validate_all(files)
    gateway = pod_of(files, "gateway")
    assert mounted_from(gateway, "/etc/plait-tls/gateway/tls.crt") == ("edge-cert", "tls.crt")
    assert mounted_from(gateway, "/etc/plait-tls/internal/ca.crt") == ("mesh-cert", "ca.crt")
    text = "".join(p.read_text() for p in out.iterdir())
    for pem in pem_texts(certs):
        assert pem not in text


# -- the probes an export writes, run against real TLS servers -------------------------------------


@pytest.fixture(scope="module")
def tls_stack(certs: Certs) -> Iterator[Stack]:
    """A TLS gateway (gRPC and HTTP) in front of a mutual-TLS executor, on 127.0.0.1."""
    options = ServerOptions(ssl_certfile=certs.server.cert, ssl_keyfile=certs.server.key, grace_period=0.5)
    with gateway_stack(options, internal_tls=certs.mutual_tls(), protocols=("grpc", "http")) as stack:
        yield stack


def secret_files(certs: Certs) -> dict[str, str]:
    """What the Secrets would hold: the in-container paths, and the real files here."""
    return {
        "/etc/plait-tls/gateway/tls.crt": certs.server.cert,
        "/etc/plait-tls/gateway/tls.key": certs.server.key,
        "/etc/plait-tls/internal/ca.crt": certs.ca,
        "/etc/plait-tls/internal/tls.crt": certs.server.cert,
        "/etc/plait-tls/internal/tls.key": certs.server.key,
    }


def run_probe(argv: list[str], files: dict[str, str], *replace: tuple[str, str]) -> int:
    """Run a probe's command as the container would, with its files where they are here."""
    args = []
    for arg in argv:
        for old, new in (*files.items(), *replace):
            arg = arg.replace(old, new)
        args.append(arg)
    assert args[0] == "plait"
    command = plait_cmd(*args[1:])
    return subprocess.run(command, env=subprocess_env(), capture_output=True, timeout=60).returncode


@pytest.mark.timeout(120)
def test_the_exported_exec_probes_pass_against_real_tls_servers(certs: Certs, tls_stack: Stack) -> None:
    mtls = {"ca_file": certs.ca, "certfile": certs.client.cert, "keyfile": certs.client.key}
    flow = tls_flow(
        certs,
        internal=False,
        internal_tls={**mtls, "server_name": "localhost"},  # a name the test certificate carries
        port=[tls_stack.ports["grpc"], tls_stack.ports["http"]],
    )
    options = KubernetesOptions(executor_port=tls_stack.executor_port, monitoring=False)
    files = kubernetes_manifests(flow.config, options)
    real = secret_files(certs)
    gateway = pod_of(files, "gateway")["containers"][0]["readinessProbe"]["exec"]["command"]
    executor = pod_of(files, "encoder")["containers"][0]["readinessProbe"]["exec"]["command"]
    assert run_probe(gateway, real) == 0
    assert run_probe(executor, real) == 0
    # Failures wait out the probe's timeout ("--timeout", "3", last): 1 s is enough here.
    # The gateway's probe trusts only its own certificate.
    wrong = {**real, "/etc/plait-tls/gateway/tls.crt": certs.other_ca}
    assert run_probe([*gateway[:-1], "1"], wrong) == 1
    # An executor refuses a probe whose certificate another CA signed, or that expects another name.
    rogue = {
        **real,
        "/etc/plait-tls/internal/tls.crt": certs.rogue.cert,
        "/etc/plait-tls/internal/tls.key": certs.rogue.key,
    }
    assert run_probe([*executor[:-1], "1"], rogue) == 1
    assert run_probe([*executor[:-1], "1"], real, ("localhost", "encoder.secure.svc")) == 1
    # A TLS probe fails against a plain server.
    with gateway_stack(ServerOptions(grace_period=0.5), protocols=("grpc",)) as plain:
        target = (f"127.0.0.1:{tls_stack.ports['grpc']}", f"127.0.0.1:{plain.ports['grpc']}")
        assert run_probe([*gateway[:-1], "1"], real, target) == 1


def public_certificate(certs: Certs, folder: Path, name: str) -> tuple[str, str]:
    """A certificate (and key) the test CA signed for ``name`` alone, not 127.0.0.1: a gateway's
    certificate as it is in production."""
    ca = x509.load_pem_x509_certificate(Path(certs.ca).read_bytes())
    ca_key = serialization.load_pem_private_key(Path(certs.ca).with_suffix(".key").read_bytes(), None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    cert_path, key_path = folder / "public.pem", folder / "public.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return str(cert_path), str(key_path)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("name", ["api.example.com", "*.example.com"])
def test_the_gateway_probe_passes_when_its_certificate_names_a_public_host_only(
    certs: Certs, tmp_path: Path, name: str
) -> None:
    cert, key = public_certificate(certs, tmp_path, name)
    options = ServerOptions(ssl_certfile=cert, ssl_keyfile=key, grace_period=0.5)
    with gateway_stack(options, protocols=("grpc",)) as stack:
        flow = Flow(port=stack.ports["grpc"], ssl_certfile=cert, ssl_keyfile=key).add(uses="executors:Echo")
        files = kubernetes_manifests(flow.config, KubernetesOptions(monitoring=False))
        probe = pod_of(files, "gateway")["containers"][0]["readinessProbe"]["exec"]["command"]
        assert run_probe(probe, {"/etc/plait-tls/gateway/tls.crt": cert}) == 0
        # What --any-server-name is for: 127.0.0.1 is not a name the certificate carries.
        strict = [arg for arg in probe if arg != "--any-server-name"]
        assert run_probe([*strict[:-1], "1"], {"/etc/plait-tls/gateway/tls.crt": cert}) == 1
