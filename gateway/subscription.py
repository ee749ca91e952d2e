"""Parse and validate one ``GET /events`` request into a Subscription.

Everything a client can send is checked here, once: length and character
limits, aliases, repeated parameters, the resume point and the start
position. Anything wrong is a 400 before any byte of stream.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from gateway.auth import Credential
from gateway.errors import invalid_parameter
from gateway.matching import MAX_ENTRIES, EventFilter, kref_matcher, routing_key_matcher
from gateway.negotiation import weights
from gateway.sse import ENCODED_PREFIX, decode_field

StartKind = Literal["latest", "beginning", "timestamp"]
StreamFormat = Literal["sse", "ndjson"]
_NDJSON = "application/x-ndjson"


@dataclass(frozen=True)
class Param:
    """One query parameter of /events: its name, alias, limit and meaning."""

    name: str
    alias: str | None
    max_length: int
    description: str


PARAMS: tuple[Param, ...] = (
    Param(
        "routing_key",
        "routing_key_filter",
        256,
        "Kumiho routing-key filter; absent or empty = all (e.g. revision.*, item.*.created). "
        "A comma-separated list (or the parameter repeated) means any of them, "
        f"at most {MAX_ENTRIES}",
    ),
    Param(
        "kref",
        "kref_filter",
        1024,
        "Kumiho kref filter (e.g. kref://proj/**/*.model); a comma-separated list "
        f"(or the parameter repeated) means any of them, at most {MAX_ENTRIES}",
    ),
    Param(
        "author",
        None,
        256,
        "only events by these authors (user ids): a list, * any run of characters; "
        "matched by the gateway",
    ),
    Param(
        "username",
        None,
        256,
        "only events by these usernames: a list, * any run of characters; matched by the gateway",
    ),
    Param(
        "cursor",
        "last_event_id",
        256,
        "resume after this cursor (the Last-Event-ID header wins when both are sent)",
    ),
    Param(
        "from",
        None,
        64,
        "where to start without a cursor: latest (default), beginning, or an ISO 8601 timestamp",
    ),
    Param(
        "named",
        None,
        5,
        "true: the event: field carries the routing key, for addEventListener",
    ),
    Param(
        "format",
        None,
        8,
        "sse (default) or ndjson: one JSON object per line, for scripts "
        "(Accept: application/x-ndjson does the same)",
    ),
    Param(
        "consumer_group",
        None,
        128,
        "Kumiho consumer group (Enterprise): clients sharing one split the events, "
        "each event to one of them",
    ),
    Param(
        "access_token",
        None,
        8192,
        "a credential for clients that cannot set headers (EventSource)",
    ),
)
_BY_NAME = {p.name: p for p in PARAMS}
# details.<key>=<pattern>: a detail filter, matched by the gateway.
DETAIL_PREFIX = "details."
MAX_DETAILS = 8
_DETAIL_KEY = re.compile(r"[A-Za-z0-9_.-]{1,64}")
# The bounded read's own parameters (/events/poll, /api/v1/events/poll).
POLL_PARAMS: tuple[Param, ...] = (
    Param("max_events", None, 4, "at most this many events in the answer: 1 to 1000 (100)"),
    Param(
        "timeout",
        None,
        8,
        "seconds the answer may take once the stream is open: 0 to 60 (25), "
        "a decimal fraction allowed",
    ),
)
MAX_CURSOR = _BY_NAME["cursor"].max_length
# A cursor the gateway sent in its encoded form (sse.field_value): base64 of
# up to MAX_CURSOR characters of UTF-8.
MAX_ENCODED_CURSOR = len(ENCODED_PREFIX) + (MAX_CURSOR * 4 * 4 + 2) // 3
# Numbers as plain ASCII decimals: int() and float() also take '1_0', '+5',
# ' 5 ', '1e1', 'inf' and the digits of every script, none of which a client
# means, and each of which would be one more spelling of the same request.
_WHOLE = re.compile(r"[0-9]+")
_DECIMAL = re.compile(r"[0-9]+(?:\.[0-9]+)?")
_TRUE = {"true", "1", "yes"}
_FALSE = {"false", "0", "no", ""}


@dataclass(frozen=True)
class Subscription:
    """A validated /events request: what to stream, from where, as whom."""

    filter: EventFilter
    cursor: str | None
    start: StartKind
    from_timestamp: str | None
    named: bool
    credential: Credential
    format: StreamFormat = "sse"
    consumer_group: str = ""


def _given(query: Mapping[str, Sequence[str]], param: Param) -> tuple[str, str] | None:
    """(the name it came under, its value) of a parameter sent at most once, or None."""
    given = [(n, v) for n in (param.name, param.alias) if n for v in query.get(n, ())]
    if not given:
        return None
    if len(given) > 1:
        names = " and ".join(sorted({n for n, _ in given}))
        raise invalid_parameter(param.name, f"given more than once ({names}); send it once")
    return given[0]


def _one(query: Mapping[str, Sequence[str]], param: Param) -> str | None:
    """The single value of a parameter given by its name or its alias, checked."""
    given = _given(query, param)
    if given is None:
        return None
    name, value = given
    check_text(name, value, param.max_length)
    return value


def _patterns(query: Mapping[str, Sequence[str]], param: Param) -> tuple[str, ...]:
    """Every pattern of a list parameter: its values under either name, split on commas."""
    names = [n for n in (param.name, param.alias) if n]
    entries: list[str] = []
    for name in names:
        for value in query.get(name, ()):
            check_text(name, value, MAX_ENTRIES * (param.max_length + 1))
            parts = value.split(",")
            if len(parts) > 1 and "" in parts:
                raise invalid_parameter(name, "has an empty entry in its comma-separated list")
            entries += parts
    if len(entries) > MAX_ENTRIES:
        raise invalid_parameter(
            param.name, f"lists {len(entries)} patterns; the limit is {MAX_ENTRIES}"
        )
    for entry in entries:
        check_text(param.name, entry, param.max_length)
    return tuple(entries)


def _details(query: Mapping[str, Sequence[str]]) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """``details.<key>=<pattern>[,<pattern>...]`` parameters: (key, patterns) pairs."""
    details = []
    for name in query:
        if not name.startswith(DETAIL_PREFIX):
            continue
        key = name.removeprefix(DETAIL_PREFIX)
        if not _DETAIL_KEY.fullmatch(key):
            raise invalid_parameter(
                name[:80], "a detail key is 1 to 64 letters, digits, '_', '-' or '.'"
            )
        patterns = _patterns(query, Param(name, None, 256, ""))
        if "" in patterns:
            raise invalid_parameter(name, "is empty; use * for any value of the detail")
        details.append((key, patterns))
    if len(details) > MAX_DETAILS:
        raise invalid_parameter(
            "details", f"filters on {len(details)} detail keys; the limit is {MAX_DETAILS}"
        )
    return tuple(details)


def _actors(query: Mapping[str, Sequence[str]], name: str) -> tuple[str, ...]:
    patterns = _patterns(query, _BY_NAME[name])
    return () if patterns == ("",) else patterns  # author= alone means anyone


def _filter(query: Mapping[str, Sequence[str]]) -> EventFilter:
    routing_keys = _patterns(query, _BY_NAME["routing_key"])
    krefs = _patterns(query, _BY_NAME["kref"])
    for name, patterns, matcher in (
        ("routing_key", routing_keys, routing_key_matcher),
        ("kref", krefs, kref_matcher),
    ):
        for pattern in patterns:
            try:
                matcher(pattern)
            except ValueError as exc:
                raise invalid_parameter(name, str(exc)) from None
    return EventFilter(
        routing_keys,
        krefs,
        details=_details(query),
        authors=_actors(query, "author"),
        usernames=_actors(query, "username"),
    )


def check_text(name: str, value: str, max_length: int) -> None:
    """Reject values over ``max_length`` or holding control characters (CR, LF, NUL, ...)."""
    if len(value) > max_length:
        raise invalid_parameter(name, f"is {len(value)} characters long; the limit is {max_length}")
    for char in value:
        if unicodedata.category(char) == "Cc":
            raise invalid_parameter(
                name, f"contains the control character U+{ord(char):04X}, which is not allowed"
            )


def _start(value: str | None) -> tuple[StartKind, str | None]:
    if value is None or value == "" or value == "latest":
        return "latest", None
    if value == "beginning":
        return "beginning", None
    try:
        datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise invalid_parameter(
            "from", f"{value!r} is not latest, beginning or an ISO 8601 timestamp"
        ) from None
    return "timestamp", value


def _named(value: str | None) -> bool:
    if value is None or value.lower() in _FALSE:
        return False
    if value.lower() in _TRUE:
        return True
    raise invalid_parameter("named", f"{value!r} is not true or false")


def _quality(accept: str, *media_types: str) -> float:
    """The highest q the Accept header gives any of ``media_types`` (0 when none)."""
    return max((q for media, q in weights(accept) if media in media_types), default=0.0)


def _format(value: str | None, accept: str | None) -> StreamFormat:
    """``format=`` when given, else NDJSON if the Accept header prefers it to SSE."""
    if value is None or value == "":
        if not accept or _NDJSON not in accept.lower():
            return "sse"
        ndjson = _quality(accept, _NDJSON)
        return "ndjson" if ndjson > _quality(accept, "text/event-stream", "*/*") else "sse"
    if value == "ndjson":
        return "ndjson"
    if value == "sse":
        return "sse"
    raise invalid_parameter("format", f"{value!r} is not sse or ndjson")


def access_token_param(query: Mapping[str, Sequence[str]]) -> str | None:
    """The ``access_token`` parameter, checked (credentials are resolved by auth.py)."""
    return _one(query, _BY_NAME["access_token"])


def _cursor(name: str, value: str | None) -> str | None:
    """A resume point as the client sent it, checked, and decoded if the gateway encoded it."""
    if not value:
        return None
    if not value.startswith(ENCODED_PREFIX):
        check_text(name, value, MAX_CURSOR)
        return value
    check_text(name, value, MAX_ENCODED_CURSOR)
    try:
        cursor = decode_field(value)
    except ValueError as exc:
        raise invalid_parameter(name, str(exc)) from None
    if len(cursor) > MAX_CURSOR:
        raise invalid_parameter(name, f"decodes to more than {MAX_CURSOR} characters")
    return cursor


def _header_text(name: str, value: str | None) -> str | None:
    """A header as the client meant it: ASGI decodes headers as Latin-1, browsers send UTF-8."""
    if value is None or value.isascii():
        return value
    raw = value.encode("latin-1")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise invalid_parameter(
            name, f"is not UTF-8 (byte 0x{raw[exc.start]:02X} at position {exc.start})"
        ) from None


def parse_subscription(
    query: Mapping[str, Sequence[str]],
    last_event_id: str | None,
    credential: Credential,
    accept: str | None = None,
) -> Subscription:
    """Build a Subscription from query parameters and the Last-Event-ID header, or raise 400.

    ``last_event_id`` is the header as ASGI gives it (Latin-1 decoded).
    """
    # Both are checked, whichever wins.
    header = _cursor("Last-Event-ID", _header_text("Last-Event-ID", last_event_id))
    param = _cursor(*(_given(query, _BY_NAME["cursor"]) or ("cursor", None)))
    cursor = header or param
    start, timestamp = _start(_one(query, _BY_NAME["from"]))
    return Subscription(
        filter=_filter(query),
        cursor=cursor,
        start=start,
        from_timestamp=timestamp,
        named=_named(_one(query, _BY_NAME["named"])),
        credential=credential,
        format=_format(_one(query, _BY_NAME["format"]), accept),
        consumer_group=_one(query, _BY_NAME["consumer_group"]) or "",
    )


def parse_poll(query: Mapping[str, Sequence[str]]) -> tuple[int, float]:
    """(max_events, timeout) of a poll, checked, or raise 400."""
    max_param, timeout_param = POLL_PARAMS
    max_events = _number(max_param, _one(query, max_param), 100, 1, 1000)
    timeout = _number(timeout_param, _one(query, timeout_param), 25, 0, 60)
    return int(max_events), timeout


def _number(param: Param, value: str | None, default: float, low: float, high: float) -> float:
    if value is None or value == "":
        return default
    whole = param.name == "max_events"
    number = float(value) if (_WHOLE if whole else _DECIMAL).fullmatch(value) else None
    if number is None or not low <= number <= high:
        kind = "a whole number" if whole else "a number of seconds"
        raise invalid_parameter(param.name, f"{value!r} is not {kind} from {low:g} to {high:g}")
    return number


def openapi_parameters(extra: Sequence[Param] = ()) -> list[dict[str, Any]]:
    """A route's parameters for the OpenAPI page, from the same tables that validate them."""
    params: list[dict[str, Any]] = []
    for p in (*PARAMS, *extra):
        for name in (p.name, p.alias):
            if name:
                described = p.description if name == p.name else f"alias of {p.name}"
                params.append(
                    {
                        "name": name,
                        "in": "query",
                        "required": False,
                        "description": described,
                        "schema": {"type": "string", "maxLength": p.max_length},
                    }
                )
    params.append(
        {
            "name": "Last-Event-ID",
            "in": "header",
            "required": False,
            "description": "resume after this cursor; sent by EventSource on reconnect",
            "schema": {"type": "string", "maxLength": MAX_CURSOR},
        }
    )
    return params
