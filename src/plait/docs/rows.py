"""The plait wire codec at the level of plain rows: codec bytes ⇄ dicts, JSON ⇄ codec bytes.

Format (version 1)::

    byte 0      FORMAT_VERSION (1)
    bytes 1..   a msgpack array with one map per document (field name -> value)

Nested documents are maps, lists of documents are arrays. A numpy array is msgpack extension
type ``TENSOR_EXT`` (1) whose payload is::

    u8 len | dtype str (``arr.dtype.str``, e.g. ``<f4``) | u8 ndim | ndim x u64le shape | raw C-order bytes

numpy scalars travel as plain msgpack numbers. Nothing in the bytes names a schema, so a gateway
decodes, merges and re-encodes rows (:func:`decode_raw` / :func:`encode_raw`) without knowing
document types; only the endpoint that consumes documents validates them
(:func:`plait.docs.codec.decode_docs`). numpy is imported with the first tensor: a gateway whose
documents carry none never loads it.

An empty payload (``b''``) is an empty list of documents, so an unset protobuf bytes field means
"no documents".
"""

from __future__ import annotations

import functools
import itertools
import math
import struct
import sys
import threading
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import msgspec
from pydantic_core import PydanticSerializationError

from plait.errors import CodecError

if TYPE_CHECKING:
    import numpy as np

__all__ = [
    "FORMAT_VERSION",
    "TENSOR_EXT",
    "decode_raw",
    "encode_raw",
    "json_to_wire",
    "wire_to_json",
]

FORMAT_VERSION = 1
TENSOR_EXT = 1

Buffer = bytes | bytearray | memoryview

_VERSION_PREFIX = bytes([FORMAT_VERSION])
_MAX_EMPTY_TENSOR_OUTER = 1 << 16

_np: Any = None
"""numpy, once a tensor needed it."""


def _numpy() -> Any:
    global _np
    if _np is None:
        import numpy

        _np = numpy
    return _np


def is_array(obj: Any) -> bool:
    """``obj`` is a numpy array (without importing numpy: if it is not loaded, none can be here)."""
    np = sys.modules.get("numpy")
    return np is not None and isinstance(obj, np.ndarray)


# -- public API ------------------------------------------------------------------------------


def decode_raw(data: Buffer) -> list[dict[str, Any]]:
    """Decode codec bytes into plain dicts without a schema; tensors are zero-copy arrays."""
    if not data:
        return []
    view = memoryview(data).cast("B")
    if view[0] != FORMAT_VERSION:
        raise CodecError(f"unsupported plait codec version {view[0]} (this side speaks {FORMAT_VERSION})")
    try:
        # Decoding a slice of the caller's buffer: ext payloads stay views into ``data``.
        rows: list[dict[str, Any]] = _MSGPACK_DECODER.decode(view[1:])
    except CodecError:
        raise
    except msgspec.DecodeError as exc:
        raise CodecError(f"malformed payload: {exc}") from None
    except Exception as exc:  # bad bytes must never surface as anything but CodecError
        raise CodecError(f"malformed payload: {type(exc).__name__}: {exc}") from None
    return rows


def encode_raw(rows: Sequence[Mapping[str, Any]]) -> bytes:
    """Encode plain rows (as returned by :func:`decode_raw`) to codec bytes."""
    return encode_with(_MSGPACK_ENCODER, rows)


def json_to_wire(data: bytes | str) -> bytes:
    """Translate a JSON array of document objects into codec bytes.

    Tensors written as nested lists stay lists here; the receiving endpoint's ``NdArray`` field
    turns them into arrays. Raises :class:`CodecError` (with the position) for malformed JSON or
    anything other than an array of objects.
    """
    try:
        rows = _JSON_DECODER.decode(data)
    except msgspec.ValidationError as exc:
        raise CodecError(f"JSON is not an array of document objects: {exc}") from None
    except msgspec.DecodeError as exc:
        where = f" (byte {len(data.encode() if isinstance(data, str) else data)}, end of input)"
        raise CodecError(f"malformed JSON: {exc}{where if 'truncated' in str(exc) else ''}") from None
    except UnicodeDecodeError as exc:  # bad UTF-8 inside a string: msgspec raises this, not DecodeError
        raise CodecError(
            f"malformed JSON: a string is not UTF-8 ({exc.reason} at byte {exc.start})"
        ) from None
    return encode_raw(rows)


