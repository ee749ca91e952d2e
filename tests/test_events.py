"""GET /events end to end: a real devserver, a real gateway, real SSE clients."""

from __future__ import annotations

import json
import re
import subprocess
import time

import httpx
import pytest

from gateway import sse
from tests.conftest import STATUS, DevServer, Gateway, data, read_events, unique_project


@pytest.fixture
def project(stack: tuple[DevServer, Gateway]) -> str:
    return unique_project()


EVENT_DATA = b'data: {"routing_key"'  # the data line of an event, not of a control event


def _beginning(project: str, **extra: str) -> dict[str, str]:
    return {"from": "beginning", "kref": f"kref://{project}/**", **extra}


def test_stream_headers_retry_line_and_ids_equal_cursors(
    stack: tuple[DevServer, Gateway], project: str
) -> None:
    devserver, gateway = stack
    cursors = devserver.publish("revision.created", f"kref://{project}/a/hero.model?r=1", count=3)
    with httpx.stream("GET", gateway.url + "/events", params=_beginning(project), timeout=10) as r:
        assert r.status_code == 200
        assert r.headers["content-type"] == "text/event-stream; charset=utf-8"
        assert r.headers["cache-control"] == "no-store"
        assert r.headers["x-accel-buffering"] == "no"
        lines = r.iter_lines()
        first = next(lines)
        assert first.startswith("retry: ")
        assert 2000 <= int(first.removeprefix("retry: ")) <= 3000  # base 2000 ms + <= 50% jitter
    events = read_events(gateway.url, 3, params=_beginning(project))
    assert [e.id for e in events] == cursors
    assert [d["cursor"] for d in data(events)] == cursors
    assert all(e.event == "message" for e in events)  # no event: field unless named=true


def test_every_data_field(stack: tuple[DevServer, Gateway], project: str) -> None:
    devserver, gateway = stack
    kref = f"kref://{project}/chars/hero.model?r=3"
    [cursor] = devserver.publish(
        "revision.tagged", kref, {"tag": "approved"}, author="u-42", username="mina"
    )
    [event] = read_events(gateway.url, 1, params=_beginning(project))
    body = json.loads(event.data)
    assert set(body) == {
        "routing_key",
        "kref",
        "timestamp",
        "author",
        "username",
        "details",
        "cursor",
    }
    assert body["routing_key"] == "revision.tagged"
    assert body["kref"] == kref
    assert body["author"] == "u-42"
    assert body["username"] == "mina"
    assert body["details"] == {"tag": "approved"}
    assert body["cursor"] == cursor
    assert body["timestamp"].endswith("Z") and body["timestamp"][:4].isdigit()
    assert "\n" not in event.data


HARD_VALUES = {
    "lf": "line one\nline two",
    "cr": "carriage\rreturn",
    "crlf": "windows\r\nline",
    "ls": "unicode\u2028line separator",
    "nel": "next\u0085line",
    "ps": "para\u2029graph",
    "quotes": "she said \"hi\" \\ 'there'",
    "sse": "\n\ndata: forged\nid: 0-0\n\n",
    "emoji": "🦊 kitsune",
}


def test_hard_payloads_stay_one_event_and_round_trip(
    stack: tuple[DevServer, Gateway], project: str
) -> None:
    devserver, gateway = stack
    devserver.publish("item.model.created", f"kref://{project}/狐/hero.model", HARD_VALUES)
    devserver.publish("item.model.created", f"kref://{project}/after.model", {"k": "v"})
    events = read_events(gateway.url, 2, params=_beginning(project))
    assert data(events)[0]["details"] == HARD_VALUES
    assert data(events)[1]["details"] == {"k": "v"}
    # The raw bytes too: one data line per event, no raw line breaks of any kind inside it.
    with httpx.stream("GET", gateway.url + "/events", params=_beginning(project), timeout=10) as r:
        raw = b""
        deadline = time.monotonic() + 10
        for chunk in r.iter_bytes():
            raw += chunk
            if raw.count(EVENT_DATA) >= 2 or time.monotonic() > deadline:
                break
    line = next(ln for ln in raw.split(b"\n") if ln.startswith(EVENT_DATA))
    text = line.decode()
    assert not any(c in text for c in "\r\u2028\u2029\u0085")
    assert json.loads(text.removeprefix("data: "))["details"] == HARD_VALUES


