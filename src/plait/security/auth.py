"""Authentication: who may call a gateway. Bearer tokens, a pluggable check, or both.

Every protocol asks the same :class:`Authenticator` with an :class:`AuthRequest` (the request's
headers or gRPC metadata, its path, its protocol); health and readiness are never asked (they
stay open for load balancers and Kubernetes probes). Tokens are compared in constant time and
never logged, echoed in errors or shown in a repr; the config names only where they are read
from (:func:`plait.config.secrets.read_tokens`).

A custom check is a function ``check(request: AuthRequest) -> bool`` (or ``async def``),
named in the config as ``'package.module:function'`` or ``'path/to/file.py:function'``, since
the gateway is its own process; :func:`auth_reference` turns a function into that name. A
request passes when a configured token matches, or else when the check returns True. A check
that raises refuses the request (and the error is logged, without the request's headers).
"""

from __future__ import annotations

import hmac
import importlib
import inspect
import logging
import os
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeAlias

from plait.config import ServerOptions
from plait.config.secrets import read_tokens
from plait.errors import ConfigError, UnauthenticatedError

log = logging.getLogger("plait.security")

OPEN_HTTP_PATHS = frozenset({"/health", "/ready"})
"""Paths every HTTP and WebSocket server answers without credentials."""
OPEN_GRPC_PREFIX = "/grpc.health.v1.Health/"
"""gRPC health checking answers without credentials."""


@dataclass(frozen=True, slots=True)
class AuthRequest:
    """What an auth check sees of a request."""

    protocol: str
    """'grpc', 'http' or 'websocket'."""
    path: str
    """The HTTP path, or the gRPC method (``/plait.v1.Plait/Process``)."""
    headers: Mapping[str, str] = field(repr=False)
    """HTTP headers or gRPC metadata, lower-case names (binary ``-bin`` metadata left out)."""
    peer: str = ""
    """``host:port`` of the caller where the protocol tells it (HTTP, WebSocket), else ''."""

    @property
    def authorization(self) -> str | None:
        return self.headers.get("authorization")

    def bearer_token(self) -> str | None:
        """The token of an ``authorization: Bearer <token>`` header, if any."""
        value = self.authorization
        if value is None:
            return None
        scheme, _, token = value.strip().partition(" ")
        if scheme.lower() != "bearer":
            return None
        return token.strip() or None


AuthCheck: TypeAlias = Callable[[AuthRequest], "bool | Awaitable[bool]"]


class Authenticator:
    """Decides whether a request may in: a matching bearer token, else the custom check."""

    def __init__(self, tokens: Sequence[str] = (), check: AuthCheck | None = None) -> None:
        if not tokens and check is None:
            raise ValueError("an Authenticator needs tokens or a check")
        self._tokens = tuple(t.encode() for t in tokens)
        self._check = check

    def __repr__(self) -> str:  # never the tokens themselves
        return f"Authenticator(tokens={len(self._tokens)}, check={self._check!r})"

    def token_matches(self, presented: str) -> bool:
        """Constant time in the token's content: every configured token is compared, always."""
        candidate = presented.encode()
        matched = False
        for token in self._tokens:
            matched |= hmac.compare_digest(candidate, token)
        return matched

    async def allows(self, request: AuthRequest) -> bool:
        if self._tokens:
            presented = request.bearer_token()
            if presented is not None and self.token_matches(presented):
                return True
        if self._check is None:
            return False
        try:
            verdict = self._check(request)
            if inspect.isawaitable(verdict):
                verdict = await verdict
        except Exception as e:
            log.error(
                "auth check %r raised %s; request to %s refused", self._check, type(e).__name__, request.path
            )
            return False
        return verdict is True

    def refusal(self, request: AuthRequest) -> UnauthenticatedError:
        """The error a refused request gets: what to send, never what was sent."""
        where = "metadata" if request.protocol == "grpc" else "header"
        if self._tokens and request.authorization is None:
            return UnauthenticatedError(
                f"this server requires credentials: send the {where} 'authorization: Bearer <token>'"
            )
        return UnauthenticatedError("the credentials sent were refused")


def authenticator_for(options: ServerOptions) -> Authenticator | None:
    """The gateway's authenticator, reading its tokens and importing its check; None when the
    options ask for no authentication. ConfigError when a token source or the check is unusable."""
    if not options.authenticates:
        return None
    tokens = read_tokens(options.auth_token_file, options.auth_token_env)
    check = load_check(options.auth) if options.auth else None
    return Authenticator(tokens, check)


def load_check(reference: str) -> AuthCheck:
    """Import the function ``reference`` names: ``'module:function'`` or ``'file.py:function'``.

    Only that module (or file) is imported, as for an Executor's ``uses``."""
    target, _, qualname = reference.rpartition(":")
    try:
        if target.endswith(".py"):
            from plait.executor.loader import import_py_modules

            module: Any = import_py_modules((target,))[0]
        else:
            module = importlib.import_module(target)
        obj: Any = module
        for part in qualname.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"auth={reference!r} cannot be loaded: {e}") from None
    if not callable(obj):
        raise ConfigError(f"auth={reference!r} is not callable")
    return obj  # type: ignore[no-any-return]


def auth_reference(check: AuthCheck | str) -> str:
    """The config's name for an auth check function: ``'module:function'``; a function defined
    in the running script becomes ``'/path/to/script.py:function'``."""
    if isinstance(check, str):
        return check
    module, qualname = getattr(check, "__module__", None), getattr(check, "__qualname__", None)
    if not module or not qualname or "<" in qualname:
        raise ConfigError(
            f"auth={check!r}: the gateway runs in its own process and imports the check by name; "
            "pass a function defined at module level (or 'module:function')"
        )
    if module == "__main__":
        script = getattr(sys.modules["__main__"], "__file__", None)
        if script is None:
            raise ConfigError(
                "auth: a check defined in an interactive session cannot be imported; use a file"
            )
        return f"{Path(os.path.abspath(script))}:{qualname}"
    return f"{module}:{qualname}"
