"""Turning what users pass as ``uses`` into an :class:`ExecutorConfig`."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from plait.config import ExecutorConfig
from plait.errors import ConfigError
from plait.executor import Executor


def executor_config_for(
    uses: type[Executor] | str,
    *,
    uses_with: Mapping[str, Any] | None = None,
    uses_metas: Mapping[str, Any] | None = None,
    py_modules: Sequence[str] = (),
    name: str | None = None,
    workspace: str | None = None,
    allow_concurrent: bool = False,
    uses_dynamic_batching: Mapping[str, Mapping[str, Any]] | None = None,
) -> ExecutorConfig:
    """The :class:`ExecutorConfig` for ``uses`` given as a class, ``'module:Class'`` or YAML path.

    A class defined in the user's own script (``__main__``) is found again in the child process by
    importing that script as a module (its ``if __name__ == '__main__':`` block does not run).
    """
    modules = tuple(py_modules)
    if isinstance(uses, type):
        if not issubclass(uses, Executor):
            raise ConfigError(f"uses={uses!r} is not an Executor subclass")
        if "<locals>" in uses.__qualname__:
            raise ConfigError(
                f"{uses.__qualname__} is defined inside a function; executors run in their own process, "
                "so define the class at module level"
            )
        if uses.__module__ == "__main__":
            script = getattr(sys.modules["__main__"], "__file__", None)
            if script is None:
                raise ConfigError(
                    f"{uses.__qualname__} was defined in an interactive session; put it in a .py file "
                    "and pass uses='module:Class' (or py_modules=[...])"
                )
            uses_str = uses.__qualname__
            modules = (os.path.abspath(script), *modules)
        else:
            uses_str = f"{uses.__module__}:{uses.__qualname__}"
    elif isinstance(uses, str):
        uses_str = uses
    else:
        raise ConfigError(f"uses must be an Executor class or a string, got {type(uses).__name__}")
    fields: dict[str, Any] = {
        "uses": uses_str,
        "uses_with": dict(uses_with or {}),
        "uses_metas": dict(uses_metas or {}),
        "py_modules": modules,
        "workspace": workspace,
        "allow_concurrent": allow_concurrent,
        "uses_dynamic_batching": {k: dict(v) for k, v in (uses_dynamic_batching or {}).items()},
    }
    if name is not None:
        fields["name"] = name
    try:
        return ExecutorConfig(**fields)
    except ValueError as e:
        raise ConfigError(str(e)) from e
