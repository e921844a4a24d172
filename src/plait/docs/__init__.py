"""Documents, document lists, tensor fields and the wire codec.

Names load on first use: a gateway needs the row-level codec (:mod:`plait.docs.rows`), not the
document types or numpy."""

from __future__ import annotations

from typing import TYPE_CHECKING

from plait._lazy import lazy_getattr

if TYPE_CHECKING:
    from plait.docs.codec import decode_docs, encode_docs
    from plait.docs.doclist import DocList
    from plait.docs.document import AnyDoc, Document
    from plait.docs.rows import decode_raw, encode_raw, json_to_wire, wire_to_json
    from plait.docs.tensor import NdArray

_EXPORTS = {
    "AnyDoc": "plait.docs.document",
    "DocList": "plait.docs.doclist",
    "Document": "plait.docs.document",
    "NdArray": "plait.docs.tensor",
    "decode_docs": "plait.docs.codec",
    "decode_raw": "plait.docs.rows",
    "encode_docs": "plait.docs.codec",
    "encode_raw": "plait.docs.rows",
    "json_to_wire": "plait.docs.rows",
    "wire_to_json": "plait.docs.rows",
}

__all__ = [
    "AnyDoc",
    "DocList",
    "Document",
    "NdArray",
    "decode_docs",
    "decode_raw",
    "encode_docs",
    "encode_raw",
    "json_to_wire",
    "wire_to_json",
]

__getattr__ = lazy_getattr(__name__, globals(), _EXPORTS)


def __dir__() -> list[str]:
    return sorted(__all__)
