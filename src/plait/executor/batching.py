"""``@dynamic_batching``: merge concurrent requests to one endpoint into one call of its method.

The decorator only records a :class:`BatchingConfig` on the function; the endpoint table picks it up
at class creation and the server's batcher (``plait.serve.batcher``) does the queueing. Settings
from outside the class (``uses_dynamic_batching=`` / YAML ``dynamic_batching:``) are folded in by
:func:`effective_batching` when a server starts.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar, overload

from pydantic import Field, ValidationError

from plait.config import FrozenModel
from plait.errors import ConfigError

if TYPE_CHECKING:
    from plait.executor.endpoints import EndpointSpec

BATCHING_ATTR = "__plait_batching__"

DEFAULT_TIMEOUT_MS = 10.0
"""How long a batch waits for more requests by default. Jina's 10 s default made a lone request
wait ten seconds; a window of a few milliseconds is what an accelerator-bound model needs."""

F = TypeVar("F", bound=Callable[..., Any])


class BatchingConfig(FrozenModel):
    """How one endpoint batches requests.

    A batch runs when it holds ``preferred_batch_size`` documents or ``timeout`` milliseconds after
    its first request arrived, whichever comes first. It never holds more than
    ``preferred_batch_size`` documents, except when one request alone is larger: that request is
    then a batch by itself. ``preferred_batch_size=None`` means "no size limit": a batch is
    whatever arrived within ``timeout``.
    """

    preferred_batch_size: int | None = Field(default=None, ge=1, description="documents per batch")
    timeout: float = Field(
        default=DEFAULT_TIMEOUT_MS, gt=0, description="milliseconds a batch waits for more requests"
    )

    @property
    def timeout_s(self) -> float:
        return self.timeout / 1000.0


def _config(preferred_batch_size: int | None, timeout: float, where: str) -> BatchingConfig:
    try:
        return BatchingConfig(preferred_batch_size=preferred_batch_size, timeout=timeout)
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors())
        raise ConfigError(f"{where}: {problems}") from None


@overload
def dynamic_batching(func: F, /) -> F: ...
@overload
def dynamic_batching(
    *, preferred_batch_size: int | None = None, timeout: float = DEFAULT_TIMEOUT_MS
) -> Callable[[F], F]: ...


def dynamic_batching(
    func: F | None = None,
    /,
    *,
    preferred_batch_size: int | None = None,
    timeout: float = DEFAULT_TIMEOUT_MS,
) -> F | Callable[[F], F]:
    """Queue concurrent requests to this endpoint and serve them with one call of the method.

    ``timeout`` is in **milliseconds**. Use it above or below ``@requests``. The method takes
    ``docs: DocList[T]`` and must return one document per input document, in order (or ``None``
    to keep the input documents, changed in place); each request gets its own slice back. Only
    requests with equal ``parameters`` share a batch.
    """
    config = _config(preferred_batch_size, timeout, "@dynamic_batching")

    def mark(fn: F) -> F:
        setattr(fn, BATCHING_ATTR, config)
        return fn

    if func is not None:
        return mark(func)
    return mark


def effective_batching(
    table: Mapping[str, EndpointSpec],
    overrides: Mapping[str, Mapping[str, Any]] | None,
    *,
    executor: str = "executor",
) -> dict[str, BatchingConfig]:
    """Endpoint → batching config: the decorators' settings with ``overrides`` applied.

    ``overrides`` keys are endpoint names (``'/embed'``) or method names (``'embed'``: every
    endpoint that method serves); endpoint keys win over method-name keys. Each value sets some
    fields (``{'timeout': 2}``) on top of the decorator's, or turns batching on for an endpoint
    that has no decorator.
    """
    out = {name: spec.batching for name, spec in table.items() if spec.batching is not None}
    if not overrides:
        return out
    by_method: dict[str, list[str]] = {}
    for name, spec in table.items():
        by_method.setdefault(spec.method_name, []).append(name)
    method_keys = [k for k in overrides if not k.startswith("/")]
    endpoint_keys = [k for k in overrides if k.startswith("/")]
    for key in (*method_keys, *endpoint_keys):  # endpoint keys last, so they win
        names = [key] if key.startswith("/") else by_method.get(key, [])
        if not names or names[0] not in table:
            known = ", ".join(sorted(table)) or "none"
            raise ConfigError(
                f"uses_dynamic_batching: executor {executor!r} has no endpoint or method {key!r} "
                f"(endpoints: {known})",
                executor=executor,
            )
        values = overrides[key]
        if not isinstance(values, Mapping):
            raise ConfigError(
                f"uses_dynamic_batching[{key!r}] must be a mapping such as "
                f"{{'preferred_batch_size': 32, 'timeout': 2}}, got {type(values).__name__}",
                executor=executor,
            )
        where = f"uses_dynamic_batching[{key!r}]"
        unknown = set(values) - set(BatchingConfig.model_fields)
        if unknown:
            raise ConfigError(
                f"{where}: unknown option(s) {sorted(unknown)}; "
                f"options are {sorted(BatchingConfig.model_fields)}",
                executor=executor,
            )
        for name in names:
            check_batchable(table[name], where)
            merged = {**(out.get(name) or BatchingConfig()).model_dump(), **values}
            out[name] = _config(merged["preferred_batch_size"], merged["timeout"], where)
    return out


def check_batchable(spec: EndpointSpec, where: str) -> None:
    """Raise ConfigError when ``spec`` is an endpoint whose requests cannot be merged."""
    reason = None
    if spec.is_generator:
        reason = "a streaming (generator) endpoint cannot be batched"
    elif spec.per_doc:
        reason = "a `doc: T` endpoint is already called once per document; batch a `docs` endpoint"
    elif spec.passes_docs_matrix:
        reason = "an endpoint that takes `docs_matrix` (a join) cannot be batched"
    if reason:
        raise ConfigError(f"{where}: {reason}")
