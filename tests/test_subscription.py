"""parse_subscription on its own: names, aliases, limits, resume point and start position."""

from __future__ import annotations

import pytest

from gateway import sse
from gateway.auth import ANONYMOUS
from gateway.errors import GatewayError
from gateway.matching import EventFilter
from gateway.subscription import parse_poll, parse_subscription


def parse(last_event_id: str | None = None, **query: str | list[str]):  # type: ignore[no-untyped-def]
    lists = {k: v if isinstance(v, list) else [v] for k, v in query.items()}
    return parse_subscription(lists, last_event_id, ANONYMOUS)


def test_defaults() -> None:
    sub = parse()
    assert (sub.filter, sub.cursor, sub.start, sub.named) == (EventFilter(), None, "latest", False)


def test_aliases_and_the_header_winning_over_cursor() -> None:
    sub = parse(routing_key_filter="revision.*", kref_filter="kref://p/**", last_event_id="1-0")
    assert (sub.filter, sub.cursor) == (EventFilter(("revision.*",), ("kref://p/**",)), "1-0")
    assert parse("2-0", cursor="1-0").cursor == "2-0"


@pytest.mark.parametrize(
    ("query", "needle"),
    [
        ({"routing_key": "a" * 257}, "routing_key: is 257 characters long; the limit is 256"),
        ({"kref": "kref://p/\x00"}, "U+0000"),
        ({"cursor": ["1-0", "2-0"]}, "given more than once"),
        ({"routing_key": "a,,b"}, "routing_key: has an empty entry"),
        ({"routing_key": "a,"}, "has an empty entry"),
        ({"kref": ",".join(["k"] * 17)}, "kref: lists 17 patterns; the limit is 16"),
        ({"routing_key": ["a"] * 9, "routing_key_filter": ["b,c"] * 4}, "lists 17 patterns"),
        ({"routing_key": "ok," + "a" * 257}, "routing_key: is 257 characters long"),
        ({"kref": "kref://p/a,kref://p/hero**"}, "kref: '**' must be a whole segment"),
        ({"routing_key": "a,\x00"}, "U+0000"),
        ({"consumer_group": "g" * 129}, "consumer_group: is 129 characters long; the limit is 128"),
        ({"consumer_group": "render\x1bers"}, "U+001B"),
        ({"author": "aiko\n"}, "author: contains the control character U+000A"),
        ({"from": "yesterday"}, "not latest, beginning or an ISO 8601 timestamp"),
        ({"named": "maybe"}, "'maybe' is not true or false"),
    ],
)
def test_refusals_name_the_parameter(query: dict[str, str | list[str]], needle: str) -> None:
    with pytest.raises(GatewayError) as refused:
        parse(**query)
    assert refused.value.status == 400 and refused.value.code == "invalid_parameter"
    assert needle in refused.value.message


def test_lists_in_every_spelling_mean_the_same_filter() -> None:
    wanted = EventFilter(("item.deleted", "item.deprecated"), ("kref://a/**", "kref://b/**"))
    for query in (
        {"routing_key_filter": "item.deleted,item.deprecated", "kref": "kref://a/**,kref://b/**"},
        {
            "routing_key": ["item.deprecated", "item.deleted"],
            "kref_filter": ["kref://b/**", "kref://a/**"],
        },
        {
            "routing_key": "item.deleted",
            "routing_key_filter": "item.deprecated",
            "kref": ["kref://a/**,kref://b/**", "kref://a/**"],
        },
    ):
        assert parse(**query).filter == wanted
    # An entry that means everything makes the list mean everything.
    assert parse(routing_key="revision.*,*").filter == EventFilter()
    assert parse(routing_key=",".join(f"k{i}" for i in range(16))).filter.routing_keys[0] == "k0"


def test_start_positions_and_named() -> None:
    assert parse(**{"from": "beginning"}).start == "beginning"
    sub = parse(**{"from": "2026-01-02T03:04:05Z"}, named="TRUE")
    assert (sub.start, sub.from_timestamp, sub.named) == ("timestamp", "2026-01-02T03:04:05Z", True)


def test_an_encoded_id_is_decoded_and_every_cursor_is_checked_whichever_wins() -> None:
    hostile = "2-0\u2028\u2028data: FORGED"
    encoded = sse.field_value(hostile)
    assert parse(encoded).cursor == hostile
    assert parse(cursor=encoded).cursor == hostile
    # Malformed base64, too long, and a lone surrogate (U+D800: no text at all).
    for bad in ("b64~%%%", "b64~" + "QQ" * 1000, "b64~7aCA"):
        for refused_as, query in (("Last-Event-ID", {}), ("cursor", {"cursor": bad})):
            with pytest.raises(GatewayError) as refused:
                parse(None if query else bad, **query)
            assert refused.value.code == "invalid_parameter"
            assert refused.value.message.startswith(f"{refused_as}: ")
    with pytest.raises(GatewayError) as refused:
        parse("1-0", cursor="1-0\n")  # the header wins, yet the parameter is checked
    assert "cursor: contains the control character U+000A" in refused.value.message


@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        (None, "sse"),
        ("text/event-stream", "sse"),
        ("application/x-ndjson", "ndjson"),
        ("text/event-stream, application/x-ndjson;q=0.1", "sse"),  # SSE preferred
        ("application/x-ndjson;q=0, text/event-stream", "sse"),  # q=0: not acceptable
        ("application/x-ndjson, */*;q=0.5", "ndjson"),
        ("*/*", "sse"),
    ],
)
def test_the_accept_header_picks_the_format_by_quality(accept: str | None, expected: str) -> None:
    assert parse_subscription({}, None, ANONYMOUS, accept).format == expected
    assert parse_subscription({"format": ["sse"]}, None, ANONYMOUS, accept).format == "sse"


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ({}, (100, 25)),
        ({"max_events": "1000", "timeout": "60"}, (1000, 60)),
        ({"max_events": "0007", "timeout": "0.25"}, (7, 0.25)),
        ({"timeout": "0"}, (100, 0)),
    ],
)
def test_poll_numbers_in_plain_ascii_digits(
    query: dict[str, str], expected: tuple[int, float]
) -> None:
    assert parse_poll({k: [v] for k, v in query.items()}) == expected


@pytest.mark.parametrize(
    "value", ["1_0", "+5", "-0", " 5", "5 ", "5\n", "\u0665", "\uff15", "1e1", "inf", "nan", "5.0"]
)
def test_poll_numbers_in_other_spellings_are_refused(value: str) -> None:
    for name in ("max_events", "timeout"):
        if name == "timeout" and value == "5.0":
            continue  # a decimal fraction is a number of seconds
        with pytest.raises(GatewayError) as refused:
            parse_poll({name: [value]})
        assert refused.value.status == 400 and refused.value.code == "invalid_parameter"
        assert refused.value.message.startswith(f"{name}: ")


@pytest.mark.parametrize("q", ["1_0", "+1", "inf", "1e1", "\u0661", "NaN"])
def test_a_weight_in_another_spelling_does_not_win_the_format(q: str) -> None:
    accept = f"application/x-ndjson;q={q}, text/event-stream;q=0.5"
    assert parse_subscription({}, None, ANONYMOUS, accept).format == "sse"
