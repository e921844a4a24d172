"""Deployments of real executor processes: replicas, start-up failures, killed processes, orphans."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from conftest import subprocess_env
from executors import Text

from plait import Client, Deployment, DocList
from plait.errors import ConfigError, StartupError, UnavailableError


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped) counts as gone.
    with open(f"/proc/{pid}/stat") as f:
        return f.read().split()[2] != "Z"


def test_replicas_are_balanced_per_request_and_share_the_public_port() -> None:
    with Deployment(uses="executors:Echo", name="echo", replicas=2, host="127.0.0.1", quiet=True) as dep:
        assert len(dep.children) == 2
        # round_robin spreads calls over the replicas whose connection is up; give the second
        # connection a moment to come up on a loaded machine, then both must serve.
        replicas: set[str] = set()
        for _ in range(400):
            replicas.add(dep.post("/whoami", Text()).text[0].split(":")[1])
            if len(replicas) == 2:
                break
        assert replicas == {"0", "1"}
        # Clients connecting to the public port reach a replica too.
        with Client("127.0.0.1", dep.port) as client:
            assert client.post("/whoami", Text()).text[0].startswith("echo:")


def test_deployment_from_yaml(tmp_path: Path) -> None:
    (tmp_path / "dep.yml").write_text(
        "jtype: Deployment\nwith:\n  uses: executors:Echo\n  name: greeter\n  host: 127.0.0.1\n"
        "  quiet: true\n  uses_with:\n    greeting: hi\n"
    )
    with Deployment.load_config(tmp_path / "dep.yml") as dep:
        assert dep.post("/greet", Text(text="ann")).text == ["hi ann"]
    (tmp_path / "bad.yml").write_text("jtype: Deployment\nwith:\n  uses: executors:Echo\n  replcas: 2\n")
    with pytest.raises(ConfigError, match="replcas"):
        Deployment.load_config(tmp_path / "bad.yml")


def test_executor_that_fails_at_init_reports_its_output() -> None:
    dep = Deployment(uses="executors:FailsAtInit", name="broken", host="127.0.0.1", quiet=True)
    with pytest.raises(StartupError) as info:
        dep.start()
    message = str(info.value)
    assert "'broken'" in message and "exited with code" in message
    assert "model weights not found" in message


def test_timeout_ready_names_the_executor_and_its_last_lines() -> None:
    start = time.monotonic()
    with (
        pytest.raises(StartupError) as info,
        Deployment(
            uses="executors:SlowInit",
            name="slowpoke",
            host="127.0.0.1",
            timeout_ready=3,
            quiet=True,
            grace_period=1,
        ),
    ):
        pass
    assert time.monotonic() - start < 20
    message = str(info.value)
    assert "'slowpoke'" in message and "timeout_ready=3" in message
    assert "loading a very slow model" in message


def test_killed_executor_gives_a_clear_error_and_other_replicas_keep_serving() -> None:
    with Deployment(uses="executors:Echo", name="echo", replicas=2, host="127.0.0.1", quiet=True) as dep:
        victim = dep.children[0]
        assert victim.pid is not None
        os.kill(victim.pid, signal.SIGKILL)
        victim.wait(5)
        ok = 0
        for _ in range(10):
            try:
                dep.post("/echo", Text(text="x"))
                ok += 1
            except UnavailableError:
                pass  # a request already routed to the dead replica may fail, clearly
        assert ok >= 8
    with Deployment(uses="executors:Echo", name="solo", host="127.0.0.1", quiet=True) as dep:
        with pytest.raises(UnavailableError):
            dep.post("/crash", Text())  # the process exits mid-request
        with pytest.raises(UnavailableError, match=r"127\.0\.0\.1"):
            dep.post("/echo", Text(), timeout=2)


def test_main_script_classes_work_and_children_die_with_their_parent(tmp_path: Path) -> None:
    script = tmp_path / "app.py"
    script.write_text(
        textwrap.dedent(
            """
            import os, sys, time
            from plait import Deployment, DocList, Document, Executor, requests

            class Text(Document):
                text: str = ''

            class Upper(Executor):
                @requests(on='/upper')
                def upper(self, docs: DocList[Text], **kwargs) -> DocList[Text]:
                    for d in docs:
                        d.text = d.text.upper()

            if __name__ == '__main__':
                with Deployment(uses=Upper, host='127.0.0.1', replicas=2, quiet=True) as dep:
                    out = dep.post('/upper', DocList[Text]([Text(text='hi')]), return_type=DocList[Text])
                    print('RESULT', out[0].text, flush=True)
                    print('PIDS', ' '.join(str(c.pid) for c in dep.children), flush=True)
                    time.sleep(60)
            """
        )
    )
    proc = subprocess.Popen(
        [sys.executable, str(script)], stdout=subprocess.PIPE, text=True, env=subprocess_env(), cwd=tmp_path
    )
    try:
        assert proc.stdout is not None
        lines: list[str] = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not any(line.startswith("PIDS") for line in lines):
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line.strip())
        assert "RESULT HI" in lines, lines
        pids = [int(p) for p in next(line for line in lines if line.startswith("PIDS")).split()[1:]]
        assert all(_alive(p) for p in pids)
        proc.kill()  # SIGKILL: the parent gets no chance to clean up
        proc.wait(5)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(_alive(p) for p in pids):
            time.sleep(0.1)
        assert not any(_alive(p) for p in pids), "executor processes outlived their parent"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)


def test_classes_defined_in_functions_are_refused_with_advice() -> None:
    from plait import Executor

    class Local(Executor):
        pass

    with pytest.raises(ConfigError, match="module level"):
        Deployment(uses=Local)


def test_post_before_start_is_a_clear_error() -> None:
    dep = Deployment(uses="executors:Echo")
    with pytest.raises(RuntimeError, match="start the Deployment"):
        dep.post("/echo", DocList[Text]())


def test_sharded_deployment_scatters_through_a_gateway() -> None:
    from executors import Query

    with Deployment(
        uses="executors:ShardIndexer",
        name="idx",
        shards=2,
        polling={"/search": "ALL"},
        host="127.0.0.1",
        quiet=True,
    ) as dep:
        assert {c.label for c in dep.children} == {"idx/shard-0", "idx/shard-1", "gateway"}
        found = dep.post("/search", Query(text="q"))
        assert [m.id for m in found[0].matches] == ["m1", "m0"]
