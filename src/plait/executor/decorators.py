"""``@requests``: bind an Executor method to one or more endpoints."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar, overload

from plait.wire.fields import DEFAULT_ENDPOINT as DEFAULT_ENDPOINT

ENDPOINTS_ATTR = "__plait_endpoints__"
IDEMPOTENT_ATTR = "__plait_idempotent__"

F = TypeVar("F", bound=Callable[..., Any])


def _normalize(on: str | Sequence[str] | None) -> tuple[str, ...]:
    if on is None:
        return (DEFAULT_ENDPOINT,)
    names = [on] if isinstance(on, str) else list(on)
    if not names:
        raise ValueError("@requests(on=...) needs at least one endpoint")
    out = []
    for name in names:
        if not isinstance(name, str) or not name:
            raise ValueError(f"endpoint names are non-empty strings, got {name!r}")
        out.append(name if name.startswith("/") else f"/{name}")
    return tuple(out)


@overload
def requests(func: F, /) -> F: ...
@overload
def requests(*, on: str | Sequence[str] | None = None, idempotent: bool = False) -> Callable[[F], F]: ...


def requests(
    func: F | None = None, /, *, on: str | Sequence[str] | None = None, idempotent: bool = False
) -> F | Callable[[F], F]:
    """Mark an Executor method as the handler of endpoint(s) ``on``.

    ``@requests`` alone binds the default endpoint, which serves any endpoint that has no handler
    of its own. The method may be ``def`` or ``async def``, take ``docs: DocList[T]`` (the whole
    request) or ``doc: T`` (called once per document), and may be a generator that yields
    documents (a streaming endpoint).

    ``idempotent=True`` says running the method twice for the same request is harmless (a search,
    an embedding): a call cut off when its replica died is then retried on another replica.
    """
    names = _normalize(on)

    def mark(fn: F) -> F:
        previous: tuple[str, ...] = getattr(fn, ENDPOINTS_ATTR, ())
        setattr(fn, ENDPOINTS_ATTR, previous + tuple(n for n in names if n not in previous))
        if idempotent:
            setattr(fn, IDEMPOTENT_ATTR, True)
        return fn

    if func is not None:
        return mark(func)
    return mark
