"""Newline-delimited JSON frame encoding, for scripts: pure functions, no I/O.

One JSON object per line: an event is the same object an SSE ``data:`` line
carries; a gateway signal is ``{"gateway": "status" | "reset" | "error", ...}``
with that signal's fields, so ``select(.routing_key)`` keeps the events. A
heartbeat is an empty line, which JSON readers (jq included) skip. There is
no ``retry:``: a script reconnects when the stream ends, with ``?cursor=``
(on a tier without cursors, the ``id`` the hub added to each event).
"""

from __future__ import annotations

from typing import Any

from gateway._proto import kumiho_pb2
from gateway.sse import dumps, event_json

MEDIA_TYPE = "application/x-ndjson"
HEARTBEAT = b"\n"


def event_line(event: kumiho_pb2.Event, minted_id: str | None = None) -> bytes:
    """One event as a line of pure-ASCII JSON; ``id`` added for an id the hub minted."""
    line = event_json(event)
    if minted_id:
        line = f'{line[:-1]},"id":{dumps(minted_id)}}}'
    return (line + "\n").encode()


def control_line(name: str, data: dict[str, Any]) -> bytes:
    """A gateway signal (``gateway.status`` becomes ``{"gateway": "status", ...}``)."""
    return (dumps({"gateway": name.removeprefix("gateway."), **data}) + "\n").encode()
