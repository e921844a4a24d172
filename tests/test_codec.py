"""The wire codec: round trips (property tests), zero copy, the byte format, and errors."""

from __future__ import annotations

import contextlib
import gc
import json
import struct
from typing import Any

import msgspec
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from pydantic import Field

from plait.docs import (
    AnyDoc,
    DocList,
    Document,
    NdArray,
    decode_docs,
    decode_raw,
    encode_docs,
    encode_raw,
    json_to_wire,
    wire_to_json,
)
from plait.docs.codec import FORMAT_VERSION, TENSOR_EXT
from plait.errors import CodecError, SchemaError


class Leaf(Document):
    text: str = ""
    n: int = 0
    score: float | None = None
    flag: bool = False
    tensor: NdArray | None = None


class Tree(Document):
    title: str = ""
    leaf: Leaf | None = None
    leaves: list[Leaf] = []
    matches: DocList[Leaf] = Field(default_factory=DocList[Leaf])
    tags: dict[str, int] = {}
    names: list[str] = []
    vec: NdArray[np.float32, 4] | None = None  # type: ignore


class Text(Document):
    text: str = ""
    embedding: NdArray | None = None


SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

DTYPES = [np.float16, np.float32, np.float64, np.int8, np.int32, np.int64, np.uint8, np.bool_]
SHAPES = hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4)
TEXTS = st.text(max_size=12)
INTS = st.integers(-(2**63), 2**63 - 1)


def _tensors(finite: bool) -> st.SearchStrategy[np.ndarray[Any, Any]]:
    def build(dtype: type[np.generic]) -> st.SearchStrategy[np.ndarray[Any, Any]]:
        dt = np.dtype(dtype)
        if dt.kind == "f":
            elements = hnp.from_dtype(dt, allow_nan=not finite, allow_infinity=not finite)
        else:
            elements = hnp.from_dtype(dt)
        # JSON cannot keep the shape of an empty array with more than one dimension ([[], []]).
        shapes = SHAPES.filter(lambda s: len(s) <= 1 or 0 not in s) if finite else SHAPES
        return hnp.arrays(dt, shapes, elements=elements)

    return st.sampled_from(DTYPES).flatmap(build)


def _leaves(finite: bool) -> st.SearchStrategy[Leaf]:
    return st.builds(
        Leaf,
        id=st.text(min_size=1, max_size=8),
        text=TEXTS,
        n=INTS,
        score=st.none() | st.floats(allow_nan=False, allow_infinity=not finite),
        flag=st.booleans(),
        tensor=st.none() | _tensors(finite),
    )


def _trees(finite: bool) -> st.SearchStrategy[DocList[Tree]]:
    leaves = _leaves(finite)
    vec = hnp.arrays(np.float32, 4, elements=st.floats(-1e6, 1e6, width=32))
    tree = st.builds(
        Tree,
        title=TEXTS,
        leaf=st.none() | leaves,
        leaves=st.lists(leaves, max_size=3),
        matches=st.lists(leaves, max_size=3).map(DocList[Leaf]),
        tags=st.dictionaries(TEXTS, INTS, max_size=3),
        names=st.lists(TEXTS, max_size=3),
        vec=st.none() | vec,
    )
    return st.lists(tree, max_size=4).map(DocList[Tree])


def _all_tensors(docs: DocList[Tree]) -> list[np.ndarray[Any, Any]]:
    found = []
    for tree in docs:
        leaves = [tree.leaf, *tree.leaves, *tree.matches] if tree.leaf else [*tree.leaves, *tree.matches]
        found += [leaf.tensor for leaf in leaves if leaf is not None and leaf.tensor is not None]
        if tree.vec is not None:
            found.append(tree.vec)
    return found


# -- round trips ------------------------------------------------------------------------------


@SETTINGS
@given(_trees(finite=False))
def test_docs_round_trip(docs: DocList[Tree]) -> None:
    data = encode_docs(docs)
    assert data[0] == FORMAT_VERSION
    back = decode_docs(data, Tree)
    assert type(back) is DocList[Tree]
    assert back == docs
    for arr in _all_tensors(back):  # no tensor was copied on the way in
        assert not arr.flags.owndata and not arr.flags.writeable


