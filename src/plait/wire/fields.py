"""Rules on a request's fields that executors and gateways both apply: its parameters JSON, the
``target_executor`` pattern, the catch-all endpoint's name. Kept apart from the executor side so a
gateway imports none of it."""

from __future__ import annotations

import json
import re
from typing import Any

from plait.errors import BadRequestError

DEFAULT_ENDPOINT = "/default"
"""Where ``@requests`` without ``on`` binds: the fallback for every endpoint not bound otherwise."""


def parse_json_object(raw: bytes, what: str) -> dict[str, Any]:
    """``raw`` as a JSON object (empty bytes: ``{}``); BadRequestError naming ``what`` otherwise."""
    if not raw:
        return {}
    try:
        value = json.loads(raw)
    except ValueError as e:
        raise BadRequestError(f"{what} is not valid JSON: {e}") from e
    if not isinstance(value, dict):
        raise BadRequestError(f"{what} must be a JSON object, got {type(value).__name__}")
    return value


def matches_target(pattern: str, name: str) -> bool:
    """The ``target_executor`` rule: an empty pattern matches all; otherwise ``re.match`` on the name."""
    if not pattern:
        return True
    try:
        return re.match(pattern, name) is not None
    except re.error as e:
        raise BadRequestError(f"target_executor {pattern!r} is not a valid regex: {e}") from e
