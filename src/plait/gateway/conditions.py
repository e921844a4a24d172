"""The ``when`` filter language: which documents go into an Executor (and the branch after it).

The language is the one Jina users know from DocArray queries, a MongoDB-like mapping::

    {'tags__lang': 'en'}                                   # equality, the short form
    {'tags__year': {'$gte': 2020, '$lt': 2024}}            # several operators are ANDed
    {'$or': [{'text': {'$regex': '^hello'}}, {'tags__pinned': True}]}

:func:`compile_condition` checks a spec once, before any document flows, and turns it into a tree
of small closures; evaluating a row then does no parsing, only dict look-ups and comparisons.
Rows are the schema-less dicts of :func:`plait.docs.decode_raw`.

Semantics, chosen so that a filter never raises on data it did not expect:

* A path (``tags__lang``, or ``tags.lang``; a segment made of digits indexes a list, so
  ``matches__0__score`` works) that does not resolve reads as ``None``, "does not exist".
* ``$exists: true`` holds when the path resolves to a value that is not ``None``.
* ``$eq``/``$neq`` use Python equality; an array compares equal only to an equal array. A
  missing field equals ``None`` and is ``$neq`` to anything else, as in MongoDB.
* ``$gt``/``$gte``/``$lt``/``$lte`` are False when the values cannot be ordered (``None``,
  a str against a number, ...).
* ``$in``/``$nin`` test membership of the field's value in the given list.
* ``$regex`` is :func:`re.search` on str values (False otherwise); ``$size`` is the length of
  a list or str (False otherwise).
"""

from __future__ import annotations

import copy
import operator
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from plait.docs.rows import is_array
from plait.errors import ConfigError

__all__ = ["Condition", "compile_condition", "filter_rows"]

Predicate = Callable[[Mapping[str, Any]], bool]
_ValueTest = Callable[[Any], bool]

_LOGICAL: Final = frozenset({"$and", "$or", "$not"})
_MISSING: Final = None  # an unresolved path reads as None ("does not exist")
_PATH_SPLIT: Final = re.compile(r"__|\.")
_SCALARS: Final = frozenset({str, int, float, bool})
_NUMBERS: Final = frozenset({int, float, bool})


@dataclass(frozen=True, slots=True, eq=False)
class Condition:
    """A compiled ``when`` spec: call it with a row to learn whether the row passes."""

    spec: Mapping[str, Any]
    _test: Predicate = field(repr=False, compare=False)

    def __call__(self, row: Mapping[str, Any]) -> bool:
        return self._test(row)

    def __repr__(self) -> str:
        return f"Condition({dict(self.spec)!r})"


def compile_condition(spec: Mapping[str, Any], *, where: str = "when") -> Condition:
    """Check ``spec`` and compile it into a :class:`Condition`.

    Raises :class:`~plait.errors.ConfigError` naming the place of the first problem, prefixed
    with ``where`` (e.g. ``when.tags__x: unknown operator '$foo'``). An empty spec lets every
    row through.
    """
    if not isinstance(spec, Mapping):
        raise ConfigError(f"{where}: expected a mapping of conditions, got {type(spec).__name__}")
    return Condition(copy.deepcopy(spec), _compile_query(spec, where))


def filter_rows(
    rows: Iterable[dict[str, Any]], condition: Condition | Mapping[str, Any]
) -> list[dict[str, Any]]:
    """The rows for which ``condition`` holds, in order (the same dict objects, not copies)."""
    compiled = condition if isinstance(condition, Condition) else compile_condition(condition)
    test = compiled._test  # skip one call per row
    return [row for row in rows if test(row)]


# -- compiling ---------------------------------------------------------------------------------


def _compile_query(spec: Mapping[str, Any], where: str) -> Predicate:
    parts: list[Predicate] = []
    for key, value in spec.items():
        if not isinstance(key, str):
            raise ConfigError(f"{where}: keys must be field paths or operators, got {key!r}")
        here = f"{where}.{key}"
        if key.startswith("$"):
            if key not in _LOGICAL:
                raise ConfigError(
                    f"{where}: unknown operator {key!r} (at this level: a field path, $and, $or or $not)"
                )
            parts.append(_compile_logical(key, value, here))
        else:
            parts.append(_compile_field(key, value, here))
    return _all_of(parts)


