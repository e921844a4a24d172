"""Document, NdArray and DocList: validation, columns, typing and pydantic integration."""

from __future__ import annotations

import copy
import json
import pickle
from typing import Annotated, Any

import numpy as np
import pytest
from pydantic import BaseModel, Field, ValidationError

from plait.docs import AnyDoc, DocList, Document, NdArray
from plait.docs.tensor import TensorSpec
from plait.errors import CodecError, SchemaError
from plait.typing import NdArray as TypingNdArray


class Text(Document):
    text: str = ""
    embedding: NdArray | None = None


class Image(Document):
    url: str = ""


class Fixed(Document):
    vec: NdArray[128] | None = None  # type: ignore
    f32: NdArray[np.float32] | None = None  # type: ignore
    both: NdArray[np.float32, 4] | None = None  # type: ignore
    grid: NdArray[np.float32, (3, 4)] | None = None  # type: ignore
    rgb: NdArray[np.uint8, (None, None, 3)] | None = None  # type: ignore
    small: NdArray[np.int8] | None = None  # type: ignore
    flags: NdArray[np.bool_] | None = None  # type: ignore


class Page(Document):
    title: str = ""
    cover: Text | None = None
    paragraphs: list[Text] = []
    tags: list[str] = []
    matches: DocList[Text] = DocList[Text]()
    chunks: DocList[Text] = Field(default_factory=DocList[Text])


class Node(Document):
    name: str = ""
    children: DocList[Node] = Field(default_factory=lambda: DocList[Node]())


# -- Document ---------------------------------------------------------------------------------


def test_id_defaults_to_fresh_uuid_hex() -> None:
    a, b = Text(), Text()
    assert len(a.id) == 32 and int(a.id, 16) >= 0
    assert a.id != b.id
    assert Text(id="mine").id == "mine"


def test_extra_fields_are_ignored_but_anydoc_keeps_them() -> None:
    assert "colour" not in Text.model_validate({"text": "a", "colour": "red"}).model_dump()
    vec = np.arange(3)
    doc = AnyDoc.model_validate({"id": "x", "colour": "red", "vec": vec})
    dumped = doc.model_dump()
    assert dumped["colour"] == "red"
    assert dumped["vec"] is vec


def test_nested_documents_lists_and_doclist_fields() -> None:
    page = Page(
        title="t",
        cover={"text": "c"},
        paragraphs=[Text(text="p1"), {"text": "p2"}],
        matches=[{"text": "m"}],
        chunks=DocList[Text]([Text(text="c1")]),
    )
    assert isinstance(page.cover, Text) and page.cover.text == "c"
    assert [p.text for p in page.paragraphs] == ["p1", "p2"]
    assert type(page.matches) is DocList[Text] and page.matches[0].text == "m"
    assert type(page.chunks) is DocList[Text]
    dumped = page.model_dump()
    assert type(dumped["matches"]) is list and dumped["matches"][0]["text"] == "m"


def test_self_referencing_documents() -> None:
    tree = Node(name="root", children=[{"name": "kid", "children": [{"name": "grandkid"}]}])
    assert type(tree.children[0].children) is DocList[Node]
    assert tree.children[0].children[0].name == "grandkid"
    assert Node.model_json_schema()["$defs"]["Node"]["properties"]["children"]["items"] == {
        "$ref": "#/$defs/Node"
    }
    with pytest.raises(TypeError, match="from __future__ import annotations"):
        DocList["Node"]


def test_doclist_defaults_are_per_instance() -> None:
    a, b = Page(), Page()
    a.matches.append(Text(text="x"))
    a.chunks.append(Text(text="y"))
    assert len(b.matches) == 0 and len(b.chunks) == 0
    assert type(b.matches) is DocList[Text] and type(b.chunks) is DocList[Text]


def test_doclist_field_rejects_wrong_items_with_path() -> None:
    with pytest.raises(ValidationError) as info:
        Page(matches=[{"text": 3}])
    assert info.value.errors()[0]["loc"] == ("matches", 0, "text")


