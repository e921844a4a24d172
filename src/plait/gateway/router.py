"""The router: runs each request through a Flow's DAG of executors over persistent channels.

Documents stay encoded bytes along a chain; they are decoded (schema-less) only where the
gateway must look inside: merging branches at a join, reducing shards polled with ALL, and
applying a ``when`` condition. Independent branches run concurrently; the first failure cancels
the rest of the request. The router is a :class:`~plait.serve.Processor`, so the same protocol
servers that serve an executor serve a Flow.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc

from plait._address import host_and_port
from plait._version import __version__
from plait.config import GatewayConfig, GatewayExecutor
from plait.docs.rows import decode_raw, encode_raw
from plait.errors import (
    BadRequestError,
    DeadlineExceededError,
    EndpointNotFoundError,
    PlaitError,
    StartupError,
    UnavailableError,
)
from plait.gateway.conditions import compile_condition, filter_rows
from plait.gateway.reduce import merge_rows
from plait.observe.status import status_of
from plait.observe.tracing import Tracing
from plait.security.tls import internal_channel_kwargs
from plait.wire import SERVICE_NAME, error_from_rpc_error
from plait.wire import plait_pb2 as pb
from plait.wire.channels import open_channel
from plait.wire.fields import DEFAULT_ENDPOINT, matches_target, parse_json_object
from plait.wire.lanes import StreamMux, call_on_lanes
from plait.wire.retry import with_retries

log = logging.getLogger("plait.gateway")

START = "gateway"
RESULTS_KEY = "__results__"
_METHOD = f"/{SERVICE_NAME}/"


@dataclass(slots=True)
class _Payload:
    """Documents flowing along one edge of the DAG (encoded), plus the executors' dict results."""

    docs: bytes
    results: dict[str, Any] = field(default_factory=dict)


class _Shard:
    """One shard of an executor: a channel balancing over its replicas, and one lane per replica
    (plait.wire.lanes) that carries its unary calls as messages of a long-lived stream."""

    def __init__(self, addresses: Sequence[str], channel_kwargs: Mapping[str, Any] | None = None) -> None:
        self.addresses = tuple(addresses)
        kwargs = dict(channel_kwargs or {})
        self.channel = open_channel(self.addresses, **kwargs)
        self.process = self.channel.unary_unary(
            _METHOD + "Process",
            request_serializer=pb.Request.SerializeToString,
            response_deserializer=pb.Response.FromString,
        )
        self.stream = self.channel.unary_stream(
            _METHOD + "Stream",
            request_serializer=pb.Request.SerializeToString,
            response_deserializer=pb.Response.FromString,
        )
        self.describe = self.channel.unary_unary(
            _METHOD + "Describe",
            request_serializer=pb.DescribeRequest.SerializeToString,
            response_deserializer=pb.DescribeResponse.FromString,
        )
        # A name that resolves to many replicas (dns:///...) is balanced per call by the channel;
        # replicas named one by one each get a lane (on a channel of its own), used in turn.
        self.lanes: StreamMux | None = None
        if not any(a.startswith("dns:") for a in self.addresses):
            self.lanes = StreamMux.per_address(
                self.channel, self.addresses, lambda a: open_channel([a], **kwargs)
            )

    async def call(self, request: pb.Request, timeout: float | None, metadata: Any = None) -> pb.Response:
        """One call (raises ``grpc.RpcError``): on a lane, or as a unary call when it carries
        metadata of its own (a trace context) or the replicas are behind one name."""
        if self.lanes is not None and metadata is None:
            return await call_on_lanes(self.lanes, request, timeout)
        response: pb.Response = await self.process(request, timeout=timeout, metadata=metadata)
        return response

    async def close(self) -> None:
        if self.lanes is not None:
            await self.lanes.close()
        await self.channel.close()


