"""Supervision, exit_on_exceptions, rolling updates and GPU placement, with real processes on 127.0.0.1.

Every process is started by a Deployment or Flow of the test and stopped by its close(); the only
signals sent are to pids those report.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from orchestration_executors import Note

from plait import Client, Deployment, Flow
from plait.errors import ConfigError, ExecutorError, PlaitError
from plait.orchestrate.devices import DevicePlacement, parse_round_robin, without_round_robin
from plait.orchestrate.supervisor import ReplicaStatus, RestartPolicy, exit_reason
from plait.serve.server import listed_exception

H = "127.0.0.1"
EXECUTORS = "orchestration_executors"


def _wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


class _Load:
    """Posts continuously from one thread (until stopped, at most ``max_s``), keeping every outcome."""

    def __init__(self, post: Callable[[], str], max_s: float = 60.0) -> None:
        self.ok: list[str] = []
        self.errors: list[PlaitError] = []
        self._post = post
        self._max_s = max_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="test-load", daemon=True)

    def _run(self) -> None:
        deadline = time.monotonic() + self._max_s
        while not self._stop.is_set() and time.monotonic() < deadline:
            try:
                self.ok.append(self._post())
            except PlaitError as e:
                self.errors.append(e)

    @contextmanager
    def running(self) -> Iterator[_Load]:
        self._thread.start()
        try:
            _wait_for(lambda: len(self.ok) >= 20, 10, "the load to get going")
            yield self
        finally:
            self._stop.set()
            self._thread.join(timeout=30)


def _by_label(statuses: list[ReplicaStatus]) -> dict[str, ReplicaStatus]:
    return {s.label: s for s in statuses}


def _replica_versions(post: Callable[[], str], replicas: int) -> set[str]:
    """Post until ``replicas`` distinct processes have answered; their ``version:pid`` answers."""
    seen: set[str] = set()
    deadline = time.monotonic() + 15
    while len({s.split(":")[1] for s in seen}) < replicas:
        assert time.monotonic() < deadline, f"only {seen} answered"
        seen.add(post())
    return seen


# -- supervision -----------------------------------------------------------------------------------


def test_a_killed_replica_comes_back_on_its_port_and_requests_keep_succeeding() -> None:
    with Deployment(
        uses=f"{EXECUTORS}:Versioned", name="ver", replicas=2, host=H, quiet=True, grace_period=1
    ) as dep:
        victim = dep.status()[0]
        assert (
            victim.label == "ver/rep-0" and victim.alive and victim.restarts == 0 and victim.last_exit is None
        )
        load = _Load(lambda: dep.post("/version", Note()).text[0])
        with load.running():
            assert victim.pid is not None
            os.kill(victim.pid, signal.SIGKILL)
            _wait_for(lambda: dep.status()[0].restarts == 1 and dep.status()[0].alive, 10, "the restart")
            back = dep.status()[0]
            assert back.pid != victim.pid and back.address == victim.address
            assert back.last_exit == "killed by SIGKILL"
            # The client's channel reconnects to the same address by itself and reaches the new process.
            _wait_for(lambda: any(s.endswith(f":{back.pid}") for s in load.ok[-50:]), 20, "traffic to it")
        # Only a call in flight on the killed process may fail (one load thread: at most one).
        assert len(load.errors) <= 1, load.errors
        assert dep.status()[1].restarts == 0


def test_a_replica_that_keeps_crashing_backs_off_and_close_is_still_prompt(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="plait.orchestrate")
    dep = Deployment(
        uses=f"{EXECUTORS}:CrashesOnRestart",
        name="crashy",
        uses_with={"marker": str(tmp_path / "started-once")},
        host=H,
        quiet=True,
        grace_period=1,
    )
    with dep:
        first = dep.status()[0]
        assert first.pid is not None
        os.kill(first.pid, signal.SIGTERM)  # a clean exit it was not asked for counts as unexpected too
        _wait_for(lambda: dep.status()[0].restarts >= 3, 20, "three restarts")
        status = dep.status()[0]
        assert status.last_exit == "exited with code 1"
        started = time.monotonic()
    assert time.monotonic() - started < 5, "close() waited for the crash loop"
    delays = [float(d) for d in re.findall(r"restarting it in ([\d.]+)s", caplog.text)]
    assert delays[:3] == [0.5, 1.0, 2.0], caplog.text
    assert "crashing at start on purpose" in caplog.text  # the log quotes the process's last lines
    assert "exited with code 0" in caplog.text  # the first, clean exit


def test_without_restarts_a_dead_replica_stays_dead_and_is_reported() -> None:
    with Deployment(
        uses=f"{EXECUTORS}:Versioned",
        name="ver",
        replicas=2,
        host=H,
        quiet=True,
        grace_period=1,
        restarts=False,
    ) as dep:
        pid = dep.status()[1].pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        _wait_for(lambda: dep.status()[1].last_exit is not None, 5, "the death to be noticed")
        time.sleep(RestartPolicy().initial_backoff + 0.3)
        status = dep.status()[1]
        assert (status.alive, status.restarts, status.last_exit) == (False, 0, "killed by SIGKILL")
        assert dep.post("/version", Note()).text[0].startswith("v1:")


def test_restart_policy_and_exit_reasons() -> None:
    policy = RestartPolicy()
    assert [policy.delay(n) for n in range(1, 8)] == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    assert exit_reason(-9) == "killed by SIGKILL"
    assert exit_reason(3) == "exited with code 3"


# -- exit_on_exceptions ----------------------------------------------------------------------------


def test_exit_on_exceptions_answers_then_exits_and_the_replica_is_restarted() -> None:
    with Deployment(
        uses=f"{EXECUTORS}:Versioned",
        name="ver",
        host=H,
        quiet=True,
        grace_period=1,
        exit_on_exceptions=[f"{EXECUTORS}.FatalError"],
    ) as dep:
        pid = dep.status()[0].pid
        with pytest.raises(ExecutorError, match="bad state") as info:
            dep.post("/fatal", Note())
        assert info.value.details["exc_type"] == "FatalError"
        _wait_for(lambda: dep.status()[0].restarts == 1, 10, "the restart")
        assert dep.status()[0].last_exit == "exited with code 1"

        def serves() -> bool:
            try:
                return dep.post("/version", Note(), timeout=2).text[0] != f"v1:{pid}"
            except PlaitError:
                return False

        _wait_for(serves, 20, "the restarted replica to serve")
        # An exception that is not listed leaves the replica serving.
        now = dep.status()[0].pid
        with pytest.raises(ExecutorError, match="not listed"):
            dep.post("/bad_input", Note())
        time.sleep(0.5)
        assert dep.status()[0].pid == now and dep.status()[0].restarts == 1


def test_listed_exceptions_match_by_name_qualified_name_or_base_class() -> None:
    from orchestration_executors import FatalError

    error = FatalError("x")
    assert listed_exception(error, ("FatalError",)) == "FatalError"
    assert listed_exception(error, ("orchestration_executors.FatalError",)) is not None
    assert listed_exception(error, ("RuntimeError",)) == "RuntimeError"  # a base class, as `except` does
    assert listed_exception(error, ("ValueError", "other.FatalError")) is None


# -- rolling update --------------------------------------------------------------------------------


def test_rolling_update_of_a_deployment_fails_no_request() -> None:
    with Deployment(
        uses=f"{EXECUTORS}:Versioned",
        name="ver",
        uses_with={"version": "v1"},
        replicas=2,
        host=H,
        quiet=True,
        grace_period=2,
    ) as dep:
        before = dep.status()

        def post() -> str:
            return str(dep.post("/version", Note(), timeout=10).text[0])

        load = _Load(post)
        with load.running():
            dep.rolling_update(uses_with={"version": "v2"})
            served = len(load.ok)
            _wait_for(lambda: len(load.ok) > served + 20, 10, "requests after the update")
        assert load.errors == [], load.errors
        assert {s.split(":")[0] for s in load.ok} == {"v1", "v2"}
        assert {s.split(":")[0] for s in _replica_versions(post, 2)} == {"v2"}
        after = dep.status()
        assert [s.address for s in after] == [s.address for s in before]
        assert not {s.pid for s in after} & {s.pid for s in before}
        assert dep.config.executor.uses_with == {"version": "v2"}
        with Client(H, dep.port) as client:  # the shared public port reaches the new replicas too
            assert client.post("/version", Note()).text[0].startswith("v2:")


def test_rolling_update_of_a_flow_executor_fails_no_request() -> None:
    flow = Flow(host=H, quiet=True, grace_period=2).add(
        name="ver", uses=f"{EXECUTORS}:Versioned", uses_with={"version": "v1"}, replicas=2
    )
    with flow:
        before = _by_label(flow.status())

        def post() -> str:
            return str(flow.post("/version", Note(), timeout=10).text[0])

        load = _Load(post)
        with load.running():
            flow.rolling_update("ver", uses_with={"version": "v2"})
            served = len(load.ok)
            _wait_for(lambda: len(load.ok) > served + 20, 10, "requests after the update")
        assert load.errors == [], load.errors
        assert {s.split(":")[0] for s in _replica_versions(post, 2)} == {"v2"}
        after = _by_label(flow.status())
        assert after["gateway"].pid == before["gateway"].pid  # the gateway kept its addresses
        assert {after[k].address for k in after} == {before[k].address for k in before}
        assert flow.config.executors[0].executor.uses_with == {"version": "v2"}
        with pytest.raises(ConfigError, match="no executor 'nope'"):
            flow.rolling_update("nope", uses_with={})


# -- GPU placement ---------------------------------------------------------------------------------


def _devices_seen(statuses: list[ReplicaStatus], prefix: str) -> list[str]:
    """Each replica's CUDA_VISIBLE_DEVICES, asked at its own address, in label order."""
    seen = []
    for status in sorted(statuses, key=lambda s: s.label):
        if status.label.startswith(prefix):
            with Client(status.address) as client:
                seen.append(client.post("/devices", Note()).text[0])
    return seen


