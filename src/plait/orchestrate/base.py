"""What a Deployment and a Flow share as a user sees them: start/close, ``with``, ``post``, ``block``,
``status``."""

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
from plait.orchestrate.supervisor import ReplicaStatus, Supervisor

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

    @abc.abstractmethod
    def _supervision(self) -> Supervisor | None:
        """The supervisor watching the processes (None before ``start``)."""

    def status(self) -> list[ReplicaStatus]:
        """Every process: label, address, pid, alive, restarts and why it last exited (empty before
        ``start``)."""
        supervisor = self._supervision()
        return supervisor.status() if supervisor is not None else []

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def block(self, stop_event: threading.Event | None = None) -> None:
        """Serve until ``stop_event`` is set or Ctrl-C; without restarts, raises if every process has died."""
        event = stop_event or threading.Event()
        try:
            while not event.wait(0.5):
                children = self.children
                supervisor = self._supervision()
                restarting = supervisor is not None and supervisor.policy is not None
                if children and not restarting and not any(c.alive() for c in children):
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
