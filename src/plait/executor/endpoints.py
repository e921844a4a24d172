"""The endpoint table: built once per Executor class from ``@requests`` marks and type hints.

Everything a server needs to call an endpoint (input/output document types, whether it is async
or a generator, which keyword arguments it takes) is worked out here, at class creation, so that
serving a request is a dict lookup and a call.
"""

from __future__ import annotations

import collections.abc as cabc
import inspect
import typing
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from plait.docs import AnyDoc, DocList, Document
from plait.errors import ConfigError
from plait.executor.batching import BATCHING_ATTR, BatchingConfig, check_batchable
from plait.executor.decorators import IDEMPOTENT_ATTR

_STREAM_ORIGINS = {
    cabc.AsyncIterator,
    cabc.AsyncGenerator,
    cabc.AsyncIterable,
    cabc.Iterator,
    cabc.Generator,
    cabc.Iterable,
}

RunSync = Callable[..., Awaitable[Any]]
"""How a server runs a sync callable off its event loop: ``await run_sync(fn, *args)``."""


@dataclass(frozen=True)
class EndpointSpec:
    """How to call one endpoint of one Executor class."""

    endpoint: str
    method_name: str
    fn: Callable[..., Any] = field(repr=False)
    is_async: bool
    is_generator: bool
    per_doc: bool  # takes ``doc: T`` and is called once per document
    input_type: type[Document]
    output_type: type[Document]
    parameters_type: type[BaseModel] | None
    passes_parameters: bool
    passes_kwargs: bool
    passes_docs_matrix: bool = False
    idempotent: bool = False
    doc: str = ""
    batching: BatchingConfig | None = None  # from @dynamic_batching; a server may override it

    @property
    def streaming(self) -> bool:
        return self.is_generator


def _doc_type_of(annotation: Any, where: str) -> type[Document] | None:
    """``DocList[T]`` or ``T`` (a Document subclass) → ``T``; anything else → None."""
    if annotation is inspect.Parameter.empty or annotation is None:
        return None
    if isinstance(annotation, type):
        if issubclass(annotation, DocList):
            return annotation.doc_type
        if issubclass(annotation, Document):
            return annotation
    origin = typing.get_origin(annotation)
    if origin in _STREAM_ORIGINS:
        args = typing.get_args(annotation)
        return _doc_type_of(args[0], where) if args else None
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        inner = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(inner) == 1:
            return _doc_type_of(inner[0], where)
    if origin is list:
        args = typing.get_args(annotation)
        return _doc_type_of(args[0], where) if args else None
    return None


def _build_spec(endpoint: str, fn: Callable[..., Any], hints: Mapping[str, Any], owner: str) -> EndpointSpec:
    where = f"{owner}.{fn.__name__}"
    sig = inspect.signature(fn)
    params = sig.parameters
    passes_kwargs = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    if "docs" in params and "doc" in params:
        raise ConfigError(
            f"{where}: take either `docs` (the whole request) or `doc` (one document), not both"
        )
    is_generator = inspect.isasyncgenfunction(fn) or inspect.isgeneratorfunction(fn)
    per_doc = "doc" in params or is_generator
    if is_generator and "docs" in params:
        raise ConfigError(f"{where}: a streaming (generator) endpoint takes one `doc: T`, not `docs`")
    if "docs" not in params and "doc" not in params and not passes_kwargs:
        raise ConfigError(f"{where}: an endpoint takes `docs` (or `doc`) and `**kwargs`")
    arg = "doc" if per_doc else "docs"
    input_type = _doc_type_of(hints.get(arg, inspect.Parameter.empty), where) or AnyDoc
    output_type = _doc_type_of(hints.get("return", inspect.Parameter.empty), where) or input_type
    ptype = hints.get("parameters")
    parameters_type = ptype if isinstance(ptype, type) and issubclass(ptype, BaseModel) else None
    batching: BatchingConfig | None = getattr(fn, BATCHING_ATTR, None)
    spec = EndpointSpec(
        endpoint=endpoint,
        method_name=fn.__name__,
        fn=fn,
        is_async=inspect.iscoroutinefunction(fn) or inspect.isasyncgenfunction(fn),
        is_generator=is_generator,
        per_doc=per_doc,
        input_type=input_type,
        output_type=output_type,
        parameters_type=parameters_type,
        passes_parameters="parameters" in params or passes_kwargs,
        passes_kwargs=passes_kwargs,
        passes_docs_matrix="docs_matrix" in params,
        idempotent=bool(getattr(fn, IDEMPOTENT_ATTR, False)),
        doc=inspect.getdoc(fn) or "",
        batching=batching,
    )
    if batching is not None:
        check_batchable(spec, f"{where}: @dynamic_batching")
    return spec


