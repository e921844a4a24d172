"""``Executor``: the one base class users subclass."""

from __future__ import annotations

import logging
import os
import pathlib
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, ClassVar

from pydantic import ConfigDict, Field

from plait.config import FrozenModel, RuntimeArgs
from plait.errors import ConfigError
from plait.executor.decorators import ENDPOINTS_ATTR
from plait.executor.endpoints import EndpointSpec, build_endpoint_table

DEFAULT_WORKSPACE = "~/.cache/plait/workspace"


class Metas(FrozenModel):
    """Descriptive facts about an Executor (YAML ``metas:``)."""

    model_config = ConfigDict(frozen=True, extra="allow")
    name: str = "executor"
    description: str = ""
    keywords: tuple[str, ...] = Field(default=())


class Executor:
    """Subclass this, bind methods with ``@requests``, and serve it with a Deployment or a Flow.

    ``__init__`` receives the ``uses_with`` arguments; call ``super().__init__(**kwargs)``.
    Inside an endpoint, ``self.metas``, ``self.runtime_args`` (name, replicas, shards, replica_id,
    shard_id), ``self.workspace`` and ``self.logger`` are available.
    """

    endpoints: ClassVar[Mapping[str, EndpointSpec]] = MappingProxyType({})
    """Endpoint name → how to call it. Built once, when the class is created."""

    metas: Metas
    runtime_args: RuntimeArgs

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.endpoints = MappingProxyType(build_endpoint_table(cls, ENDPOINTS_ATTR))

    def __new__(cls, *args: Any, **kwargs: Any) -> Executor:
        self = super().__new__(cls)
        # Set before the user's __init__ runs, so they are there even if it forgets super().__init__.
        self.metas = Metas(name=cls.__name__)
        self.runtime_args = RuntimeArgs(name=cls.__name__)
        return self

    def __init__(
        self,
        *,
        metas: Mapping[str, Any] | Metas | None = None,
        runtime_args: RuntimeArgs | None = None,
        **kwargs: Any,
    ) -> None:
        if kwargs:
            raise ConfigError(
                f"{type(self).__name__} got unexpected argument(s) {sorted(kwargs)}; check `uses_with`",
                executor=type(self).__name__,
            )
        if metas is not None:
            self.metas = (
                metas if isinstance(metas, Metas) else Metas(**{"name": type(self).__name__, **metas})
            )
        if runtime_args is not None:
            self.runtime_args = runtime_args

    def _attach_runtime(self, metas: Metas, runtime_args: RuntimeArgs) -> None:
        """Called by the loader before ``__init__`` so the user's constructor can read them."""
        self.metas = metas
        self.runtime_args = runtime_args

    @property
    def logger(self) -> logging.Logger:
        return logging.getLogger(f"plait.executor.{self.runtime_args.name}")

    @property
    def workspace(self) -> str:
        """``<workspace>/<name>/<shard_id>``, created on first use."""
        base = self.runtime_args.workspace or DEFAULT_WORKSPACE
        path = (
            pathlib.Path(os.path.expanduser(base)) / self.runtime_args.name / str(self.runtime_args.shard_id)
        )
        path.mkdir(parents=True, exist_ok=True)
        return str(path)

    def close(self) -> None:
        """Release resources. Called once when the serving process shuts down."""