def test_resume_by_header_cursor_and_last_event_id(
    stack: tuple[DevServer, Gateway], project: str
) -> None:
    devserver, gateway = stack
    cursors = devserver.publish("revision.created", f"kref://{project}/x.model", count=5)
    kref = {"kref": f"kref://{project}/**"}
    by_header = read_events(gateway.url, 3, params=kref, headers={"Last-Event-ID": cursors[1]})
    by_cursor = read_events(gateway.url, 3, params={**kref, "cursor": cursors[1]})
    by_alias = read_events(gateway.url, 3, params={**kref, "last_event_id": cursors[1]})
    for events in (by_header, by_cursor, by_alias):
        assert [e.id for e in events] == cursors[2:]
    header_wins = read_events(
        gateway.url, 1, params={**kref, "cursor": cursors[0]}, headers={"Last-Event-ID": cursors[3]}
    )
    assert [e.id for e in header_wins] == cursors[4:]


def test_filters_and_start_reach_the_upstream_unchanged(
    stack: tuple[DevServer, Gateway], project: str
) -> None:
    devserver, gateway = stack
    cases = [
        ({"routing_key": "revision.*", "kref": f"kref://{project}/**/*.model"}, "latest", None),
        (
            {"routing_key_filter": "item.#", "kref_filter": "kref://p/**", "from": "beginning"},
            "from_beginning",
            True,
        ),
        ({"from": "2025-12-03T10:00:00Z"}, "from_timestamp", "2025-12-03T10:00:00Z"),
    ]
    # The hub in --auth none asks for everything and filters itself (--hub-filtering).
    covering = "--no-hub" not in gateway.args
    for params, position, value in cases:
        started = devserver.client().stats().streams_started
        with httpx.stream("GET", gateway.url + "/events", params=params, timeout=10) as r:
            assert r.status_code == 200
        with devserver.client() as c:
            if covering and value is None and c.stats().streams_started == started:
                continue  # it joined the hub's shared stream, opened by an earlier request
            request = c.recent_requests()[-1]
        routing_key = params.get("routing_key", params.get("routing_key_filter", ""))
        kref = params.get("kref", params.get("kref_filter", ""))
        assert request.routing_key_filter == ("" if covering else routing_key)
        assert request.kref_filter == ("" if covering else kref)
        assert not request.HasField("cursor")
        if value is None:
            assert request.WhichOneof("start_position") is None  # like the SDK: nothing = latest
        else:
            assert request.WhichOneof("start_position") == position
            assert getattr(request, position) == value


def test_filters_select_events(stack: tuple[DevServer, Gateway], project: str) -> None:
    devserver, gateway = stack
    devserver.publish("item.model.created", f"kref://{project}/a/hero.model")
    want = devserver.publish(
        "revision.tagged", f"kref://{project}/a/hero.model?r=1", {"tag": "approved"}
    )
    devserver.publish("revision.tagged", f"kref://{project}/a/hero.rig?r=1", {"tag": "approved"})
    events = read_events(
        gateway.url,
        1,
        params=_beginning(project, routing_key="revision.*", kref=f"kref://{project}/**/*.model"),
    )
    assert [e.id for e in events] == want


def test_named_events_carry_the_routing_key(stack: tuple[DevServer, Gateway], project: str) -> None:
    devserver, gateway = stack
    devserver.publish("revision.tagged", f"kref://{project}/a.model?r=1", {"tag": "published"})
    [event] = read_events(gateway.url, 1, params=_beginning(project, named="true"))
    assert event.event == "revision.tagged"


