"""No credential in any log line, /metrics, response body or header, however it is sent.

Real processes: a devserver that maps bearer tokens to tenants, gateways at
``--log-level debug`` (the most verbose level the gateway accepts; uvicorn's
access log is on) in passthrough and in service mode, and httpx and curl on
127.0.0.1. Every credential goes in the Authorization header, in the
``kumiho_token`` cookie and in the query under every spelling of
``access_token`` the app decodes (and a few it does not), on /events,
/capabilities, a 404 path and requests that end in a 400; accepted, unknown,
revoked and denied tokens alike. Each request carries ``probe=<n>``, so its
access-log line can be found: the line must be there, with ``***`` where
each credential value was, and no form of any secret may be anywhere.

The secrets are built from distinctive pieces joined by characters a query
may carry unencoded (``;``, ``"``, ``/``): a redaction that stops at one of
them leaves a piece behind, and each piece is looked for on its own.
"""

from __future__ import annotations

import contextlib
import re
import subprocess
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from urllib.parse import quote

import httpx
import pytest

from tests.conftest import BOTH_MODES, FAST, DevServer, Gateway, unique_project, wait_until

pytestmark = BOTH_MODES

# Passthrough: tokens the devserver knows (studio-a), does not know, revokes, denies.
GOOD = "CANARY-good-a1b2c3.SIG-good-Zx9Qw~e"
ODD = 'CANARY-odd-4e1b;TAIL-odd-77aa"QUOTE-odd-9d1c/SLASH-odd-7c2e+PLUS-odd-3f0d'
UNKNOWN = "CANARY-unknown-5b2d.SIG-unknown-8a7b"
REVOKED = "CANARY-revoked-6c3e.SIG-revoked-1f2e"
DENIED = "CANARY-denied-7d4f.SIG-denied-3c4d"
MIDSTREAM = "CANARY-midstream-8e5a.SIG-midstream-5e6f"
# Service: the gateway's keys, a wrong key, and the gateway's own upstream token.
KEY = "gwkey-CANARY-1a2b3c.KEYTAIL-9f8e7d"
ODD_KEY = 'gwkey-CANARY-odd-5a6b;KEYTAIL-odd-7c8d"QUOTE-key-0e1f'
WRONG_KEY = "gwkey-CANARY-wrong-2b3c.WRONGTAIL-4d5e"
SERVICE_TOKEN = "svc-CANARY-upstream-6f7a.SVCTAIL-8b9c"


def every_char(text: str, *, lower: bool = False) -> str:
    """Every byte percent-encoded: ``ab`` -> ``%61%62``."""
    pattern = "%{:02x}" if lower else "%{:02X}"
    return "".join(pattern.format(b) for b in text.encode())


# Every spelling of the parameter's name that the app decodes to access_token.
NAMES = {
    "literal": "access_token",
    "escaped underscore": "access%5Ftoken",
    "escaped underscore, lower-case hex": "access%5ftoken",
    "escaped first letter": "%61ccess_token",
    "mixed escapes": "%61ccess%5Ft%6Fken",
    "every character escaped": every_char("access_token"),
    "every character escaped, lower-case hex": every_char("access_token", lower=True),
}


def as_is(secret: str) -> str:
    """The value as a client may send it: only what a query cannot carry raw is escaped."""
    return quote(secret, safe=";/~")


# Every way of spelling the value.
VALUES: dict[str, Callable[[str], str]] = {
    "as is": as_is,
    "percent-encoded": lambda s: quote(s, safe=""),
    "every character escaped": every_char,
    "every character escaped, lower-case hex": lambda s: every_char(s, lower=True),
}


def forms(secret: str) -> set[str]:
    """What must never be seen: the secret, its encodings, and each distinctive piece of it."""
    pieces = [p for p in re.split(r"[^A-Za-z0-9-]", secret) if len(p) >= 8]
    found = {secret, quote(secret, safe=""), as_is(secret)}
    for text in (secret, *pieces):
        found |= {text, every_char(text), every_char(text, lower=True)}
    return found


