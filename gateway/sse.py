"""Server-Sent Events frame encoding: pure functions from values to bytes, no I/O.

Frames are built with sse-starlette's ``ServerSentEvent`` (``sep="\\n"``),
but for the one frame on the hot path, an event's, which is written by hand
byte for byte as it would write it (``event_frame``); this module decides
what may reach it. Two rules keep every client seeing
the same frames, whatever its idea of a line break (SSE knows CR, LF and
CRLF; Python's ``str.splitlines`` also splits on VT, FF, FS, GS, RS, U+0085,
U+2028 and U+2029; a NUL makes browsers ignore an ``id:``):

- ``data:`` is one line of JSON written in pure ASCII: every non-ASCII
  character is a ``\\uXXXX`` escape, so no payload can end the line.
- ``id:`` and ``event:`` values (an upstream cursor, a routing key) that hold
  any control or line-separator character are sent in a reversible form,
  ``b64~`` + URL-safe base64 of their UTF-8 (``field_value``). A client sends
  such an id back as ``Last-Event-ID`` and the gateway decodes it
  (``decode_field``) before resuming, so the resume stays exact.
"""

from __future__ import annotations

import base64
import binascii
import json
import unicodedata
from json.encoder import encode_basestring_ascii as _q
from typing import Any

from sse_starlette import ServerSentEvent

from gateway._proto import kumiho_pb2

MEDIA_TYPE = "text/event-stream; charset=utf-8"
ENCODED_PREFIX = "b64~"
# Unicode categories no field value may carry raw: controls (CR, LF, NUL, VT,
# FF, FS/GS/RS, U+0085, ...) and the line and paragraph separators.
_UNSAFE_CATEGORIES = frozenset({"Cc", "Zl", "Zp"})

# Compact, pure-ASCII JSON on one line.
dumps = json.JSONEncoder(ensure_ascii=True, separators=(",", ":")).encode


def field_value(value: str) -> str:
    """``value`` as it may stand on an ``id:`` or ``event:`` line: itself when safe."""
    if value.startswith(ENCODED_PREFIX) or not _safe(value):
        encoded = base64.urlsafe_b64encode(value.encode("utf-8", "surrogatepass"))
        return ENCODED_PREFIX + encoded.decode("ascii").rstrip("=")
    return value


def decode_field(value: str) -> str:
    """The original of a ``field_value``; raises ValueError for a malformed encoded form.

    Strict UTF-8: a lone surrogate is no text an upstream holds or a gRPC
    string can carry, so a client's ``b64~`` value holding one is malformed.
    """
    if not value.startswith(ENCODED_PREFIX):
        return value
    text = value[len(ENCODED_PREFIX) :]
    try:
        raw = base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True)
        return raw.decode("utf-8")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise ValueError(
            f"is not a valid {ENCODED_PREFIX} value (URL-safe base64 of UTF-8 text)"
        ) from None


def _safe(value: str) -> bool:
    # Fast path: visible ASCII (every ordinary cursor and routing key).
    if value.isascii() and value.isprintable():
        return True
    return not any(unicodedata.category(c) in _UNSAFE_CATEGORIES for c in value)


def event_json(event: kumiho_pb2.Event) -> str:
    """The JSON object of one event, on one line of pure ASCII (every format carries it).

    ``routing_key``, ``kref`` (the URI), ``timestamp``, ``author``,
    ``username``, ``details`` and ``cursor``, assembled by hand from the C
    string escaper: twice as fast as ``json.dumps`` of a dict.
    """
    details = event.details
    # By key, not .items(): a protobuf map's items() is the generic Mapping one, twice as slow.
    pairs = ",".join([f"{_q(k)}:{_q(details[k])}" for k in details]) if details else ""
    return (
        f'{{"routing_key":{_q(event.routing_key)},"kref":{_q(event.kref.uri)},'
        f'"timestamp":{_q(event.timestamp)},"author":{_q(event.author)},'
        f'"username":{_q(event.username)},"details":{{{pairs}}},"cursor":{_q(event.cursor)}}}'
    )


def event_frame(event: kumiho_pb2.Event, *, named: bool, event_id: str | None = None) -> bytes:
    """The frame of one Kumiho event: ``id:`` = cursor (omitted when empty), then data.

    ``event_id`` replaces the cursor in the ``id:`` line only (the hub's ids for
    events that have no cursor); ``cursor`` in the data stays Kumiho's.
    """
    line_id = event.cursor if event_id is None else event_id
    head = f"id: {field_value(line_id)}\n" if line_id else ""
    if named and event.routing_key:
        head += f"event: {field_value(event.routing_key)}\n"
    # By hand, as ServerSentEvent(data, id=, event=, sep="\n").encode() writes it:
    # these values hold no line break (the rules above), so its StringIO and
    # two regex passes (3.3 of this function's 7.9 us, BENCHMARKS.md) change
    # nothing. tests/test_sse.py holds the two byte-identical for any event.
    return f"{head}data: {event_json(event)}\n\n".encode()


def advance_frame(cursor: str) -> bytes:
    """An ``id:`` line alone: browsers set their last event id and dispatch nothing."""
    return ServerSentEvent(id=field_value(cursor), sep="\n").encode()


def control_frame(name: str, data: dict[str, Any]) -> bytes:
    """A named control event (``gateway.reset``, ``gateway.error``); never carries an id."""
    return ServerSentEvent(dumps(data), event=name, sep="\n").encode()


def comment_frame(name: str, data: dict[str, Any]) -> bytes:
    """A control signal as a comment (``: gateway.status {...}``): clients dispatch nothing."""
    return ServerSentEvent(comment=f"{name} {dumps(data)}", sep="\n").encode()


HEARTBEAT = ServerSentEvent(comment="heartbeat", sep="\n").encode()
"""A comment frame: keeps proxies and clients from timing out an idle stream."""


def retry_frame(ms: int) -> bytes:
    """The reconnection delay a client should use."""
    return ServerSentEvent(retry=int(ms), sep="\n").encode()