def _compile_logical(op: str, value: Any, where: str) -> Predicate:
    if op in ("$and", "$or"):
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where}: expected a list of conditions, got {type(value).__name__}")
        subs: list[Predicate] = []
        for index, sub in enumerate(value):
            if not isinstance(sub, Mapping):
                raise ConfigError(f"{where}[{index}]: expected a mapping, got {type(sub).__name__}")
            subs.append(_compile_query(sub, f"{where}[{index}]"))
        return _all_of(subs) if op == "$and" else _any_of(subs)
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__}")
    inner = _compile_query(value, where)
    return lambda row: not inner(row)


def _compile_field(path: str, value: Any, where: str) -> Predicate:
    keys = _path_keys(path, where)
    test = _compile_value_test(value, where)
    if len(keys) == 1:  # the common case: one look-up, one call
        (key,) = keys
        return lambda row: test(row.get(key))
    get = _getter(keys)
    return lambda row: test(get(row))


def _compile_value_test(value: Any, where: str) -> _ValueTest:
    """A test of one field's value: a plain value (equality) or a mapping of operators."""
    if isinstance(value, Mapping) and value:
        dollar = [isinstance(k, str) and k.startswith("$") for k in value]
        if all(dollar):
            return _all_values([_compile_operator(op, arg, f"{where}.{op}") for op, arg in value.items()])
        if any(dollar):
            raise ConfigError(
                f"{where}: mixes operators and plain keys; write {{'$eq': {{...}}}} to compare with a dict"
            )
    return _eq_test(value)


def _compile_operator(op: str, arg: Any, where: str) -> _ValueTest:
    builder = _OPERATORS.get(op)
    if builder is None:
        known = ", ".join(sorted(_OPERATORS))
        raise ConfigError(f"{where.rsplit('.', 1)[0]}: unknown operator {op!r} (known: {known})")
    return builder(arg, where)


def _path_keys(path: str, where: str) -> tuple[str, ...]:
    keys = tuple(_PATH_SPLIT.split(path))
    if not path or "" in keys:
        raise ConfigError(f"{where}: malformed field path {path!r}")
    return keys


def _getter(keys: tuple[str, ...]) -> Callable[[Mapping[str, Any]], Any]:
    # Each step: the key for mappings, and the index for lists when the key is made of digits.
    steps = tuple((key, int(key) if key.isascii() and key.isdigit() else None) for key in keys)

    def get(row: Mapping[str, Any]) -> Any:
        current: Any = row
        for key, index in steps:
            kind = type(current)
            if kind is dict:
                current = current.get(key)
            elif index is not None and kind is list:
                current = current[index] if index < len(current) else None
            elif isinstance(current, Mapping):
                current = current.get(key)
            elif index is not None and isinstance(current, list | tuple):
                current = current[index] if index < len(current) else None
            else:
                return _MISSING
            if current is None:
                return _MISSING
        return current

    if len(steps) == 2 and steps[0][1] is None and steps[1][1] is None:
        # ``tags__key``, the usual shape, without the loop
        (first, _), (second, _) = steps

        def get_two(row: Mapping[str, Any]) -> Any:
            inner = row.get(first)
            if type(inner) is dict:
                return inner.get(second)
            return get(row)

        return get_two
    return get


# -- combinators ---------------------------------------------------------------------------------


def _all_of(parts: Sequence[Predicate]) -> Predicate:
    if not parts:
        return lambda row: True
    if len(parts) == 1:
        return parts[0]
    if len(parts) == 2:
        first, second = parts
        return lambda row: first(row) and second(row)
    items = tuple(parts)

    def every(row: Mapping[str, Any]) -> bool:
        # An explicit loop: all() over a generator costs more than the tests it runs.
        for part in items:  # noqa: SIM110
            if not part(row):
                return False
        return True

    return every


def _any_of(parts: Sequence[Predicate]) -> Predicate:
    if len(parts) == 1:
        return parts[0]
    items = tuple(parts)

    def some(row: Mapping[str, Any]) -> bool:
        for part in items:  # noqa: SIM110
            if part(row):
                return True
        return False

    return some


def _all_values(tests: Sequence[_ValueTest]) -> _ValueTest:
    if len(tests) == 1:
        return tests[0]
    if len(tests) == 2:
        first, second = tests
        return lambda value: first(value) and second(value)
    items = tuple(tests)

    def every(value: Any) -> bool:
        for test in items:  # noqa: SIM110
            if not test(value):
                return False
        return True

    return every


# -- operators -----------------------------------------------------------------------------------