def test_equality_understands_arrays() -> None:
    a = Text(id="1", text="x", embedding=np.array([1.0, np.nan, 3.0]))
    b = Text(id="1", text="x", embedding=np.array([1.0, np.nan, 3.0]))
    assert a == b
    assert a != Text(id="1", text="x", embedding=np.array([1.0, 2.0, 3.0]))
    assert a != Text(id="1", text="x", embedding=np.array([1.0, np.nan, 3.0], dtype=np.float32))
    assert a != Text(id="1", text="x")
    assert Text(id="1") != Image(id="1")
    assert Page(id="p", matches=[a]) == Page(id="p", matches=[b])


def test_repr_summarises_big_arrays() -> None:
    r = repr(Text(text="x", embedding=np.zeros(512, dtype=np.float32)))
    assert "NdArray(shape=(512,), dtype=float32)" in r
    assert "array([1, 2])" in repr(Text(embedding=np.array([1, 2])))


# -- NdArray ----------------------------------------------------------------------------------


def test_typing_module_reexports_ndarray() -> None:
    assert TypingNdArray is NdArray


def test_bare_ndarray_keeps_array_without_copy() -> None:
    arr = np.arange(6, dtype=np.int16).reshape(2, 3)
    doc = Text(embedding=arr)
    assert doc.embedding is arr


@pytest.mark.parametrize(
    ("value", "shape", "kind"),
    [([1, 2, 3], (3,), "i"), ((1.5, 2.5), (2,), "f"), (3.0, (), "f"), ([[True], [False]], (2, 1), "b")],
)
def test_bare_ndarray_converts_numbers(value: Any, shape: tuple[int, ...], kind: str) -> None:
    doc = Text(embedding=value)
    assert isinstance(doc.embedding, np.ndarray)
    assert doc.embedding.shape == shape and doc.embedding.dtype.kind == kind


@pytest.mark.parametrize("value", ["abc", ["a", "b"], [[1, 2], [3]], {"a": 1}, [None, 1.0]])
def test_bare_ndarray_rejects_non_numbers(value: Any) -> None:
    with pytest.raises(ValidationError):
        Text(embedding=value)


def test_shape_is_checked_with_a_clear_message() -> None:
    with pytest.raises(ValidationError, match=r"expected shape \(128,\), got \(3,\)"):
        Fixed(vec=[1, 2, 3])
    with pytest.raises(ValidationError, match=r"expected shape \(3, 4\), got \(4, 3\)"):
        Fixed(grid=np.zeros((4, 3), dtype=np.float32))
    assert Fixed(vec=np.zeros(128)).vec is not None
    assert Fixed(rgb=np.zeros((5, 7, 3), dtype=np.uint8)).rgb.shape == (5, 7, 3)  # type: ignore[union-attr]
    with pytest.raises(ValidationError, match="expected shape"):
        Fixed(rgb=np.zeros((5, 7, 4), dtype=np.uint8))


def test_dtype_is_converted_when_safe() -> None:
    doc = Fixed(f32=np.arange(3, dtype=np.float64), both=[1, 2, 3, 4], small=[1, -2], flags=[True, False])
    assert doc.f32 is not None and doc.f32.dtype == np.float32
    assert doc.both is not None and doc.both.dtype == np.float32
    assert doc.small is not None and doc.small.dtype == np.int8
    assert doc.flags is not None and doc.flags.dtype == np.bool_
    same = np.zeros(3, dtype=np.float32)
    assert Fixed(f32=same).f32 is same
    assert Fixed(f32=[]).f32.dtype == np.float32  # type: ignore[union-attr]


def test_dtype_conversion_that_loses_information_is_rejected() -> None:
    with pytest.raises(ValidationError, match="cannot convert float64 to int8"):
        Fixed(small=[1.5])
    with pytest.raises(ValidationError, match="do not fit in int8"):
        Fixed(small=[300])
    with pytest.raises(ValidationError, match="cannot convert"):
        Fixed(flags=[0, 1])
    with pytest.raises(ValidationError, match=r"expected shape \(4,\)"):
        Fixed(both=[1.0, 2.0])


