"""The `when` filter language (plait.gateway.conditions)."""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from plait.errors import ConfigError
from plait.gateway.conditions import Condition, compile_condition, filter_rows

ROW: dict[str, Any] = {
    "id": "d1",
    "text": "hello world",
    "n": 5,
    "x": 2.5,
    "flag": True,
    "zero": 0,
    "empty": "",
    "nothing": None,
    "tags": {"lang": "en", "year": 2021, "nested": {"deep": "yes"}, "list": ["a", "b"]},
    "matches": [{"id": "m1", "score": 0.9}, {"id": "m2", "score": 0.1}],
    "embedding": np.arange(3, dtype=np.float32),
}


def check(spec: dict[str, Any], row: dict[str, Any] = ROW) -> bool:
    return compile_condition(spec)(row)


# -- operators ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ({"n": {"$eq": 5}}, True),
        ({"n": {"$eq": 6}}, False),
        ({"n": 5}, True),  # a plain value means $eq
        ({"text": "hello world"}, True),
        ({"x": {"$eq": 2.5}}, True),
        ({"flag": True}, True),
        ({"tags": {"$eq": {"lang": "en"}}}, False),
        ({"tags__list": ["a", "b"]}, True),
        ({"n": {"$neq": 5}}, False),
        ({"n": {"$neq": 4}}, True),
        ({"n": {"$ne": 4}}, True),
        ({"n": {"$gt": 4}}, True),
        ({"n": {"$gt": 5}}, False),
        ({"n": {"$gte": 5}}, True),
        ({"n": {"$lt": 5}}, False),
        ({"n": {"$lte": 5}}, True),
        ({"x": {"$lt": 3}}, True),
        ({"text": {"$gt": "a"}}, True),  # str ordering
        ({"n": {"$in": [1, 5]}}, True),
        ({"n": {"$in": [1, 2]}}, False),
        ({"text": {"$in": ("hello world",)}}, True),
        ({"n": {"$nin": [1, 2]}}, True),
        ({"n": {"$nin": [5]}}, False),
        ({"tags__list": {"$in": [["a", "b"], "z"]}}, True),  # unhashable value, list item
        ({"n": {"$exists": True}}, True),
        ({"n": {"$exists": False}}, False),
        ({"nothing": {"$exists": True}}, False),
        ({"nothing": {"$exists": False}}, True),
        ({"missing": {"$exists": False}}, True),
        ({"zero": {"$exists": True}}, True),
        ({"empty": {"$exists": True}}, True),
        ({"text": {"$regex": "^hel+o"}}, True),
        ({"text": {"$regex": "world$"}}, True),  # re.search, not re.match
        ({"text": {"$regex": "^world"}}, False),
        ({"text": {"$regex": re.compile("WORLD", re.IGNORECASE)}}, True),
        ({"n": {"$regex": "5"}}, False),  # only str values
        ({"tags__list": {"$size": 2}}, True),
        ({"tags__list": {"$size": 3}}, False),
        ({"text": {"$size": 11}}, True),
        ({"n": {"$size": 1}}, False),
        ({"matches": {"$size": 2}}, True),
        ({"n": {"$gt": 1, "$lt": 10}}, True),  # several operators are ANDed
        ({"n": {"$gt": 1, "$lt": 3}}, False),
        ({"n": {"$not": {"$gt": 4}}}, False),  # field-level $not
        ({"n": {"$not": 4}}, True),
    ],
)
def test_operators(spec: dict[str, Any], expected: bool) -> None:
    assert check(spec) is expected


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ({"tags__lang": "en"}, True),
        ({"tags.lang": "en"}, True),
        ({"tags__year": {"$gte": 2020}}, True),
        ({"tags__nested__deep": "yes"}, True),
        ({"tags.nested.deep": {"$exists": True}}, True),
        ({"tags__nested.deep": "yes"}, True),
        ({"matches__0__score": {"$gt": 0.5}}, True),
        ({"matches.1.id": "m2"}, True),
        ({"matches__2__id": {"$exists": True}}, False),
        ({"tags__nested__deep__deeper": {"$exists": True}}, False),
        ({"text__sub": {"$exists": True}}, False),  # a str has no fields
        ({"n__sub": {"$exists": False}}, True),
    ],
)
def test_nested_paths(spec: dict[str, Any], expected: bool) -> None:
    assert check(spec) is expected


def test_digit_keys_of_plain_dicts() -> None:
    assert check({"tags__0": "zero"}, {"tags": {"0": "zero"}})
    assert check({"tags__\u00b2": "sq"}, {"tags": {"\u00b2": "sq"}})  # not an ASCII digit: a key


