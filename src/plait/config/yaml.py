"""YAML in and out, following Jina's format (``jtype``, ``with``, ``metas``, ``py_modules``).

This is the settings loader: the one place that reads environment variables, through
``${{ ENV.NAME }}`` (or ``${{ ENV.NAME:-default }}``) substitution in YAML text.
"""

from __future__ import annotations

import os
import pathlib
import re
from collections.abc import Mapping
from typing import Any

from plait.config.models import ExecutorConfig
from plait.errors import ConfigError

_ENV_RE = re.compile(r"\$\{\{\s*ENV\.([A-Za-z_][A-Za-z0-9_]*)\s*(?::-(.*?))?\s*\}\}")


def expand_env(text: str, env: Mapping[str, str] | None = None, *, source: str = "<yaml>") -> str:
    """Replace ``${{ ENV.NAME }}`` with the variable's value; a missing variable is an error."""
    environ = os.environ if env is None else env

    def repl(m: re.Match[str]) -> str:
        name, default = m.group(1), m.group(2)
        if name in environ:
            return environ[name]
        if default is not None:
            return default
        raise ConfigError(
            f"{source}: environment variable {name!r} is not set (used as ${{{{ ENV.{name} }}}})"
        )

    return _ENV_RE.sub(repl, text)


def load_yaml(source: str | os.PathLike[str], env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Load a YAML file (or YAML text) safely, with environment substitution. Returns a mapping."""
    path = pathlib.Path(source)
    is_file = isinstance(source, os.PathLike) or (
        "\n" not in str(source) and str(source).endswith((".yml", ".yaml"))
    )
    if is_file:
        if not path.is_file():
            raise ConfigError(f"YAML file {str(source)!r} does not exist")
        text, name = path.read_text(encoding="utf-8"), str(path)
    else:
        text, name = str(source), "<yaml text>"
    import yaml  # here, not at import: a process started from a JSON config never needs it

    try:
        data = yaml.safe_load(expand_env(text, env, source=name))
    except yaml.YAMLError as e:
        raise ConfigError(f"{name}: invalid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{name}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def _resolve_modules(modules: Any, base: pathlib.Path, where: str) -> tuple[str, ...]:
    if modules is None:
        return ()
    if isinstance(modules, str):
        modules = [modules]
    if not isinstance(modules, list) or not all(isinstance(m, str) for m in modules):
        raise ConfigError(f"{where}: py_modules must be a string or a list of strings")
    out = []
    for m in modules:
        candidate = base / m
        # A file path (relative to the YAML file) or a dotted module name.
        out.append(str(candidate.resolve()) if m.endswith(".py") or candidate.exists() else m)
    return tuple(out)


def load_executor_yaml(source: str | os.PathLike[str], **overrides: Any) -> ExecutorConfig:
    """Build an :class:`ExecutorConfig` from Executor YAML; keyword arguments override the file."""
    data = load_yaml(source)
    where = str(source)
    base = pathlib.Path(source).resolve().parent if pathlib.Path(source).is_file() else pathlib.Path.cwd()
    known = {"jtype", "with", "metas", "py_modules", "requests", "dynamic_batching", "uses_dynamic_batching"}
    unknown = set(data) - known
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {sorted(unknown)}; an Executor YAML has {sorted(known)}")
    if "jtype" not in data or not isinstance(data["jtype"], str):
        raise ConfigError(f"{where}: 'jtype' (the Executor class name) is required")
    metas = dict(data.get("metas") or {})
    modules = _resolve_modules(data.get("py_modules", metas.pop("py_modules", None)), base, where)
    fields: dict[str, Any] = {
        "uses": data["jtype"],
        "uses_with": dict(data.get("with") or {}),
        "uses_metas": metas,
        "py_modules": modules,
    }
    if "name" in metas:
        fields["name"] = metas["name"]
    batching = data.get("dynamic_batching", data.get("uses_dynamic_batching")) or {}
    if not isinstance(batching, dict):
        raise ConfigError(
            f"{where}: dynamic_batching maps endpoints to options, e.g. "
            "{'/embed': {'preferred_batch_size': 32, 'timeout': 2}}"
        )
    # Option by option, explicit settings (uses_dynamic_batching=...) win over the file's.
    merged_batching = dict(batching)
    for key, options in overrides.pop("uses_dynamic_batching", {}).items():
        earlier = merged_batching.get(key)
        merged_batching[key] = {**earlier, **options} if isinstance(earlier, dict) else options
    merged_with = {**fields["uses_with"], **overrides.pop("uses_with", {})}
    merged_metas = {**fields["uses_metas"], **overrides.pop("uses_metas", {})}
    merged_modules = tuple(fields["py_modules"]) + tuple(overrides.pop("py_modules", ()))
    fields.update(
        overrides,
        uses_with=merged_with,
        uses_metas=merged_metas,
        py_modules=merged_modules,
        uses_dynamic_batching=merged_batching,
    )
    try:
        return ExecutorConfig(**fields)
    except ValueError as e:
        raise ConfigError(f"{where}: {e}") from e


def dump_yaml(data: Mapping[str, Any]) -> str:
    """YAML text for a mapping, keys in the order given."""
    import yaml

    return yaml.safe_dump(dict(data), sort_keys=False, allow_unicode=True)
