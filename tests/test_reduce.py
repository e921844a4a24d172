"""The merge rule for joins and shard results (plait.gateway.reduce.merge_rows)."""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from plait.docs import decode_raw, encode_raw
from plait.gateway.reduce import merge_rows

# -- strategies ---------------------------------------------------------------------------------

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 5),
    st.floats(allow_nan=False, width=32),
    st.text(max_size=3),
)
field_names = st.sampled_from(["text", "a", "b", "tags", "n"])


@st.composite
def matches(draw: st.DrawFn, *, prefix: str = "m") -> list[dict[str, Any]]:
    ids = draw(st.lists(st.integers(0, 8), unique=True, max_size=5))
    scored = draw(st.booleans())
    out = []
    for i in ids:
        item: dict[str, Any] = {"id": f"{prefix}{i}", "text": draw(st.text(max_size=2))}
        if scored:
            item["score"] = draw(st.floats(0, 1, allow_nan=False))
        out.append(item)
    return out


@st.composite
def rows(draw: st.DrawFn) -> list[dict[str, Any]]:
    """A source: rows with unique ids, a few scalar fields, sometimes a matches list."""
    ids = draw(st.lists(st.integers(0, 12), unique=True, max_size=8))
    out = []
    for i in ids:
        row: dict[str, Any] = {"id": f"d{i}"}
        row.update(draw(st.dictionaries(field_names, scalars, max_size=3)))
        if draw(st.booleans()):
            row["matches"] = draw(matches())
        out.append(row)
    return out


def ids_of(rows_: list[dict[str, Any]]) -> list[Any]:
    return [r["id"] for r in rows_]


# -- properties ---------------------------------------------------------------------------------


@settings(max_examples=50, deadline=None)
@given(rows())
def test_a_single_source_comes_back_equal(source: list[dict[str, Any]]) -> None:
    assert merge_rows([source]) == source


@settings(max_examples=50, deadline=None)
@given(rows())
def test_merging_a_source_with_itself_gives_it_back(source: list[dict[str, Any]]) -> None:
    assert merge_rows([source, source]) == source
    assert merge_rows([source, copy.deepcopy(source), source]) == source


@settings(max_examples=50, deadline=None)
@given(st.lists(rows(), max_size=4))
def test_every_id_once_in_first_seen_order(sources: list[list[dict[str, Any]]]) -> None:
    merged = merge_rows(sources)
    expected: list[str] = []
    for source in sources:
        expected.extend(i for i in ids_of(source) if i not in expected)
    assert ids_of(merged) == expected


@settings(max_examples=50, deadline=None)
@given(st.lists(rows(), min_size=1, max_size=4))
def test_fields_take_the_first_value_that_is_set(sources: list[list[dict[str, Any]]]) -> None:
    merged = {r["id"]: r for r in merge_rows(sources)}
    for doc_id, row in merged.items():
        for key in ("text", "a", "b", "tags", "n"):
            values = [r[key] for s in sources for r in s if r["id"] == doc_id and key in r]
            set_values = [v for v in values if v is not None]
            if not values:
                assert key not in row
            elif set_values:
                assert row[key] == set_values[0]
                assert type(row[key]) is type(set_values[0])
            else:
                assert row[key] is None


@settings(max_examples=50, deadline=None)
@given(st.lists(rows(), max_size=4))
def test_inputs_are_never_modified(sources: list[list[dict[str, Any]]]) -> None:
    before = copy.deepcopy(sources)
    merged = merge_rows(sources)
    for row in merged:  # the result's rows are new dicts
        row["x"] = 1
    assert sources == before


@st.composite
def scored_lists(draw: st.DrawFn) -> list[dict[str, Any]]:
    ids = draw(st.lists(st.integers(0, 10), unique=True, max_size=5))
    return [{"id": f"m{i}", "score": draw(st.integers(0, 4))} for i in ids]


@settings(max_examples=120, deadline=None)
@given(scored_lists(), scored_lists(), scored_lists())
def test_the_union_of_document_lists_is_associative(
    a: list[dict[str, Any]], b: list[dict[str, Any]], c: list[dict[str, Any]]
) -> None:
    def union(*lists: list[dict[str, Any]]) -> list[dict[str, Any]]:
        (row,) = merge_rows([[{"id": "q", "matches": lst}] for lst in lists])
        matches: list[dict[str, Any]] = row["matches"]
        return matches

    left = union(union(a, b), c)
    right = union(a, union(b, c))
    assert left == right == union(a, b, c)
    assert sorted(m["id"] for m in left) == sorted({m["id"] for m in a + b + c})


@settings(max_examples=50, deadline=None)
@given(st.lists(matches(prefix="s0_"), min_size=1, max_size=1), st.lists(matches(prefix="s1_"), min_size=1))
def test_disjoint_scored_lists_come_out_sorted_by_score(
    first: list[list[dict[str, Any]]], later: list[list[dict[str, Any]]]
) -> None:
    lists = first + later
    (row,) = merge_rows([[{"id": "q", "matches": lst}] for lst in lists])
    items = [m for lst in lists for m in lst]
    grew = any(lst for lst in later)
    scored = all("score" in m for m in items)
    got = row["matches"]
    assert sorted(m["id"] for m in got) == sorted({m["id"] for m in items})
    if grew and scored:
        scores = [m["score"] for m in got]
        assert scores == sorted(scores, reverse=True)