async def _until_listening(addresses: Sequence[str], deadline: float | None) -> None:
    """Return once one of ``addresses`` (``host:port``) accepts TCP connections, or at ``deadline``
    (the caller's first call then reports why); at once for names the channel resolves itself."""
    if any(":" not in a or a.startswith(("dns:", "unix:", "ipv4:", "ipv6:")) for a in addresses):
        return
    while deadline is None or time.monotonic() < deadline:
        for address in addresses:
            try:
                _, writer = await asyncio.wait_for(asyncio.open_connection(*host_and_port(address)), 0.5)
            except (OSError, ValueError, TimeoutError):
                continue
            writer.close()
            return
        await asyncio.sleep(_LISTEN_POLL_S)


_LISTEN_POLL_S = 0.005  # a refused connect costs ~0.1 ms; a start-up lasts ~0.4 s


class _Node:
    """One executor node at run time."""

    def __init__(self, cfg: GatewayExecutor, channel_kwargs: Mapping[str, Any] | None = None) -> None:
        self.cfg = cfg
        self.name = cfg.name
        self.needs = cfg.needs or (START,)
        self.shards = [_Shard(addresses, channel_kwargs) for addresses in cfg.shards]
        self.condition = compile_condition(cfg.when) if cfg.when else None
        self.description: pb.DescribeResponse | None = None
        self.endpoints: dict[str, pb.EndpointInfo] = {}
        self._next_shard = itertools.cycle(range(len(self.shards)))

    def serves(self, endpoint: str) -> pb.EndpointInfo | None:
        return self.endpoints.get(endpoint) or self.endpoints.get(DEFAULT_ENDPOINT)

    def polling(self, endpoint: str) -> str:
        return self.cfg.polling.get(endpoint, self.cfg.polling.get("*", "ANY"))

    def pick_shard(self) -> _Shard:
        return self.shards[next(self._next_shard)]


def _topological(nodes: Sequence[_Node]) -> list[_Node]:
    by_name = {n.name: n for n in nodes}
    for node in nodes:
        for need in node.needs:
            if need != START and need not in by_name:
                raise StartupError(f"executor {node.name!r} needs {need!r}, which is not in the Flow")
    order: list[_Node] = []
    state: dict[str, int] = {}

    def visit(node: _Node, path: tuple[str, ...]) -> None:
        if state.get(node.name) == 2:
            return
        if state.get(node.name) == 1:
            raise StartupError(f"the Flow has a cycle: {' -> '.join((*path, node.name))}")
        state[node.name] = 1
        for need in node.needs:
            if need != START:
                visit(by_name[need], (*path, node.name))
        state[node.name] = 2
        order.append(node)

    for node in nodes:
        visit(node, ())
    return order


def _split_parameters(raw: bytes, names: Sequence[str]) -> Callable[[str], bytes]:
    """Per-executor parameters: ``{'encoder__k': 3}`` reaches only ``encoder`` (as ``k``)."""
    if not raw or b"__" not in raw:
        return lambda _name: raw  # the common case: nothing executor-specific, forward the bytes
    params = parse_json_object(raw, "parameters")
    common = {k: v for k, v in params.items() if "__" not in k or k == RESULTS_KEY}
    specific: dict[str, dict[str, Any]] = {name: {} for name in names}
    for key, value in params.items():
        prefix, sep, rest = key.partition("__")
        if sep and prefix in specific and rest:
            specific[prefix][rest] = value
    cache = {name: json.dumps({**common, **extra}).encode() for name, extra in specific.items()}
    return lambda name: cache.get(name, raw)