def test_annotated_spelling_matches_subscript() -> None:
    class Typed(Document):
        vec: Annotated[NdArray, TensorSpec(np.float32, 4)] | None = None

    assert Typed(vec=[1, 2, 3, 4]).vec.dtype == np.float32  # type: ignore[union-attr]
    with pytest.raises(ValidationError, match=r"expected shape \(4,\)"):
        Typed(vec=[1, 2])
    assert Typed.model_json_schema()["properties"]["vec"]["anyOf"][0]["maxItems"] == 4


def test_optional_tensor_accepts_none() -> None:
    assert Fixed(vec=None).vec is None
    with pytest.raises(ValidationError):
        Fixed(vec="nope")


def test_subscripted_forms_are_cached_and_validated() -> None:
    assert NdArray[128] is NdArray[128]  # type: ignore
    assert NdArray[np.float32, 3, 4] == NdArray[np.float32, (3, 4)]  # type: ignore
    with pytest.raises(TypeError):
        NdArray[object]  # type: ignore
    with pytest.raises(TypeError):
        NdArray[np.float32, "x"]  # type: ignore
    with pytest.raises(TypeError):
        NdArray()  # type: ignore[call-arg]


def test_json_mode_turns_tensors_into_lists_and_python_mode_keeps_them() -> None:
    arr = np.arange(4, dtype=np.float32).reshape(2, 2)
    doc = Text(id="i", embedding=arr)
    assert doc.model_dump()["embedding"] is arr
    assert json.loads(doc.model_dump_json())["embedding"] == [[0.0, 1.0], [2.0, 3.0]]
    back = Text.model_validate_json(doc.model_dump_json())
    assert back.embedding is not None and np.array_equal(back.embedding, arr)


def test_json_schema_for_tensors_and_nested_doclists() -> None:
    schema = Page.model_json_schema()
    assert schema["properties"]["matches"]["items"] == {"$ref": "#/$defs/Text"}
    embedding = schema["$defs"]["Text"]["properties"]["embedding"]["anyOf"][0]
    assert embedding["type"] == "array" and embedding["items"] == {"type": "number"}
    fixed = Fixed.model_json_schema()["properties"]
    grid = fixed["grid"]["anyOf"][0]
    assert grid["minItems"] == grid["maxItems"] == 3
    assert grid["items"]["minItems"] == 4 and grid["items"]["items"] == {"type": "number"}
    assert fixed["flags"]["anyOf"][0]["items"] == {"type": "boolean"}
    assert fixed["small"]["anyOf"][0]["items"] == {"type": "integer"}
    assert DocList[Text].__name__ == "DocList[Text]"


# -- DocList ----------------------------------------------------------------------------------


def test_doclist_classes_are_cached_and_typed() -> None:
    assert DocList[Text] is DocList[Text]
    assert DocList[Text].doc_type is Text
    assert DocList.doc_type is AnyDoc
    assert DocList[AnyDoc] is DocList
    assert DocList[Any] is DocList
    assert issubclass(DocList[Text], DocList) and issubclass(DocList[Text], list)
    with pytest.raises(TypeError):
        DocList[int]  # type: ignore[type-var]


def test_doclist_list_behaviour_keeps_type() -> None:
    docs = DocList[Text]([Text(text=str(i)) for i in range(5)])
    assert docs[0].text == "0" and docs[-1].text == "4"
    part = docs[1:3]
    assert type(part) is DocList[Text] and [d.text for d in part] == ["1", "2"]
    assert type(docs.copy()) is DocList[Text]
    docs.append(Text(text="5"))
    docs.extend([Text(text="6")])
    docs.insert(0, Text(text="-1"))
    docs += [Text(text="7")]
    docs[0] = Text(text="first")
    assert type(docs) is DocList[Text] and len(docs) == 9 and docs[0].text == "first"
    assert docs == DocList[Text](list(docs))


