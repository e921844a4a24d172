"""``DocList[T]``: a typed list of documents with column access and pydantic integration."""

from __future__ import annotations

import functools
import types
from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import Any, ClassVar, Self, SupportsIndex, TypeVar, overload

import numpy as np
from pydantic import GetCoreSchemaHandler, TypeAdapter, ValidationError
from pydantic_core import CoreSchema, core_schema

from plait.docs.document import AnyDoc, Document
from plait.errors import CodecError, PlaitError, SchemaError

__all__ = ["DocList", "doclist_of", "dump_docs"]

T = TypeVar("T", bound=Document)

# A SchemaError lists this many field errors, then "and N more": enough to fix a payload, short
# enough to read in a log line or an HTTP 422 body.
_MAX_LISTED_ERRORS = 5


class DocList(list[T]):
    """A list of documents of one type: ``DocList[Text]([Text(text='hi')])``.

    ``DocList[Text]`` is a real subclass, created once and cached (``DocList[Text] is
    DocList[Text]``), whose ``doc_type`` is ``Text``; bare ``DocList`` (also spelled
    ``DocList[AnyDoc]`` or ``DocList[Any]``) holds any document and decodes into
    :class:`AnyDoc`. Adding a document of another type raises ``TypeError``.

    Columns: for a field of ``doc_type``, ``docs.text`` is the list of values and
    ``docs.embedding`` stacks the arrays into one (a list is returned when some value is not an
    array or shapes differ). ``docs.text = [...]`` and ``docs.embedding = matrix`` set one value
    per document (rows of a matrix are views of it). Fields named like list methods (``count``,
    ``index``...) are reachable only per document.
    """

    __slots__ = ()

    doc_type: ClassVar[type[Document]] = AnyDoc

    def __class_getitem__(cls, item: Any) -> Any:
        if isinstance(item, TypeVar):  # DocList[T] in generic user code: keep it a plain alias
            return types.GenericAlias(cls, (item,))
        if item is Any:  # "any documents", which is what the bare class holds
            item = AnyDoc
        if isinstance(item, type) and issubclass(item, Document):
            return _specialize(cls, item)
        hint = (
            " (for a self-reference, add `from __future__ import annotations`)"
            if isinstance(item, str)
            else ""
        )
        raise TypeError(f"{cls.__name__}[...] takes a Document subclass, got {item!r}{hint}")

    def __init__(self, docs: Iterable[T] = ()) -> None:
        super().__init__(self._checked(docs))

    # -- construction and (de)serialization ------------------------------------------------

    @classmethod
    def from_dicts(cls, rows: Iterable[Mapping[str, Any] | Document]) -> Self:
        """Validate plain rows (or documents) into ``doc_type``; raises :class:`SchemaError`."""
        try:
            docs = _list_adapter(cls.doc_type).validate_python(rows)
        except ValidationError as exc:
            raise _plait_error(exc, cls.doc_type) from None
        return cls._adopt(docs)

    @classmethod
    def from_json(cls, data: str | bytes | bytearray) -> Self:
        """Parse a JSON array of document objects (tensors as nested lists).

        Raises :class:`CodecError` for malformed JSON and :class:`SchemaError` for documents that
        do not match ``doc_type``.
        """
        try:
            docs = _list_adapter(cls.doc_type).validate_json(data)
        except ValidationError as exc:
            raise _plait_error(exc, cls.doc_type) from None
        return cls._adopt(docs)

    def to_dicts(self) -> list[dict[str, Any]]:
        """Python-mode dicts, one per document; tensors stay numpy arrays."""
        return dump_docs(self)

    def to_json(self) -> str:
        """A JSON array of document objects; tensors become nested lists."""
        return (
            _list_adapter(type(self).doc_type)
            .dump_json(self, by_alias=True, polymorphic_serialization=True)
            .decode()
        )

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: GetCoreSchemaHandler) -> CoreSchema:
        # Validates like list[doc_type] (in one pydantic-core call), then wraps the result;
        # serializes like list[doc_type].
        items = core_schema.list_schema(handler.generate_schema(cls.doc_type))
        return core_schema.no_info_after_validator_function(cls._adopt, items)

    @classmethod
    def _adopt(cls, docs: list[Any]) -> Self:
        # Skips the per-item type check: pydantic has just built these documents.
        new = cls()
        list.extend(new, docs)
        return new

    # -- columns ----------------------------------------------------------------------------

    def __getattr__(self, name: str) -> Any:
        if name not in type(self).doc_type.model_fields:
            raise AttributeError(f"{type(self).__name__!r} object has no attribute or column {name!r}")
        values = [getattr(doc, name) for doc in self]
        if values and all(isinstance(v, np.ndarray) for v in values):
            try:
                return np.stack(values)
            except ValueError:  # different shapes: there is no single array to return
                return values
        return values

    def __setattr__(self, name: str, value: Any) -> None:
        if name not in type(self).doc_type.model_fields:
            super().__setattr__(name, value)  # __slots__ = (): raises AttributeError
            return
        if isinstance(value, str | bytes) or not isinstance(value, Collection):
            raise TypeError(f"column {name!r} takes one value per document, got {type(value).__name__}")
        if len(value) != len(self):
            raise ValueError(f"column {name!r}: got {len(value)} values for {len(self)} documents")
        for doc, item in zip(self, value, strict=True):
            setattr(doc, name, item)

    # -- list behaviour that keeps the type and checks what goes in ---------------------------

    @overload
    def __getitem__(self, index: SupportsIndex) -> T: ...
    @overload
    def __getitem__(self, index: slice) -> Self: ...
    def __getitem__(self, index: SupportsIndex | slice) -> T | Self:
        if isinstance(index, slice):
            return self._adopt(list.__getitem__(self, index))
        return list.__getitem__(self, index)

    @overload
    def __setitem__(self, index: SupportsIndex, value: T) -> None: ...
    @overload
    def __setitem__(self, index: slice, value: Iterable[T]) -> None: ...
    def __setitem__(self, index: SupportsIndex | slice, value: Any) -> None:
        if isinstance(index, slice):
            list.__setitem__(self, index, self._checked(value))
        else:
            self._check(value)
            list.__setitem__(self, index, value)

    def append(self, doc: T) -> None:
        self._check(doc)
        super().append(doc)

    def insert(self, index: SupportsIndex, doc: T) -> None:
        self._check(doc)
        super().insert(index, doc)

    def extend(self, docs: Iterable[T]) -> None:
        super().extend(self._checked(docs))

    def __iadd__(self, docs: Iterable[T]) -> Self:  # type: ignore[override,misc]
        self.extend(docs)
        return self

    def copy(self) -> Self:
        return self._adopt(list(self))

    def __repr__(self) -> str:
        return f"<{type(self).__name__} of {len(self)} document{'' if len(self) == 1 else 's'}>"

    @classmethod
    def _check(cls, doc: object) -> None:
        allowed = Document if cls.doc_type is AnyDoc else cls.doc_type
        if not isinstance(doc, allowed):
            raise TypeError(f"{cls.__name__} holds {allowed.__name__} documents, got {type(doc).__name__}")

    @classmethod
    def _checked(cls, docs: Iterable[Any]) -> list[Any]:
        if isinstance(docs, DocList) and issubclass(docs.doc_type, cls.doc_type):
            return list(docs)  # already checked when they went in; skip the per-item isinstance
        items = list(docs)
        for doc in items:
            cls._check(doc)
        return items


