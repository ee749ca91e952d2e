"""Per-client limits behind the shipped nginx: each address its own, none chosen by the client.

Loopback has all of 127/8, so the clients are distinct sources on one
machine: 127.0.0.1 and 127.0.0.2 reach nginx, and nginx reaches the gateway
from 127.0.0.3, the one proxy the gateway trusts (``--forwarded-allow-ips``).
nginx runs the ``location`` blocks of deploy/nginx/nginx.conf and so
deploy/nginx/sse.conf, as shipped.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import FAST, ROOT, SSE_CONF, DevServer, Gateway, unique_project, wait_until

PROXY = "127.0.0.3"  # nginx's address toward the gateway
A, B = "127.0.0.1", "127.0.0.2"  # two clients
REFUSALS = "kumiho_gateway_client_limit_refusals_total"
TRACKED = "kumiho_gateway_client_limit_tracked"


def shipped_locations() -> str:
    """The location blocks of deploy/nginx/nginx.conf's HTTPS server, as they ship."""
    text = (ROOT / "deploy" / "nginx" / "nginx.conf").read_text()
    server = text[text.index("listen 443") :]
    body = server[server.index("        location ") :]
    body = body[: body.index("\n    }\n")]  # the server block's closing brace
    assert "include /etc/nginx/sse.conf;" in body
    return body.replace("/etc/nginx/sse.conf", str(SSE_CONF))


def nginx_http(gateway_port: int) -> Callable[[int], str]:
    def http(port: int) -> str:
        return f"""
    upstream kumiho_gateway {{ server 127.0.0.1:{gateway_port} max_fails=0; }}
    server {{
        listen 127.0.0.1:{port};
        proxy_bind {PROXY};  # this test's only addition: nginx's own source address
{shipped_locations()}
    }}
"""

    return http


@pytest.fixture
def behind_nginx(
    make_devserver: Callable[..., DevServer],
    make_gateway: Callable[..., Gateway],
    make_nginx: Callable[[Callable[[int], str]], int],
) -> Callable[..., tuple[DevServer, Gateway, str]]:
    """A devserver, a gateway trusting only nginx's address, and nginx; nginx's URL last."""

    def start(*args: str) -> tuple[DevServer, Gateway, str]:
        devserver = make_devserver()
        gateway = make_gateway(devserver.address, *FAST, "--forwarded-allow-ips", PROXY, *args)
        port = make_nginx(nginx_http(gateway.port))
        return devserver, gateway, f"http://127.0.0.1:{port}"

    return start


@contextlib.contextmanager
def client_from(address: str) -> Iterator[httpx.Client]:
    """An HTTP client whose connections leave from ``address``."""
    transport = httpx.HTTPTransport(local_address=address)
    with httpx.Client(transport=transport, timeout=20) as client:
        yield client


class Opened:
    """A stream's start: admitted (its lines, to read on) or refused (its gateway.error).

    Hold on to it: dropped, its lines are collected and the connection closes.
    """

    def __init__(self, lines: Iterator[str] | None, error: dict[str, Any] | None, retry: int):
        self.lines, self.error, self.retry = lines, error, retry


def open_stream(
    stack: contextlib.ExitStack,
    client: httpx.Client,
    url: str,
    params: dict[str, str] | None = None,
    headers: dict[str, str] | None = None,
) -> Opened:
    """Open an /events stream as EventSource would, and read up to its first event."""
    headers = {"Accept": "text/event-stream", **(headers or {})}
    response = stack.enter_context(
        client.stream("GET", url + "/events", params=params, headers=headers)
    )
    assert response.status_code == 200  # admitted or not: never a status that stops EventSource
    lines = response.iter_lines()
    first = next(lines)
    assert first.startswith("retry: "), first
    event = next(line for line in lines if line)
    if event == "event: gateway.status":
        return Opened(lines, None, int(first.removeprefix("retry: ")))
    assert event == "event: gateway.error", event
    error = json.loads(next(lines).removeprefix("data: "))
    assert error["retryable"] is True
    # The retry: line is when to come back; the envelope says the same.
    assert error["retry_after_ms"] == int(first.removeprefix("retry: "))
    assert [line for line in lines if line] == []  # and the stream ends
    return Opened(None, error, error["retry_after_ms"])


def receives(lines: Iterator[str], kref: str, deadline: float = 20) -> bool:
    """Read a stream until an event about ``kref`` arrives (heartbeats keep reads short)."""
    end = time.monotonic() + deadline
    for line in lines:
        if line.startswith("data: ") and json.loads(line[6:]).get("kref") == kref:
            return True
        if time.monotonic() > end:
            break
    return False