def build_endpoint_table(cls: type, marker: str) -> dict[str, EndpointSpec]:
    """Collect the methods of ``cls`` (and its bases) marked with ``marker`` into an endpoint table.

    Subclasses override their bases: the most derived binding of an endpoint wins.
    """
    table: dict[str, EndpointSpec] = {}
    for klass in reversed(cls.__mro__):
        for attr, value in vars(klass).items():
            fn = value.__func__ if isinstance(value, staticmethod | classmethod) else value
            endpoints = getattr(fn, marker, None)
            if not endpoints and callable(fn) and hasattr(fn, BATCHING_ATTR):
                raise ConfigError(
                    f"{cls.__qualname__}.{attr}: @dynamic_batching needs @requests on the method"
                )
            if not endpoints or not callable(fn):
                continue
            try:
                hints = typing.get_type_hints(fn)
            except Exception as e:
                raise ConfigError(
                    f"{cls.__qualname__}.{attr}: cannot resolve the type hints ({e}); define the "
                    "document classes it names at module level, before the Executor"
                ) from e
            for endpoint in endpoints:
                table[endpoint] = _build_spec(endpoint, fn, hints, cls.__qualname__)
    return table


async def _gen_to_list(agen: AsyncIterator[Any]) -> list[Any]:
    return [item async for item in agen]


async def iterate_sync(gen: typing.Iterator[Any], run_sync: RunSync) -> AsyncIterator[Any]:
    """Drive a sync generator one item at a time off the event loop."""
    done = object()
    while True:
        item = await run_sync(next, gen, done)
        if item is done:
            return
        yield item


def _kwargs(spec: EndpointSpec, parameters: Any) -> dict[str, Any]:
    return {"parameters": parameters} if spec.passes_parameters else {}


def parse_parameters(spec: EndpointSpec, raw: dict[str, Any]) -> Any:
    """The ``parameters`` value the endpoint receives (validated when it is a pydantic model)."""
    if spec.parameters_type is None:
        return raw
    return spec.parameters_type.model_validate(raw)


async def call_endpoint(
    spec: EndpointSpec,
    executor: object,
    docs: DocList[Any],
    parameters: Any,
    run_sync: RunSync,
    docs_matrix: list[DocList[Any]] | None = None,
) -> Any:
    """Call a non-streaming endpoint (or collect a streaming one); returns what the method returned.

    A ``doc: T`` endpoint is called once per document and its results are collected into a list.
    ``docs_matrix`` (each upstream branch's docs, at a join) reaches methods that name it.
    """
    kwargs = _kwargs(spec, parameters)
    if spec.passes_docs_matrix:
        kwargs["docs_matrix"] = docs_matrix if docs_matrix is not None else [docs]
    if spec.per_doc:
        out: list[Any] = []
        for d in docs:
            if spec.is_generator:
                out.extend([x async for x in stream_endpoint(spec, executor, d, parameters, run_sync)])
                continue
            result = await _call_once(spec, executor, {"doc": d, **kwargs}, run_sync)
            out.append(d if result is None else result)
        return out
    call_kwargs = {"docs": docs, **kwargs}
    return await _call_once(spec, executor, call_kwargs, run_sync)


async def _call_once(spec: EndpointSpec, executor: object, kwargs: dict[str, Any], run_sync: RunSync) -> Any:
    if spec.is_async:
        return await spec.fn(executor, **kwargs)
    return await run_sync(lambda: spec.fn(executor, **kwargs))


def stream_endpoint(
    spec: EndpointSpec, executor: object, doc: Document, parameters: Any, run_sync: RunSync
) -> AsyncIterator[Any]:
    """The async iterator of documents a generator endpoint yields for one input document."""
    kwargs = {("doc" if spec.per_doc else "docs"): doc, **_kwargs(spec, parameters)}
    if spec.is_async:
        return typing.cast(AsyncIterator[Any], spec.fn(executor, **kwargs))
    return iterate_sync(spec.fn(executor, **kwargs), run_sync)