@pytest.mark.parametrize(
    "spec",
    [
        {"missing": 5},
        {"missing": {"$gt": 0}},
        {"missing": {"$lt": 0}},
        {"missing": {"$in": [1]}},
        {"missing": {"$regex": "."}},
        {"missing": {"$size": 0}},
        {"missing__deeper": {"$eq": 1}},
        {"missing": {"$exists": True}},
    ],
)
def test_missing_fields_do_not_match_and_never_raise(spec: dict[str, Any]) -> None:
    assert check(spec) is False


def test_missing_fields_like_mongodb() -> None:
    assert check({"missing": {"$neq": 5}}) is True
    assert check({"missing": {"$nin": [5]}}) is True
    assert check({"missing": None}) is True
    assert check({"missing": {"$in": [None]}}) is True


@pytest.mark.parametrize(
    "spec",
    [
        {"text": {"$gt": 5}},
        {"n": {"$lt": "a"}},
        {"nothing": {"$gte": 0}},
        {"tags": {"$gt": 1}},
        {"embedding": {"$gt": 0}},
        {"matches": {"$lte": 3}},
    ],
)
def test_incomparable_types_are_false_not_errors(spec: dict[str, Any]) -> None:
    assert check(spec) is False


def test_arrays_compare_whole() -> None:
    emb = ROW["embedding"]
    assert check({"embedding": {"$eq": emb.copy()}})
    assert not check({"embedding": {"$eq": emb + 1}})
    assert not check({"embedding": {"$eq": np.arange(4, dtype=np.float32)}})  # other shape
    assert not check({"embedding": 0})
    assert check({"embedding": {"$neq": 0}})
    assert check({"embedding": {"$in": [emb.copy()]}})
    assert check({"embedding": {"$exists": True}})
    assert not check({"n": {"$eq": emb}})
    assert not check({"embedding": {"$size": 3}})


def test_lists_holding_arrays_do_not_raise() -> None:
    row = {"id": "x", "vecs": [np.zeros(2), np.ones(2)]}
    assert not check({"vecs": [1, 2]}, row)
    assert not check({"vecs": {"$in": [[1, 2]]}}, row)


# -- logic --------------------------------------------------------------------------------------


def test_logical_operators() -> None:
    assert check({"$and": [{"n": 5}, {"tags__lang": "en"}]})
    assert not check({"$and": [{"n": 5}, {"tags__lang": "de"}]})
    assert check({"$or": [{"n": 6}, {"tags__lang": "en"}]})
    assert not check({"$or": [{"n": 6}, {"tags__lang": "de"}]})
    assert check({"$not": {"n": 6}})
    assert not check({"$not": {"n": 5}})
    assert check({"$and": [{"$or": [{"n": 1}, {"n": 5}]}, {"$not": {"text": {"$regex": "bye"}}}]})
    assert check({"n": 5, "flag": True})  # several keys are ANDed
    assert not check({"n": 5, "flag": False})
    assert check({"n": 5, "$or": [{"x": 1}, {"x": 2.5}]})


def test_empty_specs() -> None:
    assert check({})
    assert check({"$and": []})
    assert not check({"$or": []})
    assert check({"tags__missing": {}}, {"tags": {"missing": {}}})  # {} is a plain value


hyp_rows = st.fixed_dictionaries({"a": st.integers(0, 4), "b": st.one_of(st.none(), st.integers(0, 4))})


@st.composite
def leaf_specs(draw: st.DrawFn) -> dict[str, Any]:
    field = draw(st.sampled_from(["a", "b", "c"]))
    op = draw(st.sampled_from(["$eq", "$neq", "$gt", "$gte", "$lt", "$lte", "$in", "$nin", "$exists"]))
    if op in ("$in", "$nin"):
        arg: Any = draw(st.lists(st.integers(0, 4), max_size=3))
    elif op == "$exists":
        arg = draw(st.booleans())
    else:
        arg = draw(st.integers(0, 4))
    return {field: {op: arg}}


specs = st.recursive(
    leaf_specs(),
    lambda children: st.one_of(
        st.builds(lambda xs: {"$and": xs}, st.lists(children, max_size=3)),
        st.builds(lambda xs: {"$or": xs}, st.lists(children, max_size=3)),
        st.builds(lambda x: {"$not": x}, children),
    ),
    max_leaves=6,
)


@settings(max_examples=60, deadline=None)
@given(st.lists(specs, max_size=4), hyp_rows)
def test_not_inverts_and_and_or_agree_with_all_and_any(
    parts: list[dict[str, Any]], row: dict[str, Any]
) -> None:
    results = [compile_condition(p)(row) for p in parts]
    assert compile_condition({"$and": parts})(row) is all(results)
    assert compile_condition({"$or": parts})(row) is any(results)
    for part, result in zip(parts, results, strict=True):
        assert compile_condition({"$not": part})(row) is (not result)


