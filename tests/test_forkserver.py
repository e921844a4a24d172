"""The executor fork server: Flows and Deployments of two or more executors fork them from one
process that imported plait's serving stack once. A forked executor must be indistinguishable from
a plainly started one: environment, output, exit codes, restarts, parent watching.

Every process is started by a Flow or Deployment of the test and stopped by its close(); the only
signals sent are to pids those report.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
from orchestration_executors import Note

from plait import Client, Deployment, Flow
from plait.errors import StartupError
from plait.orchestrate.forkserver import FORKSERVER_ENV, LOST_EXIT_CODE
from plait.orchestrate.process import ChildProcess

H = "127.0.0.1"
VERSIONED = "orchestration_executors:Versioned"


def ppid(pid: int | None) -> int:
    assert pid is not None
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[1])


def cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()


def getenv(child: ChildProcess, name: str) -> str:
    with Client(child.address) as client:
        return str(client.post("/getenv", Note(text=name)).text[0])


def executors(flow: Flow) -> dict[str, ChildProcess]:
    return {c.label: c for c in flow.children if c.label != "gateway"}


def wait_for(predicate: object, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def test_executors_fork_from_the_server_with_their_own_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PLAIT_TEST_OUTER", "outer")
    flow = (
        Flow(host=H, quiet=True, grace_period=1, env={"PLAIT_TEST_FLOW": "flow"})
        .add(name="a", uses=VERSIONED, env={"PLAIT_TEST_OWN": "a", "CUDA_VISIBLE_DEVICES": "3"})
        .add(name="b", uses=VERSIONED)
    )
    with flow:
        server = flow._forkserver
        assert server is not None
        assert "plait._forkserver" in cmdline(server.pid)
        children = executors(flow)
        gateway = next(c for c in flow.children if c.label == "gateway")
        assert {label: ppid(c.pid) for label, c in children.items()} == {"a": server.pid, "b": server.pid}
        assert ppid(gateway.pid) == os.getpid()  # the gateway is started plainly
        a, b = children["a"], children["b"]
        assert (getenv(a, "PLAIT_TEST_OWN"), getenv(b, "PLAIT_TEST_OWN")) == ("'a'", "None")
        assert (getenv(a, "CUDA_VISIBLE_DEVICES"), getenv(b, "CUDA_VISIBLE_DEVICES")) == ("'3'", "None")
        assert getenv(a, "PLAIT_TEST_FLOW") == getenv(b, "PLAIT_TEST_FLOW") == "'flow'"
        assert getenv(b, "PLAIT_TEST_OUTER") == "'outer'"
        # The whole Flow works, and each executor's own output (its log lines) reached us.
        out = flow.post("/version", Note(text="x"))
        assert out.text[0].startswith("v1:")
        assert any("ready on" in line for line in a.last_lines().splitlines()), a.last_lines()
    assert server.lost or server._proc.poll() is not None
    assert server._proc.poll() == 0, "the fork server did not stop with the Flow"


def test_an_environment_read_at_load_time_gets_a_plain_process() -> None:
    # numpy (loaded by the fork server) reads OPENBLAS_NUM_THREADS once, when it loads: an executor
    # that sets it must load numpy itself.
    flow = (
        Flow(host=H, quiet=True, grace_period=1)
        .add(name="forked", uses=VERSIONED)
        .add(name="plain", uses=VERSIONED, env={"OPENBLAS_NUM_THREADS": "1"})
        .add(name="forked2", uses=VERSIONED)
    )
    with flow:
        server = flow._forkserver
        assert server is not None
        children = executors(flow)
        assert ppid(children["forked"].pid) == ppid(children["forked2"].pid) == server.pid
        assert ppid(children["plain"].pid) == os.getpid()
        assert getenv(children["plain"], "OPENBLAS_NUM_THREADS") == "'1'"


def test_it_can_be_turned_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(FORKSERVER_ENV, "0")
    flow = Flow(host=H, quiet=True, grace_period=1).add(name="a", uses=VERSIONED)
    flow = flow.add(name="b", uses=VERSIONED)
    with flow:
        assert flow._forkserver is None
        assert all(ppid(c.pid) == os.getpid() for c in flow.children)


def test_a_forked_executor_that_fails_at_start_reports_its_exit_code_and_output() -> None:
    flow = (
        Flow(host=H, quiet=True, grace_period=1, timeout_ready=60)
        .add(name="good", uses=VERSIONED)
        .add(name="broken", uses="executors:FailsAtInit")
    )
    with pytest.raises(StartupError) as info:
        flow.start()
    message = str(info.value)
    assert "'broken' exited with code 1" in message, message
    assert "model weights not found" in message  # its output, relayed through its pipe
    assert flow._forkserver is None and not flow.children  # close() ran: everything stopped


def test_a_killed_replica_reports_the_signal_and_is_restarted_from_the_server() -> None:
    with Deployment(uses=VERSIONED, host=H, replicas=2, quiet=True, grace_period=1) as dep:
        server = dep._forkserver
        assert server is not None
        victim = dep.children[0]
        old_pid = victim.pid
        assert old_pid is not None and ppid(old_pid) == server.pid
        os.kill(old_pid, signal.SIGKILL)
        wait_for(lambda: victim.returncode() is not None or victim.pid != old_pid)
        wait_for(lambda: any(s.restarts == 1 and s.alive for s in dep.status()), timeout=60)
        status = next(s for s in dep.status() if s.restarts == 1)
        assert status.last_exit == "killed by SIGKILL"
        assert status.pid != old_pid and ppid(status.pid) == server.pid


def test_executors_stop_and_start_plainly_when_the_server_dies() -> None:
    with Deployment(uses=VERSIONED, host=H, replicas=2, quiet=True, grace_period=1) as dep:
        server = dep._forkserver
        assert server is not None
        old = {c.label: c.pid for c in dep.children}
        os.kill(server.pid, signal.SIGKILL)
        # The executors watch the server as their parent: they stop; their exit codes are unknown
        # now; the supervisor starts them again, plainly.
        wait_for(lambda: server.lost)
        wait_for(
            lambda: all(s.alive and s.restarts >= 1 for s in dep.status()),
            timeout=60,
        )
        for status in dep.status():
            assert status.pid != old[status.label]
            assert ppid(status.pid) == os.getpid()
            assert status.last_exit == f"exited with code {LOST_EXIT_CODE}"
            # Alive is not yet serving: a plain process takes its imports first (a second or more
            # on a loaded machine), longer than a call's retries wait when every replica is down.
            host, port = status.address.rsplit(":", 1)
            with Client(host, int(port)) as replica:
                wait_for(lambda replica=replica: replica.is_ready(timeout=1.0), timeout=60)
        out = dep.post("/version", Note(text="x"))
        assert out.text[0].startswith("v1:")


def test_one_executor_gets_no_fork_server() -> None:
    with Deployment(uses=VERSIONED, host=H, quiet=True, grace_period=1) as dep:
        assert dep._forkserver is None
        assert ppid(dep.children[0].pid) == os.getpid()


def test_a_server_whose_imports_fail_leaves_executors_to_plain_processes(tmp_path: Path) -> None:
    from plait.config import ExecutorConfig, ReplicaConfig
    from plait.orchestrate.forkserver import ForkServer
    from plait.orchestrate.process import child_env, free_port, wait_ready

    broken = tmp_path / "numpy"
    broken.mkdir()
    (broken / "__init__.py").write_text("raise RuntimeError('this numpy is broken on purpose')\n")
    env = child_env({})
    server = ForkServer({**env, "PYTHONPATH": f"{tmp_path}{os.pathsep}{env['PYTHONPATH']}"})
    port = free_port()
    config = ReplicaConfig(
        executor=ExecutorConfig(uses=VERSIONED, name="v"), host=H, port=port, parent_pid=os.getpid()
    )
    child = ChildProcess("v", "executor", config, f"{H}:{port}", {}, quiet=True, forkserver=server)
    try:
        assert server.spawn(["executor", "--config", config.model_dump_json()], env) is None
        assert server.lost
        child.start()  # falls back to a plain process
        wait_ready([child], 60)
        assert ppid(child.pid) == os.getpid()
        assert getenv(child, "PLAIT_TEST_NOTHING") == "None"
    finally:
        child.terminate()
        child.wait(10)
        server.close()
    assert server._proc.returncode not in (None, 0)
