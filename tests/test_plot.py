"""Offline Flow plots (plait.orchestrate.plot): Mermaid text and standalone SVG."""

from __future__ import annotations

import random
import re
import xml.etree.ElementTree as ET

import pytest

from plait.errors import ConfigError
from plait.orchestrate.plot import PlotNode, to_mermaid, to_svg

SVG = "{http://www.w3.org/2000/svg}"

CHAIN = [PlotNode("encoder", ("gateway",)), PlotNode("indexer", ("encoder",))]
FORK_JOIN = [
    PlotNode("start", ("gateway",)),
    PlotNode("branch_a", ("start",), label="SetA", replicas=2),
    PlotNode("branch_b", ("start",), shards=3),
    PlotNode("join", ("branch_a", "branch_b")),
]


def test_mermaid_chain() -> None:
    assert to_mermaid(CHAIN) == (
        "flowchart LR\n"
        '    gateway_in(["gateway"])\n'
        '    n1["encoder"]\n'
        '    n2["indexer"]\n'
        '    gateway_out(["gateway"])\n'
        "    gateway_in --> n1\n"
        "    n1 --> n2\n"
        "    n2 --> gateway_out\n"
    )


def test_mermaid_fork_join_vertical() -> None:
    assert to_mermaid(FORK_JOIN, vertical=True) == (
        "flowchart TD\n"
        '    gateway_in(["gateway"])\n'
        '    n1["start"]\n'
        '    n2["branch_a<br/>SetA<br/>\u00d72 replicas"]\n'
        '    n3["branch_b<br/>3 shards"]\n'
        '    n4["join"]\n'
        '    gateway_out(["gateway"])\n'
        "    gateway_in --> n1\n"
        "    n1 --> n2\n"
        "    n1 --> n3\n"
        "    n2 --> n4\n"
        "    n3 --> n4\n"
        "    n4 --> gateway_out\n"
    )


def test_mermaid_every_unneeded_node_reaches_the_end() -> None:
    nodes = [
        PlotNode("a", ("gateway",)),
        PlotNode("b", ("gateway",), replicas=2, shards=2),
        PlotNode("c", ("a",)),
    ]
    text = to_mermaid(nodes)
    assert "n2 --> gateway_out" in text
    assert "n3 --> gateway_out" in text
    assert "n1 --> gateway_out" not in text
    assert '"b<br/>\u00d72 replicas, 2 shards"' in text


def test_mermaid_empty_flow_and_empty_needs() -> None:
    assert to_mermaid([]).endswith("    gateway_in --> gateway_out\n")
    assert "gateway_in --> n1" in to_mermaid([PlotNode("a", ())])  # no needs: starts a branch


def test_mermaid_escapes_labels() -> None:
    text = to_mermaid([PlotNode('we"ird <name> #1', ("gateway",), label="end")])
    assert '    n1["we#quot;ird #lt;name#gt; #35;1<br/>end"]\n' in text
    # node ids never come from names, so reserved words such as "end" cannot break the chart
    assert re.findall(r"^\s+(\w+)[\[(]", text, flags=re.M) == ["gateway_in", "n1", "gateway_out"]


def test_mermaid_duplicate_needs_give_one_edge() -> None:
    text = to_mermaid([PlotNode("a", ("gateway",)), PlotNode("b", ("a", "a"))])
    assert text.count("n1 --> n2") == 1


def parse(svg: str) -> ET.Element:
    return ET.fromstring(svg)


@pytest.mark.parametrize("vertical", [False, True])
@pytest.mark.parametrize("nodes", [CHAIN, FORK_JOIN, []])
def test_svg_parses_with_one_rect_per_node(nodes: list[PlotNode], vertical: bool) -> None:
    svg = to_svg(nodes, vertical=vertical)
    root = parse(svg)
    assert root.tag == f"{SVG}svg"
    assert len(root.findall(f".//{SVG}rect")) == len(nodes) + 2
    texts = ["".join(t.itertext()) for t in root.iter(f"{SVG}text")]
    assert texts.count("gateway") == 2
    for node in nodes:
        assert any(t.startswith(node.name) for t in texts)
    assert root.find(f"./{SVG}defs/{SVG}marker") is not None
    edges = [p for p in root.iter(f"{SVG}path") if p.get("marker-end") == "url(#arrow)"]
    needs = sum(len(n.needs) for n in nodes)
    leaves = len({n.name for n in nodes} - {d for n in nodes for d in n.needs}) or 1
    assert len(edges) == needs + leaves