@SETTINGS
@given(_trees(finite=False))
def test_raw_round_trip_is_byte_exact(docs: DocList[Tree]) -> None:
    data = encode_docs(docs)
    rows = decode_raw(data)
    assert len(rows) == len(docs)
    assert encode_raw(rows) == data
    assert decode_docs(encode_raw(rows), Tree) == docs


@SETTINGS
@given(_trees(finite=True))
def test_json_round_trip(docs: DocList[Tree]) -> None:
    # Through JSON tensors become lists and bare NdArray fields lose their dtype (the values
    # survive), so compare JSON-mode dumps.
    data = encode_docs(docs)
    text = wire_to_json(data)
    back = decode_docs(json_to_wire(text), Tree)
    assert back.to_json() == docs.to_json()
    assert json.loads(text) == json.loads(docs.to_json())
    assert DocList[Tree].from_json(text).to_json() == docs.to_json()


@SETTINGS
@given(_tensors(finite=False))
def test_tensor_round_trip_keeps_dtype_shape_and_bytes(arr: np.ndarray[Any, Any]) -> None:
    [row] = decode_raw(encode_raw([{"t": arr}]))
    out = row["t"]
    assert out.dtype == arr.dtype and out.shape == arr.shape
    assert out.tobytes() == arr.tobytes()


def test_empty_payloads() -> None:
    assert decode_docs(b"", Text) == [] and type(decode_docs(b"", Text)) is DocList[Text]
    assert decode_raw(b"") == []
    data = encode_docs(DocList[Text]())
    assert data == bytes([FORMAT_VERSION]) + msgspec.msgpack.encode([])
    assert decode_docs(data, Text) == []
    assert encode_docs([]) == data
    assert wire_to_json(b"") == b"[]"


def test_subclass_documents_keep_their_own_fields() -> None:
    class Rich(Text):
        extra: int = 7

    class Holder(Document):
        inner: Document | None = None

    rows = decode_raw(encode_docs(DocList[Text]([Rich(text="r")])))
    assert rows[0]["extra"] == 7
    rows = decode_raw(encode_docs([Holder(inner=Rich())]))
    assert rows[0]["inner"]["extra"] == 7


def test_anydoc_round_trip_keeps_unknown_fields() -> None:
    rows: list[dict[str, Any]] = [
        {"id": "a", "colour": "red", "vec": np.arange(3, dtype=np.int16), "nested": {"k": [1, 2]}}
    ]
    docs = decode_docs(encode_raw(rows), AnyDoc)
    assert docs[0].colour == "red" and docs[0].nested == {"k": [1, 2]}  # type: ignore[attr-defined]
    assert np.array_equal(docs[0].vec, rows[0]["vec"])  # type: ignore[attr-defined]
    assert decode_raw(encode_docs(docs))[0]["colour"] == "red"


# -- zero copy --------------------------------------------------------------------------------


def test_decoded_tensors_are_views_over_the_input() -> None:
    source = np.random.default_rng(0).random((3, 5)).astype(np.float32)
    data = encode_docs([Text(embedding=source)])
    arr = decode_docs(data, Text)[0].embedding
    assert arr is not None and np.array_equal(arr, source)
    assert not arr.flags.owndata and not arr.flags.writeable
    base: Any = arr
    while isinstance(base, np.ndarray | memoryview):
        base = base.base if isinstance(base, np.ndarray) else base.obj
    assert base is data
    assert np.shares_memory(arr, np.frombuffer(data, dtype=np.uint8))


def test_decoded_tensors_keep_the_input_alive() -> None:
    source = np.arange(1000, dtype=np.int64)
    arr = decode_raw(encode_raw([{"t": source}]))[0]["t"]
    gc.collect()
    assert np.array_equal(arr, source)


