"""The exported Kubernetes topology, run on several "hosts" without a cluster.

Each exported pod (the gateway, every executor replica of every shard) runs as its own process in
its own network namespace, joined to the others through veth pairs on a Linux bridge (which lives
in a namespace of its own). A pod's ``/etc/hosts`` comes from ``/etc/netns/<ns>/hosts``, which
``ip netns exec`` mounts over ``/etc/hosts``: it maps each headless Service's DNS name to the IPs of
its pods, as cluster DNS would. Each process is started from the exported container command and the
config its ConfigMap holds. So the gateway reaches the replicas by Service name over a real network
path, and balances them with gRPC ``round_robin`` as it would on Kubernetes.

The client runs inside the gateway's namespace (127.0.0.1 there): no traffic touches the host's own
network. Needs root (CI runs as root); skipped where network namespaces cannot be created.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from conftest import subprocess_env

from plait import Flow
from plait.export import KubernetesOptions, kubernetes_manifests
from plait.export.common import CONFIG_PATH

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

NAMESPACE = "shop"
MAX_CONNECTION_AGE = 2.0
"""Short, so the test sees the gateway pick up a new pod after a connection ages out."""


def _ip(*args: str) -> None:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10)
    if result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {result.stderr.strip()}")


@dataclass
class Pod:
    name: str  # the Deployment's name (gateway, echo, counter-0...)
    netns: str
    ip: str
    process: subprocess.Popen[bytes] | None = None
    log: Path | None = None


@dataclass
class Cluster:
    """Network namespaces on one bridge; everything made here is removed by ``destroy``."""

    prefix: str
    workdir: Path
    subnet: str = field(default_factory=lambda: f"10.{random.randint(64, 127)}.{random.randint(0, 255)}")
    pods: list[Pod] = field(default_factory=list)
    namespaces: list[str] = field(default_factory=list)

    @property
    def bridge_ns(self) -> str:
        return f"{self.prefix}-br"

    def create(self) -> None:
        self._add_netns(self.bridge_ns)
        _ip("-n", self.bridge_ns, "link", "add", "br0", "type", "bridge")
        _ip("-n", self.bridge_ns, "link", "set", "br0", "up")

    def _add_netns(self, name: str) -> None:
        _ip("netns", "add", name)
        self.namespaces.append(name)
        _ip("-n", name, "link", "set", "lo", "up")

    def add_pod(self, name: str) -> Pod:
        index = len(self.pods)
        netns = f"{self.prefix}-p{index}"
        self._add_netns(netns)
        ip = f"{self.subnet}.{index + 2}"
        # One end in the bridge's namespace, the other (eth0) in the pod's.
        port = f"veth{index}"
        _ip("-n", self.bridge_ns, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", netns)
        _ip("-n", self.bridge_ns, "link", "set", port, "master", "br0", "up")
        _ip("-n", netns, "addr", "add", f"{ip}/24", "dev", "eth0")
        _ip("-n", netns, "link", "set", "eth0", "up")
        pod = Pod(name=name, netns=netns, ip=ip)
        self.pods.append(pod)
        return pod

    def write_hosts(self) -> None:
        """Cluster DNS, by hand: each headless Service name resolves to its live pods' IPs.
        Written in place: a running ``ip netns exec`` process sees the file it mounted change."""
        services: dict[str, list[str]] = {}
        for pod in self.pods:
            if pod.process is None or pod.process.poll() is None:
                services.setdefault(f"{pod.name}.{NAMESPACE}.svc", []).append(pod.ip)
        lines = ["127.0.0.1 localhost"]
        lines += [f"{ip} {name}" for name, ips in services.items() for ip in ips]
        for netns in self.namespaces:
            folder = Path("/etc/netns") / netns
            folder.mkdir(parents=True, exist_ok=True)
            with open(folder / "hosts", "w") as f:
                f.write("\n".join(lines) + "\n")

    def start(self, pod: Pod, container: dict[str, Any], config_text: str) -> None:
        """Run the pod's container command in its namespace, its ConfigMap as the config file."""
        config = self.workdir / f"{pod.netns}.json"
        config.write_text(config_text)
        assert container["command"] == ["plait"]
        args = [str(config) if a == CONFIG_PATH else a for a in container["args"]]
        env = subprocess_env()
        env.update({e["name"]: e["value"] for e in container.get("env", [])})
        pod.log = self.workdir / f"{pod.netns}.log"
        with open(pod.log, "wb") as out:
            pod.process = subprocess.Popen(
                ["ip", "netns", "exec", pod.netns, sys.executable, "-m", "plait", *args],
                env=env,
                cwd=self.workdir,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def run_in(self, pod: Pod, script: Path, *args: str, timeout: float = 90) -> dict[str, Any]:
        result = subprocess.run(
            ["ip", "netns", "exec", pod.netns, sys.executable, str(script), *args],
            env=subprocess_env(),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        assert result.returncode == 0, result.stderr[-3000:] + self.logs()
        data: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
        return data

    def logs(self) -> str:
        out = []
        for pod in self.pods:
            if pod.log and pod.log.exists():
                out.append(f"--- {pod.name} ({pod.ip}):\n{pod.log.read_text()[-1500:]}")
        return "\n".join(out)

    def destroy(self) -> None:
        for pod in self.pods:
            if pod.process is not None and pod.process.poll() is None:
                pod.process.send_signal(signal.SIGKILL)  # our own child, by its pid
                pod.process.wait(timeout=10)
        for netns in self.namespaces:
            subprocess.run(["ip", "netns", "del", netns], capture_output=True, timeout=10)
            shutil.rmtree(Path("/etc/netns") / netns, ignore_errors=True)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    if sys.platform != "linux" or shutil.which("ip") is None:
        pytest.skip("network namespaces need Linux and iproute2 (`ip`)")
    probe = f"plait{os.getpid()}-probe"
    result = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True, timeout=10)
    if result.returncode != 0:
        pytest.skip(f"cannot create network namespaces here (needs root): {result.stderr.strip()}")
    subprocess.run(["ip", "netns", "del", probe], capture_output=True, timeout=10)
    etc_netns_existed = Path("/etc/netns").exists()
    made = Cluster(prefix=f"plait{os.getpid()}", workdir=tmp_path)
    try:
        made.create()
        yield made
    finally:
        made.destroy()
        if not etc_netns_existed:
            with contextlib.suppress(OSError):  # only if empty: someone else may use it now
                Path("/etc/netns").rmdir()


CLIENT = textwrap.dedent(
    """
    # Run inside the gateway's namespace: argv = port, count, pids to wait for (comma-separated).
    import json, sys, time
    from plait import Client, DocList
    from executors import Text

    port, count, wanted = int(sys.argv[1]), int(sys.argv[2]), set(sys.argv[3].split(","))
    errors = []

    def whoami(client):
        try:
            docs = client.post("/whoami", DocList[Text]([Text(text="hi")]), return_type=DocList[Text],
                               timeout=10)
            return docs[0].text.rsplit(":", 1)[1]
        except Exception as e:
            errors.append(repr(e))
            return None

    with Client(host="127.0.0.1", port=port) as client:
        deadline = time.monotonic() + 60
        while not client.is_ready():
            if time.monotonic() > deadline:
                raise SystemExit("the gateway did not become ready")
            time.sleep(0.2)
        # Until every wanted replica has answered once (a pod that just started, or that the
        # gateway has not yet found through DNS, joins the rotation within a few seconds) ...
        seen, deadline = set(), time.monotonic() + 40
        while not wanted <= seen and time.monotonic() < deadline:
            seen.add(whoami(client))
            time.sleep(0.02)
        # ... then `count` requests: who served each.
        pids = [whoami(client) for _ in range(count)]
        replies = []
        client.post("/count", [Text(), Text(), Text()], on_done=replies.append, timeout=10)
        counts = replies[0].parameters["__results__"]["counter"]
    print(json.dumps({"seen": sorted(p for p in seen if p), "pids": pids, "errors": errors,
                      "counts": counts}))
    """
)


SCRAPE = textwrap.dedent(
    """
    # Run inside the gateway's namespace: argv = metrics URLs. Sums plait_requests_total by
    # server and endpoint for each URL, as a Prometheus scrape of the pod would read it.
    import json, sys, urllib.request
    from prometheus_client.parser import text_string_to_metric_families

    out = {}
    for url in sys.argv[1:]:
        text = urllib.request.urlopen(url, timeout=10).read().decode()
        totals = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == "plait_requests_total" and sample.labels["status"] == "OK":
                    key = sample.labels["server"] + " " + sample.labels["endpoint"]
                    totals[key] = totals.get(key, 0) + sample.value
        out[url] = totals
    print(json.dumps(out))
    """
)


def test_exported_pods_on_separate_hosts_serve_balance_and_survive_a_killed_replica(
    cluster: Cluster, tmp_path: Path
) -> None:
    flow = (
        Flow(name="shop", grace_period=1)
        .add(name="echo", uses="executors:Echo", replicas=2)
        .add(name="counter", uses="executors:ShardCounter", shards=2, polling="ALL")
    )
    options = KubernetesOptions(namespace=NAMESPACE, max_connection_age=MAX_CONNECTION_AGE)
    objects = [o for docs in kubernetes_manifests(flow.config, options).values() for o in docs]
    configs = {o["metadata"]["name"]: o["data"]["config.json"] for o in objects if o["kind"] == "ConfigMap"}
    deployments = {o["metadata"]["name"]: o for o in objects if o["kind"] == "Deployment"}
    assert sorted(deployments) == ["counter-0", "counter-1", "echo", "gateway"]

    def container(name: str) -> dict[str, Any]:
        return dict(deployments[name]["spec"]["template"]["spec"]["containers"][0])

    # Every pod its own "host": replicas as the Deployments ask for, the gateway too.
    for name, deployment in deployments.items():
        for _ in range(deployment["spec"]["replicas"]):
            cluster.add_pod(name)
    cluster.write_hosts()
    for pod in cluster.pods:
        cluster.start(pod, container(pod.name), configs[f"{pod.name}-config"])
    gateway = next(p for p in cluster.pods if p.name == "gateway")
    port = str(container("gateway")["ports"][0]["containerPort"])
    client = tmp_path / "client.py"
    client.write_text(CLIENT)

    # 1. Requests flow end to end, balanced over both echo replicas (one DNS name, two pod IPs:
    #    round_robin alternates); both counter shards answer a request polled with ALL.
    replica_pids = [str(p.process.pid) for p in cluster.pods if p.name == "echo" and p.process]
    first = cluster.run_in(gateway, client, port, "20", ",".join(replica_pids))
    assert first["errors"] == []
    assert first["seen"] == sorted(replica_pids), cluster.logs()
    assert min(first["pids"].count(pid) for pid in replica_pids) >= 5, first["pids"]  # 10/10 but for
    # a connection that ages out (max_connection_age) while the 20 requests run
    assert sorted(c["shard"] for c in first["counts"]) == [0, 1]
    # The gateway's connections go over the bridge to the pods' IPs, not over loopback. (They are
    # renewed every couple of seconds, so look a few times.)
    peers = {f"{p.ip}:8080" for p in cluster.pods if p is not gateway}
    seen: set[str] = set()
    deadline = time.monotonic() + 10
    while not peers <= seen and time.monotonic() < deadline:
        sockets = subprocess.run(
            ["ip", "netns", "exec", gateway.netns, "ss", "-Htn", "state", "established"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout
        # Addresses show as 10.x.y.z:port or, on a dual-stack socket, [::ffff:10.x.y.z]:port.
        found = re.findall(r"(\d+\.\d+\.\d+\.\d+)\]?:(\d+)", sockets)
        seen |= {f"{ip}:{port}" for ip, port in found} & peers
        time.sleep(0.2)
    assert peers <= seen, (peers, seen)

    # Every pod serves Prometheus metrics on the port its pod template announces; scraped over
    # the bridge as Prometheus would, they count the requests each process served.
    for name in ("gateway", "echo"):
        template = deployments[name]["spec"]["template"]
        annotations = template["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true"
        ports = {p["name"]: p["containerPort"] for p in container(name)["ports"]}
        assert ports["metrics"] == int(annotations["prometheus.io/port"]) == 9090
    urls = [f"http://{p.ip}:9090/metrics" for p in cluster.pods if p.name in ("gateway", "echo")]
    scrape = tmp_path / "scrape.py"
    scrape.write_text(SCRAPE)
    metrics = cluster.run_in(gateway, scrape, *urls)
    gateway_url = f"http://{gateway.ip}:9090/metrics"
    served = {url: totals.get("echo /whoami", 0) for url, totals in metrics.items() if url != gateway_url}
    whoami_calls = len(first["pids"]) + len(first["seen"])  # at least this many reached the gateway
    assert metrics[gateway_url]["gateway /whoami"] >= whoami_calls, metrics
    assert all(count >= 5 for count in served.values()), served  # both replicas served, and counted
    assert sum(served.values()) == metrics[gateway_url]["gateway /whoami"], metrics

    # 2. A replica killed outright: the Flow keeps serving, every request succeeds.
    victim = next(p for p in cluster.pods if p.name == "echo")
    assert victim.process is not None
    victim.process.send_signal(signal.SIGKILL)
    victim.process.wait(timeout=10)
    survivor = next(pid for pid in replica_pids if pid != str(victim.process.pid))
    second = cluster.run_in(gateway, client, port, "20", survivor)
    assert second["errors"] == [], cluster.logs()
    assert set(second["pids"]) == {survivor}

    # 3. Its replacement comes up on a new IP, as Kubernetes would start it, and joins the
    #    Service's DNS record: connections age out (max_connection_age), the gateway resolves the
    #    name again and sends traffic to the new pod. No mesh, no gateway restart.
    replacement = cluster.add_pod("echo")
    cluster.write_hosts()
    cluster.start(replacement, container("echo"), configs["echo-config"])
    assert replacement.process is not None
    newcomer = str(replacement.process.pid)
    third = cluster.run_in(gateway, client, port, "20", f"{survivor},{newcomer}")
    assert third["errors"] == [], (third["errors"], cluster.logs())
    assert third["seen"] == sorted([survivor, newcomer]), (third, cluster.logs())
    assert min(third["pids"].count(pid) for pid in (survivor, newcomer)) >= 5, third["pids"]
    assert gateway.process is not None and gateway.process.poll() is None