# -- concrete cases -----------------------------------------------------------------------------


def test_jina_dag_example_both_branches_fields_are_kept() -> None:
    start = [{"id": "1", "text": "x", "a": None, "b": None}, {"id": "2", "text": "y", "a": None, "b": None}]
    branch_a = [{**d, "a": "A"} for d in start]
    branch_b = [{**d, "b": "B"} for d in start]
    merged = merge_rows([branch_a, branch_b])
    assert merged == [
        {"id": "1", "text": "x", "a": "A", "b": "B"},
        {"id": "2", "text": "y", "a": "A", "b": "B"},
    ]
    # the other order of needs gives the same documents here: no branch touched the other's field
    assert merge_rows([branch_b, branch_a]) == merged


def test_first_source_wins_when_both_set_a_field() -> None:
    merged = merge_rows([[{"id": "1", "text": "left"}], [{"id": "1", "text": "right"}]])
    assert merged == [{"id": "1", "text": "left"}]


def test_order_first_source_then_new_ids_of_later_sources() -> None:
    merged = merge_rows(
        [
            [{"id": "b"}, {"id": "a"}],
            [{"id": "c"}, {"id": "a"}, {"id": "d"}],
            [{"id": "e"}, {"id": "c"}],
        ]
    )
    assert ids_of(merged) == ["b", "a", "c", "d", "e"]


def test_shard_matches_are_unioned_and_sorted_by_score() -> None:
    shard0 = [{"id": "q1", "matches": [{"id": "x", "score": 0.9}, {"id": "y", "score": 0.5}]}]
    shard1 = [{"id": "q1", "matches": [{"id": "z", "score": 0.7}, {"id": "w", "score": 0.1}]}]
    (row,) = merge_rows([shard0, shard1])
    assert [(m["id"], m["score"]) for m in row["matches"]] == [
        ("x", 0.9),
        ("z", 0.7),
        ("y", 0.5),
        ("w", 0.1),
    ]


def test_equal_matches_through_two_branches_are_not_duplicated_nor_reordered() -> None:
    # ascending order on purpose: an unchanged list keeps its order, it is not re-sorted
    matches = [{"id": "m1", "score": 0.1}, {"id": "m2", "score": 0.2}]
    left = [{"id": "q", "matches": matches, "a": "A"}]
    right = [{"id": "q", "matches": copy.deepcopy(matches), "b": "B"}]
    assert merge_rows([left, right]) == [{"id": "q", "matches": matches, "a": "A", "b": "B"}]


def test_duplicate_matches_are_merged_field_by_field() -> None:
    left = [{"id": "q", "matches": [{"id": "m", "score": 0.3, "text": None}]}]
    right = [{"id": "q", "matches": [{"id": "m", "score": 0.9, "text": "t"}, {"id": "n", "score": 0.5}]}]
    (row,) = merge_rows([left, right])
    assert row["matches"] == [{"id": "n", "score": 0.5}, {"id": "m", "score": 0.3, "text": "t"}]


def test_unscored_document_lists_keep_first_seen_order() -> None:
    left = [{"id": "q", "chunks": [{"id": "c2"}, {"id": "c1"}]}]
    right = [{"id": "q", "chunks": [{"id": "c3"}, {"id": "c1"}]}]
    (row,) = merge_rows([left, right])
    assert ids_of(row["chunks"]) == ["c2", "c1", "c3"]


def test_partly_scored_lists_are_not_sorted() -> None:
    left = [{"id": "q", "matches": [{"id": "a", "score": 0.1}]}]
    right = [{"id": "q", "matches": [{"id": "b"}, {"id": "c", "score": 0.9}]}]
    (row,) = merge_rows([left, right])
    assert ids_of(row["matches"]) == ["a", "b", "c"]


def test_nan_scores_sort_last_and_ints_count() -> None:
    left = [{"id": "q", "matches": [{"id": "a", "score": float("nan")}, {"id": "b", "score": 1}]}]
    right = [{"id": "q", "matches": [{"id": "c", "score": 2.5}, {"id": "d", "score": np.float32(3.0)}]}]
    (row,) = merge_rows([left, right])
    assert ids_of(row["matches"]) == ["d", "c", "b", "a"]


def test_bool_scores_are_not_scores() -> None:
    left = [{"id": "q", "matches": [{"id": "a", "score": False}]}]
    right = [{"id": "q", "matches": [{"id": "b", "score": True}]}]
    (row,) = merge_rows([left, right])
    assert ids_of(row["matches"]) == ["a", "b"]


def test_score_field_is_configurable() -> None:
    left = [{"id": "q", "matches": [{"id": "a", "rank": 1}]}]
    right = [{"id": "q", "matches": [{"id": "b", "rank": 2}]}]
    (row,) = merge_rows([left, right], score_field="rank")
    assert ids_of(row["matches"]) == ["b", "a"]
    (row,) = merge_rows([left, right])
    assert ids_of(row["matches"]) == ["a", "b"]