def test_dtype_conversion_on_decode_copies() -> None:
    class Typed(Document):
        vec: NdArray[np.float64] | None = None  # type: ignore

    doc = decode_docs(encode_raw([{"vec": np.arange(3, dtype=np.float32)}]), Typed)[0]
    assert doc.vec is not None and doc.vec.dtype == np.float64 and doc.vec.flags.owndata


# -- the byte format --------------------------------------------------------------------------


def test_tensor_ext_layout() -> None:
    arr = np.array([[1, 2, 3], [4, 5, 6]], dtype="<i2")
    data = encode_raw([{"t": arr}])
    assert data[0] == FORMAT_VERSION
    [row] = msgspec.msgpack.decode(data[1:])
    ext = row["t"]
    assert isinstance(ext, msgspec.msgpack.Ext) and ext.code == TENSOR_EXT == 1
    expected = bytes([3]) + b"<i2" + bytes([2]) + struct.pack("<2Q", 2, 3) + arr.tobytes()
    assert ext.data == expected


def test_tensors_of_changing_layouts_in_one_payload_each_decode_as_sent() -> None:
    # decode_raw skips parsing a header equal to the last one read: layouts that alternate, and
    # the same header with a wrong size after a good tensor, must still be read (or refused) right.
    tensors = [
        np.arange(4, dtype="<f4"),
        np.arange(4, dtype="<f4") + 1,
        np.arange(4, dtype="<i4"),
        np.arange(6, dtype="<f4").reshape(2, 3),
        np.arange(4, dtype="<f4") + 2,
    ]
    rows = decode_raw(encode_raw([{"t": t} for t in tensors]))
    for row, sent in zip(rows, tensors, strict=True):
        assert row["t"].dtype == sent.dtype and row["t"].shape == sent.shape
        assert np.array_equal(row["t"], sent)
    header = bytes([3]) + b"<f4" + bytes([1]) + struct.pack("<Q", 4)
    good = msgspec.msgpack.Ext(TENSOR_EXT, header + bytes(16))
    short = msgspec.msgpack.Ext(TENSOR_EXT, header + bytes(12))
    payload = bytes([FORMAT_VERSION]) + msgspec.msgpack.encode([{"t": good}, {"t": short}])
    with pytest.raises(CodecError, match="needs 16 bytes, got 12"):
        decode_raw(payload)


def test_numpy_scalars_travel_as_plain_numbers() -> None:
    [row] = msgspec.msgpack.decode(
        encode_raw([{"a": np.float32(1.5), "b": np.int64(3), "c": np.bool_(True)}])[1:]
    )
    assert row == {"a": 1.5, "b": 3, "c": True} and type(row["b"]) is int


@pytest.mark.parametrize(
    "arr",
    [
        np.arange(12, dtype=np.float64).reshape(3, 4).T,  # not C-contiguous
        np.arange(5, dtype=">u4"),  # big-endian
        np.array(["2024-01-01", "2025-06-30"], dtype="datetime64[D]"),
        np.array([b"ab", b"c"], dtype="S2"),
        np.array(7, dtype=np.complex64),
        np.zeros((2, 0, 3), dtype=np.float16),
    ],
)
def test_unusual_tensors_round_trip(arr: np.ndarray[Any, Any]) -> None:
    out = decode_raw(encode_raw([{"t": arr}]))[0]["t"]
    assert out.dtype == arr.dtype and out.shape == arr.shape and np.array_equal(out, arr)


def test_object_and_structured_arrays_are_rejected() -> None:
    with pytest.raises(CodecError, match="object"):
        encode_docs([Text(embedding=np.array([object(), 1], dtype=object))])
    with pytest.raises(CodecError, match="dtype"):
        encode_raw([{"t": np.zeros(2, dtype=[("a", "<f4"), ("b", "<i4")])}])


def test_unencodable_values_are_codec_errors() -> None:
    with pytest.raises(CodecError):
        encode_raw([{"x": object()}])
    with pytest.raises(CodecError):
        encode_raw([{"x": 2**70}])
    with pytest.raises(CodecError):
        encode_docs([Text(text="\ud800")])
    with pytest.raises(CodecError, match="at index 1"):
        encode_docs([Text(), {"text": "dict"}])  # type: ignore[list-item]


