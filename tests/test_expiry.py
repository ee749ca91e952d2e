"""Tokens that expire: a stream opened with a JWT ends at its exp, and resumes with a fresh one.

Real devserver and gateway processes, in both modes. The gateway reads a
presented JWT's ``exp`` (it never verifies the token: the upstream does), ends
that client's stream then with a retryable ``gateway.error`` ``token_expired``
and a ``retry:`` line, and refuses a token already past its ``exp`` with a 401.
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from httpx_sse import ServerSentEvent, connect_sse

from gateway.devserver.servicer import DEFAULT_TENANT
from tests.conftest import (
    BOTH_MODES,
    FAST,
    MODES,
    DevServer,
    Gateway,
    Publisher,
    Reader,
    jwt,
    raw_request,
    unique_project,
    wait_until,
)

EXPIRED = '{cause="token_expired"}'
# The gateway's timer runs on the monotonic clock, exp is wall-clock time: over
# a few seconds the two can drift apart by a fraction of a millisecond.
SLACK = 0.05


def _expired_error(data: str) -> dict[str, Any]:
    error: dict[str, Any] = json.loads(data)
    assert error["code"] == "token_expired", error
    assert error["retryable"] is True
    assert "expired" in error["message"] and "fresh token" in error["message"]
    assert error["correlation_id"]  # the request's, as every envelope carries
    return error


@BOTH_MODES
def test_a_stream_ends_at_exp_and_a_fresh_token_resumes_it_losing_nothing(
    make_devserver: Callable[..., DevServer], make_gateway: Callable[..., Gateway]
) -> None:
    # An upstream that judges tokens: it knows both (it would refuse any other),
    # so the resumed stream is the fresh token's, opened upstream anew.
    exp = int(time.time()) + 12  # room for both processes to start on a loaded machine
    first = jwt({"sub": "mina", "exp": exp})
    fresh = jwt({"sub": "mina", "exp": exp + 3600})
    devserver = make_devserver(
        "--token", f"{first}={DEFAULT_TENANT}", "--token", f"{fresh}={DEFAULT_TENANT}"
    )
    gateway = make_gateway(devserver.address, "--auth", "passthrough", "--hub-linger", "0.2", *FAST)
    project = unique_project()
    params = {"kref": f"kref://{project}/**"}
    assert time.time() < exp - 2, "the gateway took too long to start for this token"
    publisher = Publisher(devserver, f"kref://{project}/hero.model", rate=20)

    blocks: list[ServerSentEvent] = []
    with (
        httpx.Client(timeout=httpx.Timeout(30)) as client,
        connect_sse(
            client,
            "GET",
            gateway.url + "/events",
            params=params,
            headers={"Authorization": f"Bearer {first}"},
        ) as source,
    ):
        assert source.response.status_code == 200
        publisher.start()  # events before, at and after the expiry
        blocks.extend(source.iter_sse())  # until the gateway ends the stream
    ended = time.time()
    assert exp - SLACK <= ended < exp + 10  # at exp, not before (and not long after)

    events = [b for b in blocks if b.data and b.event == "message"]
    errors = [b for b in blocks if b.event == "gateway.error"]
    assert len(events) >= 2  # the stream carried events up to the expiry
    assert len(errors) == 1
    _expired_error(errors[0].data)
    # The error, then the usual retry: line, then the end.
    assert blocks[-2] is errors[0] and blocks[-1].retry is not None and not blocks[-1].data
    assert gateway.metric("kumiho_gateway_stream_closes_total", EXPIRED) == 1

    # The same client, with a fresh token and its last event id, while events keep coming.
    wait_until(lambda: len(publisher.cursors) >= len(events) + 10, 20, "events meanwhile")
    resumed = Reader(
        gateway.url, params, {"Authorization": f"Bearer {fresh}", "Last-Event-ID": events[-1].id}
    )
    resumed.start()
    resumed.wait_for(1)
    cursors = publisher.stop()
    # One more, now that the hub's new channel is live: its catch-up hands over on it.
    cursors += devserver.publish("revision.created", f"kref://{project}/hero.model")
    try:
        resumed.wait_for(len(cursors) - len(events), 30)
        # Every event exactly once, in order, across the expiry.
        assert [e.id for e in events + resumed.events] == cursors
        # The expired token's upstream stream is gone; only the fresh one's is open.
        wait_until(lambda: devserver.open_streams() == 1, 15, "one upstream stream")
        assert gateway.metric("kumiho_gateway_streams_open") == 1
    finally:
        resumed.stop.set()
    assert gateway.metric("kumiho_gateway_stream_closes_total", EXPIRED) == 1


@pytest.fixture(scope="module", params=list(MODES))
def open_upstream(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[tuple[DevServer, Gateway]]:
    """A devserver that takes any token, behind a passthrough gateway logging everything
    (shared by the module's tests: each reads its own metrics as differences)."""
    tmp = tmp_path_factory.mktemp("expiry")
    devserver = DevServer(tmp / "devserver.sqlite3").start()
    args = ["--auth", "passthrough", "--log-level", "debug", *FAST, *MODES[request.param]]
    gateway = Gateway(devserver.address, tmp / "gateway.log", args).start()
    yield devserver, gateway
    gateway.stop(signal.SIGKILL)
    devserver.stop(signal.SIGKILL)


def _body_until_the_end(url: str, **kwargs: Any) -> tuple[list[str], float]:
    with (
        httpx.Client(timeout=httpx.Timeout(30)) as client,
        client.stream("GET", url, **kwargs) as r,
    ):
        assert r.status_code == 200, r.read()
        lines = [line for line in r.iter_lines() if line]
    return lines, time.time()


def test_on_the_hosted_route_the_end_is_a_comment_then_a_retry_line(
    open_upstream: tuple[DevServer, Gateway],
) -> None:
    _, gateway = open_upstream
    closed = gateway.metric("kumiho_gateway_stream_closes_total", EXPIRED)
    exp = time.time() + 2
    token = jwt({"exp": exp})
    lines, ended = _body_until_the_end(
        gateway.url + "/api/v1/events/stream", headers={"X-Kumiho-Token": token}
    )
    assert ended >= exp - SLACK
    # Its clients take every data: line for an event: the signal is a comment.
    assert not any(line.startswith("data:") for line in lines), lines
    assert lines[-2].startswith(": gateway.error ")
    _expired_error(lines[-2].removeprefix(": gateway.error "))
    assert lines[-1].startswith("retry: ")
    assert gateway.metric("kumiho_gateway_stream_closes_total", EXPIRED) == closed + 1
    assert token not in gateway.log()


def test_in_ndjson_the_end_is_an_object_line(open_upstream: tuple[DevServer, Gateway]) -> None:
    devserver, gateway = open_upstream
    project = unique_project()
    closed = gateway.metric("kumiho_gateway_stream_closes_total", EXPIRED)
    exp = time.time() + 2.5
    token = jwt({"exp": exp})
    params = {"format": "ndjson", "access_token": token, "kref": f"kref://{project}/**"}
    with (
        httpx.Client(timeout=httpx.Timeout(30)) as client,
        client.stream("GET", gateway.url + "/events", params=params) as r,
    ):
        assert r.status_code == 200
        # The answer's head comes once the stream is open upstream: this event is in it.
        published = devserver.publish("revision.created", f"kref://{project}/a.model")
        lines = [line for line in r.iter_lines() if line]
    ended = time.time()
    assert ended >= exp - SLACK
    objects = [json.loads(line) for line in lines]
    assert [o["cursor"] for o in objects if "routing_key" in o] == published
    last = objects[-1]
    assert last.pop("gateway") == "error"
    _expired_error(json.dumps(last))
    assert gateway.metric("kumiho_gateway_stream_closes_total", EXPIRED) == closed + 1


# Every way a client presents a token, on every route that takes one.
WAYS: list[tuple[str, Callable[[str], dict[str, Any]]]] = [
    ("/events", lambda t: {"headers": {"Authorization": f"Bearer {t}"}}),
    ("/events", lambda t: {"headers": {"Cookie": f"kumiho_token={t}"}}),
    ("/events", lambda t: {"params": {"access_token": t}}),
    ("/api/v1/events/stream", lambda t: {"headers": {"X-Kumiho-Token": t}}),
    ("/events/poll", lambda t: {"headers": {"Authorization": f"Bearer {t}"}}),
    ("/api/v1/events/poll", lambda t: {"headers": {"X-Kumiho-Token": t}}),
    ("/capabilities", lambda t: {"headers": {"Authorization": f"Bearer {t}"}}),
]


@pytest.mark.parametrize(("path", "way"), WAYS)
def test_a_token_already_expired_is_refused_before_the_upstream_is_asked(
    open_upstream: tuple[DevServer, Gateway],
    path: str,
    way: Callable[[str], dict[str, Any]],
) -> None:
    devserver, gateway = open_upstream
    token = jwt({"sub": "mina", "exp": int(time.time()) - 1})
    started = devserver.client().stats().streams_started
    r = httpx.get(gateway.url + path, timeout=10, **way(token))
    assert r.status_code == 401
    assert r.headers["www-authenticate"] == "Bearer"
    error = r.json()["error"]
    assert error["code"] == "token_expired"
    assert error["retryable"] is False  # the same request fails again: a fresh token is needed
    assert "expired at" in error["message"] and "fresh token" in error["message"]
    assert devserver.client().stats().streams_started == started
    assert token not in gateway.log()


@BOTH_MODES
def test_an_expired_gateway_key_is_refused_in_service_mode(
    make_devserver: Callable[..., DevServer], make_gateway: Callable[..., Gateway]
) -> None:
    expired, good = jwt({"exp": 1}), jwt({"exp": time.time() + 3600})
    devserver = make_devserver()
    gateway = make_gateway(
        devserver.address, "--auth", "service", env={"KUMIHO_GATEWAY_API_KEYS": f"{expired},{good}"}
    )
    r = httpx.get(gateway.url + "/events/poll?timeout=0", headers={"X-Kumiho-Token": expired})
    assert (r.status_code, r.json()["error"]["code"]) == (401, "token_expired")
    ok = httpx.get(gateway.url + "/events/poll?timeout=0", headers={"X-Kumiho-Token": good})
    assert ok.status_code == 200


FAR = int(time.time()) + 86_400
HOSTILE: list[tuple[str, int]] = [
    ("eyJhbGciOiJub25lIn0.!!!not-base64!!!.x", 200),
    ("e30.eyJleHAiOjF9a.x", 200),  # a length base64 cannot have
    (jwt({"exp": FAR, "pad": "x" * 5500}), 200),  # a huge payload, just under the limit
    (jwt({"exp": 1, "pad": "x" * 7000}), 401),  # over the length limit: refused as malformed
    (jwt({"exp": str(FAR)}), 200),  # not a number: no expiry
    (jwt({"exp": True}), 200),
    (jwt({"exp": -1}), 401),  # before 1970: expired
    (jwt({"exp": FAR + 0.5}), 200),  # a fraction: read
    (jwt('{"exp": 1e999}'), 200),  # infinity: no expiry
    (jwt('{"exp": ' + "9" * 600 + "}"), 200),
    (jwt('{"exp": NaN}'), 200),
    (jwt({"exp": 10**30}), 200),  # beyond the year 9999: no expiry
    (jwt({"exp": {"exp": {"exp": 1}}}), 200),  # nested
    (jwt("[" * 2500 + "]" * 2500), 200),  # deeper than the JSON parser recurses
    (jwt({"exp": 1}, header=["not", "an", "object"]), 200),  # not a JWT after all
]


@pytest.mark.parametrize(("token", "status"), HOSTILE, ids=range(len(HOSTILE)))
def test_hostile_tokens_get_a_clear_answer_and_stay_out_of_the_log(
    open_upstream: tuple[DevServer, Gateway], token: str, status: int
) -> None:
    _, gateway = open_upstream
    for target, header in (
        (b"/events", (b"Authorization", b"Bearer " + token.encode())),
        (b"/api/v1/events/poll?timeout=0", (b"X-Kumiho-Token", token.encode())),
    ):
        answer = raw_request(gateway.url, target, [header])
        assert answer is not None
        assert answer.status == status, answer
        if status == 401:
            assert answer.envelope()["code"] in ("token_expired", "unauthenticated")
    log = gateway.log()
    assert "Traceback" not in log
    # Neither the token nor any long piece of it (its payload's base64).
    assert not [part for part in token.split(".") if len(part) > 12 and part in log]