def test_an_empty_document_list_takes_part_in_the_union() -> None:
    left = [{"id": "q", "matches": []}]
    right = [{"id": "q", "matches": [{"id": "m", "score": 1.0}]}]
    assert merge_rows([left, right]) == [{"id": "q", "matches": [{"id": "m", "score": 1.0}]}]
    assert merge_rows([right, left]) == [{"id": "q", "matches": [{"id": "m", "score": 1.0}]}]


def test_lists_of_non_documents_take_the_first_value() -> None:
    left = [{"id": "1", "tags": ["x", "y"], "vec": [1.0, 2.0], "objs": [{"no_id": 1}]}]
    right = [{"id": "1", "tags": ["x", "y", "z"], "vec": [3.0], "objs": [{"no_id": 2}]}]
    assert merge_rows([left, right]) == left


def test_a_list_mixing_documents_and_other_values_takes_the_first_value() -> None:
    left = [{"id": "1", "m": [{"id": "a"}, 3]}]
    right = [{"id": "1", "m": [{"id": "b"}]}]
    assert merge_rows([left, right]) == left
    assert merge_rows([right, left]) == right


def test_nested_documents_merge_recursively() -> None:
    left = [{"id": "1", "image": {"id": "img", "url": "u", "caption": None, "inner": {"id": "i", "x": 1}}}]
    right = [{"id": "1", "image": {"id": "img", "url": "v", "caption": "c", "inner": {"id": "i", "y": 2}}}]
    (row,) = merge_rows([left, right])
    assert row["image"] == {"id": "img", "url": "u", "caption": "c", "inner": {"id": "i", "x": 1, "y": 2}}


def test_nested_documents_with_other_ids_and_plain_dicts_take_the_first_value() -> None:
    left = [{"id": "1", "image": {"id": "img1", "url": "u"}, "tags": {"a": 1}}]
    right = [{"id": "1", "image": {"id": "img2", "caption": "c"}, "tags": {"b": 2}}]
    assert merge_rows([left, right]) == left


def test_none_loses_but_zero_empty_string_and_false_are_values() -> None:
    left = [{"id": "1", "n": 0, "s": "", "f": False, "l": [], "x": None}]
    right = [{"id": "1", "n": 7, "s": "text", "f": True, "l": ["a"], "x": 0, "y": None}]
    assert merge_rows([left, right]) == [{"id": "1", "n": 0, "s": "", "f": False, "l": [], "x": 0, "y": None}]
    assert merge_rows([[{"id": "1", "x": None}], [{"id": "1", "x": ""}]]) == [{"id": "1", "x": ""}]


def test_arrays_are_values_never_compared() -> None:
    emb_a = np.arange(4, dtype=np.float32)
    emb_b = np.ones(4, dtype=np.float32)
    left = [{"id": "1", "embedding": None, "tensor": emb_a}]
    right = [{"id": "1", "embedding": emb_b, "tensor": emb_b}]
    (row,) = merge_rows([left, right])
    assert row["embedding"] is emb_b
    assert row["tensor"] is emb_a


def test_arrays_inside_matches_survive_the_union() -> None:
    e1, e2 = np.zeros(2), np.ones(2)
    left = [{"id": "q", "matches": [{"id": "a", "score": 0.1, "embedding": e1}]}]
    right = [{"id": "q", "matches": [{"id": "a", "score": 0.1, "embedding": e2}, {"id": "b", "score": 0.5}]}]
    (row,) = merge_rows([left, right])
    assert ids_of(row["matches"]) == ["b", "a"]
    assert row["matches"][1]["embedding"] is e1


def test_rows_without_an_id_are_kept_in_place() -> None:
    merged = merge_rows([[{"id": "1"}, {"text": "no id"}, {"id": None, "text": "none"}], [{"text": "no id"}]])
    assert merged == [{"id": "1"}, {"text": "no id"}, {"id": None, "text": "none"}, {"text": "no id"}]


def test_duplicate_ids_within_a_source_become_one_row() -> None:
    merged = merge_rows([[{"id": "1", "a": None}, {"id": "2"}, {"id": "1", "a": 5}]])
    assert merged == [{"id": "1", "a": 5}, {"id": "2"}]


def test_no_sources_and_empty_sources() -> None:
    assert merge_rows([]) == []
    assert merge_rows([[], []]) == []
    assert merge_rows([[], [{"id": "1"}]]) == [{"id": "1"}]


def test_rows_straight_from_the_codec() -> None:
    emb = np.arange(3, dtype=np.float32)
    shard0 = decode_raw(encode_raw([{"id": "q", "embedding": emb, "matches": [{"id": "a", "score": 0.2}]}]))
    shard1 = decode_raw(encode_raw([{"id": "q", "embedding": emb, "matches": [{"id": "b", "score": 0.8}]}]))
    merged = merge_rows([shard0, shard1])
    again = decode_raw(encode_raw(merged))
    assert ids_of(again[0]["matches"]) == ["b", "a"]
    np.testing.assert_array_equal(again[0]["embedding"], emb)