Pair = tuple[str, str]  # (as sent, as the access log must show it)


def cred(name: str, value: str) -> Pair:
    """A query pair whose value is a credential: the log shows ``name=***``."""
    return f"{name}={value}", f"{name}=***"


def plain(name: str, value: str) -> Pair:
    return f"{name}={value}", f"{name}={value}"


@dataclass
class Probe:
    what: str
    target: str  # path and query, byte for byte as sent
    logged: str  # the same as the access log must show it
    status: int
    headers: dict[str, str]
    curl: bool


@dataclass
class Answer:
    status: int
    headers: str
    body: bytes


@dataclass
class Probes:
    """Requests to send, each findable in the access log by its ``probe=<n>``."""

    items: list[Probe] = field(default_factory=list)

    def add(
        self,
        what: str,
        path: str,
        pairs: Iterable[Pair],
        status: int,
        headers: dict[str, str] | None = None,
        *,
        curl: bool = False,
    ) -> None:
        marker = f"probe={len(self.items)}"
        sent, logged = [marker], [marker]
        for s, lg in pairs:
            sent.append(s)
            logged.append(lg)
        self.items.append(
            Probe(
                what,
                f"{path}?{'&'.join(sent)}",
                f"{path}?{'&'.join(logged)}",
                status,
                dict(headers or {}),
                curl,
            )
        )

    def query_spellings(self, path: str, secret: str, status: int, *extra: Pair) -> None:
        """The secret under every name spelling, and under the literal name every value spelling."""
        for how, name in NAMES.items():
            self.add(f"{path} ?{how} name", path, [*extra, cred(name, as_is(secret))], status)
        for how, spell in VALUES.items():
            self.add(
                f"{path} ?access_token {how}",
                path,
                [*extra, cred("access_token", spell(secret))],
                status,
            )
        both = every_char("access_token", lower=True)
        self.add(f"{path} ?all escaped", path, [cred(both, every_char(secret)), *extra], status)

    def channels(self, path: str, secret: str, status: int, *extra: Pair) -> None:
        """The secret in the headers (four spellings) and the cookie (three spellings)."""
        for what, headers in (
            ("hosted API's header", {"X-Kumiho-Token": secret}),
            ("header", {"Authorization": f"Bearer {secret}"}),
            ("header, lower-case scheme", {"authorization": f"bearer {secret}"}),
            ("header, upper-case, padded", {"AUTHORIZATION": f"BEARER    {secret}"}),
            ("cookie", {"Cookie": f"kumiho_token={secret}"}),
            ("cookie among others", {"Cookie": f"theme=dark; kumiho_token={secret}; lang=en"}),
            ("quoted cookie", {"Cookie": f'kumiho_token="{secret}"'}),
        ):
            self.add(f"{path} {what}", path, extra, status, headers)


