"""Unit tests of the executor layer: endpoint tables, signatures, loading."""

from __future__ import annotations

import textwrap
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from executors import Echo, Emb, Text, Token, TopK, Upper

from plait import AnyDoc, DocList, Document, Executor, requests
from plait.config import ExecutorConfig, RuntimeArgs
from plait.errors import ConfigError
from plait.executor import DEFAULT_ENDPOINT
from plait.executor.loader import load_executor


def test_endpoint_table_is_built_once_per_class() -> None:
    table = Echo.endpoints
    assert table is Echo.endpoints
    assert {"/echo", "/greet", "/tokens", "/per_doc"} <= set(table)
    echo = table["/echo"]
    assert echo.is_async and not echo.is_generator and not echo.per_doc
    assert echo.input_type is Text and echo.output_type is Text
    greet = table["/greet"]
    assert not greet.is_async and greet.passes_parameters
    tokens = table["/tokens"]
    assert tokens.is_generator and tokens.per_doc and tokens.streaming
    assert tokens.input_type is Text and tokens.output_type is Token
    assert table["/topk"].parameters_type is TopK
    assert table["/embed"].input_type is Emb


def test_default_endpoint_and_multiple_names() -> None:
    class Multi(Executor):
        @requests(on=["/a", "b"])
        def ab(self, docs: DocList[Text], **kwargs: object) -> None: ...

        @requests
        def fallback(self, docs, **kwargs):  # type: ignore[no-untyped-def]
            ...

    assert set(Multi.endpoints) == {"/a", "/b", DEFAULT_ENDPOINT}
    assert Multi.endpoints[DEFAULT_ENDPOINT].input_type is AnyDoc


def test_subclass_overrides_and_inherits_endpoints() -> None:
    class Child(Upper):
        @requests(on="/lower")
        def lower(self, docs: DocList[Text], **kwargs: object) -> None: ...

    assert set(Child.endpoints) == {"/upper", "/lower"}
    assert set(Upper.endpoints) == {"/upper"}


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("def f(self, docs, doc, **kwargs): ...", "either `docs`"),
        ("async def f(self, docs, **kwargs):\n        yield None", "takes one `doc"),
        ("def f(self, x): ...", "takes `docs`"),
    ],
)
def test_bad_signatures_are_rejected_at_class_creation(source: str, message: str) -> None:
    namespace: dict[str, object] = {"requests": requests, "Executor": Executor}
    code = f"class Bad(Executor):\n    @requests(on='/x')\n    {source}\n"
    with pytest.raises(ConfigError, match=message):
        exec(textwrap.dedent(code), namespace)


def test_unknown_uses_with_key_is_a_clear_error() -> None:
    cfg = ExecutorConfig(uses="executors:Echo", uses_with={"greting": "hi"})
    with pytest.raises(ConfigError, match="greting"):
        load_executor(cfg)


def test_load_executor_sets_metas_runtime_args_and_workspace(tmp_path: Path) -> None:
    cfg = ExecutorConfig(
        uses="executors:Echo", uses_with={"greeting": "hey"}, name="enc", workspace=str(tmp_path)
    )
    ra = RuntimeArgs(name="enc", replicas=2, replica_id=1, shard_id=0, workspace=str(tmp_path))
    ex = load_executor(cfg, ra)
    assert isinstance(ex, Echo)
    assert ex.greeting == "hey"
    assert ex.metas.name == "enc"
    assert ex.runtime_args.replica_id == 1 and ex.runtime_args.replicas == 2
    assert Path(ex.workspace) == tmp_path / "enc" / "0"
    assert Path(ex.workspace).is_dir()


def test_load_from_py_modules_file_and_yaml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "my_exec.py").write_text(
        textwrap.dedent(
            """
            from plait import Executor, requests

            class Shout(Executor):
                def __init__(self, times: int = 1, **kwargs):
                    super().__init__(**kwargs)
                    self.times = times

                @requests
                def shout(self, docs, **kwargs):
                    return None
            """
        )
    )
    cfg = ExecutorConfig(uses="Shout", py_modules=(str(tmp_path / "my_exec.py"),), uses_with={"times": 2})
    assert load_executor(cfg).times == 2  # type: ignore[attr-defined]

    monkeypatch.setenv("SHOUT_TIMES", "5")
    (tmp_path / "shout.yml").write_text(
        "jtype: Shout\nwith:\n  times: ${{ ENV.SHOUT_TIMES }}\n"
        "metas:\n  name: shouter\npy_modules:\n  - my_exec.py\n"
    )
    ex = load_executor(ExecutorConfig(uses=str(tmp_path / "shout.yml")))
    assert ex.times == 5  # type: ignore[attr-defined]
    assert ex.metas.name == "shouter"


def test_uses_that_is_not_found_names_where_it_looked() -> None:
    with pytest.raises(ConfigError, match="no such Executor class"):
        load_executor(ExecutorConfig(uses="NoSuchExecutor"))
    with pytest.raises(ConfigError, match="not an Executor"):
        load_executor(ExecutorConfig(uses="executors:Text"))
    with pytest.raises(ConfigError, match="nosuchmodule"):
        load_executor(ExecutorConfig(uses="nosuchmodule:X"))


def test_executor_can_be_used_directly_without_serving() -> None:
    ex = Upper()
    docs = DocList[Text]([Text(text="a")])
    out = ex.upper(docs)
    assert out.text == ["A"]
    assert ex.metas.name == "Upper"


def test_streaming_endpoint_annotation_forms() -> None:
    class S(Executor):
        @requests(on="/s")
        async def s(self, doc: Text, **kwargs: object) -> AsyncIterator[Token]:
            yield Token()

    assert S.endpoints["/s"].output_type is Token


def test_document_subclass_without_annotations_defaults_to_anydoc() -> None:
    class Loose(Executor):
        @requests(on="/x")
        def x(self, docs, **kwargs):  # type: ignore[no-untyped-def]
            return docs

    spec = Loose.endpoints["/x"]
    assert spec.input_type is AnyDoc and spec.output_type is AnyDoc
    assert issubclass(AnyDoc, Document)