def wire_to_json(data: Buffer) -> bytes:
    """Translate codec bytes into a JSON array of document objects; tensors become nested lists."""
    rows = decode_raw(data)
    try:
        return _JSON_ENCODER.encode(rows)
    except (CodecError, TypeError, ValueError, OverflowError) as exc:  # e.g. complex numbers
        raise CodecError(f"documents cannot be expressed as JSON: {exc}") from None


# -- encoding --------------------------------------------------------------------------------


_scratch = threading.local()
_SCRATCH_KEEP = 16 * 1024 * 1024  # a thread keeps its buffer up to this size between calls


def encode_with(encoder: msgspec.msgpack.Encoder, value: Any) -> bytes:
    """``value`` as codec bytes, encoded by ``encoder`` (CodecError when it cannot be)."""
    # Encoding into a fresh bytearray makes it grow (and fault in new pages) many times per
    # message: ~15x slower for a 200 KB payload than reusing one buffer per thread.
    buf: bytearray | None = getattr(_scratch, "buf", None)
    if buf is None:
        buf = _scratch.buf = bytearray(_VERSION_PREFIX)
    try:
        encoder.encode_into(value, buf, 1)
        return bytes(buf)
    except CodecError:
        raise
    except (TypeError, ValueError, OverflowError, PydanticSerializationError) as exc:
        raise CodecError(f"cannot encode documents: {exc}") from None
    finally:
        if len(buf) > _SCRATCH_KEEP:
            _scratch.buf = None


def value_enc_hook(obj: Any) -> Any:
    """msgspec's hook for the values it does not know: tensors, numpy scalars, mappings."""
    if is_array(obj):
        return msgspec.msgpack.Ext(TENSOR_EXT, tensor_payload(obj))
    return _common_enc_hook(obj)


def _json_enc_hook(obj: Any) -> Any:
    if is_array(obj):
        return obj.tolist()
    return _common_enc_hook(obj)


def _common_enc_hook(obj: Any) -> Any:
    np = sys.modules.get("numpy")  # not imported: no numpy value can be here
    if np is not None and isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Mapping):
        return dict(obj)
    raise CodecError(f"cannot encode a value of type {type(obj).__name__}")


def tensor_payload(arr: np.ndarray[Any, Any]) -> bytes:
    """A tensor as the payload of a ``TENSOR_EXT`` extension."""
    if not arr.flags.c_contiguous:
        arr = _numpy().ascontiguousarray(arr)
    key = (arr.dtype, arr.shape)
    header = _headers.get(key)
    if header is None:
        header = _tensor_header(*key)
        if len(_headers) < 1024:
            _headers[key] = header
    try:
        return b"".join((header, arr))  # type: ignore[arg-type]  # ndarray exports a buffer; one copy
    except (ValueError, TypeError):  # datetime64 & co. have no buffer format; their bytes do
        return b"".join((header, arr.reshape(-1).view("u1").data))


_headers: dict[tuple[np.dtype[Any], tuple[int, ...]], bytes] = {}


def _tensor_header(dtype: np.dtype[Any], shape: tuple[int, ...]) -> bytes:
    # Cached: a batch repeats the same dtype and shape once per document.
    if dtype.hasobject or dtype.fields is not None or dtype.subdtype is not None:
        raise CodecError(f"cannot encode a tensor of dtype {dtype}: only plain (non-object) dtypes travel")
    dtype_str = dtype.str.encode("ascii")
    return struct.pack(f"<B{len(dtype_str)}sB{len(shape)}Q", len(dtype_str), dtype_str, len(shape), *shape)


# -- decoding --------------------------------------------------------------------------------


