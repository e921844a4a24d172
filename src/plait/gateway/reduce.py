"""Merging the documents of parallel branches (a join) or of shards (polling ``ALL``).

The gateway decodes each upstream result with :func:`plait.docs.decode_raw`, so what arrives
here are schema-less rows: dicts with an ``"id"`` whose values are scalars, nested document
dicts, lists and numpy arrays. :func:`merge_rows` folds any number of such results into one
list following one rule, written out in its docstring and in ``docs/flows.md``.

Why this rule and not DocArray's ``update`` (which lets the right side win and concatenates
lists): a join usually sees the same document come back from every branch, each having set its
own fields and left the others as they were. "First value that is set wins" keeps every
branch's contribution without letting an untouched copy overwrite it, and unioning document
lists by id (instead of concatenating) means a ``matches`` list that went through two branches
unchanged is not doubled, while the disjoint top-k lists of several shards become one list
ranked by score.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from typing import Any, Final

__all__ = ["merge_rows"]


def merge_rows(
    sources: Sequence[Sequence[Mapping[str, Any]]],
    *,
    score_field: str = "score",
) -> list[dict[str, Any]]:
    """Merge several lists of rows into one, joining rows that share an ``id``.

    ``sources`` are in priority order (for a join: the order of ``needs``; for shards: shard 0
    first). The rule:

    * **Order.** The first source's rows in their order, then rows whose id was first seen in a
      later source, in the order they appear there. Each id appears once in the result.
    * **Fields.** Rows with the same id are merged field by field. A field takes the value of
      the first row (in source order) where it is not ``None``, so ``0``, ``''``, ``False`` and
      empty lists are values that win over ``None``; a field that is ``None`` or missing
      everywhere is ``None`` when some row has the key. Numpy arrays are values like any other
      (never compared element-wise).
    * **Lists of documents** (every item a dict with a str ``"id"``, as ``matches`` and
      ``chunks``) are unioned by item id instead: the first list's items in order, then
      items first seen in later lists; an item whose id occurs several times is merged by this
      same rule. When the union holds an item the first list did not have and every item has
      a real-number ``score_field`` value, the union is then sorted by that value, highest
      first (stable, so ties keep first-seen order; NaN goes last). An empty list counts as
      a list of documents with nothing in it.
    * **Nested documents** (dict values with an ``"id"``) merge recursively by this rule when
      their ids are equal. Any other value, including lists of non-documents (``tags`` lists, embeddings
      as lists) and plain dicts, follows the first-not-``None`` rule, so an unchanged value
      that went through two branches is not doubled.
    * Rows without a str ``id`` cannot be matched and are kept as they are, in place. (Ids are
      compared exactly; ints are accepted too, and ``1`` and ``"1"`` are different ids.)

    The inputs are never modified. Every row in the result is a new dict; values taken
    unchanged from a single source (lists, arrays, nested dicts) are shared with it, so copy
    them before changing them in place. Runs in time linear in the total size of the input
    (plus sorting the lists that get unioned).
    """
    groups: dict[Any, list[Mapping[str, Any]]] = {}
    for source in sources:
        for row in source:
            rid = row.get("id")
            key: Any = rid if type(rid) is str or type(rid) is int else None
            if key is None:
                key = _Unmatched()
            group = groups.get(key)
            if group is None:
                groups[key] = [row]
            else:
                group.append(row)
    return [
        dict(group[0]) if len(group) == 1 else _merge_docs(group, score_field) for group in groups.values()
    ]


class _Unmatched:
    """A key that equals nothing else: a row without a usable id keeps its own slot."""

    __slots__ = ()


def _merge_docs(docs: Sequence[Mapping[str, Any]], score_field: str) -> dict[str, Any]:
    """Merge documents sharing an id (at least two), in priority order."""
    # Start from a copy of the first document and let later ones fill what it leaves unset:
    # one dict operation per (field, value) pair, so this stays linear and fast. Fields where
    # two sources both hold a list or a dict are set aside and resolved once all are seen.
    merged = dict(docs[0])
    contested: dict[str, list[Any]] = {}
    for doc in docs[1:]:
        for key, value in doc.items():
            if value is None:
                if key not in merged:
                    merged[key] = None
                continue
            current = merged.get(key)
            if current is None:
                merged[key] = value
            elif type(current) not in _PLAIN and _maybe_structured(current):
                values = contested.get(key)
                if values is None:
                    contested[key] = [current, value]
                else:
                    values.append(value)
    for key, values in contested.items():
        merged[key] = _merge_values(values, score_field)
    return merged


def _maybe_structured(value: Any) -> bool:
    """Whether ``value`` could be a document list or a nested document (cheap checks first)."""
    kind = type(value)
    if kind is list or kind is dict:
        return True
    if kind in _PLAIN:
        return False
    return isinstance(value, Mapping)


_PLAIN: Final = frozenset({str, int, float, bool, bytes})


def _merge_values(values: list[Any], score_field: str) -> Any:
    """Resolve one field from two or more non-``None`` values, in priority order."""
    first = values[0]
    if type(first) is list:
        union = _union_docs(values, score_field)
        return first if union is None else union
    doc_id = first.get("id")
    if doc_id is not None and all(isinstance(v, Mapping) and _same_id(v.get("id"), doc_id) for v in values):
        return _merge_docs(values, score_field)
    return first


def _same_id(a: Any, b: Any) -> bool:
    # Ids are str in practice; an exotic id type whose == is not a plain bool is "not the same".
    return type(a) is type(b) and type(a) in (str, int) and a == b


def _union_docs(lists: list[Any], score_field: str) -> list[Any] | None:
    """The union of lists of documents by id, or None when not every value is one."""
    union: dict[Any, Any] = {}  # item id -> item, in first-seen order
    repeated: dict[Any, list[Any]] = {}  # item id -> every occurrence, for ids seen twice
    first_count = -1
    for items in lists:
        if type(items) is not list:
            return None
        for item in items:
            if type(item) is not dict and not isinstance(item, Mapping):
                return None
            item_id = item.get("id")
            if type(item_id) is not str and type(item_id) is not int:
                return None
            seen = union.get(item_id)
            if seen is None:
                union[item_id] = item
            elif (occurrences := repeated.get(item_id)) is None:
                repeated[item_id] = [seen, item]
            else:
                occurrences.append(item)
        if first_count < 0:
            first_count = len(union)
    for item_id, occurrences in repeated.items():
        union[item_id] = _merge_docs(occurrences, score_field)
    result = list(union.values())
    if len(result) == first_count:  # nothing new: the first list's order stands
        return result
    keys: list[float] = []
    for item in result:
        value = item.get(score_field)
        if type(value) is float and value == value:
            keys.append(-value)
        else:
            key = _score_key(value)
            if key is None:
                return result
            keys.append(key)
    return [result[i] for i in sorted(range(len(result)), key=keys.__getitem__)]


def _score_key(value: Any) -> float | None:
    """Sort key for "highest first, NaN last", or None when ``value`` is not a real number."""
    if type(value) is int or type(value) is float:
        pass
    elif isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    elif not isinstance(value, int | float):
        value = float(value)  # e.g. numpy.float32, which is not a float subclass
    if value != value:  # NaN
        return math.inf
    key: float = -value  # ints stay ints: exact, and no overflow for huge ones
    return key
