"""Server-Sent Events frame encoding: pure functions from values to bytes, no I/O.

Frames carry one ``data:`` line of JSON. ``json.dumps`` escapes CR and LF,
and this module also escapes U+0085, U+2028 and U+2029, which some SSE
parsers (Python's ``str.splitlines``, among others) take for line breaks;
so a payload can never split a frame or forge a field.
"""

from __future__ import annotations

import json
from typing import Any

from gateway._proto import kumiho_pb2

_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
_UNSAFE = str.maketrans({"\u0085": "\\u0085", "\u2028": "\\u2028", "\u2029": "\\u2029"})
_UNSAFE_CHARS = ("\u0085", "\u2028", "\u2029")


def to_json(value: Any) -> str:
    """Compact JSON on one line that no SSE parser can split."""
    text = _dumps(value)
    if any(c in text for c in _UNSAFE_CHARS):
        text = text.translate(_UNSAFE)
    return text


def event_data(event: kumiho_pb2.Event) -> dict[str, Any]:
    """The JSON object of one Kumiho event, as CONTRACT.md defines it."""
    return {
        "routing_key": event.routing_key,
        "kref": event.kref.uri,
        "timestamp": event.timestamp,
        "author": event.author,
        "username": event.username,
        "details": dict(event.details),
        "cursor": event.cursor,
    }


def event_frame(event: kumiho_pb2.Event, *, named: bool) -> bytes:
    """The frame of one Kumiho event: ``id:`` = cursor (omitted when empty), then data."""
    head = f"id: {_field(event.cursor)}\n" if event.cursor else ""
    if named and event.routing_key:
        head += f"event: {_field(event.routing_key)}\n"
    return f"{head}data: {to_json(event_data(event))}\n\n".encode()


def control_frame(name: str, data: dict[str, Any]) -> bytes:
    """A named control event (``gateway.reset``, ``gateway.error``); never carries an id."""
    return f"event: {name}\ndata: {to_json(data)}\n\n".encode()


def retry_frame(ms: int) -> bytes:
    """The reconnection delay a client should use."""
    return f"retry: {int(ms)}\n\n".encode()


def comment_frame(text: str) -> bytes:
    """A comment line (heartbeat), ignored by every client."""
    return f": {_field(text)}\n\n".encode()


def _field(value: str) -> str:
    # A field value must not break its line; routing keys come from upstream.
    return value.replace("\r", " ").replace("\n", " ")
