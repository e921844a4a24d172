"""Flows of real executor processes behind a real gateway process (gRPC here; every protocol in
test_conformance / test_flow_protocols)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from executors import Doc, Query, Text

from plait import Client, DocList, Flow
from plait.client import Response
from plait.errors import (
    ConfigError,
    DeadlineExceededError,
    EndpointNotFoundError,
    ExecutorError,
    UnavailableError,
)

H = "127.0.0.1"


@pytest.fixture(scope="module")
def chain() -> Iterator[Flow]:
    flow = (
        Flow(host=H, quiet=True, grace_period=2)
        .add(name="counter", uses="executors:Counter")
        .add(name="exclaim", uses="executors:Exclaim")
        .add(name="echo", uses="executors:Echo")
    )
    with flow:
        yield flow


def test_a_chain_runs_in_order_and_keeps_request_order(chain: Flow) -> None:
    docs = DocList[Text]([Text(text=f"d{i}") for i in range(250)])
    out = chain.post("/upper", docs, request_size=20)
    assert out.text == [f"D{i}!" for i in range(250)]
    assert [d.id for d in out] == [d.id for d in docs]


def test_per_executor_parameters_and_results(chain: Flow) -> None:
    out = chain.post("/upper", Text(text="x"), {"mark": "?", "counter__mark": "#"})
    # counter sees mark='#' (its own key wins), exclaim sees the shared mark='?'
    assert out.text == ["X#?"]
    responses: list[Response] = []
    chain.post("/stats", [Text(), Text()], on_done=responses.append)
    assert responses[0].parameters["__results__"] == {"counter": {"counted": 2}, "exclaim": {"exclaimed": 2}}


def test_target_executor_and_pass_through(chain: Flow) -> None:
    assert chain.post("/upper", Text(text="t"), target_executor="^exclaim$").text == ["t!"]
    # /greet is served only by `echo`; the others pass the documents through untouched.
    assert chain.post("/greet", Text(text="bob")).text == ["hello bob"]


def test_errors_name_the_executor_and_the_flow_keeps_serving(chain: Flow) -> None:
    with pytest.raises(ExecutorError) as info:
        chain.post("/fail", Text())
    assert info.value.details["executor"] == "echo" and "boom" in str(info.value)
    with pytest.raises(EndpointNotFoundError, match=r"/nope.*/upper"):
        chain.post("/nope", Text())
    assert chain.post("/upper", Text(text="ok")).text == ["OK!"]


def test_gateway_describe_and_ping(chain: Flow) -> None:
    with Client(H, chain.port) as client:
        info = client.describe()
        assert info.kind == "gateway"
        assert "/upper" in info.endpoints and "/greet" in info.endpoints
        assert "text" in info.endpoints["/upper"].input_schema["properties"]
        assert client.is_ready()


def test_streaming_through_the_gateway(chain: Flow) -> None:
    from executors import Token

    tokens = list(chain.client.stream_doc("/tokens", Text(text="s"), {"n": 3}, return_type=Token))
    assert [t.text for t in tokens] == ["s-0", "s-1", "s-2"]


def test_dag_join_merges_branches_by_id() -> None:
    flow = (
        Flow(host=H, quiet=True, grace_period=2)
        .add(name="start", uses="executors:Pass")
        .add(name="branch_a", uses="executors:SetA", needs="start")
        .add(name="branch_b", uses="executors:SetB", needs="start")
        .add(name="join", uses="executors:Joiner", needs=["branch_a", "branch_b"])
    )
    assert "branch_a" in flow.plot()
    with flow:
        out = flow.post("/", DocList[Doc]([Doc(text="x"), Doc(text="y")]))
    assert out.a == ["A", "A"] and out.b == ["B", "B"]
    assert out.text == ["x|branches=2", "y|branches=2"]


def test_when_filters_documents_for_one_branch() -> None:
    flow = (
        Flow(host=H, quiet=True, grace_period=2)
        .add(name="tagger", uses="executors:Tagger", when={"tag": {"$gte": 5}})
        .add(name="after", uses="executors:Pass")
    )
    with flow:
        out = flow.post("/", DocList[Doc]([Doc(text=str(i), tag=i) for i in range(8)]))
    assert [d.tag for d in out] == [5, 6, 7]
    assert set(out.a) == {"seen"}


def test_shards_scatter_and_reduce() -> None:
    flow = Flow(host=H, quiet=True, grace_period=2).add(
        name="indexer", uses="executors:ShardIndexer", shards=3, polling={"/search": "ALL", "*": "ANY"}
    )
    with flow:
        found = flow.post("/search", Query(text="q"))
        assert [m.id for m in found[0].matches] == ["m2", "m1", "m0"]  # merged, sorted by score
        shards = {flow.post("/index", Query()).text[0] for _ in range(6)}
        assert shards == {f"indexed by shard {i}" for i in range(3)}  # ANY: round robin


def test_a_shard_that_is_down_gives_a_clear_error() -> None:
    # restarts=False: the shard stays down (the supervisor would otherwise bring it back).
    flow = Flow(host=H, quiet=True, grace_period=1, restarts=False).add(
        name="indexer", uses="executors:ShardIndexer", shards=2, polling="ALL"
    )
    with flow:
        victim = next(c for c in flow.children if c.label == "indexer/shard-1")
        victim.kill()
        victim.wait(5)
        with pytest.raises(UnavailableError, match="indexer"):
            flow.post("/search", Query(), timeout=5)


def test_deadline_propagates_and_a_timeout_cancels_downstream_work(tmp_path: Path) -> None:
    marker = tmp_path / "cancelled"
    flow = Flow(host=H, quiet=True, grace_period=2).add(name="slow", uses="executors:Cancellable")
    with flow:
        start = time.monotonic()
        with pytest.raises(DeadlineExceededError):
            flow.post("/wait", Text(), {"marker": str(marker)}, timeout=0.5)
        assert time.monotonic() - start < 5
        deadline = time.monotonic() + 5
        while not marker.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert marker.read_text() == "cancelled"
        with pytest.raises(ExecutorError, match="mid-flow failure"):
            flow.post("/fail_mid_flow", Text())


def test_flow_building_errors() -> None:
    flow = Flow().add(name="a", uses="executors:Pass")
    with pytest.raises(ConfigError, match="taken"):
        flow.add(name="a", uses="executors:Pass")
    with pytest.raises(ConfigError, match="'nope'"):
        flow.add(name="b", uses="executors:Pass", needs="nope")
    with pytest.raises(ConfigError, match=r"1 port\(s\)"):
        Flow(protocol=["grpc", "http"], port=[1])
    with pytest.raises(ConfigError, match="polling"):
        flow.add(name="c", uses="executors:Pass", polling="SOME")
    with pytest.raises(ConfigError, match="no executors"):
        Flow().start()
    assert len(flow.config.executors) == 1  # add() returned new Flows; this one is unchanged


def test_yaml_round_trip(tmp_path: Path) -> None:
    flow = (
        Flow(protocol=["grpc", "http"], port=[12345, 12346], cors=True)
        .add(name="enc", uses="executors:Echo", uses_with={"greeting": "hi"}, replicas=2)
        .add(name="idx", uses="executors:ShardIndexer", shards=2, polling={"/search": "ALL"}, needs="gateway")
        .add(
            name="join", uses="executors:Pass", needs=["enc", "idx"], when={"tag": {"$gt": 1}}, timeout_send=5
        )
    )
    path = tmp_path / "flow.yml"
    flow.save_config(path)
    again = Flow.load_config(path)
    assert again.config == flow.config
    assert again.to_dict() == flow.to_dict()


def test_independent_branches_run_concurrently() -> None:
    flow = (
        Flow(host=H, quiet=True, grace_period=2)
        .add(name="left", uses="executors:Sleeper", needs="gateway")
        .add(name="right", uses="executors:Sleeper", needs="gateway")
    )
    with flow:
        flow.post("/", Doc(), {"seconds": 0.01})  # warm both connections
        start = time.monotonic()
        out = flow.post("/", Doc(text="x"), {"seconds": 1.0})
        elapsed = time.monotonic() - start
    assert out.text == ["x"]
    # Sequential branches would take >= 2 s; overlapping ones take ~1 s.
    assert elapsed < 1.8, elapsed


def test_plait_flow_cli_serves_yaml_answers_ping_and_stops_on_sigterm(tmp_path: Path) -> None:
    import signal
    import subprocess

    from conftest import plait_cmd, subprocess_env

    from plait.orchestrate.process import free_port

    port = free_port()
    (tmp_path / "flow.yml").write_text(
        f"jtype: Flow\nwith:\n  host: {H}\n  port: {port}\n  protocol: grpc\n  grace_period: 2\n"
        "executors:\n  - name: counter\n    uses: executors:Counter\n"
        "  - name: exclaim\n    uses: executors:Exclaim\n"
    )
    proc = subprocess.Popen(
        plait_cmd("flow", "--uses", str(tmp_path / "flow.yml")),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=subprocess_env(),
    )
    try:
        ping = subprocess.run(
            plait_cmd("ping", f"{H}:{port}", "--attempts", "60", "--timeout", "0.5"),
            capture_output=True,
            text=True,
            timeout=90,
            env=subprocess_env(),
        )
        assert ping.returncode == 0, ping.stderr
        with Client(H, port) as client:
            assert client.post("/upper", Text(text="cli")).text == ["CLI!"]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        assert proc.stdout is not None
        log = proc.stdout.read()
        assert "flow serving on grpc://" in log
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
    down = subprocess.run(
        plait_cmd("ping", f"{H}:{port}", "--timeout", "0.5"), env=subprocess_env(), timeout=30
    )
    assert down.returncode == 1


def test_a_client_leaving_a_stream_cancels_the_executor_generator(tmp_path: Path) -> None:
    from executors import Token

    marker = tmp_path / "stream-cancelled"
    flow = Flow(host=H, quiet=True, grace_period=2).add(name="slow", uses="executors:Cancellable")
    with flow:
        stream = flow.client.stream_doc("/drip", Text(), {"marker": str(marker)}, return_type=Token)
        first = [next(stream).text for _ in range(3)]
        stream.close()  # the client stops reading and goes away
        assert first == ["0", "1", "2"]
        deadline = time.monotonic() + 5
        while not marker.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert marker.read_text() == "cancelled"


def test_a_bad_when_condition_is_reported_by_add() -> None:
    with pytest.raises(ConfigError, match=r"Flow.add\('t'\).when.tag: unknown operator '\$bigger'"):
        Flow().add(name="t", uses="executors:Tagger", when={"tag": {"$bigger": 1}})


def test_dict_results_of_shards_polled_all_are_all_kept() -> None:
    flow = Flow(host=H, quiet=True, grace_period=2).add(
        name="counter", uses="executors:ShardCounter", shards=2, polling="ALL"
    )
    with flow:
        responses: list[Response] = []
        flow.post("/count", [Text(), Text(), Text()], on_done=responses.append)
    assert responses[0].parameters["__results__"]["counter"] == [{"shard": 0, "n": 3}, {"shard": 1, "n": 3}]


def test_relative_workspace_in_yaml_is_relative_to_the_file(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "flow.yml").write_text(
        "jtype: Flow\nexecutors:\n  - name: e\n    uses: executors:Echo\n    workspace: data\n"
    )
    flow = Flow.load_config(tmp_path / "sub" / "flow.yml")
    assert flow.config.executors[0].executor.workspace == str((tmp_path / "sub" / "data").resolve())