@settings(max_examples=120, deadline=None)
@given(leaf_specs(), hyp_rows)
def test_operators_agree_with_a_reference(spec: dict[str, Any], row: dict[str, Any]) -> None:
    ((field, ops),) = spec.items()
    ((op, arg),) = ops.items()
    value = row.get(field)
    reference: dict[str, Any] = {
        "$eq": lambda: value == arg,
        "$neq": lambda: value != arg,
        "$gt": lambda: value is not None and value > arg,
        "$gte": lambda: value is not None and value >= arg,
        "$lt": lambda: value is not None and value < arg,
        "$lte": lambda: value is not None and value <= arg,
        "$in": lambda: value in arg,
        "$nin": lambda: value not in arg,
        "$exists": lambda: (value is not None) == arg,
    }
    expected = reference[op]()
    assert compile_condition(spec)(row) is expected


# -- compiling ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"tags__x": {"$foo": 1}}, "when.tags__x: unknown operator '$foo'"),
        ({"$foo": []}, "when: unknown operator '$foo'"),
        ({"$nor": []}, "when: unknown operator '$nor'"),
        ({"n": {"$in": 5}}, "when.n.$in: expected a list of values, got int"),
        ({"n": {"$nin": "abc"}}, "when.n.$nin: expected a list of values, got str"),
        ({"text": {"$regex": "("}}, "when.text.$regex: invalid regular expression '('"),
        ({"text": {"$regex": 5}}, "when.text.$regex: expected a regular expression string"),
        ({"$and": {"n": 5}}, "when.$and: expected a list of conditions, got dict"),
        ({"$or": "n"}, "when.$or: expected a list of conditions, got str"),
        ({"$and": [{"n": 5}, 3]}, "when.$and[1]: expected a mapping, got int"),
        ({"$or": [{"n": {"$bad": 1}}]}, "when.$or[0].n: unknown operator '$bad'"),
        ({"$not": [{"n": 5}]}, "when.$not: expected a mapping, got list"),
        ({"n": {"$exists": "yes"}}, "when.n.$exists: expected true or false"),
        ({"n": {"$size": -1}}, "when.n.$size: expected a non-negative integer"),
        ({"n": {"$size": True}}, "when.n.$size: expected a non-negative integer"),
        ({"n": {"$gt": None}}, "when.n.$gt: expected a number or str"),
        ({"n": {"$lt": [1]}}, "when.n.$lt: expected a number or str"),
        ({"n": {"$gt": 1, "plain": 2}}, "when.n: mixes operators and plain keys"),
        ({"tags__": 1}, "when.tags__: malformed field path"),
        ({"": 1}, "when.: malformed field path"),
        ({1: 2}, "when: keys must be field paths or operators"),
        ({"n": {"$not": {"$zzz": 1}}}, "when.n.$not: unknown operator '$zzz'"),
    ],
)
def test_invalid_specs_raise_config_error_with_the_path(spec: dict[Any, Any], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        compile_condition(spec)
    assert str(info.value).startswith(message), str(info.value)


def test_not_a_mapping() -> None:
    with pytest.raises(ConfigError, match="when: expected a mapping"):
        compile_condition([{"n": 5}])  # type: ignore[arg-type]


def test_where_prefix_names_the_executor() -> None:
    with pytest.raises(ConfigError, match=r"^executors\[2\]\.when\.n: unknown operator"):
        compile_condition({"n": {"$nope": 1}}, where="executors[2].when")


def test_condition_repr_and_spec_is_a_snapshot() -> None:
    spec: dict[str, Any] = {"tags__lang": {"$eq": "en"}}
    condition = compile_condition(spec)
    spec["tags__lang"]["$eq"] = "de"
    assert repr(condition) == "Condition({'tags__lang': {'$eq': 'en'}})"
    assert condition({"tags": {"lang": "en"}})
    assert isinstance(condition, Condition)
    with pytest.raises(AttributeError):
        condition.spec = {}  # type: ignore[misc]


def test_filter_rows_keeps_order_and_objects() -> None:
    rows = [{"id": str(i), "n": i} for i in range(6)]
    kept = filter_rows(rows, compile_condition({"n": {"$in": [4, 1, 3]}}))
    assert [r["id"] for r in kept] == ["1", "3", "4"]
    assert kept[0] is rows[1]
    assert filter_rows(rows, {"n": {"$gte": 4}}) == rows[4:]
    assert filter_rows([], {"n": 1}) == []