# -- decode errors ----------------------------------------------------------------------------


def test_wrong_version_is_named() -> None:
    with pytest.raises(CodecError, match="unsupported plait codec version 7"):
        decode_docs(b"\x07\x90", Text)
    with pytest.raises(CodecError, match="unsupported plait codec version 0"):
        decode_raw(b"\x00")


@pytest.mark.parametrize(
    "payload",
    [
        b"\x01",  # version byte, nothing after it
        b"\x01\x92\x80",  # truncated array
        b"\x01\xa3abc",  # a string, not an array of maps
        b"\x01\x91\x01",  # an array of ints
        b"\x01\x91\x81\x01\x02",  # a map with an int key at the top level
        b"\x01\x90\x90",  # trailing bytes
        b"\x01" + msgspec.msgpack.encode([{"t": msgspec.msgpack.Ext(5, b"")}]),  # unknown ext
        b"\x01" + msgspec.msgpack.encode([{"t": msgspec.msgpack.Ext(1, b"\x02<f")}]),  # truncated header
        b"\x01" + msgspec.msgpack.encode([{"t": msgspec.msgpack.Ext(1, b"\x02|O\x00")}]),  # object dtype
        b"\x01" + msgspec.msgpack.encode([{"t": msgspec.msgpack.Ext(1, b"\x02zz\x00")}]),  # bad dtype
        b"\x01"
        + msgspec.msgpack.encode([{"t": msgspec.msgpack.Ext(1, b"\x03<f4\x01" + b"\x09" + b"\0" * 7)}]),
        b"\x01" + msgspec.msgpack.encode([{"t": msgspec.msgpack.Ext(1, b"\x03<f4\x02" + b"\xff" * 16)}]),
        # An empty tensor of shape (2**40, 0): zero bytes that would expand to 2**40 lists.
        b"\x01"
        + msgspec.msgpack.encode(
            [{"t": msgspec.msgpack.Ext(1, b"\x03<f4\x02" + struct.pack("<2Q", 2**40, 0))}]
        ),
        b"\x01" + b"\x91" * 100_000,  # nesting deeper than the decoder allows
    ],
)
def test_malformed_payloads_are_codec_errors(payload: bytes) -> None:
    with pytest.raises(CodecError, match="malformed payload"):
        decode_docs(payload, Text)
    with pytest.raises(CodecError, match="malformed payload"):
        decode_raw(payload)


def test_schema_errors_name_each_field_path() -> None:
    rows: list[dict[str, Any]] = [{"text": "ok"}] * 3 + [{"text": 5}, {"embedding": "x"}]
    with pytest.raises(SchemaError) as info:
        decode_docs(encode_raw(rows), Text)
    message = str(info.value)
    assert "docs[3].text: Input should be a valid string" in message
    assert "docs[4].embedding" in message and "Text" in message
    assert info.value.details["errors"][0]["loc"] == "docs[3].text"


def test_schema_errors_are_capped() -> None:
    with pytest.raises(SchemaError, match="and 7 more") as info:
        decode_docs(encode_raw([{"text": i} for i in range(12)]), Text)
    assert info.value.details["error_count"] == 12
    assert len(info.value.details["errors"]) == 5


def test_nested_schema_error_path() -> None:
    rows = [{"matches": [{"text": "a"}, {"n": "not a number"}]}]
    with pytest.raises(SchemaError, match=r"docs\[0\]\.matches\[1\]\.n: Input should be a valid integer"):
        decode_docs(encode_raw(rows), Tree)


_ALLOWED = (CodecError, SchemaError)


def _decode_everything(data: bytes) -> None:
    for action in (lambda: decode_docs(data, Tree), lambda: decode_raw(data), lambda: wire_to_json(data)):
        with contextlib.suppress(*_ALLOWED):
            action()


@FUZZ
@given(st.binary(max_size=200))
def test_random_bytes_only_raise_plait_errors(data: bytes) -> None:
    _decode_everything(data)
    _decode_everything(bytes([FORMAT_VERSION]) + data)