def dump_docs(docs: Sequence[Document]) -> list[dict[str, Any]]:
    """Python-mode dicts for any sequence of documents, in one pydantic-core call.

    Each document is dumped with its own runtime type (``polymorphic_serialization``), so a
    ``Text`` held in a ``DocList[Document]`` or in a field declared as a base class loses no
    fields. Tensors stay arrays.
    """
    # A DocList's items were type-checked on the way in; a plain sequence is checked here.
    doc_type = type(docs).doc_type if isinstance(docs, DocList) else _common_type(docs)
    rows: list[dict[str, Any]] = _list_adapter(doc_type).dump_python(
        docs, by_alias=True, polymorphic_serialization=True, warnings="error"
    )
    return rows


def _common_type(docs: Sequence[Any]) -> type[Document]:
    # The exact type when all agree: its serializer is a little faster than the polymorphic lookup.
    common = type(docs[0]) if docs else Document
    for index, doc in enumerate(docs):
        if not isinstance(doc, Document):
            raise TypeError(f"expected Document instances, got {type(doc).__name__} at index {index}")
        if type(doc) is not common:
            common = Document
    return common


def doclist_of(doc_type: type[T]) -> type[DocList[T]]:
    """``DocList[doc_type]`` for a ``doc_type`` held in a variable, typed for mypy."""
    cls: type[DocList[T]] = DocList[doc_type]  # type: ignore[valid-type]
    return cls


@functools.cache
def _specialize(base: type[DocList[Any]], doc_type: type[Document]) -> type[DocList[Any]]:
    if doc_type is AnyDoc and base is DocList:
        return base
    name = f"{base.__name__}[{doc_type.__name__}]"
    namespace = {
        "__slots__": (),
        "__module__": base.__module__,
        "__qualname__": name,
        "doc_type": doc_type,
        # The class has no importable name; pickle rebuilds it from its base and doc type.
        "__reduce__": lambda self: (_rebuild, (base, doc_type, list(self))),
    }
    return type(name, (base,), namespace)


def _rebuild(base: type[DocList[Any]], doc_type: type[Document], docs: list[Any]) -> DocList[Any]:
    cls: type[DocList[Any]] = base.__class_getitem__(doc_type)
    return cls(docs)


@functools.cache
def _list_adapter(doc_type: type[Document]) -> TypeAdapter[Any]:
    return TypeAdapter(list[doc_type])  # type: ignore[valid-type]


def _plait_error(exc: ValidationError, doc_type: type[Document]) -> PlaitError:
    errors = exc.errors(include_url=False, include_input=False)
    if errors and errors[0]["type"] == "json_invalid":
        return CodecError(f"malformed JSON: {errors[0]['msg']}")
    lines = [f"{_path(err['loc'])}: {err['msg']}" for err in errors[:_MAX_LISTED_ERRORS]]
    if len(errors) > _MAX_LISTED_ERRORS:
        lines.append(f"and {len(errors) - _MAX_LISTED_ERRORS} more")
    return SchemaError(
        f"documents do not match {doc_type.__name__}: " + "; ".join(lines),
        doc_type=doc_type.__name__,
        error_count=len(errors),
        # Details travel in gRPC trailers, which are small: list the same few errors as the message.
        errors=[
            {"loc": _path(err["loc"]), "msg": err["msg"], "type": err["type"]}
            for err in errors[:_MAX_LISTED_ERRORS]
        ],
    )


def _path(loc: tuple[int | str, ...]) -> str:
    return "docs" + "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in loc)