class Router:
    """Runs requests through the DAG described by a :class:`GatewayConfig`."""

    def __init__(self, config: GatewayConfig) -> None:
        self.config = config
        self.name = config.name
        channel_kwargs = internal_channel_kwargs(config.internal_tls)  # mutual TLS, when configured
        self._nodes = [_Node(cfg, channel_kwargs) for cfg in config.executors]
        self._order = _topological(self._nodes)
        needed = {need for node in self._nodes for need in node.needs}
        self._leaves = [node for node in self._order if node.name not in needed]
        self._chain = self._is_chain()
        self._description: pb.DescribeResponse | None = None
        self._hop: Any = None
        self._tracing: Tracing | None = None

    def observe(self, hop: Any, tracing: Tracing | None) -> None:
        """Time each executor call in ``hop`` (a histogram by executor, endpoint, status) and/or
        trace it: a CLIENT span per call, whose context travels in the call's gRPC metadata."""
        self._hop = hop
        self._tracing = tracing

    def _is_chain(self) -> bool:
        previous = START
        for node in self._order:
            if node.needs != (previous,):
                return False
            previous = node.name
        return True

    # -- lifecycle -----------------------------------------------------------------------------

    async def discover(self, timeout: float) -> None:
        """Ask every executor for its endpoints, retrying until each answers or ``timeout`` passes."""
        deadline = time.monotonic() + timeout if timeout >= 0 else None

        async def one(node: _Node) -> None:
            # Not before an executor listens: a refused connection puts the channel in reconnect
            # backoff (growing to 1 s), which would delay discovery well past the executor's start.
            await _until_listening(node.shards[0].addresses, deadline)
            while True:
                try:
                    node.description = await node.shards[0].describe(pb.DescribeRequest(), timeout=2.0)
                    node.endpoints = {e.name: e for e in node.description.endpoints}
                    return
                except grpc.RpcError as e:
                    if deadline is not None and time.monotonic() > deadline:
                        where = ", ".join(node.shards[0].addresses)
                        raise StartupError(
                            f"gateway: executor {node.name!r} at {where} did not answer within {timeout}s "
                            f"({e.code().name})",
                            executor=node.name,
                        ) from None
                    await asyncio.sleep(0.1)

        await asyncio.gather(*(one(node) for node in self._nodes))
        self._description = self._build_description()
        log.info(
            "gateway: discovered %d executor(s): %s", len(self._nodes), ", ".join(n.name for n in self._order)
        )

    def ready(self) -> bool:
        return self._description is not None

    async def close(self) -> None:
        for node in self._nodes:
            for shard in node.shards:
                await shard.close()

    # -- Processor -----------------------------------------------------------------------------

    def describe(self) -> pb.DescribeResponse:
        if self._description is None:
            raise UnavailableError("the gateway has not discovered its executors yet")
        return self._description

    def _build_description(self) -> pb.DescribeResponse:
        names = sorted({e for node in self._nodes for e in node.endpoints})
        endpoints = []
        for name in names:
            serving = [node for node in self._order if name in node.endpoints]
            first, last = serving[0].endpoints[name], serving[-1].endpoints[name]
            endpoints.append(
                pb.EndpointInfo(
                    name=name,
                    input_schema=first.input_schema,
                    output_schema=last.output_schema,
                    streaming=len(serving) == 1 and first.streaming,
                    doc=next((n.endpoints[name].doc for n in serving if n.endpoints[name].doc), ""),
                    parameters_schema=next(
                        (s for n in serving if (s := n.endpoints[name].parameters_schema)), ""
                    ),
                )
            )
        return pb.DescribeResponse(
            name=self.name, kind="gateway", version=__version__, endpoints=endpoints, executor_class=""
        )

    async def process(self, request: pb.Request, *, timeout: float | None = None) -> pb.Response:
        deadline = None if timeout is None else time.monotonic() + timeout
        self._check_served(request.endpoint)
        params_for = _split_parameters(request.parameters, [n.name for n in self._nodes])
        start = _Payload(request.docs)
        if self._chain:
            payload = start
            for node in self._order:
                payload = await self._run_node(node, [payload], request, params_for, deadline)
            final = payload
        else:
            final = await self._run_dag(start, request, params_for, deadline)
        return pb.Response(
            request_id=request.request_id,
            docs=final.docs,
            parameters=self._response_parameters(request.parameters, final.results),
        )

    async def stream(
        self, request: pb.Request, *, timeout: float | None = None
    ) -> AsyncIterator[pb.Response]:
        serving = [node for node in self._order if node.serves(request.endpoint)]
        if len(serving) != 1:
            raise BadRequestError(
                f"streaming {request.endpoint!r} needs exactly one executor serving it in the Flow, "
                f"found {len(serving)}"
            )
        node = serving[0]
        if node.cfg.timeout_send is not None:
            timeout = node.cfg.timeout_send if timeout is None else min(timeout, node.cfg.timeout_send)
        forwarded = pb.Request(
            request_id=request.request_id,
            endpoint=request.endpoint,
            parameters=_split_parameters(request.parameters, [node.name])(node.name),
            docs=request.docs,
        )
        metadata = self._tracing.outgoing() if self._tracing is not None else None
        call = node.pick_shard().stream(forwarded, timeout=timeout, metadata=metadata)
        try:
            async for response in call:
                yield response
        except grpc.RpcError as e:
            raise self._executor_error(node, e) from None
        finally:
            call.cancel()

    # -- the DAG -------------------------------------------------------------------------------

    def _check_served(self, endpoint: str) -> None:
        if self._description is None:
            raise UnavailableError("the gateway is starting: executors not discovered yet")
        if not any(node.serves(endpoint) for node in self._nodes):
            known = ", ".join(e.name for e in self._description.endpoints) or "none"
            raise EndpointNotFoundError(
                f"no executor in the Flow serves endpoint {endpoint!r} (served: {known})", endpoint=endpoint
            )

    async def _run_dag(
        self, start: _Payload, request: pb.Request, params_for: Callable[[str], bytes], deadline: float | None
    ) -> _Payload:
        tasks: dict[str, asyncio.Task[_Payload]] = {}

        async def run(node: _Node) -> _Payload:
            inputs = [start if need == START else await tasks[need] for need in node.needs]
            return await self._run_node(node, inputs, request, params_for, deadline)

        try:
            async with asyncio.TaskGroup() as group:
                for node in self._order:
                    tasks[node.name] = group.create_task(run(node))
        except BaseExceptionGroup as group_error:
            # Surface the first real failure (the others are usually the cancellations it caused).
            raise _first_error(group_error) from None
        outputs = [tasks[leaf.name].result() for leaf in self._leaves]
        return outputs[0] if len(outputs) == 1 else _merge(outputs)

    async def _run_node(
        self,
        node: _Node,
        inputs: list[_Payload],
        request: pb.Request,
        params_for: Callable[[str], bytes],
        deadline: float | None,
    ) -> _Payload:
        payload = inputs[0] if len(inputs) == 1 else _merge(inputs)
        if node.condition is not None:
            payload = _Payload(
                encode_raw(filter_rows(decode_raw(payload.docs), node.condition)), payload.results
            )
        info = node.serves(request.endpoint)
        if info is None or not matches_target(request.target_executor, node.name):
            return payload  # this executor does not take part: documents pass through
        forwarded = pb.Request(
            request_id=request.request_id,
            endpoint=request.endpoint,
            parameters=params_for(node.name),
            docs=payload.docs,
        )
        if info.wants_docs_matrix and len(inputs) > 1:
            forwarded.docs_matrix.extend(p.docs for p in inputs)
        timeout = _remaining(deadline, node.cfg.timeout_send, node)
        if len(node.shards) == 1:
            responses = [await self._call(node, node.shards[0], forwarded, timeout, info.idempotent)]
        elif node.polling(request.endpoint) == "ANY":
            responses = [await self._call(node, node.pick_shard(), forwarded, timeout, info.idempotent)]
        else:
            responses = list(
                await asyncio.gather(
                    *(self._call(node, shard, forwarded, timeout, info.idempotent) for shard in node.shards)
                )
            )
        results = dict(payload.results)
        if len(responses) == 1:
            if responses[0].parameters and responses[0].parameters != forwarded.parameters:
                results.update(_results_of(responses[0].parameters))
            return _Payload(responses[0].docs, results)
        # Shards polled with ALL: each shard's dict result is kept, as a list in shard order.
        per_shard = [_results_of(r.parameters).get(node.name) for r in responses]
        if any(r is not None for r in per_shard):
            results[node.name] = per_shard
        return _Payload(encode_raw(merge_rows([decode_raw(r.docs) for r in responses])), results)

    async def _call(
        self, node: _Node, shard: _Shard, request: pb.Request, timeout: float | None, idempotent: bool
    ) -> pb.Response:
        if self._hop is not None or self._tracing is not None:
            return await self._observed_call(node, shard, request, timeout, idempotent)
        return await self._send(node, shard, request, timeout, idempotent)

    async def _send(
        self,
        node: _Node,
        shard: _Shard,
        request: pb.Request,
        timeout: float | None,
        idempotent: bool,
        metadata: Any = None,
    ) -> pb.Response:
        """One call to ``shard``, retried as failover allows; failures name the executor."""
        try:
            response: pb.Response = await with_retries(
                lambda left: shard.call(request, left, metadata),
                timeout=timeout,
                retries=node.cfg.retries,
                idempotent=idempotent,
            )
        except grpc.RpcError as e:
            raise self._executor_error(node, e) from None
        return response

    async def _observed_call(
        self, node: _Node, shard: _Shard, request: pb.Request, timeout: float | None, idempotent: bool
    ) -> pb.Response:
        """:meth:`_call` inside a CLIENT span (its context in the call's metadata) and/or timed into
        the per-hop histogram. Kept apart so that a gateway without either pays nothing."""
        start = time.perf_counter()
        status = "OK"
        tracing = self._tracing
        span = (
            tracing.client_span(
                f"call {node.name} {request.endpoint}",
                {"plait.executor": node.name, "plait.endpoint": request.endpoint},
            )
            if tracing is not None
            else contextlib.nullcontext()
        )
        try:
            with span:
                metadata = tracing.outgoing() if tracing is not None else None
                return await self._send(node, shard, request, timeout, idempotent, metadata)
        except BaseException as e:
            status = status_of(e)
            raise
        finally:
            if self._hop is not None:
                self._hop.labels(node.name, request.endpoint, status).observe(time.perf_counter() - start)

    @staticmethod
    def _executor_error(node: _Node, err: grpc.RpcError) -> PlaitError:
        error = error_from_rpc_error(err)
        error.details.setdefault("executor", node.name)
        if (
            isinstance(error, UnavailableError | DeadlineExceededError)
            and f"{node.name!r}" not in error.message
        ):
            error.message = f"executor {node.name!r}: {error.message}"
            error.args = (error.message,)
        return error

    @staticmethod
    def _response_parameters(raw: bytes, results: Mapping[str, Any]) -> bytes:
        if not results:
            return raw
        params = json.loads(raw) if raw else {}
        params.setdefault(RESULTS_KEY, {}).update(results)
        return json.dumps(params).encode()


def _remaining(deadline: float | None, timeout_send: float | None, node: _Node) -> float | None:
    left = None if deadline is None else deadline - time.monotonic()
    if left is not None and left <= 0:
        raise DeadlineExceededError(f"the request's deadline passed before executor {node.name!r}")
    if timeout_send is None:
        return left
    return timeout_send if left is None else min(left, timeout_send)


def _results_of(raw: bytes) -> dict[str, Any]:
    try:
        params = json.loads(raw)
    except ValueError:
        return {}
    results = params.get(RESULTS_KEY) if isinstance(params, dict) else None
    return dict(results) if isinstance(results, dict) else {}


def _merge(payloads: Sequence[_Payload]) -> _Payload:
    results: dict[str, Any] = {}
    for p in payloads:
        results.update(p.results)
    return _Payload(encode_raw(merge_rows([decode_raw(p.docs) for p in payloads])), results)


def _first_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    error: BaseException
    for error in group.exceptions:
        if isinstance(error, BaseExceptionGroup):
            return _first_error(error)
        if not isinstance(error, asyncio.CancelledError):
            return error
    return group.exceptions[0]
