"""The wire formats of a stream: Server-Sent Events, or NDJSON for scripts.

The pump writes every item through one ``Format``; the route picks it from
the request (``format=ndjson`` or ``Accept: application/x-ndjson``).
"""

from __future__ import annotations

import functools
from typing import Any, Protocol

from gateway import ndjson, sse
from gateway._proto import kumiho_pb2
from gateway.items import SharedEvent


class Format(Protocol):
    """How one stream's items become bytes."""

    media_type: str
    heartbeat: bytes

    def event(self, item: SharedEvent | kumiho_pb2.Event) -> bytes: ...

    def shared(self, item: SharedEvent) -> bytes:
        """A hub event's frame: ``event`` without its type check (a fan-out's hot path)."""
        ...

    def control(self, name: str, data: dict[str, Any]) -> bytes: ...

    def advance(self, cursor: str) -> bytes:
        """The client's resume point moved past events it does not want."""
        ...

    def retry(self, ms: int) -> bytes: ...


class ServerSentEvents:
    """``text/event-stream``; with ``named``, ``event:`` carries the routing key.

    With ``signals_as_comments`` (the hosted route, whose clients take every
    ``data:`` line for an event), gateway signals are comment lines instead.
    """

    media_type = sse.MEDIA_TYPE
    heartbeat = sse.HEARTBEAT

    def __init__(self, named: bool, signals_as_comments: bool = False) -> None:
        self._named = named
        self._control = sse.comment_frame if signals_as_comments else sse.control_frame
        # Encoded once for all its subscribers; one call a delivery.
        self.shared = SharedEvent.named_frame if named else SharedEvent.plain_frame

    def event(self, item: SharedEvent | kumiho_pb2.Event) -> bytes:
        if isinstance(item, SharedEvent):
            return self.shared(item)
        return sse.event_frame(item, named=self._named)

    def control(self, name: str, data: dict[str, Any]) -> bytes:
        return self._control(name, data)

    def advance(self, cursor: str) -> bytes:
        return sse.advance_frame(cursor)

    def retry(self, ms: int) -> bytes:
        return sse.retry_frame(ms)


class NewlineDelimitedJson:
    """``application/x-ndjson``: one JSON object per line (see ``ndjson.py``)."""

    media_type = ndjson.MEDIA_TYPE
    heartbeat = ndjson.HEARTBEAT

    def event(self, item: SharedEvent | kumiho_pb2.Event) -> bytes:
        if isinstance(item, SharedEvent):
            return self.shared(item)
        return ndjson.event_line(item)

    def shared(self, item: SharedEvent) -> bytes:
        # The hub's own id for an event without a cursor, to resume by.
        minted = item.cursor if item.cursor != item.event.cursor else None
        return ndjson.event_line(item.event, minted)

    def control(self, name: str, data: dict[str, Any]) -> bytes:
        return ndjson.control_line(name, data)

    def advance(self, cursor: str) -> bytes:
        return ndjson.control_line("gateway.advance", {"cursor": cursor})

    def retry(self, ms: int) -> bytes:
        return b""  # a script reconnects when the stream ends


@functools.cache
def format_for(kind: str, named: bool, hosted: bool = False) -> Format:
    """The Format a validated subscription asked for (``hosted``: on the hosted API's route).

    Formats hold no state: every stream of a kind shares one.
    """
    return NewlineDelimitedJson() if kind == "ndjson" else ServerSentEvents(named, hosted)