def test_doclist_rejects_other_document_types() -> None:
    docs = DocList[Text]()
    with pytest.raises(TypeError, match="holds Text documents, got Image"):
        docs.append(Image())  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        DocList[Text]([Image()])  # type: ignore[list-item]
    with pytest.raises(TypeError):
        docs.extend([{"text": "dict"}])  # type: ignore[list-item]
    anything = DocList([Text(), Image()])
    assert len(anything) == 2
    with pytest.raises(TypeError):
        anything.append("text")  # type: ignore[arg-type]


def test_doclist_repr_is_short() -> None:
    assert repr(DocList[Text]([Text(), Text()])) == "<DocList[Text] of 2 documents>"
    assert repr(DocList()) == "<DocList of 0 documents>"


def test_column_get() -> None:
    docs = DocList[Text](
        [Text(text=t, embedding=np.full(3, i, dtype=np.float32)) for i, t in enumerate("abc")]
    )
    assert docs.text == ["a", "b", "c"]
    stacked = docs.embedding
    assert isinstance(stacked, np.ndarray) and stacked.shape == (3, 3) and stacked[2, 0] == 2
    docs[1].embedding = None
    assert isinstance(docs.embedding, list) and docs.embedding[1] is None
    docs[1].embedding = np.zeros(5)
    assert isinstance(docs.embedding, list)  # shapes differ: no single array
    assert DocList[Text]().embedding == []


def test_column_set() -> None:
    docs = DocList[Text]([Text(), Text()])
    docs.text = ["x", "y"]
    assert [d.text for d in docs] == ["x", "y"]
    matrix = np.arange(8, dtype=np.float32).reshape(2, 4)
    docs.embedding = matrix
    assert np.array_equal(docs[1].embedding, matrix[1])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="got 3 values for 2 documents"):
        docs.text = ["a", "b", "c"]
    with pytest.raises(TypeError):
        docs.text = "ab"


def test_unknown_attributes_raise() -> None:
    docs = DocList[Text]([Text()])
    with pytest.raises(AttributeError):
        _ = docs.nope
    with pytest.raises(AttributeError):
        docs.nope = [1]
    with pytest.raises(AttributeError):
        _ = DocList([AnyDoc.model_validate({"colour": "red"})]).colour


def test_from_and_to_json() -> None:
    docs = DocList[Text]([Text(id="a", text="é", embedding=np.array([1.0, 2.0])), Text(id="b")])
    raw = docs.to_json()
    assert json.loads(raw)[0] == {"id": "a", "text": "é", "embedding": [1.0, 2.0]}
    back = DocList[Text].from_json(raw)
    assert type(back) is DocList[Text] and back == docs
    assert DocList[Text].from_json(raw.encode()) == docs


def test_from_json_errors_are_plait_errors() -> None:
    with pytest.raises(CodecError, match="malformed JSON"):
        DocList[Text].from_json("[{")
    with pytest.raises(SchemaError, match=r"docs\[1\]\.text: Input should be a valid string") as info:
        DocList[Text].from_json('[{"text": "ok"}, {"text": 5}]')
    assert "Text" in str(info.value)


def test_from_and_to_dicts() -> None:
    docs = DocList[Text].from_dicts([{"text": "a"}, Text(text="b")])
    assert docs.text == ["a", "b"]
    arr = np.ones(2)
    rows = DocList[Text]([Text(embedding=arr)]).to_dicts()
    assert rows[0]["embedding"] is arr


def test_pickle_and_copy_keep_the_doclist_type() -> None:
    docs = DocList[Text]([Text(text="a", embedding=np.arange(3))])
    for clone in (pickle.loads(pickle.dumps(docs)), copy.deepcopy(docs), copy.copy(docs)):
        assert type(clone) is DocList[Text] and clone == docs
    plain = DocList([Text()])
    assert type(pickle.loads(pickle.dumps(plain))) is DocList


def test_doclist_in_a_plain_pydantic_model() -> None:
    class Request(BaseModel):
        docs: DocList[Text]

    req = Request.model_validate({"docs": [{"text": "a"}]})
    assert type(req.docs) is DocList[Text]
    assert req.model_dump()["docs"][0]["text"] == "a"
