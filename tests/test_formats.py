"""The wire formats of a stream (``formats.py``), without a server: items in, bytes out."""

from __future__ import annotations

import json

import pytest

from gateway import ndjson, sse
from gateway._proto import kumiho_pb2
from gateway.formats import Format, NewlineDelimitedJson, ServerSentEvents, format_for
from gateway.items import SharedEvent

RESET = {"reason": "cursor_expired", "requested_cursor": "1-0", "resumed_from": "earliest"}


def _event(cursor: str = "1701594000000-0") -> kumiho_pb2.Event:
    return kumiho_pb2.Event(
        routing_key="revision.tagged",
        kref=kumiho_pb2.Kref(uri="kref://proj/chars/hero.model"),
        timestamp="2025-12-03T10:00:00Z",
        author="u-1",
        username="mina",
        details={"tag": "approved"},
        cursor=cursor,
    )


def _lines(frame: bytes) -> list[str]:
    """The field lines of one SSE frame, which ends with its blank line."""
    text = frame.decode("ascii")
    assert text.endswith("\n\n") and "\r" not in text, frame
    return text[:-2].split("\n")


@pytest.mark.parametrize(
    ("kind", "named", "hosted", "expected"),
    [
        ("sse", False, False, ServerSentEvents),
        ("sse", True, True, ServerSentEvents),
        ("ndjson", False, False, NewlineDelimitedJson),
        ("ndjson", True, True, NewlineDelimitedJson),  # named and hosted mean nothing to NDJSON
    ],
)
def test_format_for_picks_the_subscription_s_format(
    kind: str, named: bool, hosted: bool, expected: type
) -> None:
    fmt: Format = format_for(kind, named, hosted)
    assert isinstance(fmt, expected)


def test_the_media_types_and_heartbeats() -> None:
    assert format_for("sse", False).media_type == "text/event-stream; charset=utf-8"
    assert _lines(format_for("sse", False).heartbeat)[0].startswith(":")  # a comment
    assert format_for("ndjson", False).media_type == "application/x-ndjson"
    assert format_for("ndjson", False).heartbeat == b"\n"  # an empty line: JSON readers skip it


def test_an_sse_event_is_its_frame_with_the_routing_key_only_when_named() -> None:
    event = _event()
    plain = format_for("sse", named=False).event(event)
    assert plain == sse.event_frame(event, named=False)
    assert _lines(plain)[0] == "id: 1701594000000-0"
    assert not any(line.startswith("event:") for line in _lines(plain))
    named = format_for("sse", named=True).event(event)
    assert "event: revision.tagged" in _lines(named)


def test_a_shared_event_is_encoded_once_and_carries_the_id_the_hub_minted() -> None:
    fmt = format_for("sse", named=False)
    shared = SharedEvent(_event(cursor=""), minted_id="gw:7")
    frame = fmt.event(shared)
    assert frame is fmt.event(shared)  # the same bytes for every subscriber
    assert _lines(frame)[0] == "id: gw:7"
    assert json.loads(_lines(frame)[1].removeprefix("data: "))["cursor"] == ""


def test_sse_signals_are_named_events_on_events_and_comments_on_the_hosted_route() -> None:
    own = format_for("sse", named=False, hosted=False).control("gateway.reset", RESET)
    assert _lines(own)[0] == "event: gateway.reset"
    assert json.loads(_lines(own)[1].removeprefix("data: ")) == RESET
    hosted = format_for("sse", named=False, hosted=True).control("gateway.reset", RESET)
    [line] = _lines(hosted)
    assert line.startswith(": gateway.reset ")  # never a data: line a hosted client reads
    assert json.loads(line.removeprefix(": gateway.reset ")) == RESET


def test_an_sse_advance_is_an_id_alone_and_retry_a_retry_line() -> None:
    fmt = format_for("sse", named=False)
    assert _lines(fmt.advance("1701594000000-5")) == ["id: 1701594000000-5"]
    assert _lines(fmt.retry(1500)) == ["retry: 1500"]
    # An id that could break a line goes out in its reversible form.
    [line] = _lines(fmt.advance("a\nb"))
    assert sse.decode_field(line.removeprefix("id: ")) == "a\nb"


def test_an_ndjson_event_is_the_data_line_s_object_on_one_line() -> None:
    event = _event()
    line = format_for("ndjson", False).event(event)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert json.loads(line) == json.loads(sse.event_json(event))
    assert "id" not in json.loads(line)  # its cursor resumes it


def test_an_ndjson_shared_event_adds_only_an_id_the_hub_minted() -> None:
    fmt = format_for("ndjson", False)
    assert "id" not in json.loads(fmt.event(SharedEvent(_event())))
    minted = json.loads(fmt.event(SharedEvent(_event(cursor=""), minted_id="gw:7")))
    assert minted["id"] == "gw:7" and minted["cursor"] == ""


def test_ndjson_signals_advances_and_retry() -> None:
    fmt = format_for("ndjson", False)
    assert json.loads(fmt.control("gateway.reset", RESET)) == {"gateway": "reset", **RESET}
    assert json.loads(fmt.advance("1-5")) == {"gateway": "advance", "cursor": "1-5"}
    assert fmt.retry(1500) == b""  # a script reconnects when the stream ends
    assert fmt.control("gateway.status", {"upstream": "live"}) == ndjson.control_line(
        "gateway.status", {"upstream": "live"}
    )
