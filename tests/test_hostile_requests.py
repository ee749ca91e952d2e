"""Whatever a client sends: an error envelope or a stream, never a 500, never an ERROR line.

Requests go byte for byte (``raw_request``) to one real gateway over a real
devserver, as an attacker's script would send them, in two set-ups: no
credentials with the hub, and passthrough credentials without it.
"""

from __future__ import annotations

import base64
import signal
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import quote

import httpx
import pytest

from tests.conftest import (
    FAST,
    DevServer,
    Gateway,
    raw_request,
    wait_until,
)

TOKEN = b"tok-a"
# (devserver flags, gateway flags): an open upstream; one that checks tokens.
SETUPS = {
    "none-hub": ((), ("--auth", "none")),
    "passthrough-no-hub": (
        ("--token", "tok-a=studio-a"),
        ("--auth", "passthrough", "--no-hub"),
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
