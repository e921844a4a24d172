"""``GET /health``, ``/ready``, ``/status`` and ``/describe``: shared by the HTTP and WebSocket servers.

A WebSocket gateway answers them too, so a client (or a Kubernetes probe) can check and describe
it with plain HTTP on the same port. The HTTP server registers them on its FastAPI app (they appear
in its OpenAPI document); the WebSocket server serves them with :class:`ProbeApp`, a few lines of
ASGI, so it never imports FastAPI (about 0.2 s of CPU at start-up).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import msgspec
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from plait.errors import BadRequestError, EndpointNotFoundError, PlaitError
from plait.gateway.http_messages import error_json
from plait.serve import Processor
from plait.wire import plait_pb2 as pb

if TYPE_CHECKING:
    from fastapi import FastAPI

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


ProbeHandler = Callable[[], Awaitable[Response]]


def probe_handlers(processor: Processor, serving: Callable[[], bool]) -> dict[str, ProbeHandler]:
    """Path → handler of each probe. ``serving()`` is False while the server drains."""

    async def health() -> Response:
        """Liveness: the process answers. Always open, even while draining."""
        return _json(b'{"status":"ok"}')

    async def ready() -> Response:
        """Readiness: 200 when requests can be served, 503 when not (starting, draining)."""
        if serving() and processor.ready():
            return _json(b'{"ready":true}')
        return _json(b'{"ready":false}', 503)

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

    async def describe() -> Response:
        """Every endpoint with its input, output and parameters JSON Schemas."""
        try:
            return _json(describe_json(processor.describe()))
        except PlaitError as e:
            return _json(error_json(e), e.http_status)

    return {"/health": health, "/ready": ready, "/status": status, "/describe": describe}


_PROBE_RESPONSES: dict[str, dict[int | str, dict[str, Any]]] = {
    "/health": {200: _example({"status": "ok"})},
    "/ready": {200: _example({"ready": True}), 503: _example({"ready": False})},
}


def add_probe_routes(app: FastAPI, processor: Processor, serving: Callable[[], bool]) -> None:
    """Register the probes on a FastAPI ``app`` (they appear in its OpenAPI document)."""
    for path, handler in probe_handlers(processor, serving).items():
        app.get(path, tags=["probes"], response_class=Response, responses=_PROBE_RESPONSES.get(path))(handler)


class ProbeApp:
    """The probes as a bare ASGI app (HTTP scopes only; uvicorn runs with ``lifespan="off"``).

    Other paths get 404 and other methods 405, each with plait's JSON error body.
    """

    def __init__(self, processor: Processor, serving: Callable[[], bool], what: str) -> None:
        self.handlers = probe_handlers(processor, serving)
        self.what = what
        """Names the server in the 404 message, e.g. 'a WebSocket gateway: connect to ws://host:port/'."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        path, method = scope["path"], scope["method"]
        handler = self.handlers.get(path)
        if handler is None:
            error: PlaitError = EndpointNotFoundError(
                f"no route {method} {path} on {self.what}; its HTTP paths are {', '.join(self.handlers)}"
            )
            response = _json(error_json(error), error.http_status)
        elif method not in ("GET", "HEAD"):
            error = BadRequestError(f"method {method} is not allowed on {path}")
            response = _json(error_json(error), 405)
        else:
            response = await handler()
        await response(scope, receive, send)
