"""What a Deployment and a Flow share as a user sees them: start/close, ``with``, ``post``, ``block``."""

from __future__ import annotations

import abc
import threading
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any, Self, TypeVar, overload

from plait.client import Client
from plait.client.async_client import DocInputs
from plait.docs import DocList, Document
from plait.errors import UnavailableError
from plait.orchestrate.process import ChildProcess

T = TypeVar("T", bound=Document)


class Orchestration(abc.ABC):
    """A set of local processes serving something, and a client to call it."""

    @abc.abstractmethod
    def start(self) -> Self:
        """Start every process; return once all are ready (or raise StartupError)."""

    @abc.abstractmethod
    def close(self) -> None:
        """Stop every process (graceful drain, then SIGKILL after the grace period)."""

    @property
    @abc.abstractmethod
    def children(self) -> Sequence[ChildProcess]:
        """The processes this orchestration started."""

    @property
    @abc.abstractmethod
    def client(self) -> Client:
        """The client ``post`` uses (raises before ``start``)."""

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def block(self, stop_event: threading.Event | None = None) -> None:
        """Serve until ``stop_event`` is set or Ctrl-C; raises if every process has died."""
        event = stop_event or threading.Event()
        try:
            while not event.wait(0.5):
                children = self.children
                if children and not any(c.alive() for c in children):
                    last = children[-1]
                    raise UnavailableError(
                        f"every process has exited. Last output of {last.label!r}:\n{last.last_lines()}"
                    )
        except KeyboardInterrupt:
            pass

    @overload
    def post(
        self,
        on: str,
        inputs: DocInputs = ...,
        parameters: Mapping[str, Any] | None = ...,
        *,
        return_type: type[DocList[T]] | type[T],
        **kwargs: Any,
    ) -> DocList[T]: ...
    @overload
    def post(
        self,
        on: str,
        inputs: DocInputs = ...,
        parameters: Mapping[str, Any] | None = ...,
        *,
        return_type: None = ...,
        **kwargs: Any,
    ) -> DocList[Any]: ...

    def post(
        self,
        on: str,
        inputs: DocInputs = None,
        parameters: Mapping[str, Any] | None = None,
        *,
        return_type: type[DocList[Any]] | type[Document] | None = None,
        **kwargs: Any,
    ) -> DocList[Any]:
        """``Client.post`` against this Deployment or Flow; keyword arguments are the client's."""
        return self.client.post(on, inputs, parameters, return_type=return_type, **kwargs)
