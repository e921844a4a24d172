"""``HttpServer``: a processor over HTTP/JSON, with SSE for streaming endpoints and OpenAPI docs.

Routes (see ``docs/protocols.md`` for the wire format):

- ``POST /{endpoint}``: call an endpoint (any path is forwarded; the processor answers 404 for
  one it does not serve). Streaming endpoints answer ``text/event-stream``.
- ``GET /{endpoint}`` for streaming endpoints: the query string is the input document.
- ``GET /health``, ``/ready``, ``/status``, ``/describe``; ``/openapi.json`` and ``/docs``.

Endpoint calls bypass the framework (:mod:`plait.gateway.http_endpoints`); FastAPI serves the
rest and provides the Swagger UI.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from starlette.exceptions import HTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from plait._version import __version__
from plait.config import ServerOptions
from plait.errors import BadRequestError, EndpointNotFoundError, PlaitError
from plait.gateway.http_endpoints import EndpointCalls
from plait.gateway.http_messages import error_json
from plait.gateway.http_openapi import build_openapi
from plait.gateway.http_probes import add_probe_routes
from plait.gateway.http_uvicorn import UvicornRunner
from plait.gateway.protocols import ProtocolServer
from plait.serve import Processor


class _Front:
    """Sends endpoint calls straight to :class:`EndpointCalls`, everything else to FastAPI."""

    def __init__(self, calls: EndpointCalls, api: ASGIApp) -> None:
        self.calls = calls
        self.api = api

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            method = scope["method"]
            if method == "POST":
                await self.calls.post(scope, receive, send)
                return
            if method == "GET" and scope["path"] in self.calls.streaming:
                await self.calls.get(scope, receive, send)
                return
        await self.api(scope, receive, send)


async def _not_found(request: Request, exc: Exception) -> Response:
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    error: PlaitError
    if status == 404:
        error = EndpointNotFoundError(
            f"no route GET {request.url.path}: endpoints are called with POST "
            "(streaming ones also with GET); see /docs"
        )
    elif status == 405:
        error = BadRequestError(f"method {request.method} is not allowed on {request.url.path}")
    else:
        error = PlaitError(str(getattr(exc, "detail", "error")))
    return Response(error_json(error), status_code=status, media_type="application/json")


def build_http_app(processor: Processor, options: ServerOptions, serving: Callable[[], bool]) -> ASGIApp:
    """The ASGI app of an HTTP server for ``processor``; ``serving()`` is False while draining."""
    description = processor.describe()
    calls = EndpointCalls(processor, options, {e.name for e in description.endpoints if e.streaming})
    api = FastAPI(title=options.title, description=options.description, version=__version__, redoc_url=None)
    add_probe_routes(api, processor, serving)
    api.add_exception_handler(HTTPException, _not_found)
    cached: dict[str, Any] = {}

    def openapi() -> dict[str, Any]:
        # Built on first request: the document can be large and most servers never serve it.
        if not cached:
            base = get_openapi(
                title=api.title, version=api.version, description=api.description, routes=api.routes
            )
            cached.update(build_openapi(base, processor.describe()))
        return cached

    api.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented override point
    app: ASGIApp = _Front(calls, api)
    if options.cors:
        app = CORSMiddleware(
            app, allow_origins=["*"], allow_methods=["*"], allow_headers=["*"], expose_headers=["*"]
        )
    return app


class HttpServer(ProtocolServer):
    protocol = "http"

    def __init__(self, processor: Processor, host: str, port: int, options: ServerOptions) -> None:
        super().__init__(processor, host, port, options)
        self._runner = UvicornRunner("HTTP server")
        self._serving = True

    async def start(self) -> None:
        app = build_http_app(self.processor, self.options, lambda: self._serving)
        await self._runner.start(app, self.host, self.port, options=self.options)
        self.port = self._runner.port  # the port the OS chose when asked for port 0

    async def set_serving(self, serving: bool) -> None:
        self._serving = serving

    async def stop(self, grace: float) -> None:
        self._serving = False
        await self._runner.stop(grace)