def poll(client: httpx.Client, url: str, **params: str) -> httpx.Response:
    return client.get(url + "/events/poll", params={"timeout": "0", **params})


def refused_poll(response: httpx.Response, code: str) -> dict[str, Any]:
    """A poll's 429: Retry-After, and the envelope saying the same in milliseconds."""
    assert response.status_code == 429, (response.status_code, response.text)
    assert response.headers["content-type"] == "application/json"
    error: dict[str, Any] = response.json()["error"]
    assert error["code"] == code and error["retryable"] is True
    assert int(response.headers["retry-after"]) == math.ceil(error["retry_after_ms"] / 1000)
    return error


def client_streams(gateway: Gateway, address: str) -> float:
    return gateway.metric("kumiho_gateway_client_streams_open", f'{{client="{address}"}}')


def test_each_address_behind_nginx_has_its_own_stream_limit(
    behind_nginx: Callable[..., tuple[DevServer, Gateway, str]],
) -> None:
    devserver, gateway, url = behind_nginx("--max-streams-per-client", "2")
    kref = f"kref://{unique_project()}/shots/a.comp"
    first = contextlib.ExitStack()  # A's first stream, closed on its own below
    with contextlib.ExitStack() as stack, client_from(A) as a, client_from(B) as b:
        stack.enter_context(first)
        a1, a2 = open_stream(first, a, url), open_stream(stack, a, url)
        b1, b2 = open_stream(stack, b, url), open_stream(stack, b, url)
        assert all(s.lines is not None for s in (a1, a2, b1, b2)), "two each are admitted"
        # The gateway saw each client's own address, not nginx's.
        assert client_streams(gateway, A) == client_streams(gateway, B) == 2
        assert client_streams(gateway, PROXY) == 0

        # A third stream of A's: refused with a retry: line and why, on every stream route.
        third = open_stream(stack, a, url)
        assert third.error is not None and third.error["code"] == "too_many_streams"
        assert "limit of 2" in third.error["message"]
        ndjson = a.get(url + "/events", params={"format": "ndjson"})
        assert ndjson.status_code == 200
        [line] = ndjson.text.splitlines()
        signal = json.loads(line)
        assert signal["gateway"] == "error" and signal["code"] == "too_many_streams"
        hosted = a.get(url + "/api/v1/events/stream")
        assert hosted.status_code == 200 and ": gateway.error " in hosted.text
        assert '"code":"too_many_streams"' in hosted.text
        # A poll waits like a stream, so it needs a place too; it gets the 429.
        error = refused_poll(poll(a, url), "too_many_streams")
        assert 2000 <= error["retry_after_ms"] <= 3000  # --retry-ms, jittered
        assert gateway.metric(REFUSALS, '{limit="streams"}') == 4
        # One warning for the lot, naming the address and what to check.
        warnings = [ln for ln in gateway.log().splitlines() if "refusing " in ln]
        assert len(warnings) == 1 and f"refusing {A}: past --max-streams-per-client" in warnings[0]
        assert "--forwarded-allow-ips" in warnings[0]

        # The admitted streams keep flowing, A's and B's alike.
        devserver.publish("revision.created", kref)
        for opened in (a1, a2, b1, b2):
            assert opened.lines is not None and receives(opened.lines, kref)

        # When one of A's streams closes, A gets a place again: one.
        first.close()
        wait_until(lambda: client_streams(gateway, A) == 1, 20, "A's first stream to close")
        assert poll(a, url).status_code == 200  # takes the place while it runs, then gives it back
        again = open_stream(stack, a, url)
        assert again.lines is not None
        assert open_stream(stack, a, url).error is not None
        devserver.publish("revision.created", kref + "2")
        for opened in (a2, again, b1, b2):
            assert opened.lines is not None and receives(opened.lines, kref + "2")


