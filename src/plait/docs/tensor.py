"""``NdArray``: a pydantic field type for numpy tensors.

Spellings::

    embedding: NdArray                      # any array; lists/scalars of numbers are converted
    embedding: NdArray[128]                 # shape (128,)
    embedding: NdArray[np.float32]          # dtype float32 (converted when the cast is safe)
    embedding: NdArray[np.float32, 128]     # both
    image: NdArray[np.uint8, (None, None, 3)]   # ``None`` is a dimension of any size

An ``np.ndarray`` that already has the right dtype is kept as is (no copy), so a tensor decoded
by the wire codec stays a zero-copy view. In python-mode dumps the array is kept as an object
(the codec ships its raw bytes); in JSON mode it becomes nested lists.

Typing: mypy sees ``NdArray`` as ``np.ndarray[Any, Any]``, so ``doc.embedding = np.zeros(3)``
type-checks. mypy cannot read the subscripted forms (``NdArray[128]`` is not a type to it); in
mypy-checked code spell them ``Annotated[NdArray, TensorSpec(np.float32, 128)]``, which means the
same to pydantic, or add ``# type: ignore`` to the annotation.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, TypeAlias

import numpy as np
from numpy.typing import DTypeLike
from pydantic import GetCoreSchemaHandler, GetJsonSchemaHandler
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema, core_schema

__all__ = ["NdArray", "TensorSpec"]

_NUMERIC_KINDS = frozenset("biufc")
Shape: TypeAlias = tuple[int | None, ...]


@dataclass(frozen=True, slots=True, init=False)
class TensorSpec:
    """What a tensor field requires; the metadata behind ``NdArray[...]``.

    ``Annotated[NdArray, TensorSpec(np.float32, 128)]`` is the same as ``NdArray[np.float32, 128]``
    and also type-checks under mypy.
    """

    dtype: np.dtype[Any] | None
    shape: Shape | None

    def __init__(self, dtype: DTypeLike | None = None, shape: int | Shape | None = None) -> None:
        resolved = None if dtype is None else np.dtype(dtype)
        if resolved is not None and resolved.hasobject:
            raise TypeError("NdArray: object dtypes cannot travel as raw bytes")
        dims = (shape,) if isinstance(shape, int) else shape
        if dims is not None and not all(_is_dim(d) for d in dims):
            raise TypeError(f"NdArray: a shape is ints (or None for any size), got {shape!r}")
        object.__setattr__(self, "dtype", resolved)
        object.__setattr__(self, "shape", dims)

    def validate(self, value: Any) -> np.ndarray[Any, Any]:
        arr = value if type(value) is np.ndarray else _as_array(value)
        # The exact-shape comparison is the hot path (decoded tensors); None dims take the slow one.
        if self.shape is not None and arr.shape != self.shape and not _shape_matches(arr.shape, self.shape):
            raise ValueError(f"expected shape {self.shape}, got {arr.shape}")
        if self.dtype is not None and arr.dtype is not self.dtype and arr.dtype != self.dtype:
            arr = _convert(arr, self.dtype)
        return arr

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> CoreSchema:
        # A plain validator: pydantic never needs to understand np.ndarray itself. Serialization is
        # JSON-only so python-mode dumps hand the array object to the codec untouched.
        return core_schema.no_info_plain_validator_function(
            self.validate,
            serialization=core_schema.plain_serializer_function_ser_schema(_to_json_value, when_used="json"),
        )

    def __get_pydantic_json_schema__(
        self, schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        return self.json_schema()

    def json_schema(self) -> dict[str, Any]:
        kind = self.dtype.kind if self.dtype is not None else "f"
        item: dict[str, Any] = {"type": {"b": "boolean", "i": "integer", "u": "integer"}.get(kind, "number")}
        if self.shape is None:
            # ndim unknown: describe the common 1-d case; deeper nesting is still accepted.
            return {"type": "array", "items": item, "description": "numpy tensor as (nested) lists"}
        schema = item
        for dim in reversed(self.shape):
            schema = {"type": "array", "items": schema}
            if dim is not None:
                schema["minItems"] = schema["maxItems"] = dim
        return schema


_ANY_TENSOR = TensorSpec()


class _NdArrayAnnotation:
    """Runtime face of ``NdArray``: usable bare or subscripted in pydantic annotations."""

    __slots__ = ()

    def __new__(cls, *args: Any, **kwargs: Any) -> NoReturn:
        raise TypeError("NdArray is a field annotation; build arrays with numpy (np.asarray, np.zeros)")

    def __class_getitem__(cls, params: Any) -> Any:
        return _annotated(params if isinstance(params, tuple) else (params,))

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: GetCoreSchemaHandler) -> CoreSchema:
        return _ANY_TENSOR.__get_pydantic_core_schema__(source, handler)

    @classmethod
    def __get_pydantic_json_schema__(
        cls, schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        return _ANY_TENSOR.json_schema()


if TYPE_CHECKING:
    NdArray: TypeAlias = np.ndarray[Any, Any]
else:
    NdArray = _NdArrayAnnotation
    _NdArrayAnnotation.__name__ = _NdArrayAnnotation.__qualname__ = "NdArray"


@functools.cache
def _annotated(params: tuple[Any, ...]) -> Any:
    # Cached so that NdArray[128] is NdArray[128]: pydantic then builds each schema once.
    return Annotated[np.ndarray, _parse_params(params)]


def _parse_params(params: tuple[Any, ...]) -> TensorSpec:
    # NdArray[dtype], NdArray[dtype, shape...], NdArray[shape...]; a shape is ints or one tuple.
    rest = list(params)
    dtype = None if not rest or _is_shape_part(rest[0]) else rest.pop(0)
    if len(rest) == 1 and isinstance(rest[0], tuple):
        rest = list(rest[0])
    try:
        return TensorSpec(dtype, tuple(rest) if rest else None)
    except TypeError as exc:
        raise TypeError(f"NdArray{list(params)}: {exc}") from None


def _is_shape_part(p: Any) -> bool:
    return isinstance(p, tuple) or _is_dim(p)


def _is_dim(p: Any) -> bool:
    return p is None or (isinstance(p, int) and not isinstance(p, bool) and p >= 0)


def _as_array(value: Any) -> np.ndarray[Any, Any]:
    if isinstance(value, np.ndarray):
        return value
    if not isinstance(value, list | tuple | int | float | complex | np.generic) and not hasattr(
        value, "__array__"
    ):
        raise ValueError(f"expected a numpy array or a (nested) list of numbers, got {type(value).__name__}")
    try:
        arr = np.asarray(value)
    except (ValueError, TypeError, OverflowError) as exc:  # ragged lists, odd __array__ objects
        raise ValueError(f"cannot build a tensor from this value: {exc}") from None
    if arr.dtype.kind not in _NUMERIC_KINDS and arr.size:
        raise ValueError(f"expected numbers, got array of {arr.dtype}")
    return arr


def _convert(arr: np.ndarray[Any, Any], dtype: np.dtype[Any]) -> np.ndarray[Any, Any]:
    src = arr.dtype
    # Empty inputs (e.g. ``[]`` from JSON, inferred as float64) carry no values to lose.
    if arr.size == 0 or np.can_cast(src, dtype, "safe"):
        return arr.astype(dtype)
    if src.kind in "iu" and dtype.kind in "iu":
        # Narrowing ints would wrap silently; accept only when every value fits.
        info = np.iinfo(dtype)
        lo, hi = int(arr.min()), int(arr.max())
        if lo < info.min or hi > info.max:
            raise ValueError(f"values in [{lo}, {hi}] do not fit in {dtype}")
        return arr.astype(dtype)
    if np.can_cast(src, dtype, "same_kind"):  # float64 -> float32 and the like: precision only
        return arr.astype(dtype)
    raise ValueError(f"cannot convert {src} to {dtype} without losing information")


def _shape_matches(actual: tuple[int, ...], expected: Shape) -> bool:
    return len(actual) == len(expected) and all(
        e is None or a == e for a, e in zip(actual, expected, strict=True)
    )


def _to_json_value(value: Any) -> Any:
    # A value assigned without validation (e.g. a list) is passed through rather than failing.
    return value.tolist() if isinstance(value, np.ndarray | np.generic) else value
