"""Reading secrets named by the config: the settings loader for bearer tokens.

A config names where tokens live (``auth_token_file``, ``auth_token_env``), never a token itself,
so a config can be logged, saved to YAML or exported without leaking one. This module (with
:mod:`plait.config.yaml`) is where plait reads the environment. Nothing here puts a token in an
error message: errors name the file or the variable.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path

from plait.errors import ConfigError

_SEPARATORS = re.compile(r"[\s,]+")


def _split(text: str) -> list[str]:
    tokens: list[str] = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            tokens.extend(t for t in _SEPARATORS.split(line) if t)
    return tokens


def read_tokens(
    token_file: str | None, token_env: str | None, env: Mapping[str, str] | None = None
) -> tuple[str, ...]:
    """The accepted bearer tokens: the file's (one per line, ``#`` comments) and the variable's
    (one per line or comma-separated). Several tokens let a new one be rolled out before the old
    one is withdrawn. ConfigError when a source is named but missing or holds none."""
    tokens: list[str] = []
    if token_file is not None:
        path = Path(token_file).expanduser()
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as e:
            raise ConfigError(f"auth_token_file {token_file!r} cannot be read: {e.strerror}") from None
        found = _split(text)
        if not found:
            raise ConfigError(f"auth_token_file {token_file!r} holds no token")
        tokens += found
    if token_env is not None:
        environ = os.environ if env is None else env
        if token_env not in environ:
            raise ConfigError(f"auth_token_env: the environment variable {token_env!r} is not set")
        found = _split(environ[token_env])
        if not found:
            raise ConfigError(f"auth_token_env: the environment variable {token_env!r} holds no token")
        tokens += found
    return tuple(dict.fromkeys(tokens))
