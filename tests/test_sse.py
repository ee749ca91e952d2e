"""Frame encoding, without a server."""

from __future__ import annotations

import json

from gateway import sse
from gateway._proto import kumiho_pb2


def _event(cursor: str = "1701594000000-0", **details: str) -> kumiho_pb2.Event:
    return kumiho_pb2.Event(
        routing_key="revision.tagged",
        kref=kumiho_pb2.Kref(uri="kref://proj/chars/hero.model?r=3"),
        timestamp="2025-12-03T10:00:00Z",
        author="u-1",
        tenant_id="t-secret",
        details=details,
        username="mina",
        cursor=cursor,
    )


def _parse(frame: bytes) -> dict[str, str]:
    """A strict SSE field parser: splits on CR, LF and CRLF, the only line ends SSE knows."""
    text = frame.decode()
    assert text.endswith("\n\n")
    fields: dict[str, str] = {}
    for line in text[:-2].replace("\r\n", "\n").replace("\r", "\n").split("\n"):
        name, _, value = line.partition(": ")
        assert name not in fields, f"field {name} twice"
        fields[name] = value
    return fields


def test_event_frame_has_id_then_data() -> None:
    frame = sse.event_frame(_event(tag="approved"), named=False)
    assert frame.startswith(b"id: 1701594000000-0\ndata: {")
    fields = _parse(frame)
    assert set(fields) == {"id", "data"}
    body = json.loads(fields["data"])
    assert body == {
        "routing_key": "revision.tagged",
        "kref": "kref://proj/chars/hero.model?r=3",
        "timestamp": "2025-12-03T10:00:00Z",
        "author": "u-1",
        "username": "mina",
        "details": {"tag": "approved"},
        "cursor": "1701594000000-0",
    }
    assert "tenant_id" not in body  # not part of the contract


def test_empty_cursor_omits_the_id_line() -> None:
    assert set(_parse(sse.event_frame(_event(cursor=""), named=False))) == {"data"}


def test_named_frame_carries_the_routing_key() -> None:
    assert _parse(sse.event_frame(_event(), named=True))["event"] == "revision.tagged"


def test_line_breaks_of_every_kind_stay_inside_one_data_line() -> None:
    hard = {
        "lf": "a\nb",
        "cr": "a\rb",
        "crlf": "a\r\nb",
        "ls": "a\u2028b",
        "ps": "a\u2029b",
        "nel": "a\u0085b",
        "vt": "a\x0bb",
        "ff": "a\x0cb",
        "quote": 'say "hi"',
        "nul": "a\x00b",
    }
    frame = sse.event_frame(_event(**hard), named=False)
    text = frame.decode()
    assert len(text[:-2].splitlines()) == 2  # even str.splitlines sees just id and data
    assert json.loads(_parse(frame)["data"])["details"] == hard


def test_data_line_is_pure_ascii_and_unicode_round_trips() -> None:
    frame = sse.event_frame(_event(name="狐 🦊", **{"ключ": "значение"}), named=False)
    assert frame.isascii()
    details = json.loads(_parse(frame)["data"])["details"]
    assert details == {"name": "狐 🦊", "ключ": "значение"}


def test_frame_json_equals_the_contract_object() -> None:
    event = _event(tag="approved", empty="")
    assert json.loads(_parse(sse.event_frame(event, named=False))["data"]) == {
        "routing_key": event.routing_key,
        "kref": event.kref.uri,
        "timestamp": event.timestamp,
        "author": event.author,
        "username": event.username,
        "details": dict(event.details),
        "cursor": event.cursor,
    }
    assert json.loads(_parse(sse.event_frame(_event(), named=False))["data"])["details"] == {}


def test_control_retry_and_comment_frames() -> None:
    reset = sse.control_frame("gateway.reset", {"reason": "cursor_expired"})
    assert reset == b'event: gateway.reset\ndata: {"reason":"cursor_expired"}\n\n'
    assert sse.retry_frame(2500) == b"retry: 2500\n\n"


def test_a_cursor_cannot_forge_fields() -> None:
    fields = _parse(sse.event_frame(_event(cursor="1-0\ndata: forged"), named=False))
    assert set(fields) == {"id", "data"}