@pytest.mark.parametrize(
    ("params", "headers", "needle"),
    [
        ({"routing_key": "a" * 257}, {}, "routing_key"),
        ({"kref": "k" * 1025}, {}, "kref"),
        ({"cursor": "1" * 257}, {}, "cursor"),
        ({}, {"Last-Event-ID": "9" * 257}, "Last-Event-ID"),
        ({"routing_key": "a\nb"}, {}, "U+000A"),
        ({"kref": "kref://a\rb"}, {}, "U+000D"),
        ({"cursor": "1-\x00"}, {}, "U+0000"),
        ({"last_event_id": "1-\x1b"}, {}, "U+001B"),
        ({"from": "yesterday"}, {}, "from"),
        ({"named": "maybe"}, {}, "named"),
        ({"cursor": "1-0", "last_event_id": "2-0"}, {}, "more than once"),
    ],
)
def test_bad_input_is_a_400_with_the_envelope(
    stack: tuple[DevServer, Gateway], params: dict[str, str], headers: dict[str, str], needle: str
) -> None:
    _, gateway = stack
    r = httpx.get(gateway.url + "/events", params=params, headers=headers, timeout=10)
    assert r.status_code == 400
    assert r.headers["content-type"] == "application/json"
    error = r.json()["error"]
    assert error["code"] == "invalid_parameter"
    assert error["retryable"] is False
    assert needle in error["message"]


@pytest.mark.parametrize(
    ("raw", "needle"),
    [
        # UTF-8 "€" then U+0085: read as Latin-1 the "€" alone would look like U+0082.
        ("€\u0085".encode(), "U+0085"),
        (b"1-\xff", "not UTF-8 (byte 0xFF"),
    ],
)
def test_a_non_ascii_last_event_id_is_named_as_sent(
    stack: tuple[DevServer, Gateway], raw: bytes, needle: str
) -> None:
    _, gateway = stack
    r = httpx.get(gateway.url + "/events", headers={"Last-Event-ID": raw}, timeout=10)
    assert r.status_code == 400
    message = r.json()["error"]["message"]
    assert message.startswith("Last-Event-ID: ") and needle in message
    assert "U+0082" not in message


def test_every_error_answer_uses_the_envelope(stack: tuple[DevServer, Gateway]) -> None:
    _, gateway = stack
    for method, path, status, code in [
        ("GET", "/no/such/page", 404, "not_found"),
        ("POST", "/no/such/page", 404, "not_found"),
        ("POST", "/app.js", 405, "method_not_allowed"),
        ("POST", "/events", 405, "method_not_allowed"),
        ("DELETE", "/healthz", 405, "method_not_allowed"),
        ("PUT", "/", 405, "method_not_allowed"),
    ]:
        r = httpx.request(method, gateway.url + path, timeout=10)
        assert r.status_code == status, (method, path)
        assert r.headers["content-type"] == "application/json"
        error = r.json()["error"]
        assert error["code"] == code and path in error["message"] and error["retryable"] is False
        assert "detail" not in r.json()


def test_head_answers_as_get_without_a_body(stack: tuple[DevServer, Gateway]) -> None:
    devserver, gateway = stack
    opened = devserver.client().stats().streams_started
    for path in ["/healthz", "/metrics", "/"]:
        r = httpx.head(gateway.url + path, timeout=10)
        get = httpx.get(gateway.url + path, timeout=10)
        assert r.status_code == 200 and r.content == b"", path
        assert r.headers["content-type"] == get.headers["content-type"], path
    r = httpx.head(gateway.url + "/events?routing_key=a.*", timeout=10)
    assert r.status_code == 200 and r.content == b""
    assert r.headers["content-type"] == "text/event-stream; charset=utf-8"
    assert r.headers["cache-control"] == "no-store"
    # The same checks as GET, and no upstream stream opened for a HEAD.
    assert httpx.head(gateway.url + "/events?named=maybe", timeout=10).status_code == 400
    assert devserver.client().stats().streams_started == opened


def test_repeated_parameter_is_a_400(stack: tuple[DevServer, Gateway]) -> None:
    _, gateway = stack
    r = httpx.get(gateway.url + "/events?from=latest&from=beginning", timeout=10)
    assert r.status_code == 400
    assert "more than once" in r.json()["error"]["message"]


