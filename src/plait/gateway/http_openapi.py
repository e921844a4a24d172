"""The OpenAPI document of an HTTP gateway, with each endpoint's real document schemas.

Executors describe their documents as JSON Schema (pydantic's, with nested models under
``$defs``). OpenAPI wants shared schemas under ``components/schemas``, so the ``$defs`` are
hoisted there and every ``$ref`` rewritten. Two executors may both call a model ``Text`` with
different fields: the later one's schemas then get fresh names (``Text_2``) instead of
overwriting the first.
"""

from __future__ import annotations

import copy
import json
import re
from typing import Any

from plait.wire import plait_pb2 as pb

_DEFS = "#/$defs/"
_COMPONENTS = "#/components/schemas/"
_SCALARS = {"string", "integer", "number", "boolean"}

_ERROR_SCHEMA = "PlaitErrorBody"
_ERROR_STATUSES = {
    "400": "malformed JSON, or a body of the wrong shape",
    "404": "no such endpoint",
    "413": "body over the server's max_request_bytes",
    "422": "documents or parameters that do not match the endpoint's schema",
    "500": "the executor raised (the error names it, with its traceback)",
    "503": "the service is unavailable",
    "504": "no response within X-Plait-Timeout",
}
_TIMEOUT_HEADER = {
    "name": "X-Plait-Timeout",
    "in": "header",
    "required": False,
    "description": "deadline of this request in seconds; past it the server answers 504",
    "schema": {"type": "number", "exclusiveMinimum": 0},
}


class _Components:
    """``components/schemas``, filled without name clashes."""

    def __init__(self, schemas: dict[str, Any]) -> None:
        self.schemas = schemas

    def _fresh(self, name: str, taken: set[str]) -> str:
        n = 2
        while f"{name}_{n}" in self.schemas or f"{name}_{n}" in taken:
            n += 1
        return f"{name}_{n}"

    def add(self, schema: dict[str, Any], fallback: str) -> dict[str, Any]:
        """Hoist ``schema`` (and its ``$defs``); returns the schema to use in its place (a ``$ref``)."""
        schema = copy.deepcopy(schema)
        defs: dict[str, Any] = schema.pop("$defs", {})
        top = _safe_name(str(schema.get("title") or fallback))
        wrapper = set(schema) <= {"$ref", "title", "description"} and "$ref" in schema
        entries = dict(defs) if wrapper else {**defs, top: schema}
        names = {name: name for name in entries}
        if any(n in self.schemas and self.schemas[n] != _rewrite(e, names) for n, e in entries.items()):
            taken: set[str] = set()
            for name in entries:
                names[name] = self._fresh(name, taken)
                taken.add(names[name])
        for name, entry in entries.items():
            self.schemas[names[name]] = _rewrite(entry, names)
        if wrapper:  # a recursive model: its schema is only a reference into $defs
            ref: dict[str, Any] = _rewrite(schema, names)
            return ref
        return {"$ref": _COMPONENTS + names[top]}


def _rewrite(node: Any, names: dict[str, str]) -> Any:
    if isinstance(node, dict):
        out = {k: _rewrite(v, names) for k, v in node.items()}
        ref = out.get("$ref")
        if isinstance(ref, str) and ref.startswith(_DEFS):
            name = ref[len(_DEFS) :]
            out["$ref"] = _COMPONENTS + names.get(name, name)
        return out
    if isinstance(node, list):
        return [_rewrite(v, names) for v in node]
    return node


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", name) or "Document"


def _slug(endpoint: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", endpoint).strip("_") or "root"


def _loads(raw: str) -> dict[str, Any] | None:
    value = json.loads(raw) if raw else None
    return value if isinstance(value, dict) else None


def _request_schema(doc_ref: dict[str, Any], params: dict[str, Any] | None) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {
            "data": {
                "anyOf": [{"type": "array", "items": doc_ref}, doc_ref, {"type": "null"}],
                "description": "the input documents: a list, a single document, or null for none",
            },
            "parameters": params
            or {"type": "object", "additionalProperties": True, "description": "passed to the endpoint"},
            "target_executor": {
                "type": "string",
                "default": "",
                "description": "regex on executor names: only those run (empty: all)",
            },
            "header": {
                "type": "object",
                "description": "Jina-style header (request_id, target_executor)",
                "properties": {"request_id": {"type": "string"}, "target_executor": {"type": "string"}},
            },
        },
    }


