"""The plait wire codec for documents: ``Document`` lists ⇄ codec bytes.

The format, and the row-level functions a gateway uses without knowing document types
(:func:`decode_raw`, :func:`encode_raw`, :func:`json_to_wire`, :func:`wire_to_json`), are in
:mod:`plait.docs.rows`; they are re-exported here. This module adds the typed side: encoding
``Document`` instances as they are, and decoding into a ``DocList`` of a given type, validated.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeVar

import msgspec
import numpy as np
from pydantic import BaseModel

from plait.docs.doclist import DocList, doclist_of
from plait.docs.document import Document
from plait.docs.rows import (
    FORMAT_VERSION,
    TENSOR_EXT,
    Buffer,
    decode_raw,
    encode_raw,
    encode_with,
    json_to_wire,
    tensor_payload,
    value_enc_hook,
    wire_to_json,
)
from plait.errors import CodecError

__all__ = [
    "FORMAT_VERSION",
    "TENSOR_EXT",
    "decode_docs",
    "decode_raw",
    "encode_docs",
    "encode_raw",
    "json_to_wire",
    "wire_to_json",
]

T = TypeVar("T", bound=Document)


def encode_docs(docs: Sequence[Document]) -> bytes:
    """Encode documents (a ``DocList`` or any sequence of ``Document``) to codec bytes.

    Each document is encoded with its runtime type, nested documents and ``DocList`` fields
    included. Raises :class:`CodecError` for values the format cannot carry (object arrays,
    integers beyond 64 bits, non-documents in ``docs``).
    """
    if not isinstance(docs, DocList):
        for index, doc in enumerate(docs):
            if not isinstance(doc, Document):
                got = type(doc).__name__
                raise CodecError(
                    f"cannot encode documents: expected Document instances, got {got} at index {index}"
                )
    # msgspec walks the models itself (see _model_enc_hook): one pass, no intermediate dicts.
    return encode_with(_DOCS_ENCODER, docs)


def decode_docs(data: Buffer, doc_type: type[T]) -> DocList[T]:
    """Decode codec bytes into ``DocList[doc_type]``, validating every document.

    Tensors are decoded without a copy: each array is a view over ``data`` (read-only when
    ``data`` is ``bytes``; call ``.copy()`` before writing in place) and keeps ``data`` alive.
    Views may be unaligned for their dtype; numpy handles that transparently. Fields whose
    ``NdArray[dtype]`` differs from the sent dtype are converted, which copies.

    Raises :class:`CodecError` for bytes that are not a valid payload and :class:`SchemaError`
    (naming each failing field path, e.g. ``docs[3].text``) for documents that do not match
    ``doc_type``.
    """
    return doclist_of(doc_type).from_dicts(decode_raw(data))


_NOT_MODEL, _PLAIN_MODEL, _CUSTOM_MODEL = 0, 1, 2
_kinds: dict[type, int] = {}


def _model_enc_hook(obj: Any) -> Any:
    # Dispatch on the exact type through a cache: isinstance() against pydantic's BaseModel goes
    # through ABCMeta and would cost more than encoding the value.
    cls = type(obj)
    if cls is np.ndarray:
        return msgspec.msgpack.Ext(TENSOR_EXT, tensor_payload(obj))
    kind = _kinds.get(cls)
    if kind is None:
        kind = _kinds[cls] = _kind_of(cls)
    if kind == _PLAIN_MODEL:
        extra = obj.__pydantic_extra__
        return {**obj.__dict__, **extra} if extra else obj.__dict__
    if kind == _CUSTOM_MODEL:
        # Serializers, aliases, computed or excluded fields: let pydantic decide what travels.
        return obj.model_dump(by_alias=True, polymorphic_serialization=True, warnings="error")
    return value_enc_hook(obj)  # numpy scalars, mappings


def _kind_of(cls: type) -> int:
    if not issubclass(cls, BaseModel):
        return _NOT_MODEL
    return _PLAIN_MODEL if _is_plain(cls) else _CUSTOM_MODEL


def _is_plain(cls: type[BaseModel]) -> bool:
    """True when a model's python-mode dump is exactly its ``__dict__`` (plus extras)."""
    decorators = cls.__pydantic_decorators__
    return (
        not decorators.field_serializers
        and not decorators.model_serializers
        and not cls.model_computed_fields
        and all(
            f.alias is None and f.serialization_alias is None and not f.exclude
            for f in cls.model_fields.values()
        )
    )


# msgspec encoders are reusable and thread-safe; building one once keeps its caches warm.
_DOCS_ENCODER = msgspec.msgpack.Encoder(enc_hook=_model_enc_hook)
