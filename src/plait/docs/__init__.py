"""Documents, document lists, tensor fields and the wire codec."""

from plait.docs.codec import decode_docs, decode_raw, encode_docs, encode_raw, json_to_wire, wire_to_json
from plait.docs.doclist import DocList
from plait.docs.document import AnyDoc, Document
from plait.docs.tensor import NdArray

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