def _msgpack_ext_hook(code: int, data: memoryview) -> Any:
    # A batch's tensors mostly share one dtype and shape: one comparison with the last header read
    # stands for parsing and checking it again (same header bytes, same size: same tensor layout).
    header, dtype, shape, size = _last_tensor
    if code == TENSOR_EXT and len(data) == size and data[: len(header)] == header:
        array: np.ndarray[Any, Any] = _np.ndarray(shape, dtype, data, len(header))
        return array
    if code != TENSOR_EXT:
        raise CodecError(f"malformed payload: unknown msgpack extension type {code}")
    try:
        return _tensor_from_payload(data)
    except CodecError:
        raise
    except Exception as exc:  # numpy refusing a shape/dtype read from untrusted bytes
        raise CodecError(f"malformed payload: bad tensor: {exc}") from None


def _tensor_from_payload(data: memoryview) -> np.ndarray[Any, Any]:
    size = len(data)
    try:
        n = data[0]
        header_size = n + 2 + 8 * data[n + 1]
    except IndexError:
        raise CodecError("malformed payload: truncated tensor header") from None
    if size < header_size:
        raise CodecError("malformed payload: truncated tensor shape")
    header = data[:header_size].tobytes()
    dtype, shape, nbytes = _parse_tensor_header(header)
    if nbytes != size - header_size:
        raise CodecError(
            f"malformed payload: tensor of shape {shape} and dtype {dtype} needs {nbytes} bytes, "
            f"got {size - header_size}"
        )
    global _last_tensor
    _last_tensor = (header, dtype, shape, size)
    # An array over the caller's buffer: no copy, and it keeps that buffer alive.
    numpy = _np if _np is not None else _numpy()
    array: np.ndarray[Any, Any] = numpy.ndarray(shape, dtype, data, header_size)
    return array


_last_tensor: tuple[bytes, Any, tuple[int, ...], int] = (b"", None, (), -1)
"""The last tensor layout read: its header bytes, dtype, shape and payload size (header included)."""


@functools.lru_cache(maxsize=1024)
def _parse_tensor_header(header: bytes) -> tuple[np.dtype[Any], tuple[int, ...], int]:
    # Cached: a batch repeats the same header once per document. Failures are not cached.
    n = header[0]
    dtype = _dtype(header[1 : 1 + n])
    ndim = header[1 + n]
    shape: tuple[int, ...] = struct.unpack_from(f"<{ndim}Q", header, 2 + n)
    # An empty tensor carries no bytes, so its shape is not bounded by the payload size; yet
    # ``tolist()`` (JSON) makes one list per element before its first 0 dimension. Bound that.
    outer = math.prod(itertools.takewhile(bool, shape))
    if 0 in shape and outer > _MAX_EMPTY_TENSOR_OUTER:
        raise CodecError(f"malformed payload: empty tensor with implausible shape {shape}")
    return dtype, shape, math.prod(shape) * dtype.itemsize


def _dtype(spec: bytes) -> np.dtype[Any]:
    try:
        dtype: np.dtype[Any] = _numpy().dtype(spec.decode("ascii"))
    except Exception as exc:
        raise CodecError(f"malformed payload: bad tensor dtype {spec!r}") from exc
    if dtype.hasobject or dtype.fields is not None or dtype.subdtype is not None or dtype.itemsize == 0:
        raise CodecError(f"malformed payload: tensor dtype {dtype} cannot be read from raw bytes")
    return dtype


# msgspec encoders/decoders are reusable and thread-safe; building them once keeps their
# internal caches warm across calls.
_MSGPACK_ENCODER = msgspec.msgpack.Encoder(enc_hook=value_enc_hook)
_MSGPACK_DECODER = msgspec.msgpack.Decoder(list[dict[str, Any]], ext_hook=_msgpack_ext_hook)
_JSON_ENCODER = msgspec.json.Encoder(enc_hook=_json_enc_hook)
_JSON_DECODER = msgspec.json.Decoder(list[dict[str, Any]])
