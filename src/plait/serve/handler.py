"""Run requests against one Executor instance: decode, call the endpoint, encode.

This is protocol-free: it takes and returns ``plait.v1`` messages and raises :class:`PlaitError`;
the gRPC servicer turns those into statuses.
"""

from __future__ import annotations

import asyncio
import functools
import json
import traceback
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from plait._version import __version__
from plait.docs import DocList, Document, decode_docs, encode_docs
from plait.errors import EndpointNotFoundError, ExecutorError, PlaitError, SchemaError
from plait.executor import DEFAULT_ENDPOINT, EndpointSpec, Executor
from plait.executor.batching import effective_batching
from plait.executor.endpoints import call_endpoint, parse_parameters, stream_endpoint
from plait.observe.tracing import Tracing
from plait.serve.batcher import Batcher
from plait.wire import plait_pb2 as pb
from plait.wire.fields import matches_target, parse_json_object

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

RESULTS_KEY = "__results__"


class RequestHandler:
    """Serves the endpoints of one Executor instance."""

    def __init__(
        self,
        executor: Executor,
        *,
        name: str,
        allow_concurrent: bool = False,
        dynamic_batching: Mapping[str, Mapping[str, Any]] | None = None,
        registry: CollectorRegistry | None = None,
        tracing: Tracing | None = None,
    ) -> None:
        self.executor = executor
        self.name = name
        self._table: Mapping[str, EndpointSpec] = type(executor).endpoints
        self._default = self._table.get(DEFAULT_ENDPOINT)
        self._registry = registry
        # Endpoint → batching config: @dynamic_batching, overridden by `uses_dynamic_batching`.
        self._batching = effective_batching(self._table, dynamic_batching, executor=name)
        self._batcher = Batcher(
            executor=name,
            call=self._call_batch,
            make_error=self._batch_error,
            registry=lambda: self.registry,
            tracing=tracing,
        )
        # One worker keeps sync endpoints in order (safe for code that is not thread-safe);
        # allow_concurrent=True lets them overlap.
        self._pool = ThreadPoolExecutor(
            max_workers=32 if allow_concurrent else 1, thread_name_prefix=f"plait-{name}"
        )

    def batch_pending(self) -> float:
        """Requests waiting in the batching queues now."""
        return float(self._batcher.pending)

    async def run_sync(self, fn: Callable[..., Any], *args: Any) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, functools.partial(fn, *args))

    def close(self) -> None:
        """Stop the batch queues, close the Executor, stop the worker threads. Any thread may call it."""
        try:
            self._batcher.close()
            self.executor.close()
        finally:
            self._pool.shutdown(wait=True, cancel_futures=True)

    async def _call_batch(self, spec: EndpointSpec, docs: DocList[Any], parameters: Any) -> Any:
        return await call_endpoint(spec, self.executor, docs, parameters, self.run_sync)

    def _batch_error(self, endpoint: str, exc: BaseException) -> PlaitError:
        return exc if isinstance(exc, PlaitError) else self._executor_error(endpoint, exc)

    def lookup(self, endpoint: str) -> EndpointSpec:
        spec = self._table.get(endpoint) or self._default
        if spec is None:
            known = ", ".join(sorted(self._table)) or "none"
            raise EndpointNotFoundError(
                f"executor {self.name!r} has no endpoint {endpoint!r} (it serves: {known})",
                executor=self.name,
                endpoint=endpoint,
            )
        return spec

    def targets_me(self, pattern: str) -> bool:
        return matches_target(pattern, self.name)

    # -- exit_on_exceptions: the server's hook, kept apart from the rest of the handler -------------

    on_endpoint_error: Callable[[BaseException], None] | None = None
    """Set by the server: called (on the event loop) with every exception an endpoint raised."""

    def _report_endpoint_error(self, exc: BaseException) -> None:
        if self.on_endpoint_error is not None:
            self.on_endpoint_error(exc)

    def _executor_error(self, endpoint: str, exc: BaseException) -> ExecutorError:
        self._report_endpoint_error(exc)
        tb = "".join(traceback.format_exception(exc))
        return ExecutorError(
            f"{type(exc).__name__}: {exc}",
            executor=self.name,
            endpoint=endpoint,
            exc_type=type(exc).__name__,
            traceback=tb,
        )

    def _prepare(self, request: pb.Request) -> tuple[EndpointSpec, DocList[Any], Any]:
        """The endpoint, its decoded input docs and its parameters (raises PlaitError)."""
        spec = self.lookup(request.endpoint)
        raw_params = parse_json_object(request.parameters, "parameters")
        try:
            params = parse_parameters(spec, raw_params)
        except ValidationError as e:
            raise SchemaError(
                f"parameters for {request.endpoint!r} do not match {spec.parameters_type.__name__}: "  # type: ignore[union-attr]
                + "; ".join(f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors()),
                executor=self.name,
                endpoint=request.endpoint,
            ) from e
        docs = decode_docs(request.docs, spec.input_type)
        return spec, docs, params

    @property
    def registry(self) -> CollectorRegistry:
        """This handler's metrics (``plait_batch_size``, ``plait_batch_wait_seconds``): the
        server's registry with ``monitoring`` on, else one of its own, made on first use."""
        if self._registry is None:
            from prometheus_client import CollectorRegistry

            self._registry = CollectorRegistry(auto_describe=True)
        return self._registry

    def ready(self) -> bool:
        return True

    async def process(self, request: pb.Request, *, timeout: float | None = None) -> pb.Response:
        """Serve one unary request. (An executor has no downstream, so ``timeout`` needs no passing on.)"""
        if not self.targets_me(request.target_executor):
            return pb.Response(
                request_id=request.request_id, docs=request.docs, parameters=request.parameters
            )
        try:
            spec, docs, params = self._prepare(request)
        except PlaitError as e:
            e.details.setdefault("executor", self.name)
            e.details.setdefault("endpoint", request.endpoint)
            raise
        batching = self._batching.get(spec.endpoint)
        if batching is not None:
            own_docs, result = await self._batcher.submit(spec, batching, docs, params)
            return self._response(request, spec, own_docs, result)
        matrix = None
        if spec.passes_docs_matrix and request.docs_matrix:
            matrix = [decode_docs(part, spec.input_type) for part in request.docs_matrix]
        try:
            result = await call_endpoint(spec, self.executor, docs, params, self.run_sync, matrix)
        except PlaitError:
            raise
        except Exception as e:
            raise self._executor_error(request.endpoint, e) from e
        return self._response(request, spec, docs, result)

    def _response(
        self, request: pb.Request, spec: EndpointSpec, docs: DocList[Any], result: Any
    ) -> pb.Response:
        params_out = request.parameters
        if result is None:
            out_docs: Sequence[Document] = docs
        elif isinstance(result, DocList):  # the common case; its items were checked on the way in
            out_docs = result
        elif isinstance(result, Mapping):
            out_docs = docs
            merged = parse_json_object(request.parameters, "parameters")
            merged.setdefault(RESULTS_KEY, {})[self.name] = dict(result)
            try:
                params_out = json.dumps(merged).encode()
            except (TypeError, ValueError) as e:
                raise self._executor_error(request.endpoint, e) from e
        elif isinstance(result, Sequence) and all(isinstance(d, Document) for d in result):
            out_docs = result
        else:
            raise ExecutorError(
                f"endpoint returned {type(result).__name__}; return a DocList, None (keep the input docs) "
                "or a dict (results in parameters['__results__'])",
                executor=self.name,
                endpoint=request.endpoint,
            )
        try:
            payload = encode_docs(out_docs)
        except Exception as e:
            raise self._executor_error(request.endpoint, e) from e
        return pb.Response(request_id=request.request_id, docs=payload, parameters=params_out)

    async def stream(
        self, request: pb.Request, *, timeout: float | None = None
    ) -> AsyncIterator[pb.Response]:
        """Serve a streaming request: one response per document the endpoint yields.

        A non-streaming endpoint answers with a single response.
        """
        spec, docs, params = self._prepare(request)
        if not spec.streaming:
            yield await self.process(request)
            return
        try:
            for doc in docs:
                async for item in stream_endpoint(spec, self.executor, doc, params, self.run_sync):
                    if not isinstance(item, Document):
                        raise TypeError(f"a streaming endpoint yields Documents, got {type(item).__name__}")
                    yield pb.Response(request_id=request.request_id, docs=encode_docs([item]))
        except PlaitError:
            raise
        except Exception as e:
            raise self._executor_error(request.endpoint, e) from e

    def describe(self) -> pb.DescribeResponse:
        endpoints = []
        for name, spec in sorted(self._table.items()):
            endpoints.append(
                pb.EndpointInfo(
                    name=name,
                    input_schema=json.dumps(spec.input_type.model_json_schema()),
                    output_schema=json.dumps(spec.output_type.model_json_schema()),
                    streaming=spec.streaming,
                    wants_docs_matrix=spec.passes_docs_matrix,
                    idempotent=spec.idempotent,
                    doc=spec.doc,
                    parameters_schema=json.dumps(spec.parameters_type.model_json_schema())
                    if spec.parameters_type
                    else "",
                )
            )
        ra = self.executor.runtime_args
        return pb.DescribeResponse(
            name=self.name,
            kind="executor",
            version=__version__,
            endpoints=endpoints,
            executor_class=type(self.executor).__qualname__,
            replica_id=ra.replica_id,
            shard_id=ra.shard_id,
        )
