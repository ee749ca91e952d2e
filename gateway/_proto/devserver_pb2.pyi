from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class PublishRequest(_message.Message):
    __slots__ = ("routing_key", "kref", "details", "author", "username", "tenant_id", "count")
    class DetailsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ROUTING_KEY_FIELD_NUMBER: _ClassVar[int]
    KREF_FIELD_NUMBER: _ClassVar[int]
    DETAILS_FIELD_NUMBER: _ClassVar[int]
    AUTHOR_FIELD_NUMBER: _ClassVar[int]
    USERNAME_FIELD_NUMBER: _ClassVar[int]
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    routing_key: str
    kref: str
    details: _containers.ScalarMap[str, str]
    author: str
    username: str
    tenant_id: str
    count: int
    def __init__(self, routing_key: _Optional[str] = ..., kref: _Optional[str] = ..., details: _Optional[_Mapping[str, str]] = ..., author: _Optional[str] = ..., username: _Optional[str] = ..., tenant_id: _Optional[str] = ..., count: _Optional[int] = ...) -> None: ...

class PublishReply(_message.Message):
    __slots__ = ("cursors",)
    CURSORS_FIELD_NUMBER: _ClassVar[int]
    cursors: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, cursors: _Optional[_Iterable[str]] = ...) -> None: ...

class Faults(_message.Message):
    __slots__ = ("break_after", "refuse", "delay_ms")
    BREAK_AFTER_FIELD_NUMBER: _ClassVar[int]
    REFUSE_FIELD_NUMBER: _ClassVar[int]
    DELAY_MS_FIELD_NUMBER: _ClassVar[int]
    break_after: int
    refuse: bool
    delay_ms: int
    def __init__(self, break_after: _Optional[int] = ..., refuse: _Optional[bool] = ..., delay_ms: _Optional[int] = ...) -> None: ...

class RevokeTokenRequest(_message.Message):
    __slots__ = ("token",)
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    token: str
    def __init__(self, token: _Optional[str] = ...) -> None: ...

class RevokeTokenReply(_message.Message):
    __slots__ = ("streams_ended",)
    STREAMS_ENDED_FIELD_NUMBER: _ClassVar[int]
    streams_ended: int
    def __init__(self, streams_ended: _Optional[int] = ...) -> None: ...

class StatsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Stats(_message.Message):
    __slots__ = ("open_streams", "streams_started", "recent_requests", "recent_tenants", "events_stored")
    OPEN_STREAMS_FIELD_NUMBER: _ClassVar[int]
    STREAMS_STARTED_FIELD_NUMBER: _ClassVar[int]
    RECENT_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    RECENT_TENANTS_FIELD_NUMBER: _ClassVar[int]
    EVENTS_STORED_FIELD_NUMBER: _ClassVar[int]
    open_streams: int
    streams_started: int
    recent_requests: _containers.RepeatedScalarFieldContainer[bytes]
    recent_tenants: _containers.RepeatedScalarFieldContainer[str]
    events_stored: int
    def __init__(self, open_streams: _Optional[int] = ..., streams_started: _Optional[int] = ..., recent_requests: _Optional[_Iterable[bytes]] = ..., recent_tenants: _Optional[_Iterable[str]] = ..., events_stored: _Optional[int] = ...) -> None: ...