def send(gateway: Gateway, probe: Probe) -> Answer:
    """Send one probe exactly as written; an accepted stream is read up to its first event."""
    url = gateway.url + probe.target
    if probe.curl:
        args = ["curl", "-sS", "-g", "-i", "--max-time", "15", url]
        for name, value in probe.headers.items():
            args += ["-H", f"{name}: {value}"]
        out = subprocess.run(args, capture_output=True, check=True, timeout=30).stdout
        head, _, body = out.partition(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        return Answer(status, head.decode("latin-1"), body)
    assert httpx.URL(url).raw_path == probe.target.encode(), "httpx would change the target"
    with (
        httpx.Client(timeout=15) as client,
        client.stream("GET", url, headers=probe.headers) as r,
    ):
        headers = "\n".join(f"{k}: {v}" for k, v in r.headers.multi_items())
        if not r.headers.get("content-type", "").startswith("text/event-stream"):
            return Answer(r.status_code, headers, r.read())
        body = b""
        deadline = time.monotonic() + 15
        for chunk in r.iter_raw():  # heartbeats (FAST) keep chunks coming
            body += chunk
            if b"\ndata:" in b"\n" + body and body.endswith(b"\n\n"):
                break
            assert time.monotonic() < deadline, f"{probe.what}: no event in 15s: {body!r}"
        return Answer(r.status_code, headers, body)


def assert_hidden(secrets: Iterable[str], places: dict[str, str]) -> None:
    looked_for = set().union(*(forms(s) for s in secrets))
    for where, text in places.items():
        leaked = sorted(f for f in looked_for if f in text)
        assert not leaked, f"{leaked} in {where}:\n{text[:4000]}"


def run_probes(gateway: Gateway, probes: Probes) -> dict[str, str]:
    """Send every probe, check its status; the places each answer could leak into."""
    places: dict[str, str] = {}
    for probe in probes.items:
        answer = send(gateway, probe)
        assert answer.status == probe.status, (probe.what, answer.status, answer.body[:500])
        if answer.status == 200 and probe.target.startswith("/events"):
            assert b"data:" in answer.body, (probe.what, answer.body)  # an event came through
        places[f"{probe.what} ({probe.target[:60]}): headers"] = answer.headers
        places[f"{probe.what} ({probe.target[:60]}): body"] = answer.body.decode("latin-1")
    return places


def assert_logged(gateway: Gateway, probes: Probes) -> str:
    """Every probe's access-log line is there, masked; returns the whole log."""

    def line(probe: Probe) -> str:
        return f'"GET {probe.logged} HTTP/1.1" {probe.status} '

    with contextlib.suppress(AssertionError):  # the assertion below says which are missing
        wait_until(
            lambda: all(line(p) in gateway.log() for p in probes.items), 10, "the access log"
        )
    log = gateway.log()
    missing = [line(p) for p in probes.items if line(p) not in log]
    assert not missing, f"not in the log: {missing}\n{log[-4000:]}"
    assert "DEBUG:" in log  # the most verbose level really was on
    return log


@pytest.fixture
def devserver(make_devserver: Callable[..., DevServer]) -> DevServer:
    tokens = [
        *(f"{t}=studio-a" for t in (GOOD, ODD, REVOKED, DENIED)),
        f"{MIDSTREAM}=studio-m",
        f"{SERVICE_TOKEN}=studio-b",
    ]
    args = [a for t in tokens for a in ("--token", t)]
    return make_devserver(*args, "--deny-token", DENIED)


def read_then_revoke(devserver: DevServer, gateway: Gateway, token: str) -> Answer:
    """An accepted live stream, read for a moment (one event), then its token revoked."""
    with (
        httpx.Client(timeout=15) as client,
        client.stream(
            "GET",
            gateway.url + "/events?probe=live",
            headers={"Authorization": f"Bearer {token}"},
        ) as r,
    ):
        assert r.status_code == 200
        chunks = r.iter_raw()
        body = next(chunks)
        wait_until(lambda: devserver.open_streams() == 1, 10, "the upstream stream")
        devserver.publish(
            "revision.created", f"kref://{unique_project()}/a.model", tenant="studio-m"
        )
        for chunk in chunks:
            body += chunk
            if b"\ndata:" in body:
                break
        with devserver.client() as c:
            c.revoke_token(token)
        body += b"".join(chunks)  # the stream ends by itself after the error
        headers = "\n".join(f"{k}: {v}" for k, v in r.headers.multi_items())
    assert b"event: gateway.error" in body and b"unauthenticated" in body, body
    return Answer(200, headers, body)


def test_passthrough_never_shows_a_token(
    devserver: DevServer, make_gateway: Callable[..., Gateway]
) -> None:
    gateway = make_gateway(
        devserver.address, "--auth", "passthrough", "--log-level", "debug", *FAST
    )
    live = read_then_revoke(devserver, gateway, MIDSTREAM)
    devserver.publish("revision.created", f"kref://{unique_project()}/x.model", tenant="studio-a")
    with devserver.client() as c:
        c.revoke_token(REVOKED)
    beginning = plain("from", "beginning")
    probes = Probes()
    # Accepted: every spelling, every place, on /events and /capabilities.
    probes.query_spellings("/events", GOOD, 200, beginning)
    probes.channels("/events", GOOD, 200, beginning)
    probes.query_spellings("/capabilities", GOOD, 200)
    probes.channels("/capabilities", GOOD, 200)
    probes.add("odd token, as is", "/events", [beginning, cred("access_token", as_is(ODD))], 200)
    probes.add(
        "odd token, every char",
        "/events",
        [beginning, cred("%61ccess_token", every_char(ODD))],
        200,
    )
    probes.add("odd token, header", "/events", [beginning], 200, {"Authorization": f"Bearer {ODD}"})
    raw_quote = ODD.replace("+", "%2B")  # ; " / as they are: curl sends the target unchanged
    probes.add(
        "odd token, curl", "/capabilities", [cred("access_token", raw_quote)], 200, curl=True
    )
    probes.add("curl", "/capabilities", [cred("access%5Ftoken", GOOD)], 200, curl=True)
    probes.add(
        "curl cookie", "/capabilities", [], 200, {"Cookie": f"kumiho_token={GOOD}"}, curl=True
    )
    # Refused by the upstream: unknown (401), revoked (401), denied (403).
    for secret, status in ((UNKNOWN, 401), (REVOKED, 401), (DENIED, 403)):
        probes.query_spellings("/events", secret, status)
        probes.channels("/events", secret, status)
        probes.add(
            "refused, /capabilities", "/capabilities", [cred("access_token", secret)], status
        )
        probes.add(
            "refused, curl", "/capabilities", [cred("%61ccess_token", secret)], status, curl=True
        )
    probes.add(
        "header wins",
        "/events",
        [],
        401,
        {"Authorization": f"Bearer {UNKNOWN}", "Cookie": f"kumiho_token={GOOD}"},
    )
    # Refused by the gateway: malformed, repeated, too long, another parameter wrong.
    for path in ("/events", "/capabilities"):
        probes.add("wrong scheme", path, [], 401, {"Authorization": f"Token {GOOD}"})
        probes.add("two words", path, [], 401, {"Authorization": f"Bearer {GOOD} {GOOD}"})
        probes.add("repeated", path, [cred("access_token", GOOD), cred("access_token", GOOD)], 400)
        probes.add(
            "repeated, two spellings",
            path,
            [cred("access_token", GOOD), cred(every_char("access_token"), every_char(UNKNOWN))],
            400,
        )
        probes.add("too long", path, [cred("access_token", GOOD + "-" + "Z" * 9000)], 400)
        # "+" and "%20" junk: a space in the value is malformed (401); in the name,
        # the app no longer sees access_token (401, none given), the log still masks it.
        for junk in (f"+{GOOD}", f"{GOOD}+", f"%20{GOOD}", f"{GOOD}%20%20"):
            probes.add(f"junk value {junk[:4]}", path, [cred("access_token", junk)], 401)
        for name in (
            "+access_token",
            "access_token+",
            "access_token%20",
            "ACCESS_TOKEN",
            "access%255Ftoken",
        ):
            probes.add(f"name {name}", path, [cred(name, GOOD)], 401)
        probes.add("after ;", path, [(f"x=1;access_token={GOOD}", "x=1;access_token=***")], 401)
    for field_, bad in (("from", "not-a-time"), ("named", "perhaps"), ("cursor", "%0A")):
        probes.add(
            f"bad {field_}", "/events", [cred("access_token", GOOD), plain(field_, bad)], 400
        )
        probes.add(
            f"bad {field_}, odd",
            "/events",
            [plain(field_, bad), cred("%61ccess%5Ftoken", as_is(ODD))],
            400,
        )
        probes.add(
            f"bad {field_}, header",
            "/events",
            [plain(field_, bad)],
            400,
            {"Authorization": f"Bearer {GOOD}"},
        )
    # A path that does not exist.
    probes.add("404", "/no-such-page", [cred("access_token", GOOD)], 404)
    probes.add(
        "404 escaped", "/no-such-page", [cred(every_char("access_token"), every_char(GOOD))], 404
    )
    probes.add("404 header", "/no-such-page", [], 404, {"Authorization": f"Bearer {GOOD}"})
    probes.add("404 curl", "/static/nope.js", [cred("access_token", raw_quote)], 404, curl=True)

    places = run_probes(gateway, probes)
    places["the live stream"] = live.body.decode("latin-1") + live.headers
    log = assert_logged(gateway, probes)
    assert '"GET /events?probe=live HTTP/1.1" 200 ' in log
    places["the gateway log"] = log
    places["/metrics"] = httpx.get(gateway.url + "/metrics", timeout=10).text
    # The refusals were counted there (by gRPC status, never by token).
    assert gateway.metric("kumiho_gateway_upstream_failures_total", '{code="UNAUTHENTICATED"}')
    assert gateway.metric("kumiho_gateway_upstream_failures_total", '{code="PERMISSION_DENIED"}')
    assert_hidden((GOOD, ODD, UNKNOWN, REVOKED, DENIED, MIDSTREAM), places)


def test_service_mode_never_shows_a_key_or_its_own_token(
    devserver: DevServer, make_gateway: Callable[..., Gateway]
) -> None:
    gateway = make_gateway(
        devserver.address,
        "--auth",
        "service",
        "--api-keys",
        f"{KEY},{ODD_KEY}",
        "--log-level",
        "debug",
        "--capabilities-ttl",
        "0",
        *FAST,
        env={"KUMIHO_AUTH_TOKEN": SERVICE_TOKEN},
    )
    devserver.publish("revision.created", f"kref://{unique_project()}/x.model", tenant="studio-b")
    beginning = plain("from", "beginning")
    probes = Probes()
    probes.query_spellings("/events", KEY, 200, beginning)
    probes.channels("/events", KEY, 200, beginning)
    probes.query_spellings("/capabilities", KEY, 200)
    probes.add("odd key", "/events", [beginning, cred("access_token", as_is(ODD_KEY))], 200)
    probes.add(
        "odd key, header", "/events", [beginning], 200, {"Authorization": f"Bearer {ODD_KEY}"}
    )
    raw_quote = ODD_KEY.replace("+", "%2B")
    probes.add("odd key, curl", "/capabilities", [cred("access_token", raw_quote)], 200, curl=True)
    probes.add(
        "curl cookie", "/capabilities", [], 200, {"Cookie": f"kumiho_token={KEY}"}, curl=True
    )
    probes.query_spellings("/events", WRONG_KEY, 401)
    probes.channels("/events", WRONG_KEY, 401)
    probes.add(
        "wrong key, curl", "/capabilities", [cred("access%5ftoken", WRONG_KEY)], 401, curl=True
    )
    probes.add("repeated", "/events", [cred("access_token", KEY), cred("%61ccess_token", KEY)], 400)
    probes.add("bad from", "/events", [cred("access_token", KEY), plain("from", "nope")], 400)
    probes.add("junk", "/events", [cred("access_token", f"+{KEY}")], 401)
    probes.add("404", "/no-such-page", [cred("access_token", KEY)], 404)
    places = run_probes(gateway, probes)

    # The gateway's own token refused upstream: the refusal names neither it nor the key.
    with devserver.client() as c:
        c.revoke_token(SERVICE_TOKEN)
    start = len(probes.items)
    probes.add("revoked service token", "/capabilities", [cred("access_token", KEY)], 401)
    probes.add(
        "revoked service token, events",
        "/events",
        [beginning],
        401,
        {"Authorization": f"Bearer {KEY}"},
    )
    places |= run_probes(gateway, Probes(probes.items[start:]))

    log = assert_logged(gateway, probes)
    places["the gateway log"] = log
    places["/metrics"] = httpx.get(gateway.url + "/metrics", timeout=10).text
    assert_hidden((KEY, ODD_KEY, WRONG_KEY, SERVICE_TOKEN), places)
