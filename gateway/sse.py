"""Server-Sent Events frame encoding: pure functions from values to bytes, no I/O.

Frames carry one ``data:`` line of JSON written in pure ASCII: every
non-ASCII character is a ``\\uXXXX`` escape. No character of a payload can
then end the line, whatever the client's idea of a line break (SSE knows CR,
LF and CRLF; Python's ``str.splitlines`` also splits on U+0085, U+2028 ...),
and the event frame, the hottest code in the gateway, is built from the C
string escaper alone.
"""

from __future__ import annotations

import json
from json.encoder import encode_basestring_ascii as _q
from typing import Any

from gateway._proto import kumiho_pb2

# Compact, pure-ASCII JSON on one line.
_dumps = json.JSONEncoder(ensure_ascii=True, separators=(",", ":")).encode


def event_frame(event: kumiho_pb2.Event, *, named: bool, event_id: str | None = None) -> bytes:
    """The frame of one Kumiho event: ``id:`` = cursor (omitted when empty), then data.

    Data: ``routing_key``, ``kref`` (the URI), ``timestamp``, ``author``,
    ``username``, ``details`` and ``cursor``. The JSON is assembled by hand
    because this runs once per event: twice as fast as ``json.dumps`` of a dict.
    ``event_id`` replaces the cursor in the ``id:`` line only (the hub's ids for
    events that have no cursor); ``cursor`` in the data stays Kumiho's.
    """
    cursor = event.cursor
    details = event.details
    line_id = cursor if event_id is None else event_id
    head = f"id: {_field(line_id)}\n" if line_id else ""
    if named and event.routing_key:
        head += f"event: {_field(event.routing_key)}\n"
    pairs = ",".join([f"{_q(k)}:{_q(v)}" for k, v in details.items()]) if details else ""
    return (
        f'{head}data: {{"routing_key":{_q(event.routing_key)},"kref":{_q(event.kref.uri)},'
        f'"timestamp":{_q(event.timestamp)},"author":{_q(event.author)},'
        f'"username":{_q(event.username)},"details":{{{pairs}}},"cursor":{_q(cursor)}}}\n\n'
    ).encode()


def control_frame(name: str, data: dict[str, Any]) -> bytes:
    """A named control event (``gateway.reset``, ``gateway.error``); never carries an id."""
    return f"event: {name}\ndata: {_dumps(data)}\n\n".encode()


HEARTBEAT = b": heartbeat\n\n"
"""A comment frame: keeps proxies and clients from timing out an idle stream."""


def retry_frame(ms: int) -> bytes:
    """The reconnection delay a client should use."""
    return f"retry: {int(ms)}\n\n".encode()


def _field(value: str) -> str:
    # A field value must not break its line; routing keys come from upstream.
    return value.replace("\r", " ").replace("\n", " ")
