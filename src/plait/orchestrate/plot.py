"""Drawing a Flow's DAG: Mermaid text and a standalone SVG, both built offline.

Jina's ``Flow.plot`` sent the Mermaid text to mermaid.ink to get a picture, so it needed the
network. Here :func:`to_mermaid` returns the text (paste it into any Markdown that renders
Mermaid: GitHub, GitLab, mkdocs) and :func:`to_svg` lays the graph out itself and returns an
SVG document with no external fonts, scripts or images.

The graph: the gateway is the implicit start; a node whose ``needs`` is ``("gateway",)`` (or
empty) starts a branch; the gateway again is the implicit end, reached from every node that no
other node needs. Output is deterministic: the same nodes give the same bytes.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final
from xml.sax.saxutils import escape

from plait.errors import ConfigError

__all__ = ["PlotNode", "to_mermaid", "to_svg"]

GATEWAY: Final = "gateway"
_TIMES: Final = "\u00d7"  # multiplication sign, as in "x2 replicas" on a label


@dataclass(frozen=True)
class PlotNode:
    """One Executor of a Flow, as the plot needs it.

    ``label`` is an optional second line (e.g. the Executor class); ``replicas`` and ``shards``
    are shown when above 1.
    """

    name: str
    needs: tuple[str, ...]
    label: str = ""
    replicas: int = 1
    shards: int = 1


@dataclass(frozen=True)
class _Graph:
    nodes: tuple[PlotNode, ...]  # in input order
    needs: dict[str, tuple[str, ...]]  # deduplicated; GATEWAY for the start
    layers: dict[str, int]  # longest path from the start; the start is layer 0
    leaves: tuple[str, ...]  # nodes nobody needs, in input order


def _graph(nodes: Sequence[PlotNode]) -> _Graph:
    by_name: dict[str, PlotNode] = {}
    for node in nodes:
        if node.name == GATEWAY:
            raise ConfigError(f"executor name {GATEWAY!r} is reserved for the gateway", node=node.name)
        if node.name in by_name:
            raise ConfigError(f"two executors are named {node.name!r}", node=node.name)
        by_name[node.name] = node
    needs: dict[str, tuple[str, ...]] = {}
    for node in nodes:
        deps = tuple(dict.fromkeys(node.needs)) or (GATEWAY,)
        for dep in deps:
            if dep != GATEWAY and dep not in by_name:
                raise ConfigError(
                    f"executor {node.name!r} needs {dep!r}, which is not in the Flow", node=node.name
                )
            if dep == node.name:
                raise ConfigError(f"executor {node.name!r} needs itself", node=node.name)
        needs[node.name] = deps

    # Kahn's algorithm in input order: deterministic, and whatever is left over is in a cycle.
    dependents: dict[str, list[str]] = {name: [] for name in (GATEWAY, *by_name)}
    waiting: dict[str, int] = {}
    for name, deps in needs.items():
        waiting[name] = len(deps)
        for dep in deps:
            dependents[dep].append(name)
    layers: dict[str, int] = {GATEWAY: 0}
    ready = [GATEWAY]
    while ready:
        done = ready.pop()
        for name in dependents[done]:
            waiting[name] -= 1
            if waiting[name] == 0:
                layers[name] = 1 + max(layers[dep] for dep in needs[name])
                ready.append(name)
    if len(layers) <= len(by_name):
        raise _cycle_error(needs, [n.name for n in nodes if n.name not in layers])

    needed = {dep for deps in needs.values() for dep in deps}
    leaves = tuple(n.name for n in nodes if n.name not in needed)
    del layers[GATEWAY]
    return _Graph(tuple(nodes), needs, layers, leaves)


def _cycle_error(needs: dict[str, tuple[str, ...]], stuck: list[str]) -> ConfigError:
    # Every stuck node needs a stuck node (or it would have been placed), so walking "needs"
    # among them must come back to a node already seen.
    stuck_set = set(stuck)
    path = [stuck[0]]
    seen = {stuck[0]: 0}
    while True:
        nxt = next(dep for dep in needs[path[-1]] if dep in stuck_set)
        if nxt in seen:
            cycle = [*path[seen[nxt] :], nxt]
            break
        seen[nxt] = len(path)
        path.append(nxt)
    cycle.reverse()  # read it in the direction documents flow
    return ConfigError(f"needs form a cycle: {' -> '.join(cycle)}", node=cycle[0])


def _lines(node: PlotNode) -> list[str]:
    lines = [node.name]
    if node.label:
        lines.append(node.label)
    scale = []
    if node.replicas > 1:
        scale.append(f"{_TIMES}{node.replicas} replicas")
    if node.shards > 1:
        scale.append(f"{node.shards} shards")
    if scale:
        lines.append(", ".join(scale))
    return lines


# -- Mermaid -----------------------------------------------------------------------------------

_START_ID: Final = "gateway_in"
_END_ID: Final = "gateway_out"


def _mermaid_text(text: str) -> str:
    # Inside a quoted label Mermaid reads "#name;" entities and HTML; escape what would break it.
    return (
        text.replace("#", "#35;")
        .replace('"', "#quot;")
        .replace("<", "#lt;")
        .replace(">", "#gt;")
        .replace("\n", " ")
    )


def to_mermaid(nodes: Sequence[PlotNode], *, vertical: bool = False) -> str:
    """Mermaid ``flowchart`` text for the DAG (left to right, or top down when ``vertical``).

    Executors get the ids ``n1``, ``n2``, ... in input order (their names are in the labels, so
    any name is safe); the gateway appears twice, as ``gateway_in`` and ``gateway_out``.
    Raises :class:`~plait.errors.ConfigError` for unknown ``needs`` and cycles.
    """
    graph = _graph(nodes)
    ids = {GATEWAY: _START_ID} | {node.name: f"n{i}" for i, node in enumerate(graph.nodes, 1)}
    out = [f"flowchart {'TD' if vertical else 'LR'}", f'    {_START_ID}(["{GATEWAY}"])']
    for node in graph.nodes:
        label = "<br/>".join(_mermaid_text(line) for line in _lines(node))
        out.append(f'    {ids[node.name]}["{label}"]')
    out.append(f'    {_END_ID}(["{GATEWAY}"])')
    for node in graph.nodes:
        out.extend(f"    {ids[dep]} --> {ids[node.name]}" for dep in graph.needs[node.name])
    leaves = [ids[name] for name in graph.leaves] or [_START_ID]
    out.extend(f"    {leaf} --> {_END_ID}" for leaf in leaves)
    return "\n".join(out) + "\n"


# -- SVG ---------------------------------------------------------------------------------------

_FONT_SIZE: Final = 14
_CHAR_WIDTH: Final = 8.4  # generous average advance at 14px sans-serif, so text fits its box
_LINE_HEIGHT: Final = 18
_PAD_X: Final = 14
_PAD_Y: Final = 10
_MIN_WIDTH: Final = 80
_GAP_LAYER: Final = 56  # between layers, where the arrows run
_GAP_SIBLING: Final = 20  # between boxes in the same layer
_MARGIN: Final = 16
_SVG_START: Final = "\0in"  # keys no executor name can take ("\0" never reaches the output)
_SVG_END: Final = "\0out"
_ORDER_SWEEPS: Final = 2
_TRANSPOSE_ROUNDS: Final = 8
_WAYPOINT: Final = 4.0  # cross-axis room for an arrow passing through a layer


@dataclass
class _Box:
    key: str  # node name, or the start/end key
    lines: list[str]
    width: float
    height: float
    rounded: bool
    x: float = 0.0  # top-left corner
    y: float = 0.0


def _box(key: str, lines: list[str], *, rounded: bool = False) -> _Box:
    longest = max(len(line) for line in lines)
    width = max(_MIN_WIDTH, longest * _CHAR_WIDTH + 2 * _PAD_X)
    height = len(lines) * _LINE_HEIGHT + 2 * _PAD_Y
    return _Box(key, lines, round(width), height, rounded)


def _num(value: float) -> str:
    return f"{value:.1f}".removesuffix(".0")


def to_svg(nodes: Sequence[PlotNode], *, vertical: bool = False) -> str:
    """A standalone SVG picture of the DAG (left to right, or top down when ``vertical``).

    Layered layout: an Executor's layer is the longest path to it from the gateway; an arrow
    that skips layers bends through a free slot in each layer it crosses instead of running
    through boxes; within a layer, boxes are ordered by the mean position of what they come
    from, which keeps most arrows from crossing. Raises :class:`~plait.errors.ConfigError` for
    unknown ``needs`` and cycles.
    """
    graph = _graph(nodes)
    depth = max(graph.layers.values(), default=0) + 1
    layer_of = dict(graph.layers) | {_SVG_START: 0, _SVG_END: depth}
    layers: list[list[_Box]] = [[_box(_SVG_START, [GATEWAY], rounded=True)]]
    layers += [[] for _ in range(depth - 1)]
    layers.append([_box(_SVG_END, [GATEWAY], rounded=True)])
    for node in graph.nodes:
        layers[graph.layers[node.name]].append(_box(node.name, _lines(node)))

    # Edges, each a chain of boxes: its ends plus one invisible waypoint per skipped layer.
    ends = [
        (_SVG_START if dep == GATEWAY else dep, node.name)
        for node in graph.nodes
        for dep in graph.needs[node.name]
    ]
    ends += [(leaf, _SVG_END) for leaf in graph.leaves] or [(_SVG_START, _SVG_END)]
    chains: list[list[str]] = []
    preds: dict[str, list[str]] = {}
    succs: dict[str, list[str]] = {}
    for index, (src, dst) in enumerate(ends):
        chain = [src]
        for layer in range(layer_of[src] + 1, layer_of[dst]):
            waypoint = _Box(f"\0{index}.{layer}", [], 0.0, _WAYPOINT, rounded=False)
            if vertical:
                waypoint.width, waypoint.height = _WAYPOINT, 0.0
            layers[layer].append(waypoint)
            chain.append(waypoint.key)
        chain.append(dst)
        for a, b in itertools.pairwise(chain):
            preds.setdefault(b, []).append(a)
            succs.setdefault(a, []).append(b)
        chains.append(chain)

    _order_layers(layers, preds, succs)
    width, height = _place(layers, vertical)
    boxes = {b.key: b for layer_boxes in layers for b in layer_boxes}
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{_num(width)}" height="{_num(height)}" '
        f'viewBox="0 0 {_num(width)} {_num(height)}" font-family="sans-serif" font-size="{_FONT_SIZE}">',
        "<defs>",
        '<marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="8" markerHeight="8" '
        'orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="#555"/></marker>',
        "</defs>",
        '<g fill="none" stroke="#555" stroke-width="1.5">',
    ]
    for chain in chains:
        path = _edge_path([boxes[key] for key in chain], vertical)
        out.append(f'<path d="{path}" marker-end="url(#arrow)"/>')
    out.append("</g>")
    out.extend(_box_svg(b) for layer_boxes in layers for b in layer_boxes if b.lines)
    out.append("</svg>")
    return "\n".join(out) + "\n"


def _order_layers(layers: list[list[_Box]], preds: dict[str, list[str]], succs: dict[str, list[str]]) -> None:
    """Order the boxes within each layer to keep arrows from crossing (barycentre heuristic).

    A few sweeps down (by the mean rank of what a box comes from) and up (by what it goes to);
    sorts are stable, so ties keep input order and the result is deterministic. Ranks are
    centred on 0 because every layer is drawn centred.
    """
    rank: dict[str, float] = {}

    def set_ranks(layer: list[_Box]) -> None:
        rank.update((b.key, i - (len(layer) - 1) / 2) for i, b in enumerate(layer))

    def mean_rank(keys: list[str]) -> float:
        return sum(rank[k] for k in keys) / len(keys)

    for layer in layers:
        set_ranks(layer)
    inner = layers[1:-1]
    for _ in range(_ORDER_SWEEPS):
        for layer in inner:
            layer.sort(key=lambda b: mean_rank(preds[b.key]))
            set_ranks(layer)
        for layer in reversed(inner):
            layer.sort(key=lambda b: mean_rank(succs[b.key]))
            set_ranks(layer)
    for layer in inner:  # finish downwards: the sources' order is the one readers follow
        layer.sort(key=lambda b: mean_rank(preds[b.key]))
        set_ranks(layer)

    # Then swap neighbours while that removes crossings (the "transpose" step of Sugiyama
    # layouts), which fixes what averaging cannot see, such as a long arrow on the wrong side.
    def crossings(upper: str, lower: str) -> int:
        count = 0
        for links in (preds, succs):
            for a in links.get(upper, ()):
                count += sum(rank[a] > rank[b] for b in links.get(lower, ()))
        return count

    for _ in range(_TRANSPOSE_ROUNDS):
        improved = False
        for layer in inner:
            for i in range(len(layer) - 1):
                u, v = layer[i].key, layer[i + 1].key
                if crossings(v, u) < crossings(u, v):
                    layer[i], layer[i + 1] = layer[i + 1], layer[i]
                    set_ranks(layer)
                    improved = True
        if not improved:
            break


def _place(layers: list[list[_Box]], vertical: bool) -> tuple[float, float]:
    """Set every box's corner; return the picture's width and height.

    Main axis: layers one after another; cross axis: the boxes of a layer side by side, centred.
    """

    def main(b: _Box) -> float:
        return b.height if vertical else b.width

    def cross(b: _Box) -> float:
        return b.width if vertical else b.height

    spans = [max(main(b) for b in layer) for layer in layers]
    extents = [sum(cross(b) for b in layer) + _GAP_SIBLING * (len(layer) - 1) for layer in layers]
    total_cross = max(extents)
    along: float = _MARGIN
    for layer, span, extent in zip(layers, spans, extents, strict=True):
        across: float = _MARGIN + (total_cross - extent) / 2
        for b in layer:
            m = along + (span - main(b)) / 2
            if vertical:
                b.x, b.y = across, m
            else:
                b.x, b.y = m, across
            across += cross(b) + _GAP_SIBLING
        along += span + _GAP_LAYER
    total_main = along - _GAP_LAYER + _MARGIN
    if vertical:
        return total_cross + 2 * _MARGIN, total_main
    return total_main, total_cross + 2 * _MARGIN


def _edge_path(chain: list[_Box], vertical: bool) -> str:
    """A smooth path leaving the first box, through the waypoints, into the last box."""
    if vertical:
        points = [(b.x + b.width / 2, b.y, b.y + b.height) for b in chain]  # (x, top, bottom)
    else:
        points = [(b.y + b.height / 2, b.x, b.x + b.width) for b in chain]  # (y, left, right)
    parts: list[str] = []
    for (c1, _, out_edge), (c2, in_edge, _) in itertools.pairwise(points):
        mid = (out_edge + in_edge) / 2
        if vertical:
            xy = [(c1, out_edge), (c1, mid), (c2, mid), (c2, in_edge)]
        else:
            xy = [(out_edge, c1), (mid, c1), (mid, c2), (in_edge, c2)]
        coords = [f"{_num(x)},{_num(y)}" for x, y in xy]
        if not parts:
            parts.append(f"M{coords[0]}")
        elif coords[0] != parts[-1].rsplit(" ", 1)[-1]:
            parts.append(f"L{coords[0]}")
        parts.append(f"C{coords[1]} {coords[2]} {coords[3]}")
    return " ".join(parts)


def _xml_text(text: str) -> str:
    # Characters XML 1.0 cannot hold at all (most C0 controls) would make the file unreadable.
    clean = "".join(c if c >= " " or c in "\t\n\r" else "\ufffd" for c in text)
    return escape(clean)


def _box_svg(b: _Box) -> str:
    fill, stroke, radius = ("#eef4ff", "#3b6fd8", b.height / 2) if b.rounded else ("#ffffff", "#333333", 6)
    cx = b.x + b.width / 2
    top = b.y + _PAD_Y + _LINE_HEIGHT * 0.75  # baseline of the first line
    spans = []
    for i, line in enumerate(b.lines):
        weight = ' font-weight="bold"' if i == 0 and not b.rounded else ""
        spans.append(
            f'<tspan x="{_num(cx)}" y="{_num(top + i * _LINE_HEIGHT)}"{weight}>{_xml_text(line)}</tspan>'
        )
    title = _xml_text(b.lines[0])
    return (
        f"<g><title>{title}</title>"
        f'<rect x="{_num(b.x)}" y="{_num(b.y)}" width="{_num(b.width)}" height="{_num(b.height)}" '
        f'rx="{_num(radius)}" fill="{fill}" stroke="{stroke}" stroke-width="1.5"/>'
        f'<text text-anchor="middle" fill="#111">{"".join(spans)}</text></g>'
    )
