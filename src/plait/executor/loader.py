"""Turn an :class:`ExecutorConfig` into a live Executor: import what it names, construct it.

Only what the config names is imported: a ``module:Class`` path, or the files/modules listed in
``py_modules``.
"""

from __future__ import annotations

import importlib
import importlib.util
import pathlib
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType
from typing import Any

from plait.config import ExecutorConfig, RuntimeArgs, load_executor_yaml
from plait.errors import ConfigError
from plait.executor.base import Executor, Metas

_importing_user_code = 0


def importing_user_code() -> bool:
    """True while user modules are being imported (a Flow started then is missing a __main__ guard)."""
    return _importing_user_code > 0


@contextmanager
def _user_code() -> Iterator[None]:
    global _importing_user_code
    _importing_user_code += 1
    try:
        yield
    finally:
        _importing_user_code -= 1


def _import_file(path: pathlib.Path) -> ModuleType:
    name = f"plait_user_{path.stem}"
    existing = sys.modules.get(name)
    if existing is not None and getattr(existing, "__file__", None) == str(path):
        return existing
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ConfigError(f"py_modules: cannot import {str(path)!r}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    # The file's folder goes on sys.path so its sibling imports work, as when it runs as a script.
    folder = str(path.parent)
    if folder not in sys.path:
        sys.path.insert(0, folder)
    try:
        with _user_code():
            spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module


def import_py_modules(modules: tuple[str, ...]) -> list[ModuleType]:
    """Import each entry: a ``.py`` file, a package folder, or a dotted module name."""
    loaded = []
    for entry in modules:
        path = pathlib.Path(entry).expanduser()
        if entry.endswith(".py") or path.is_file():
            if not path.is_file():
                raise ConfigError(f"py_modules: file {entry!r} does not exist")
            loaded.append(_import_file(path.resolve()))
        elif path.is_dir() and (path / "__init__.py").is_file():
            parent = str(path.resolve().parent)
            if parent not in sys.path:
                sys.path.insert(0, parent)
            with _user_code():
                loaded.append(importlib.import_module(path.name))
        else:
            try:
                with _user_code():
                    loaded.append(importlib.import_module(entry))
            except ImportError as e:
                raise ConfigError(f"py_modules: cannot import {entry!r}: {e}") from e
    return loaded


def _lookup(obj: Any, qualname: str) -> Any:
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


def resolve_executor_class(uses: str, modules: list[ModuleType]) -> type[Executor]:
    """Find the class ``uses`` names: ``module:Qualname``, a name in ``py_modules``, or a dotted path."""
    candidate: Any = None
    if ":" in uses:
        module_name, qualname = uses.split(":", 1)
        try:
            with _user_code():
                module = importlib.import_module(module_name)
            candidate = _lookup(module, qualname)
        except (ImportError, AttributeError) as e:
            raise ConfigError(f"uses={uses!r}: {e}") from e
    else:
        for module in reversed(modules):
            try:
                candidate = _lookup(module, uses)
                break
            except AttributeError:
                continue
        if candidate is None and "." in uses:
            module_name, _, attr = uses.rpartition(".")
            try:
                with _user_code():
                    candidate = getattr(importlib.import_module(module_name), attr)
            except (ImportError, AttributeError):
                candidate = None
        if candidate is None:
            where = ", ".join(m.__name__ for m in modules) or "no py_modules"
            raise ConfigError(
                f"uses={uses!r}: no such Executor class (looked in {where}); "
                "write 'package.module:Class' or list the file that defines it in py_modules"
            )
    if not (isinstance(candidate, type) and issubclass(candidate, Executor)):
        raise ConfigError(f"uses={uses!r} names {candidate!r}, which is not an Executor subclass")
    return candidate


def expand_yaml_uses(cfg: ExecutorConfig) -> ExecutorConfig:
    """If ``uses`` is an Executor YAML file, fold it into the config (explicit settings win)."""
    if not cfg.uses.endswith((".yml", ".yaml")):
        return cfg
    overrides: dict[str, Any] = {
        "uses_with": cfg.uses_with,
        "uses_metas": cfg.uses_metas,
        "py_modules": cfg.py_modules,
        "name": cfg.name,
        "workspace": cfg.workspace,
        "allow_concurrent": cfg.allow_concurrent,
        "exit_on_exceptions": cfg.exit_on_exceptions,
        "uses_dynamic_batching": cfg.uses_dynamic_batching,
    }
    return load_executor_yaml(cfg.uses, **overrides)


def load_executor(cfg: ExecutorConfig, runtime_args: RuntimeArgs | None = None) -> Executor:
    """Import, construct and return the Executor ``cfg`` describes."""
    cfg = expand_yaml_uses(cfg)
    cls = resolve_executor_class(cfg.uses, import_py_modules(cfg.py_modules))
    metas = Metas(**{"name": cfg.name, **cfg.uses_metas})
    args = runtime_args or RuntimeArgs(name=cfg.name, workspace=cfg.workspace, py_modules=cfg.py_modules)
    executor = cls.__new__(cls)
    executor._attach_runtime(metas, args)
    try:
        executor.__init__(**cfg.uses_with)  # type: ignore[misc]
    except TypeError as e:
        raise ConfigError(f"{cls.__name__}(**uses_with) failed: {e}", executor=cfg.name) from e
    return executor
