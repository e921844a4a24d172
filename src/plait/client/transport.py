"""The one interface every protocol implements. Adding a protocol is one module and one dict entry."""

from __future__ import annotations

import abc
from collections.abc import AsyncGenerator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from plait.errors import ClientClosedError
from plait.security.client import PLAIN, ClientSecurity


@dataclass(frozen=True, slots=True)
class Call:
    """A request as a client sends it: docs already encoded in the plait codec."""

    endpoint: str
    docs: bytes
    parameters: Mapping[str, Any] = field(default_factory=dict)
    target_executor: str = ""
    request_id: str = ""
    metadata: tuple[tuple[str, str], ...] = ()
    """Sent as gRPC metadata / HTTP headers (the W3C trace context when tracing)."""


@dataclass(frozen=True, slots=True)
class Reply:
    """A response as a transport returns it: docs still encoded."""

    request_id: str
    docs: bytes
    parameters: dict[str, Any]


@dataclass(frozen=True, slots=True)
class EndpointDescription:
    name: str
    input_schema: dict[str, Any]
    output_schema: dict[str, Any]
    streaming: bool = False
    doc: str = ""
    parameters_schema: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class ServiceDescription:
    """What ``describe()`` returns: who answers and which endpoints it serves."""

    name: str
    kind: str
    version: str
    endpoints: Mapping[str, EndpointDescription]
    executor_class: str = ""


class Transport(abc.ABC):
    """One long-lived connection (or pool of them) to a plait server."""

    scheme: ClassVar[str]

    def __init__(
        self,
        addresses: Sequence[str],
        *,
        max_message_size: int | None = None,
        security: ClientSecurity | None = None,
    ) -> None:
        self.addresses = tuple(addresses)
        self.max_message_size = max_message_size
        self.security = security or PLAIN
        """TLS and credentials every connection and call of this transport uses."""
        self._closed = False
        """Set by ``close()``: a closed transport never reconnects."""

    def _check_open(self) -> None:
        if self._closed:
            raise ClientClosedError("this client is closed; create a new one")

    @abc.abstractmethod
    async def open(self) -> None: ...

    @abc.abstractmethod
    async def close(self) -> None: ...

    @abc.abstractmethod
    async def call(self, call: Call, timeout: float | None = None) -> Reply:
        """One request, one reply. Raises a :class:`plait.errors.PlaitError`."""

    @abc.abstractmethod
    def stream(self, call: Call, timeout: float | None = None) -> AsyncGenerator[Reply, None]:
        """One request to a streaming endpoint; one reply per yielded document."""

    @abc.abstractmethod
    async def health(self, timeout: float | None = None) -> str:
        """'SERVING', 'NOT_SERVING' or 'UNREACHABLE'."""

    @abc.abstractmethod
    async def describe(self, timeout: float | None = None) -> ServiceDescription: ...