def test_svg_is_standalone_and_deterministic() -> None:
    svg = to_svg(FORK_JOIN)
    assert svg == to_svg(list(FORK_JOIN))
    assert "<script" not in svg
    assert "@import" not in svg
    assert "http" not in svg.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert "\u00d72 replicas" in svg


def test_svg_boxes_grow_with_their_text() -> None:
    root = parse(to_svg([PlotNode("a", ("gateway",)), PlotNode("a_much_longer_executor_name", ("gateway",))]))
    widths = {}
    for group in root.iter(f"{SVG}g"):
        title = group.find(f"{SVG}title")
        rect = group.find(f"{SVG}rect")
        if title is not None and rect is not None:
            widths[title.text] = float(rect.get("width", "0"))
    assert widths["a_much_longer_executor_name"] > widths["a"] + 100


def test_svg_layers_are_longest_paths() -> None:
    nodes = [
        PlotNode("a", ("gateway",)),
        PlotNode("b", ("a",)),
        PlotNode("c", ("gateway", "b")),  # layer 3, not 1
    ]
    root = parse(to_svg(nodes))
    x = {}
    for group in root.iter(f"{SVG}g"):
        title, rect = group.find(f"{SVG}title"), group.find(f"{SVG}rect")
        if title is not None and rect is not None and title.text != "gateway":
            x[title.text] = float(rect.get("x", "0"))
    assert x["a"] < x["b"] < x["c"]


def test_svg_escapes_text() -> None:
    svg = to_svg([PlotNode("<a & b>", ("gateway",), label="x\x01y")])
    root = parse(svg)
    texts = ["".join(t.itertext()) for t in root.iter(f"{SVG}text")]
    assert "<a & b>x\ufffdy" in texts


def test_svg_of_a_larger_random_dag_parses() -> None:
    rng = random.Random(7)
    nodes: list[PlotNode] = []
    for i in range(40):
        earlier = [n.name for n in nodes]
        needs = tuple(rng.sample(earlier, k=min(len(earlier), rng.randint(1, 3)))) if earlier else ()
        nodes.append(PlotNode(f"e{i}", needs or ("gateway",), replicas=rng.randint(1, 3)))
    root = parse(to_svg(nodes))
    assert len(root.findall(f".//{SVG}rect")) == 42


@pytest.mark.parametrize("render", [to_mermaid, to_svg])
def test_unknown_need(render: object) -> None:
    assert callable(render)
    with pytest.raises(ConfigError, match="executor 'b' needs 'nope', which is not in the Flow") as info:
        render([PlotNode("a", ("gateway",)), PlotNode("b", ("a", "nope"))])
    assert info.value.details["node"] == "b"


@pytest.mark.parametrize("render", [to_mermaid, to_svg])
def test_cycle(render: object) -> None:
    assert callable(render)
    nodes = [
        PlotNode("a", ("gateway",)),
        PlotNode("b", ("a", "d")),
        PlotNode("c", ("b",)),
        PlotNode("d", ("c",)),
        PlotNode("e", ("d",)),
    ]
    with pytest.raises(ConfigError, match=r"^needs form a cycle: b -> c -> d -> b$") as info:
        render(nodes)
    assert info.value.details["node"] == "b"


def test_self_need_duplicate_names_and_reserved_name() -> None:
    with pytest.raises(ConfigError, match="executor 'a' needs itself"):
        to_mermaid([PlotNode("a", ("a",))])
    with pytest.raises(ConfigError, match="two executors are named 'a'"):
        to_mermaid([PlotNode("a", ("gateway",)), PlotNode("a", ("gateway",))])
    with pytest.raises(ConfigError, match="'gateway' is reserved"):
        to_svg([PlotNode("gateway", ())])