# Keys the schema knows (so values reach field validation) mixed with unknown ones.
_KEYS = st.sampled_from(sorted([*Tree.model_fields, *Leaf.model_fields])) | st.text(max_size=3)
_TENSOR_HEADERS = st.builds(
    lambda dtype, shape, body: (
        bytes([len(dtype)]) + dtype + bytes([len(shape)]) + struct.pack(f"<{len(shape)}Q", *shape) + body
    ),
    st.sampled_from([b"<f4", b"|b1", b"|O", b"<U2", b"|V0", b"f4,i4", b"(2,)f4", b"<M8[D]", b"?", b"\xff"]),
    st.lists(st.integers(0, 2**64 - 1) | st.integers(0, 4), max_size=3),
    st.binary(max_size=40),
)
_MSGPACK_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=5)
    | st.binary(max_size=5)
    | st.builds(msgspec.msgpack.Ext, st.integers(-128, 127), st.binary(max_size=8))
    | st.builds(msgspec.msgpack.Ext, st.just(TENSOR_EXT), _TENSOR_HEADERS),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_KEYS, inner, max_size=4),
    max_leaves=12,
)


@FUZZ
@given(st.lists(st.dictionaries(_KEYS, _MSGPACK_VALUES, max_size=5), max_size=3) | _MSGPACK_VALUES)
def test_structured_garbage_only_raises_plait_errors(value: Any) -> None:
    try:
        packed = msgspec.msgpack.encode(value)
    except (TypeError, ValueError, OverflowError):  # e.g. Ext codes msgspec itself reserves
        return
    _decode_everything(bytes([FORMAT_VERSION]) + packed)


@FUZZ
@given(_trees(finite=False), st.data())
def test_corrupted_payloads_only_raise_plait_errors(docs: DocList[Tree], data: st.DataObject) -> None:
    payload = bytearray(encode_docs(docs))
    for _ in range(data.draw(st.integers(1, 4))):
        index = data.draw(st.integers(0, len(payload) - 1))
        payload[index] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(payload)))
    _decode_everything(bytes(payload[:cut]))
    _decode_everything(bytes(payload))


# -- JSON translation -------------------------------------------------------------------------


def test_json_to_wire_keeps_tensor_lists_until_validation() -> None:
    data = json_to_wire(b'[{"id": "a", "text": "h\\u00e9", "embedding": [[1, 2], [3, 4]]}]')
    assert decode_raw(data) == [{"id": "a", "text": "hé", "embedding": [[1, 2], [3, 4]]}]
    doc = decode_docs(data, Text)[0]
    assert doc.embedding is not None and doc.embedding.shape == (2, 2)
    assert json_to_wire("[]") == encode_raw([])


def test_wire_to_json_writes_tensors_as_lists() -> None:
    data = encode_docs([Text(id="a", embedding=np.array([[1.5, 2.0]], dtype=np.float32))])
    assert json.loads(wire_to_json(data)) == [{"id": "a", "text": "", "embedding": [[1.5, 2.0]]}]


@pytest.mark.parametrize(
    ("text", "pattern"),
    [
        (b'[{"a": 1}', r"malformed JSON: Input data was truncated \(byte 9, end of input\)"),
        (b'[{"a": 1}x]', r"malformed JSON.*\(byte 9\)"),
        (b"", "malformed JSON"),
        (b'{"a": 1}', "not an array of document objects"),
        (b'[{"a": 1}, 2]', r"not an array of document objects.*\$\[1\]"),
        (b"[1e999999999999999999999]", "JSON"),
    ],
)
def test_bad_json_is_a_codec_error_with_position(text: bytes, pattern: str) -> None:
    with pytest.raises(CodecError, match=pattern):
        json_to_wire(text)


def test_wire_to_json_rejects_values_json_cannot_hold() -> None:
    with pytest.raises(CodecError, match="JSON"):
        wire_to_json(encode_raw([{"t": np.array([1 + 2j])}]))