def test_round_robin_gpus_across_replicas_of_a_deployment_and_of_flow_executors() -> None:
    with Deployment(
        uses=f"{EXECUTORS}:Versioned",
        name="gpu",
        replicas=3,
        host=H,
        quiet=True,
        grace_period=1,
        env={"CUDA_VISIBLE_DEVICES": "RR"},
        devices=["0", "1"],  # as if this process had CUDA_VISIBLE_DEVICES=0,1
    ) as dep:
        assert _devices_seen(dep.status(), "gpu/") == ["'0'", "'1'", "'0'"]
    flow = (
        Flow(host=H, quiet=True, grace_period=1)
        .add(name="listed", uses=f"{EXECUTORS}:Versioned", replicas=2, env={"CUDA_VISIBLE_DEVICES": "RR1,3"})
        .add(
            name="ranged",
            uses=f"{EXECUTORS}:Versioned",
            replicas=3,
            needs="gateway",
            env={"CUDA_VISIBLE_DEVICES": "RR0:2"},
        )
    )
    with flow:
        statuses = flow.status()
        assert _devices_seen(statuses, "listed/") == ["'1'", "'3'"]
        assert _devices_seen(statuses, "ranged/") == ["'0'", "'1'", "'0'"]


def test_round_robin_forms_and_where_bare_rr_finds_devices(monkeypatch: pytest.MonkeyPatch) -> None:
    assert parse_round_robin("RR", ["4", "5"]) == ("4", "5")
    assert parse_round_robin("RR0:2", []) == ("0", "1")
    assert parse_round_robin("RR1,3", []) == ("1", "3")
    assert parse_round_robin("RRGPU-a1,GPU-b2", []) == ("GPU-a1", "GPU-b2")
    for bad in ("RR2:1", "RRa:b", "RR,"):
        with pytest.raises(ConfigError, match="CUDA_VISIBLE_DEVICES"):
            parse_round_robin(bad, [])

    def devices(placement: DevicePlacement, env: dict[str, str], n: int = 3) -> list[str | None]:
        return [e.get("CUDA_VISIBLE_DEVICES") for e in placement.environments(env, n, who="test")]

    rr = {"CUDA_VISIBLE_DEVICES": "RR"}
    # Bare RR cycles over this process's own CUDA_VISIBLE_DEVICES ...
    assert devices(DevicePlacement(devices=None, parent_setting="2,3"), rr) == ["2", "3", "2"]
    # ... which may itself say RR (Jina's style), for executors that set nothing of their own.
    assert devices(DevicePlacement(devices=["0", "1"], parent_setting="RR"), {}) == ["0", "1", "0"]
    # An empty parent list means no GPU for anyone.
    assert devices(DevicePlacement(devices=None, parent_setting=""), rr) == ["", "", ""]
    # Without a list, nvidia-smi counts the GPUs; with none found, nothing is assigned.
    monkeypatch.setattr("plait.orchestrate.devices.gpus_from_nvidia_smi", lambda: ("0", "1"))
    assert devices(DevicePlacement(devices=None, parent_setting=None), rr) == ["0", "1", "0"]
    monkeypatch.setattr("plait.orchestrate.devices.gpus_from_nvidia_smi", lambda: ())
    assert devices(DevicePlacement(devices=None, parent_setting=None), rr) == [None, None, None]
    # Plain values pass through; the gateway gets no RR spec.
    assert (
        devices(DevicePlacement(devices=None, parent_setting=None), {"CUDA_VISIBLE_DEVICES": "7"})
        == ["7"] * 3
    )
    assert without_round_robin({"CUDA_VISIBLE_DEVICES": "RR", "A": "1"}) == {"A": "1"}


def test_exit_on_exceptions_survives_a_flow_yaml_round_trip(tmp_path: Path) -> None:
    flow = Flow().add(name="ver", uses=f"{EXECUTORS}:Versioned", exit_on_exceptions=["FatalError"])
    flow.save_config(tmp_path / "flow.yml")
    loaded = Flow.load_config(tmp_path / "flow.yml")
    assert loaded.config.executors[0].executor.exit_on_exceptions == ("FatalError",)