def _safe_eq(a: Any, b: Any) -> bool:
    """Equality that never raises and never returns an array."""
    if is_array(a) or is_array(b):
        import numpy as np

        return is_array(a) and is_array(b) and a.shape == b.shape and bool(np.array_equal(a, b))
    try:
        return bool(a == b)
    except Exception:  # e.g. lists holding arrays: their == is ambiguous
        return False


def _eq_test(arg: Any) -> _ValueTest:
    if arg is None:
        return lambda value: value is None
    if type(arg) in _SCALARS:

        def scalar_eq(value: Any) -> bool:
            if type(value) in _SCALARS:
                return bool(value == arg)
            return _safe_eq(value, arg)

        return scalar_eq
    return lambda value: _safe_eq(value, arg)


def _op_eq(arg: Any, where: str) -> _ValueTest:
    return _eq_test(arg)


def _op_neq(arg: Any, where: str) -> _ValueTest:
    eq = _eq_test(arg)
    return lambda value: not eq(value)


def _ordering(compare: Callable[[Any, Any], Any]) -> Callable[[Any, str], _ValueTest]:
    def build(arg: Any, where: str) -> _ValueTest:
        if arg is None or isinstance(arg, Mapping | list | tuple) or is_array(arg):
            raise ConfigError(f"{where}: expected a number or str to compare with, got {arg!r}")
        same_kind = _NUMBERS if type(arg) in _NUMBERS else frozenset({type(arg)})

        def test(value: Any) -> bool:
            if type(value) in same_kind:  # the usual case: int/float against a number, str against str
                return bool(compare(value, arg))
            if value is None or is_array(value):
                return False
            try:
                return bool(compare(value, arg))
            except TypeError:
                return False

        return test

    return build


def _op_in(arg: Any, where: str) -> _ValueTest:
    if not isinstance(arg, list | tuple | set | frozenset):
        raise ConfigError(f"{where}: expected a list of values, got {type(arg).__name__}")
    hashable: set[Any] = set()
    others: list[Any] = []
    for item in arg:
        try:
            hashable.add(item)
        except TypeError:
            others.append(item)

    def test(value: Any) -> bool:
        try:
            if value in hashable:
                return True
        except TypeError:  # an unhashable value (list, dict, array) can only equal an "other"
            pass
        return any(_safe_eq(value, other) for other in others)

    return test


def _op_nin(arg: Any, where: str) -> _ValueTest:
    contained = _op_in(arg, where)
    return lambda value: not contained(value)


def _op_exists(arg: Any, where: str) -> _ValueTest:
    if not isinstance(arg, bool):
        raise ConfigError(f"{where}: expected true or false, got {arg!r}")
    if arg:
        return lambda value: value is not None
    return lambda value: value is None


def _op_regex(arg: Any, where: str) -> _ValueTest:
    if isinstance(arg, re.Pattern):
        pattern: re.Pattern[str] = arg
    elif isinstance(arg, str):
        try:
            pattern = re.compile(arg)
        except re.error as exc:
            raise ConfigError(f"{where}: invalid regular expression {arg!r}: {exc}") from None
    else:
        raise ConfigError(f"{where}: expected a regular expression string, got {type(arg).__name__}")
    search = pattern.search
    return lambda value: type(value) is str and search(value) is not None


def _op_size(arg: Any, where: str) -> _ValueTest:
    if isinstance(arg, bool) or not isinstance(arg, int) or arg < 0:
        raise ConfigError(f"{where}: expected a non-negative integer, got {arg!r}")
    return lambda value: isinstance(value, list | tuple | str) and len(value) == arg


def _op_not(arg: Any, where: str) -> _ValueTest:
    # Field-level negation, MongoDB style: {'year': {'$not': {'$gt': 2020}}}.
    inner = _compile_value_test(arg, where)
    return lambda value: not inner(value)


_OPERATORS: Final[dict[str, Callable[[Any, str], _ValueTest]]] = {
    "$eq": _op_eq,
    "$neq": _op_neq,
    "$ne": _op_neq,
    "$gt": _ordering(operator.gt),
    "$gte": _ordering(operator.ge),
    "$lt": _ordering(operator.lt),
    "$lte": _ordering(operator.le),
    "$in": _op_in,
    "$nin": _op_nin,
    "$exists": _op_exists,
    "$regex": _op_regex,
    "$size": _op_size,
    "$not": _op_not,
}