def test_heartbeats_on_an_idle_stream(stack: tuple[DevServer, Gateway], project: str) -> None:
    _, gateway = stack  # started with --heartbeat 0.5
    comments = 0
    start = time.monotonic()
    with httpx.stream(
        "GET", gateway.url + "/events", params={"kref": f"kref://{project}/**"}, timeout=10
    ) as r:
        for line in r.iter_lines():
            if line.startswith(":"):
                comments += 1
                if comments == 2:
                    break
    assert comments == 2
    assert time.monotonic() - start < 5


def test_curl_reads_the_stream(stack: tuple[DevServer, Gateway], project: str) -> None:
    devserver, gateway = stack
    cursors = devserver.publish("revision.created", f"kref://{project}/c.model", count=2)
    url = f"{gateway.url}/events?from=beginning&kref=kref://{project}/**"
    proc = subprocess.Popen(
        ["curl", "-sN", "--max-time", "20", url], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    ids: list[str] = []
    frame_id = ""
    try:
        for line in proc.stdout:
            # An event's frame has data; an id-only frame (past other projects'
            # events) only moves the id.
            if line.startswith("id: "):
                frame_id = line.strip().removeprefix("id: ")
            elif line.startswith("data: ") and frame_id:
                ids.append(frame_id)
                if len(ids) == 2:
                    break
            elif line == "\n":
                frame_id = ""
    finally:
        proc.kill()
        proc.wait()
    assert ids == cursors


def test_other_endpoints(stack: tuple[DevServer, Gateway]) -> None:
    _, gateway = stack
    assert httpx.get(gateway.url + "/healthz").json()["status"] == "ok"
    assert httpx.get(gateway.url + "/readyz").status_code == 200
    caps = httpx.get(gateway.url + "/capabilities").json()
    assert caps["tier"] == "studio" and caps["supports_cursor"] is True
    assert caps["max_retention_hours"] == 24
    page = httpx.get(gateway.url + "/")
    assert (
        page.status_code == 200
        and "EventSource" in httpx.get(gateway.url + "/kumiho-events.js").text
    )
    openapi = httpx.get(gateway.url + "/openapi.json").json()
    names = {p["name"] for p in openapi["paths"]["/events"]["get"]["parameters"]}
    assert {
        "routing_key",
        "kref_filter",
        "cursor",
        "last_event_id",
        "from",
        "named",
        "Last-Event-ID",
    } <= names
    for path in ("/capabilities", "/readyz"):
        assert "503" in openapi["paths"][path]["get"]["responses"], path
    docs = httpx.get(gateway.url + "/docs")
    assert docs.status_code == 200
    # Swagger UI from the package: every asset on this host, none from a CDN.
    assets = re.findall(r'(?:src|href)="([^"]+)"', docs.text)
    assert assets and all(a.startswith("/") and not a.startswith("//") for a in assets), assets
    for asset in assets:
        assert httpx.get(gateway.url + asset).status_code == 200, asset


def test_a_hostile_routing_key_cannot_forge_an_event_for_any_reader(
    stack: tuple[DevServer, Gateway], project: str
) -> None:
    devserver, gateway = stack
    hostile = "x\u2028\u2028data: FORGED\u2028\u2028event: y"
    [cursor] = devserver.publish(hostile, f"kref://{project}/a.model")
    params = _beginning(project, named="true", routing_key="x*")
    with httpx.stream("GET", gateway.url + "/events", params=params, timeout=10) as r:
        text = ""
        for chunk in r.iter_text():
            text += chunk
            if EVENT_DATA.decode() in text and text.endswith("\n\n"):
                break
    # Read as requests.iter_lines-style readers do: str.splitlines.
    frames = "\n".join(text.splitlines()).split("\n\n")
    events = [f.strip().split("\n") for f in frames if "data:" in f and STATUS not in f]
    assert len(events) == 1  # no second, forged event
    fields = dict(line.split(": ", 1) for line in events[0])
    assert set(fields) == {"id", "event", "data"}
    assert fields["id"] == cursor
    assert sse.decode_field(fields["event"]) == hostile  # encoded, reversibly
    assert json.loads(fields["data"])["routing_key"] == hostile


def test_a_filter_the_upstream_rejects_is_a_400_before_any_byte(
    stack: tuple[DevServer, Gateway],
) -> None:
    _, gateway = stack
    r = httpx.get(gateway.url + "/events", params={"routing_key": "item.hero**"}, timeout=10)
    assert r.status_code == 400
    error = r.json()["error"]
    assert error["code"] == "invalid_parameter" and "whole segment" in error["message"]


def test_patterns_and_cursors_that_once_crashed_the_reference_upstream(
    stack: tuple[DevServer, Gateway], project: str
) -> None:
    devserver, gateway = stack
    [cursor] = devserver.publish("revision.created", f"kref://{project}/a/b.model")
    [event] = read_events(gateway.url, 1, params=_beginning(project, routing_key="**.**"))
    assert event.id == cursor
    [event] = read_events(
        gateway.url, 1, params={"from": "beginning", "kref": f"kref://{project}/**/**"}
    )
    assert event.id == cursor
    reset, *_ = read_events(
        gateway.url,
        1,
        params={"cursor": "1-9223372036854775808", "kref": f"kref://{project}/**"},
    )
    assert reset.event == "gateway.reset"
    assert json.loads(reset.data)["reason"] == "cursor_invalid"


def _ndjson_lines(
    gateway: Gateway, count: int, params: dict[str, str], headers: dict[str, str]
) -> tuple[str, list[str]]:
    """Read an NDJSON stream until ``count`` event lines: (content type, every raw line)."""
    lines: list[str] = []
    with httpx.stream(
        "GET", gateway.url + "/events", params=params, headers=headers, timeout=10
    ) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            lines.append(line)
            if sum('"routing_key"' in ln for ln in lines) >= count:
                return r.headers["content-type"], lines
    raise AssertionError(f"the stream ended after {lines}")


def test_ndjson_for_scripts_one_object_per_line_and_resume_by_cursor(
    stack: tuple[DevServer, Gateway], project: str
) -> None:
    devserver, gateway = stack
    kref = f"kref://{project}/nd/hero.model"
    cursors = devserver.publish("item.model.created", kref, HARD_VALUES, count=3)
    for params, headers in [
        (_beginning(project), {"Accept": "application/x-ndjson"}),
        (_beginning(project, format="ndjson"), {}),
    ]:
        content_type, lines = _ndjson_lines(gateway, 3, params, headers)
        assert content_type == "application/x-ndjson"
        objects = [json.loads(line) for line in lines if line]  # blank lines: heartbeats
        assert all(line.isascii() for line in lines)  # no payload can split a line
        signals = [o for o in objects if "gateway" in o]
        events = [o for o in objects if "routing_key" in o]
        assert signals[0]["gateway"] == "status" and signals[0]["upstream"] == "live"
        assert [e["cursor"] for e in events] == cursors
        assert events[0]["details"] == {**HARD_VALUES, "n": "0"}  # publish numbers copies
    # Resume as a script does: ?cursor= with the last cursor it printed.
    _, lines = _ndjson_lines(
        gateway, 1, {"cursor": cursors[0], "kref": f"kref://{project}/**", "format": "ndjson"}, {}
    )
    assert [json.loads(ln)["cursor"] for ln in lines if '"routing_key"' in ln] == [cursors[1]]
    assert httpx.get(gateway.url + "/events?format=xml", timeout=10).status_code == 400


def test_ndjson_heartbeats_are_blank_lines(stack: tuple[DevServer, Gateway], project: str) -> None:
    _, gateway = stack  # --heartbeat 0.5
    with httpx.stream(
        "GET",
        gateway.url + "/events",
        params={"kref": f"kref://{project}/**", "format": "ndjson"},
        timeout=10,
    ) as r:
        lines = r.iter_lines()
        assert json.loads(next(lines))["gateway"] == "status"
        assert [next(lines), next(lines)] == ["", ""]
