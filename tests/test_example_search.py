"""The search example (examples/search): its executors, its Flow from flow.yml (hash backend), a
restart on the same index, and serve.py + client.py run as a newcomer runs them."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import numpy as np
import pytest

from plait import Client, DocList, Flow
from plait.client import Response
from plait.config import RuntimeArgs

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "search"
H = "127.0.0.1"


def _load(name: str) -> ModuleType:
    # Loaded from its file under its own name: tests/executors.py is `executors` in this session.
    spec = importlib.util.spec_from_file_location(f"search_example_{name}", EXAMPLE / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


ex = _load("executors")
serve = _load("serve")
Item: Any = ex.Item

COLORS = {16: (220, 60, 30), 17: (20, 70, 200), 18: (40, 180, 60), 19: (230, 210, 40)}
TEXTS = [
    "A cat is sleeping on the warm sofa",
    "Fresh bread is baking in the oven",
    "The stock market fell sharply on Monday",
    "A violin concerto played by the orchestra",
    "Snow covered the mountain peaks overnight",
    "The football team won the championship",
    "Python code runs inside a virtual environment",
    "A rocket launched toward the moon",
    "Tomatoes grow best in full sunlight",
    "The museum opened a new painting exhibition",
    "Heavy rain flooded the village streets",
    "A chess grandmaster resigned after forty moves",
    "The train to Paris was delayed again",
    "Coffee beans are roasted before grinding",
    "A dolphin jumped beside the sailing boat",
    "The library lends books and magazines",
    "Red sunset over the desert dunes",
    "Blue waves of the open ocean",
    "Green meadow full of spring flowers",
    "Yellow sunflowers facing the sun",
]


def picture(rgb: tuple[int, int, int]) -> np.ndarray:
    return np.tile(np.array(rgb, dtype=np.uint8), (6, 6, 1))


def items() -> Any:
    return DocList[Item](
        [
            Item(id=f"item-{i:02d}", text=t, image=picture(COLORS[i]) if i in COLORS else None)
            for i, t in enumerate(TEXTS)
        ]
    )


def shard_counts(client: Client) -> dict[int, int]:
    """/count is polled ANY (one shard per request, in turn): ask until both shards answered."""
    counts: dict[int, int] = {}
    for _ in range(6):
        replies: list[Response] = []
        client.post("/count", on_done=replies.append, timeout=10)
        result = replies[0].parameters["__results__"]["indexer"]
        counts[result["shard"]] = result["count"]
        if len(counts) == 2:
            break
    return counts


def search(client: Client, text: str, limit: int | None = None) -> Any:
    params = None if limit is None else {"limit": limit}
    return client.post("/search", Item(text=text), params, return_type=DocList[Item], timeout=10)[0]


def persisted_ids(workspace: Path) -> dict[int, list[str]]:
    files = {shard: workspace / "indexer" / str(shard) / "docs.json" for shard in (0, 1)}
    return {shard: [row["id"] for row in json.loads(f.read_text())] for shard, f in files.items()}


# -- the executors on their own (no processes) --------------------------------------------------


def test_hash_encoder_is_deterministic_and_folds_in_the_picture() -> None:
    a, b = ex.Encoder(backend="hash", dim=64), ex.Encoder(backend="hash", dim=64)
    docs = DocList[Item](
        [Item(text="a red sunset"), Item(text="a red sunset", image=picture((220, 60, 30))), Item()]
    )
    va, vb = a.embed(docs), b.embed(docs)
    assert va.shape == (3, 64) and va.dtype == np.float32
    np.testing.assert_array_equal(va, vb)
    assert np.allclose(np.linalg.norm(va[:2], axis=1), 1.0)
    assert 0.7 < float(va[0] @ va[1]) < 0.999  # the picture moves the vector, the text still dominates
    assert not va[2].any()  # nothing to embed
    red, blue = (a.embed(DocList[Item]([Item(image=picture(c))])) for c in ((200, 40, 40), (30, 60, 210)))
    assert float(red[0] @ a.embed(docs[1:2])[0]) > float(blue[0] @ a.embed(docs[1:2])[0])
    with pytest.raises(ValueError, match="backend"):
        ex.Encoder(backend="word2vec")
    if not ex.minilm_available():
        assert ex.Encoder(backend="auto").backend == "hash"
        with pytest.raises(RuntimeError, match="pip install"):
            ex.Encoder(backend="minilm")


def test_indexer_upserts_limits_persists_at_close_and_rejects_other_dimensions(tmp_path: Path) -> None:
    enc = ex.Encoder(backend="hash", dim=32)
    args = RuntimeArgs(name="indexer", workspace=str(tmp_path))
    idx = ex.Indexer(runtime_args=args, save_every=0)
    empty = idx.search(enc.encode(DocList[Item]([Item(text="x")])), ex.SearchParams())
    assert list(empty[0].matches) == []
    idx.index(enc.encode(DocList[Item]([Item(id="a", text="apple pie"), Item(id="b", text="pear tart")])))
    idx.index(enc.encode(DocList[Item]([Item(id="a", text="apple crumble")])))  # replaces "a"
    assert idx.count(DocList[Item]()) == {"count": 2, "shard": 0}
    found = idx.search(enc.encode(DocList[Item]([Item(text="crumble")])), ex.SearchParams(limit=10))
    assert [m.id for m in found[0].matches] == ["a", "b"]  # never more than it has
    assert found[0].matches[0].text == "apple crumble"
    assert not (tmp_path / "indexer" / "0" / "index.npz").exists()  # save_every=0: only at close
    idx.close()
    again = ex.Indexer(runtime_args=args)
    assert again.count(DocList[Item]())["count"] == 2
    with pytest.raises(ValueError, match="encoder backend changed"):
        again.index(ex.Encoder(backend="hash", dim=16).encode(DocList[Item]([Item(text="z")])))
    with pytest.raises(ValueError, match="no embedding"):
        again.search(DocList[Item]([Item(text="q")]), ex.SearchParams())


# -- the Flow of flow.yml ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("search-workspace")


@pytest.fixture(scope="module")
def flow(workspace: Path) -> Iterator[Flow]:
    # Ports chosen by the Flow as it starts (picking them here first would race its executors').
    flow = serve.load_flow(backend="hash", workspace=workspace, ports=[None] * 3, quiet=True)
    assert flow.protocols == ("grpc", "http", "websocket")
    assert [n.name for n in flow.config.executors] == ["encoder", "indexer", "ranker"]
    with flow:
        indexed = flow.post("/index", items(), request_size=5, return_type=DocList[Item], timeout=20)
        assert [d.id for d in indexed] == [f"item-{i:02d}" for i in range(20)]
        assert all(d.embedding is None for d in indexed)  # answered without the vectors
        yield flow


@pytest.mark.timeout(60)
def test_the_items_are_spread_over_both_shards_and_on_disk(flow: Flow, workspace: Path) -> None:
    counts = shard_counts(flow.client)
    assert set(counts) == {0, 1}
    assert counts[0] > 0 and counts[1] > 0 and counts[0] + counts[1] == 20
    on_disk = persisted_ids(workspace)  # written on each /index, before it answered
    assert {s: len(ids) for s, ids in on_disk.items()} == counts
    assert sorted(on_disk[0] + on_disk[1]) == [f"item-{i:02d}" for i in range(20)]


@pytest.mark.timeout(60)
def test_search_ranks_the_nearest_first_within_the_limit(flow: Flow) -> None:
    for text, expected in [
        ("where is the cat sleeping", "item-00"),
        ("a rocket to the moon", "item-07"),
        ("roasted coffee", "item-13"),
    ]:
        found = search(flow.client, text, limit=3)
        ids = [m.id for m in found.matches]
        scores = [m.score for m in found.matches]
        assert ids[0] == expected, (text, ids)
        assert len(ids) == 3 and len(set(ids)) == 3  # both shards answered; the ranker cut to 3
        assert scores == sorted(scores, reverse=True) and scores[0] > scores[1]
        assert found.embedding is None
    assert len(search(flow.client, "anything").matches) == 5  # the default limit
    everything = search(flow.client, "cat", limit=100)
    assert sorted(m.id for m in everything.matches) == [f"item-{i:02d}" for i in range(20)]


@pytest.mark.timeout(60)
def test_a_picture_alone_finds_the_item_with_that_colour(flow: Flow) -> None:
    query = Item(image=picture((25, 75, 205)))
    found = flow.post("/search", query, {"limit": 2}, return_type=DocList[Item], timeout=10)[0]
    assert found.matches[0].id == "item-17" and found.matches[0].has_image


@pytest.mark.timeout(60)
def test_http_bodies_as_the_walkthrough_sends_them(flow: Flow) -> None:
    port = flow.ports[flow.protocols.index("http")]
    body = {"data": [{"text": "chess grandmaster"}], "parameters": {"limit": 2}}
    reply = httpx.post(f"http://{H}:{port}/search", json=body, timeout=10)
    assert reply.status_code == 200, reply.text
    matches = reply.json()["data"][0]["matches"]
    assert len(matches) == 2 and matches[0]["id"] == "item-11" and matches[0]["score"] > matches[1]["score"]
    count = httpx.post(f"http://{H}:{port}/count", json={}, timeout=10).json()
    assert count["parameters"]["__results__"]["indexer"]["shard"] in (0, 1)
    assert httpx.get(f"http://{H}:{port}/docs", timeout=10).status_code == 200


# -- restart on the same index, with serve.py and client.py as a newcomer runs them -------------


def _wait_for_line(proc: subprocess.Popen[str], log: Path, text: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in log.read_text():
            return
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    raise AssertionError(f"serve.py did not print {text!r} in {timeout}s:\n{log.read_text()}")


def _client_py(*args: str) -> str:
    run = subprocess.run(
        [sys.executable, str(EXAMPLE / "client.py"), *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    return run.stdout


@pytest.mark.timeout(120)
def test_a_restarted_flow_finds_the_items_and_the_scripts_work(
    flow: Flow, workspace: Path, tmp_path: Path
) -> None:
    # The same index files, as written by the running Flow (each /index replaced them atomically).
    restarted = tmp_path / "workspace"
    shutil.copytree(workspace, restarted)
    log = tmp_path / "serve.log"
    with log.open("w") as out:
        argv = ["--backend", "hash", "--quiet", "--workspace", str(restarted)]
        proc = subprocess.Popen(
            [sys.executable, str(EXAMPLE / "serve.py"), *argv, "--ports", "0,0,0"],
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
        )
    try:
        _wait_for_line(proc, log, "Ctrl-C to stop.", 45)
        printed = log.read_text()
        found = dict(re.findall(r"(grpc|http|ws)://127\.0\.0\.1:(\d+)", printed))
        assert set(found) == {"grpc", "http", "ws"}, printed
        ports = [int(found[scheme]) for scheme in ("grpc", "http", "ws")]
        assert f"curl -s -X POST 127.0.0.1:{ports[1]}/search" in printed

        with Client(H, ports[0]) as client:
            assert sum(shard_counts(client).values()) == 20
            assert search(client, "roasted coffee", limit=1).matches[0].id == "item-13"

        first = _client_py("--port", str(ports[0]))
        assert "indexed 20 documents (4 with a picture)" in first
        assert "the index holds 40 documents" in first
        lines = first.splitlines()
        cat = lines.index("query: 'a cat napping on the couch'")
        assert "A cat is sleeping on the sofa" in lines[cat + 1]  # the sample, first
        blue = lines.index("query: (a blue picture, no text)")
        assert "Blue waves of the open ocean" in lines[blue + 1]

        again = _client_py("--protocol", "http", "--port", str(ports[1]), "--query", "kitten")
        assert "indexed already: searching only" in again and "the index holds 40 documents" in again
        assert "The kitten chased a ball of yarn" in again.splitlines()[-3]

        proc.send_signal(signal.SIGINT)  # Ctrl-C
        assert proc.wait(30) == 0, log.read_text()
        assert "stopped; the index is saved." in log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    on_disk = persisted_ids(restarted)
    assert len(on_disk[0]) + len(on_disk[1]) == 40
