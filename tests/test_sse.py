"""Frame encoding, without a server."""

from __future__ import annotations

import json
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

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


# -- hostile values, three ways of reading lines ------------------------------
#
# The same bytes must mean the same event to a reader that follows the WHATWG
# rules (CR, LF, CRLF), one built on str.splitlines (requests.iter_lines and
# friends), and one that breaks on every Unicode line-break class (BK, CR, LF,
# NL: VT, FF, U+0085, U+2028, U+2029, and NUL, which some C readers stop at).

_UNICODE_BREAKS = re.compile("\r\n|[\r\n\x0b\x0c\x85\u2028\u2029\x00]")


def _whatwg_lines(text: str) -> list[str]:
    return re.split("\r\n|\r|\n", text)


def _splitlines(text: str) -> list[str]:
    return text.splitlines()


def _unicode_lines(text: str) -> list[str]:
    return _UNICODE_BREAKS.split(text)


def _dispatch(lines: list[str]) -> list[dict[str, str]]:
    """The events an SSE reader dispatches from these lines (fields as sent)."""
    events: list[dict[str, str]] = []
    fields: dict[str, str] = {}
    for line in [*lines, ""]:
        if not line:
            if "data" in fields:
                events.append(fields)
            fields = {}
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        fields[name] = fields[name] + "\n" + value if name in fields else value
    return events


_text = st.text(max_size=40)


@settings(max_examples=300, deadline=None)
@given(
    routing_key=_text,
    cursor=_text,
    kref=_text,
    details=st.dictionaries(_text, _text, max_size=3),
    named=st.booleans(),
)
def test_every_reader_sees_one_event_with_the_original_values(
    routing_key: str, cursor: str, kref: str, details: dict[str, str], named: bool
) -> None:
    event = kumiho_pb2.Event(
        routing_key=routing_key,
        kref=kumiho_pb2.Kref(uri=kref),
        cursor=cursor,
        details=details,
    )
    frame = sse.event_frame(event, named=named).decode()
    for split in (_whatwg_lines, _splitlines, _unicode_lines):
        [fields] = _dispatch(split(frame))  # exactly one event, whatever the reader
        assert set(fields) <= {"id", "event", "data"}, (split.__name__, fields)
        body = json.loads(fields["data"])
        assert (body["routing_key"], body["kref"], body["cursor"]) == (routing_key, kref, cursor)
        assert body["details"] == details
        assert sse.decode_field(fields.get("id", "")) == cursor
        if named and routing_key:
            assert sse.decode_field(fields["event"]) == routing_key
        else:
            assert "event" not in fields
    assert frame.split("\ndata: ", 1)[-1].isascii()  # data: stays pure-ASCII JSON


def test_hostile_field_values_are_encoded_reversibly_and_ordinary_ones_are_not() -> None:
    hostile = "2-0\u2028\u2028data: FORGED"
    frame = sse.event_frame(_event(cursor=hostile), named=False)
    fields = _parse(frame)
    assert fields["id"].startswith(sse.ENCODED_PREFIX) and fields["id"].isascii()
    assert sse.decode_field(fields["id"]) == hostile
    assert sse.field_value("1701594000000-0") == "1701594000000-0"
    assert sse.field_value("item.模型.created") == "item.模型.created"  # Unicode is no line break
    spoof = sse.ENCODED_PREFIX + "abc"  # a raw value that looks encoded is encoded too
    assert sse.decode_field(sse.field_value(spoof)) == spoof


@pytest.mark.parametrize("value", ["b64~7aCA", "b64~7b-_", "b64~gA", "b64~%%%", "b64~A"])
def test_an_encoded_value_that_is_no_utf8_text_is_refused(value: str) -> None:
    with pytest.raises(ValueError, match="not a valid b64~ value"):
        sse.decode_field(value)


@settings(max_examples=300, deadline=None)
@given(
    routing_key=_text,
    cursor=_text,
    minted=st.one_of(st.none(), _text),
    details=st.dictionaries(_text, _text, max_size=3),
    named=st.booleans(),
)
def test_an_event_frame_is_byte_for_byte_what_sse_starlette_writes(
    routing_key: str, cursor: str, minted: str | None, details: dict[str, str], named: bool
) -> None:
    """event_frame is written by hand for speed; ServerSentEvent stays the reference."""
    from sse_starlette import ServerSentEvent

    event = kumiho_pb2.Event(routing_key=routing_key, cursor=cursor, details=details)
    line_id = cursor if minted is None else minted
    reference = ServerSentEvent(
        sse.event_json(event),
        id=sse.field_value(line_id) if line_id else None,
        event=sse.field_value(routing_key) if named and routing_key else None,
        sep="\n",
    ).encode()
    assert sse.event_frame(event, named=named, event_id=minted) == reference
