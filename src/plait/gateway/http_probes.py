"""``GET /health``, ``/ready``, ``/status`` and ``/describe``: shared by the HTTP and WebSocket servers.

A WebSocket gateway answers them too, so a client (or a Kubernetes probe) can check and describe
it with plain HTTP on the same port.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec
from fastapi import FastAPI
from starlette.responses import Response

from plait.errors import PlaitError
from plait.gateway.http_messages import error_json
from plait.serve import Processor
from plait.wire import plait_pb2 as pb

JSON = "application/json"


def _schema(raw: str) -> msgspec.Raw | None:
    # Schemas arrive as JSON text: spliced in as they are, never parsed here.
    return msgspec.Raw(raw.encode()) if raw else None


def describe_json(description: pb.DescribeResponse) -> bytes:
    """The full description: who answers, and each endpoint's schemas."""
    return msgspec.json.encode(
        {
            "name": description.name,
            "kind": description.kind,
            "version": description.version,
            "executor_class": description.executor_class,
            "endpoints": {
                e.name: {
                    "input_schema": _schema(e.input_schema) or {},
                    "output_schema": _schema(e.output_schema) or {},
                    "parameters_schema": _schema(e.parameters_schema),
                    "streaming": e.streaming,
                    "doc": e.doc,
                }
                for e in description.endpoints
            },
        }
    )


def _json(body: bytes, status: int = 200) -> Response:
    return Response(content=body, status_code=status, media_type=JSON)


def _example(value: Any) -> dict[str, Any]:
    return {"content": {JSON: {"example": value}}}


def add_probe_routes(app: FastAPI, processor: Processor, serving: Callable[[], bool]) -> None:
    """Register the probes on ``app``. ``serving()`` is False while the server drains."""

    @app.get("/health", tags=["probes"], response_class=Response, responses={200: _example({"status": "ok"})})
    async def health() -> Response:
        """Liveness: the process answers. Always open, even while draining."""
        return _json(b'{"status":"ok"}')

    @app.get(
        "/ready",
        tags=["probes"],
        response_class=Response,
        responses={200: _example({"ready": True}), 503: _example({"ready": False})},
    )
    async def ready() -> Response:
        """Readiness: 200 when requests can be served, 503 when not (starting, draining)."""
        if serving() and processor.ready():
            return _json(b'{"ready":true}')
        return _json(b'{"ready":false}', 503)

    @app.get("/status", tags=["probes"], response_class=Response)
    async def status() -> Response:
        """Name, kind, version and endpoint names."""
        try:
            d = processor.describe()
        except PlaitError as e:  # e.g. a gateway that has not discovered its executors yet
            return _json(error_json(e), e.http_status)
        return _json(
            msgspec.json.encode(
                {
                    "name": d.name,
                    "kind": d.kind,
                    "version": d.version,
                    "endpoints": [e.name for e in d.endpoints],
                }
            )
        )

    @app.get("/describe", tags=["probes"], response_class=Response)
    async def describe() -> Response:
        """Every endpoint with its input, output and parameters JSON Schemas."""
        try:
            return _json(describe_json(processor.describe()))
        except PlaitError as e:
            return _json(error_json(e), e.http_status)
