from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Request(_message.Message):
    __slots__ = ("request_id", "endpoint", "parameters", "target_executor", "docs", "docs_matrix", "timeout", "cancel", "batch", "shared")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    TARGET_EXECUTOR_FIELD_NUMBER: _ClassVar[int]
    DOCS_FIELD_NUMBER: _ClassVar[int]
    DOCS_MATRIX_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    CANCEL_FIELD_NUMBER: _ClassVar[int]
    BATCH_FIELD_NUMBER: _ClassVar[int]
    SHARED_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    endpoint: str
    parameters: bytes
    target_executor: str
    docs: bytes
    docs_matrix: _containers.RepeatedScalarFieldContainer[bytes]
    timeout: float
    cancel: bool
    batch: _containers.RepeatedCompositeFieldContainer[Request]
    shared: Shared
    def __init__(self, request_id: _Optional[str] = ..., endpoint: _Optional[str] = ..., parameters: _Optional[bytes] = ..., target_executor: _Optional[str] = ..., docs: _Optional[bytes] = ..., docs_matrix: _Optional[_Iterable[bytes]] = ..., timeout: _Optional[float] = ..., cancel: _Optional[bool] = ..., batch: _Optional[_Iterable[_Union[Request, _Mapping]]] = ..., shared: _Optional[_Union[Shared, _Mapping]] = ...) -> None: ...

class Shared(_message.Message):
    __slots__ = ("offset", "length", "capacity")
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    LENGTH_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_FIELD_NUMBER: _ClassVar[int]
    offset: int
    length: int
    capacity: int
    def __init__(self, offset: _Optional[int] = ..., length: _Optional[int] = ..., capacity: _Optional[int] = ...) -> None: ...

class Response(_message.Message):
    __slots__ = ("request_id", "docs", "parameters", "error", "batch", "shared")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    DOCS_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    BATCH_FIELD_NUMBER: _ClassVar[int]
    SHARED_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    docs: bytes
    parameters: bytes
    error: bytes
    batch: _containers.RepeatedCompositeFieldContainer[Response]
    shared: Shared
    def __init__(self, request_id: _Optional[str] = ..., docs: _Optional[bytes] = ..., parameters: _Optional[bytes] = ..., error: _Optional[bytes] = ..., batch: _Optional[_Iterable[_Union[Response, _Mapping]]] = ..., shared: _Optional[_Union[Shared, _Mapping]] = ...) -> None: ...

class DescribeRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class EndpointInfo(_message.Message):
    __slots__ = ("name", "input_schema", "output_schema", "streaming", "doc", "parameters_schema", "wants_docs_matrix", "idempotent")
    NAME_FIELD_NUMBER: _ClassVar[int]
    INPUT_SCHEMA_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_SCHEMA_FIELD_NUMBER: _ClassVar[int]
    STREAMING_FIELD_NUMBER: _ClassVar[int]
    DOC_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_SCHEMA_FIELD_NUMBER: _ClassVar[int]
    WANTS_DOCS_MATRIX_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENT_FIELD_NUMBER: _ClassVar[int]
    name: str
    input_schema: str
    output_schema: str
    streaming: bool
    doc: str
    parameters_schema: str
    wants_docs_matrix: bool
    idempotent: bool
    def __init__(self, name: _Optional[str] = ..., input_schema: _Optional[str] = ..., output_schema: _Optional[str] = ..., streaming: _Optional[bool] = ..., doc: _Optional[str] = ..., parameters_schema: _Optional[str] = ..., wants_docs_matrix: _Optional[bool] = ..., idempotent: _Optional[bool] = ...) -> None: ...

class DescribeResponse(_message.Message):
    __slots__ = ("name", "kind", "version", "endpoints", "executor_class", "replica_id", "shard_id")
    NAME_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ENDPOINTS_FIELD_NUMBER: _ClassVar[int]
    EXECUTOR_CLASS_FIELD_NUMBER: _ClassVar[int]
    REPLICA_ID_FIELD_NUMBER: _ClassVar[int]
    SHARD_ID_FIELD_NUMBER: _ClassVar[int]
    name: str
    kind: str
    version: str
    endpoints: _containers.RepeatedCompositeFieldContainer[EndpointInfo]
    executor_class: str
    replica_id: int
    shard_id: int
    def __init__(self, name: _Optional[str] = ..., kind: _Optional[str] = ..., version: _Optional[str] = ..., endpoints: _Optional[_Iterable[_Union[EndpointInfo, _Mapping]]] = ..., executor_class: _Optional[str] = ..., replica_id: _Optional[int] = ..., shard_id: _Optional[int] = ...) -> None: ...
