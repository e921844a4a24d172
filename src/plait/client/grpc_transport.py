"""gRPC transport: one ``grpc.aio`` channel for the client's life, balancing over replicas."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator, Sequence
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from plait.client.transport import Call, EndpointDescription, Reply, ServiceDescription, Transport
from plait.errors import PlaitError, UnavailableError
from plait.security.client import ClientSecurity
from plait.wire import SERVICE_NAME, error_from_rpc_error
from plait.wire import plait_pb2 as pb
from plait.wire.channels import open_channel
from plait.wire.lanes import StreamMux, call_on_lanes
from plait.wire.retry import with_retries
from plait.wire.settle import settled

_METHOD = f"/{SERVICE_NAME}/"


def _loads(raw: bytes) -> dict[str, Any]:
    return json.loads(raw) if raw else {}


class GrpcTransport(Transport):
    scheme = "grpc"

    def __init__(
        self,
        addresses: Sequence[str],
        *,
        max_message_size: int | None = None,
        security: ClientSecurity | None = None,
    ) -> None:
        super().__init__(addresses, max_message_size=max_message_size, security=security)
        self._metadata = self.security.metadata or None  # None: gRPC's fast path for no metadata
        self._channel: grpc.aio.Channel | None = None
        self._streams: set[Any] = set()  # Stream calls open now: closing settles them first

    async def open(self) -> None:
        self._check_open()
        if self._channel is not None:
            return
        channel = self._open_channel(self.addresses)
        self._channel = channel
        self._process = channel.unary_unary(
            _METHOD + "Process",
            request_serializer=pb.Request.SerializeToString,
            response_deserializer=pb.Response.FromString,
        )
        self._stream = channel.unary_stream(
            _METHOD + "Stream",
            request_serializer=pb.Request.SerializeToString,
            response_deserializer=pb.Response.FromString,
        )
        self._describe = channel.unary_unary(
            _METHOD + "Describe",
            request_serializer=pb.DescribeRequest.SerializeToString,
            response_deserializer=pb.DescribeResponse.FromString,
        )
        self._health = health_pb2_grpc.HealthStub(channel)
        # Unary calls go as messages of ProcessStream calls (plait.wire.lanes), one per address.
        self._mux = StreamMux.per_address(
            channel,
            self.addresses,
            lambda a: self._open_channel([a]),
            self._metadata,
            receive_limit=self.max_message_size,
        )

    def _open_channel(self, addresses: Sequence[str]) -> grpc.aio.Channel:
        return open_channel(
            addresses,
            self.max_message_size,
            credentials=self.security.grpc_credentials(),
            server_name=self.security.server_name,
        )

    async def close(self) -> None:
        self._closed = True
        if self._channel is not None:
            channel, self._channel = self._channel, None
            # Streams a caller left without closing (a `break` out of stream_doc) end here.
            await asyncio.gather(*(settled(rpc) for rpc in self._streams))
            self._streams.clear()
            await self._mux.close()
            await channel.close()

    def _error(self, err: grpc.RpcError) -> PlaitError:
        error = error_from_rpc_error(err)
        # Name the address only when *this* connection failed; an error relayed by a gateway
        # names the executor it came from instead.
        if isinstance(error, UnavailableError) and not {"address", "executor"} & error.details.keys():
            error.details["address"] = ",".join(self.addresses)
            error.message = f"{error.message} (server at {', '.join(self.addresses)})"
            error.args = (error.message,)
        return error

    @staticmethod
    def _request(call: Call) -> pb.Request:
        return pb.Request(
            request_id=call.request_id,
            endpoint=call.endpoint,
            parameters=json.dumps(call.parameters).encode() if call.parameters else b"",
            target_executor=call.target_executor,
            docs=call.docs,
        )

    async def call(self, call: Call, timeout: float | None = None) -> Reply:
        await self.open()
        request = self._request(call)
        if call.metadata:  # per-request metadata (a trace context): a call of its own
            return await self._unary(call, request, timeout)
        try:
            # As a message of a long-lived stream (see plait.wire.lanes); one that never reached a
            # server (refused, none ready, draining) is sent again, on a new stream.
            response = await with_retries(
                lambda left: call_on_lanes(self._mux, request, left), timeout=timeout
            )
        except grpc.RpcError as e:
            raise self._error(e) from None
        return Reply(response.request_id or call.request_id, response.docs, _loads(response.parameters))

    async def _unary(self, call: Call, request: pb.Request, timeout: float | None) -> Reply:
        try:
            # A call that never reached a replica (refused, none ready) goes to the next one.
            metadata = self._call_metadata(call)
            response = await with_retries(
                lambda left: self._process(request, timeout=left, metadata=metadata), timeout=timeout
            )
        except grpc.RpcError as e:
            raise self._error(e) from None
        return Reply(response.request_id, response.docs, _loads(response.parameters))

    def _call_metadata(self, call: Call) -> tuple[tuple[str, str], ...] | None:
        """The client's own metadata (credentials) plus the call's (trace context)."""
        if not call.metadata:
            return self._metadata
        return (*(self._metadata or ()), *call.metadata)

    async def stream(self, call: Call, timeout: float | None = None) -> AsyncGenerator[Reply, None]:
        await self.open()
        rpc = self._stream(self._request(call), timeout=timeout, metadata=self._call_metadata(call))
        self._streams.add(rpc)
        try:
            async for response in rpc:
                yield Reply(response.request_id, response.docs, _loads(response.parameters))
        except grpc.RpcError as e:
            raise self._error(e) from None
        finally:  # also when the caller stops reading early
            self._streams.discard(rpc)
            await settled(rpc)

    async def health(self, timeout: float | None = None) -> str:
        await self.open()
        try:
            reply = await self._health.Check(health_pb2.HealthCheckRequest(service=""), timeout=timeout)
        except grpc.RpcError:
            return "UNREACHABLE"
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))

    async def describe(self, timeout: float | None = None) -> ServiceDescription:
        await self.open()
        try:
            reply = await self._describe(pb.DescribeRequest(), timeout=timeout, metadata=self._metadata)
        except grpc.RpcError as e:
            raise self._error(e) from None
        endpoints = {
            e.name: EndpointDescription(
                name=e.name,
                input_schema=_loads(e.input_schema.encode()),
                output_schema=_loads(e.output_schema.encode()),
                streaming=e.streaming,
                doc=e.doc,
                parameters_schema=_loads(e.parameters_schema.encode()) if e.parameters_schema else None,
            )
            for e in reply.endpoints
        }
        return ServiceDescription(reply.name, reply.kind, reply.version, endpoints, reply.executor_class)
