"""Whatever a client sends: an error envelope or a stream, never a 500, never an ERROR line.

Requests go byte for byte (``raw_request``) to one real gateway over a real
devserver, as an attacker's script would send them, in two set-ups: no
credentials with the hub, and passthrough credentials without it.
"""

from __future__ import annotations

import base64
import os
import signal
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import quote, quote_from_bytes

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.subscription import PARAMS, POLL_PARAMS
from tests.conftest import (
    FAST,
    DevServer,
    Gateway,
    RawAnswer,
    raw_request,
    wait_until,
)

# Per set-up; KUMIHO_HOSTILE_EXAMPLES=1000 for a longer hunt.
EXAMPLES = int(os.environ.get("KUMIHO_HOSTILE_EXAMPLES", "120"))
TOKEN = b"tok-a"
# (devserver flags, gateway flags): an open upstream, with compressed answers;
# one that checks tokens, behind a gateway that also answers cross-origin preflights.
SETUPS = {
    "none-hub": ((), ("--auth", "none", "--compression", "gzip")),
    "passthrough-no-hub": (
        ("--token", "tok-a=studio-a"),
        ("--auth", "passthrough", "--no-hub", "--cors-origins", "http://app.example"),
    ),
}
STREAMS = ("/events", "/api/v1/events/stream")
POLLS = ("/events/poll", "/api/v1/events/poll")


@dataclass
class Target:
    gateway: Gateway
    credential: list[tuple[bytes, bytes]]  # what a client with a valid token sends

    def errors_logged_since(self, offset: int) -> list[str]:
        """ERROR (or worse) lines and tracebacks the gateway logged after ``offset``.

        A request of its own marks the end: once its access line is in the log,
        so is anything the requests before it logged.
        """
        marker = uuid.uuid4().hex
        httpx.get(self.gateway.url + "/healthz", params={"probe": marker}, timeout=10)
        wait_until(lambda: marker in self.gateway.log(), 10, "the probe's access line")
        lines = self.gateway.log()[offset:].splitlines()
        return [
            line for line in lines if line.startswith(("ERROR", "CRITICAL")) or "Traceback" in line
        ]

    def log_size(self) -> int:
        return len(self.gateway.log())