def test_a_client_cannot_escape_its_limit_by_naming_another_address(
    behind_nginx: Callable[..., tuple[DevServer, Gateway, str]],
) -> None:
    _, gateway, url = behind_nginx("--max-streams-per-client", "1")
    spoof = {"X-Forwarded-For": "203.0.113.9"}
    with contextlib.ExitStack() as stack, client_from(B) as b, client_from(PROXY) as proxy:
        held = open_stream(stack, b, url)  # B's one place, through nginx
        assert held.lines is not None
        # Through nginx, a header of B's own is replaced by B's address.
        through = open_stream(stack, b, url, headers=spoof)
        assert through.error is not None and through.error["code"] == "too_many_streams"
        # Straight to the gateway, from an address it does not trust: the header is ignored.
        direct = open_stream(stack, b, gateway.url, headers=spoof)
        assert direct.error is not None and direct.error["code"] == "too_many_streams"
        refused_poll(poll(b, gateway.url), "too_many_streams")
        assert client_streams(gateway, "203.0.113.9") == 0
        # The trusted proxy's header is believed (so the refusals above were no accident).
        believed = open_stream(stack, proxy, gateway.url, headers=spoof)
        assert believed.lines is not None
        assert client_streams(gateway, "203.0.113.9") == 1
        assert client_streams(gateway, B) == 1  # B's own stream stayed open throughout
        assert gateway.metric(REFUSALS, '{limit="streams"}') == 3


def test_opens_per_second_are_limited_per_address_and_the_answer_says_when_to_come_back(
    behind_nginx: Callable[..., tuple[DevServer, Gateway, str]],
) -> None:
    # One open every two seconds, a burst of one: a second open in a row is refused.
    # A short --retry-ms: the retry: line of a refused stream must come from the bucket.
    _, gateway, url = behind_nginx("--max-opens-per-client-per-second", "0.5", "--retry-ms", "100")
    with contextlib.ExitStack() as stack, client_from(A) as a, client_from(B) as b:
        # What opens nothing takes nothing: HEAD, and requests refused for their parameters.
        assert a.head(url + "/events").status_code == 200
        assert a.head(url + "/events/poll").status_code == 200
        assert poll(a, url, max_events="0").status_code == 400
        taken = time.monotonic()
        assert poll(a, url).status_code == 200
        error = refused_poll(poll(a, url), "rate_limited")
        assert 1 <= error["retry_after_ms"] <= 3000  # a token every 2 s, plus jitter
        assert "0.5 a second" in error["message"]
        stream = open_stream(stack, a, url)  # a stream: the 200 refusal
        answered = time.monotonic()
        assert stream.error is not None and stream.error["code"] == "rate_limited"
        # Not back before the next token: two seconds after the one taken.
        assert stream.retry / 1000 >= taken + 2 - answered
        assert stream.retry <= 3000
        assert poll(b, url).status_code == 200  # another address has its own bucket
        assert gateway.metric(REFUSALS, '{limit="opens"}') == 2
        # A client that waits as told is admitted (the wait is the behaviour under test).
        time.sleep(stream.retry / 1000)
        assert poll(a, url).status_code == 200


def test_an_address_sprayer_leaves_no_state_behind(
    behind_nginx: Callable[..., tuple[DevServer, Gateway, str]],
) -> None:
    # A bucket that took a token refills in 5 s; until then its address is remembered.
    _, gateway, url = behind_nginx("--max-opens-per-client-per-second", "0.2")
    starts = []
    for n in range(1, 61):  # 60 sources, each opening once
        with client_from(f"127.0.1.{n}") as sprayer:
            starts.append(time.monotonic())
            assert poll(sprayer, url).status_code == 200
    ended = time.monotonic()
    remembered = gateway.metric(TRACKED)
    # Every bucket touched within 5 s of the last open is still refilling, so counted.
    assert sum(1 for s in starts if s + 5 > ended) <= remembered <= 60
    with client_from("127.0.2.1") as probe:

        def forgotten() -> bool:
            poll(probe, url)  # each open sweeps the refilled buckets (this one is refused after)
            time.sleep(0.2)  # pacing the probes, not synchronisation
            return gateway.metric(TRACKED) <= 1

        wait_until(forgotten, 30, "the sprayed addresses to be forgotten")


def test_with_workers_the_limit_is_per_worker(
    make_devserver: Callable[..., DevServer], make_gateway: Callable[..., Gateway]
) -> None:
    gateway = make_gateway(
        make_devserver().address, *FAST, "--workers", "2", "--max-streams-per-client", "1"
    )
    with contextlib.ExitStack() as stack, client_from(A) as a:
        # Each on a new connection: the kernel hands it to either worker.
        opened = [open_stream(stack, a, gateway.url) for _ in range(3)]
        admitted = [s for s in opened if s.lines is not None]
        # One place per worker: never more than two, and at least one.
        assert 1 <= len(admitted) <= 2
    gateway.stop()  # SIGTERM: the pool removes its metrics directory
