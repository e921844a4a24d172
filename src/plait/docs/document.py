"""``Document``, the pydantic base class of every payload, and ``AnyDoc``, its schema-less form."""

from __future__ import annotations

import uuid
from collections.abc import Generator
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

__all__ = ["AnyDoc", "Document"]

# Arrays bigger than this show as shape/dtype in reprs: a 512-d embedding would drown the rest.
_REPR_MAX_ELEMENTS = 8


def _new_id() -> str:
    return uuid.uuid4().hex


class Document(BaseModel):
    """Base class of user documents: ``class Text(Document): text: str = ''``.

    Every document has an ``id`` (a fresh uuid4 hex unless given). Unknown fields in the input
    are ignored; use :class:`AnyDoc` to keep them.

    ``==`` compares field by field and understands numpy arrays (same dtype, shape and values,
    NaN equal to NaN), where pydantic's own ``==`` would raise on any array of size > 1.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    id: str = Field(default_factory=_new_id)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, BaseModel):
            return NotImplemented
        return (
            type(self) is type(other)
            and _equal(self.__dict__, other.__dict__)
            and _equal(self.__pydantic_extra__, other.__pydantic_extra__)
            and _equal(self.__pydantic_private__, other.__pydantic_private__)
        )

    def __repr_args__(self) -> Generator[tuple[str | None, Any], None, None]:
        for name, value in super().__repr_args__():
            if isinstance(value, np.ndarray) and value.size > _REPR_MAX_ELEMENTS:
                yield name, _ArraySummary(value)
            else:
                yield name, value


class AnyDoc(Document):
    """A document without a schema: keeps every field that arrives (tensors stay arrays).

    Used where the caller has no type, e.g. ``DocList`` without a parameter.
    """

    model_config = ConfigDict(extra="allow", arbitrary_types_allowed=True)


class _ArraySummary:
    __slots__ = ("_arr",)

    def __init__(self, arr: np.ndarray[Any, Any]) -> None:
        self._arr = arr

    def __repr__(self) -> str:
        return f"NdArray(shape={self._arr.shape}, dtype={self._arr.dtype})"


def _equal(a: Any, b: Any) -> bool:
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return (
            isinstance(a, np.ndarray)
            and isinstance(b, np.ndarray)
            and a.shape == b.shape
            and a.dtype == b.dtype
            and bool(np.array_equal(a, b, equal_nan=a.dtype.kind in "fc"))
        )
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_equal(v, b[k]) for k, v in a.items())
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return isinstance(a, list) == isinstance(b, list) and len(a) == len(b) and all(map(_equal, a, b))
    return bool(a == b)