def _response_schema(doc_ref: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["request_id", "data", "parameters"],
        "properties": {
            "request_id": {"type": "string"},
            "data": {"type": "array", "items": doc_ref},
            "parameters": {
                "type": "object",
                "additionalProperties": True,
                "description": "the request's parameters; executors' dict results under __results__",
            },
        },
    }


def _errors() -> dict[str, Any]:
    ref = {"$ref": _COMPONENTS + _ERROR_SCHEMA}
    return {
        status: {"description": text, "content": {"application/json": {"schema": ref}}}
        for status, text in _ERROR_STATUSES.items()
    }


def _query_parameters(schema: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The input document's scalar fields, as ``GET`` query parameters."""
    out = []
    for name, prop in ((schema or {}).get("properties") or {}).items():
        kinds = [prop, *list(prop.get("anyOf", []))]
        scalar = next((k["type"] for k in kinds if k.get("type") in _SCALARS), None)
        if scalar is not None:
            out.append({"name": name, "in": "query", "required": False, "schema": {"type": scalar}})
    return out


def _operations(info: pb.EndpointInfo, components: _Components) -> dict[str, Any]:
    slug = _slug(info.name)
    input_schema = _loads(info.input_schema)
    output_schema = _loads(info.output_schema)
    doc_in = components.add(input_schema, f"{slug}_input") if input_schema else {"type": "object"}
    doc_out = components.add(output_schema, f"{slug}_output") if output_schema else {"type": "object"}
    params_schema = _loads(info.parameters_schema)
    params = components.add(params_schema, f"{slug}_parameters") if params_schema else None
    summary = (info.doc.strip().splitlines() or [f"Call {info.name}"])[0]
    common = {"tags": ["endpoints"], "summary": summary, "description": info.doc.strip()}
    if info.streaming:
        ok = {
            "description": "server-sent events: `update` (data: one produced document) per document, "
            "then `end`; a failure mid-stream sends `error` (data: the error JSON)",
            "content": {"text/event-stream": {"schema": {"type": "string"}, "x-event-data": doc_out}},
        }
    else:
        ok = {
            "description": "the output documents",
            "content": {"application/json": {"schema": _response_schema(doc_out)}},
        }
    operations: dict[str, Any] = {
        "post": {
            **common,
            "operationId": f"post_{slug}",
            "parameters": [_TIMEOUT_HEADER],
            "requestBody": {
                "required": False,
                "content": {"application/json": {"schema": _request_schema(doc_in, params)}},
            },
            "responses": {"200": ok, **_errors()},
        }
    }
    if info.streaming:
        operations["get"] = {
            **common,
            "operationId": f"get_{slug}",
            "parameters": [*_query_parameters(input_schema), _TIMEOUT_HEADER],
            "responses": {"200": ok, **_errors()},
        }
    return operations


def build_openapi(base: dict[str, Any], description: pb.DescribeResponse) -> dict[str, Any]:
    """``base`` (FastAPI's document for the probe routes) plus one path per endpoint."""
    spec = copy.deepcopy(base)
    components = _Components(spec.setdefault("components", {}).setdefault("schemas", {}))
    components.schemas[_ERROR_SCHEMA] = {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["type", "message"],
                "additionalProperties": True,
                "properties": {
                    "type": {"type": "string", "description": "the plait error class, e.g. SchemaError"},
                    "message": {"type": "string"},
                },
            }
        },
    }
    paths = spec.setdefault("paths", {})
    for info in description.endpoints:
        path = info.name if info.name.startswith("/") else f"/{info.name}"
        paths.setdefault(path, {}).update(_operations(info, components))
    return spec