@pytest.fixture(scope="module", params=list(SETUPS))
def target(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[Target]:
    tmp = tmp_path_factory.mktemp("hostile")
    devserver_flags, gateway_flags = SETUPS[request.param]
    devserver = DevServer(tmp / "devserver.sqlite3", list(devserver_flags)).start()
    gateway = Gateway(devserver.address, tmp / "gateway.log", [*FAST, *gateway_flags])
    gateway.start()
    yield Target(gateway, [(b"Authorization", b"Bearer " + TOKEN)])
    gateway.stop(signal.SIGKILL)
    devserver.stop(signal.SIGKILL)


def _encoded(raw: bytes) -> str:
    """The ``b64~`` form of any bytes, as the gateway writes an id (unpadded URL-safe base64)."""
    return "b64~" + base64.urlsafe_b64encode(raw).decode().rstrip("=")


# Lone surrogates (U+D800, U+DFFF, one in the middle of text) in UTF-8's
# "surrogatepass" form: no Unicode string, so nothing an upstream could hold.
LONE_SURROGATES = ("b64~7aCA", _encoded(b"\xed\xbf\xbf"), _encoded(b"1-\xed\xa0\x800"))


def test_an_encoded_lone_surrogate_is_a_400_wherever_a_cursor_goes(target: Target) -> None:
    offset = target.log_size()
    for path in (*STREAMS, *POLLS):
        for cursor in LONE_SURROGATES:
            for name in ("Last-Event-ID", "cursor", "last_event_id"):
                header = [(name.encode(), cursor.encode())] if name == "Last-Event-ID" else []
                query = "" if header else f"{name}={quote(cursor)}"
                answer = raw_request(
                    target.gateway.url,
                    f"{path}?timeout=0&{query}".encode(),
                    [*target.credential, *header],
                )
                assert answer is not None and answer.status == 400, (path, cursor, name, answer)
                error = answer.envelope()
                assert error["code"] == "invalid_parameter", error
                assert error["message"].startswith(f"{name}: "), error
    assert target.errors_logged_since(offset) == []


@pytest.mark.parametrize(
    ("path", "headers"),
    [
        (b"/events", [(b"Last-Event-ID", b"1-\x01")]),  # control characters the parser refuses
        (b"/events/poll", [(b"Cookie", b"kumiho_token=a\x00b")]),
        (b"/healthz", [(b"Accept", b"text/\x7fplain")]),
        (b"/events?a b", []),  # a space inside the request target
        (b"/events", [(b"Bad Name", b"x")]),  # a space inside a header name
    ],
)
def test_a_request_the_http_parser_refuses_is_a_400_in_the_envelope(
    target: Target, path: bytes, headers: list[tuple[bytes, bytes]]
) -> None:
    offset = target.log_size()
    answer = raw_request(target.gateway.url, path, headers)
    assert answer is not None and answer.status == 400, answer
    assert answer.envelope()["code"] == "malformed_request"
    assert answer.headers["connection"] == "close"
    assert target.errors_logged_since(offset) == []


# What the property test throws. Parameter names: every one the API knows, a
# detail filter, and anything at all.
_KNOWN = [n for p in (*PARAMS, *POLL_PARAMS) for n in (p.name, p.alias) if n]
_NAMES = st.one_of(
    st.sampled_from([*_KNOWN, "details.kind", "details.", "details.a*", "format", "from"]),
    st.text(max_size=12),
)
_B64 = st.one_of(
    st.binary(max_size=24).map(_encoded),  # any bytes: text or not
    st.sampled_from(LONE_SURROGATES),
    st.text(max_size=16).map(lambda t: "b64~" + t),  # not base64 at all
)
_VALUES = st.one_of(
    st.text(max_size=40),  # any Unicode, sent as UTF-8
    st.binary(max_size=24),  # any bytes, mostly not UTF-8
    _B64,
    # Numbers as int() and float() read them, and some they do not; small, so a
    # valid timeout never holds a poll long.
    st.sampled_from(["0", "0.05", "1", "1000", "1001", "-1", "+1", "1_0", " 1 ", "\u0661"]),
    st.sampled_from(["1e0", "inf", "nan", "0x1", "9" * 9, "", "*", "**", "a.**", ",", ","]),
    st.sampled_from(["beginning", "latest", "true", "ndjson", "sse", "2026-01-02T03:04:05Z"]),
    st.sampled_from(["kref://p/**", "kref://p/**/*.model", "revision.*", "1-0", "0-0"]),
)
# A header value as it may reach the server: visible bytes, inner spaces and tabs.
_FIELD = st.binary(max_size=40).map(
    lambda raw: bytes(b for b in raw if b in (9, 32) or 0x21 <= b <= 0x7E or b >= 0x80).strip()
)
_HEADERS = st.one_of(
    st.tuples(st.sampled_from([b"Last-Event-ID"]), st.one_of(_FIELD, _B64.map(str.encode))),
    st.tuples(
        st.sampled_from([b"Authorization"]),
        st.one_of(_FIELD, _FIELD.map(lambda v: b"Bearer " + v), st.just(b"Bearer tok-a")),
    ),
    st.tuples(st.sampled_from([b"X-Kumiho-Token"]), st.one_of(_FIELD, st.just(TOKEN))),
    st.tuples(
        st.sampled_from([b"Cookie"]),
        st.one_of(_FIELD, _FIELD.map(lambda v: b"kumiho_token=" + v)),
    ),
    st.tuples(
        st.sampled_from([b"Accept"]),
        st.one_of(
            _FIELD,
            st.sampled_from([b"application/x-ndjson", b"text/event-stream", b"*/*"]).flatmap(
                lambda media: _FIELD.map(lambda q: media + b";q=" + q)
            ),
        ),
    ),
    st.tuples(
        st.sampled_from([b"Accept-Encoding"]),
        st.one_of(
            _FIELD,
            st.sampled_from([b"gzip", b"x-gzip;q=0", b"*", b"identity;q=0", b"br", b"a" * 300]),
            st.sampled_from([b"gzip", b"*", b"identity"]).flatmap(
                lambda coding: _FIELD.map(lambda q: coding + b";q=" + q)
            ),
        ),
    ),
    st.tuples(st.sampled_from([b"x-correlation-id", b"x-tenant-id"]), _FIELD),
    st.tuples(
        st.sampled_from([b"Origin"]),
        st.one_of(_FIELD, st.sampled_from([b"http://app.example", b"null"])),
    ),
    st.tuples(
        st.sampled_from([b"Access-Control-Request-Method", b"Access-Control-Request-Headers"]),
        st.one_of(_FIELD, st.sampled_from([b"GET", b"last-event-id, authorization"])),
    ),
)


def _quoted(part: str | bytes) -> str:
    return quote_from_bytes(part, safe="") if isinstance(part, bytes) else quote(part, safe="")


@st.composite
def _requests(draw: st.DrawFn, paths: list[str]) -> tuple[bytes, bytes, list[tuple[bytes, bytes]]]:
    """(method, target, headers) of one hostile request."""
    # Mostly GETs of the routes that parse the most: streams and polls.
    method = draw(st.sampled_from([b"GET"] * 6 + [b"HEAD", b"OPTIONS", b"POST"]))
    if draw(st.integers(0, 9)) == 0:
        path = "/" + _quoted(draw(st.text(max_size=12)))  # anywhere at all
    else:
        path = draw(st.sampled_from([*paths, *STREAMS, *STREAMS, *POLLS, *POLLS]))
    cursor = st.tuples(st.sampled_from(["cursor", "last_event_id"]), _B64)
    pairs = draw(st.lists(st.one_of(cursor, st.tuples(_NAMES, _VALUES)), max_size=6))
    query = "&".join(f"{_quoted(name)}={_quoted(value)}" for name, value in pairs)
    # Now and then, characters left as they are: '%' escapes that are none, ';', '+'.
    query += draw(st.sampled_from(["", "&%zz=%", "&a;b=c+d", "&=", "&&", "&details.%E2%80%A8=x"]))
    headers = draw(st.lists(_HEADERS, max_size=5))
    return method, f"{path}?{query}".encode(), headers


def _paths(gateway: Gateway) -> list[str]:
    """Every route the app lists, and the dashboard's and the docs' pages."""
    spec = httpx.get(gateway.url + "/openapi.json", timeout=10).json()
    return [*spec["paths"], "/", "/index.html", "/docs", "/openapi.json"]


def test_no_request_gets_a_500_or_an_error_in_the_log(target: Target) -> None:
    """Random query strings, headers and b64~ values at every route: never a 500, never ERROR.

    Each answer is a stream, a success of its route, or an error envelope.
    """
    paths = _paths(target.gateway)
    assert {*STREAMS, *POLLS} <= set(paths)

    @settings(max_examples=EXAMPLES, deadline=None)
    @given(request=_requests(paths), with_credential=st.booleans())
    def hostile(
        request: tuple[bytes, bytes, list[tuple[bytes, bytes]]], with_credential: bool
    ) -> None:
        method, path, headers = request
        offset = target.log_size()
        answer = raw_request(
            target.gateway.url,
            path,
            [*target.credential, *headers] if with_credential else headers,
            method=method,
            deadline=5,
        )
        if answer is None:  # a long poll with a valid timeout, still waiting: no error
            assert method == b"GET" and path.split(b"?")[0].endswith(b"/poll"), request
        else:
            _judge(answer, method, path)
        assert target.errors_logged_since(offset) == [], request

    hostile()


def _judge(answer: RawAnswer, method: bytes, path: bytes) -> None:
    assert answer.status != 500 and answer.status < 600, answer
    if answer.status < 400:
        return
    if path.startswith(b"/readyz?") and answer.status == 503:
        return  # readiness has its own body ({"status": ...}), not an error
    assert answer.headers.get("content-type") == "application/json", answer
    if method != b"HEAD":
        answer.envelope()


@pytest.mark.parametrize("method", [b"POST", b"OPTIONS", b"DELETE", b"GET"])
@pytest.mark.parametrize("path", [b"/%00", b"/a%00b.js", b"/" + b"a" * 300, b"/x/" + b"b" * 5000])
def test_a_path_no_file_can_have_is_a_404_for_every_method(
    target: Target, method: bytes, path: bytes
) -> None:
    offset = target.log_size()
    answer = raw_request(target.gateway.url, path, method=method)
    assert answer is not None and answer.status == 404, answer
    assert answer.envelope()["code"] == "not_found"
    assert target.errors_logged_since(offset) == []
