"""The client's stream survives the upstream: broken streams, restarts, outages, expiry."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from httpx_sse import ServerSentEvent

from tests.conftest import (
    BOTH_MODES,
    FAST,
    DevServer,
    Gateway,
    Reader,
    data,
    free_port,
    read_events,
    wait_until,
)

KREF = "kref://studio/shots/sq010.comp"
pytestmark = BOTH_MODES


def numbers(events: list[ServerSentEvent]) -> list[int]:
    return [int(d["details"]["n"]) for d in data(events) if "n" in d.get("details", {})]


def test_broken_upstream_streams_lose_and_repeat_nothing(
    make_devserver: Callable[..., DevServer], make_gateway: Callable[..., Gateway]
) -> None:
    devserver = make_devserver("--break-after", "7")
    gateway = make_gateway(devserver.address, *FAST)
    reader = Reader(gateway.url)
    reader.start()
    assert reader.connected.wait(10) and reader.status == 200
    for batch in range(5):
        with devserver.client() as c:
            c.publish("revision.created", KREF, {"batch": str(batch)}, count=20)
    events = reader.wait_for(100)
    reader.stop.set()
    assert [json.loads(e.data)["details"]["batch"] for e in events] == [
        str(b) for b in range(5) for _ in range(20)
    ]
    assert [e.id for e in events] == sorted(
        {e.id for e in events}, key=lambda c: tuple(map(int, c.split("-")))
    )
    with devserver.client() as c:
        assert c.stats().streams_started >= 100 // 7  # the fault really broke the stream


def test_devserver_restart_mid_stream(
    make_devserver: Callable[..., DevServer], make_gateway: Callable[..., Gateway]
) -> None:
    devserver = make_devserver()
    gateway = make_gateway(devserver.address, *FAST)
    reader = Reader(gateway.url)
    reader.start()
    assert reader.connected.wait(10) and reader.status == 200
    first = devserver.publish("revision.created", KREF, count=30)
    reader.wait_for(10)
    devserver.stop(signal.SIGKILL)  # mid-stream, maybe mid-batch
    devserver.start()  # same port, same SQLite log
    second = devserver.publish("revision.created", KREF, count=30)
    events = reader.wait_for(60)
    reader.stop.set()
    assert [e.id for e in events] == first + second
    assert all(e.event == "message" for e in events)


def test_a_stream_opened_during_an_outage_loses_nothing_after_recovery(
    make_devserver: Callable[..., DevServer], make_gateway: Callable[..., Gateway], tmp_path: Path
) -> None:
    port = free_port()
    gateway = make_gateway(f"127.0.0.1:{port}", *FAST)
    assert httpx.get(gateway.url + "/readyz", timeout=10).status_code == 503
    with httpx.stream("GET", gateway.url + "/events", timeout=10) as r:
        assert r.status_code == 200  # never an error that would stop EventSource for good
        lines = (line for line in r.iter_lines() if line)
        assert next(lines).startswith("retry: ")
        assert next(lines) == "event: gateway.status"  # told at once, never silence
        status = json.loads(next(lines).removeprefix("data: "))
        assert status["upstream"] == "unavailable" and status["code"] == "UNAVAILABLE"
        assert status["retry_in_ms"] > 0 and status["since"].endswith("Z")
        assert next(lines).startswith(":")  # heartbeats meanwhile
    reader = Reader(gateway.url, params={"routing_key": "fresh.*"})
    reader.start()
    assert reader.connected.wait(10) and reader.status == 200
    wait_until(lambda: bool(reader.statuses), 10, "the unavailable status")
    devserver = DevServer(tmp_path / "late.sqlite3", port=port).start()
    try:
        # At once: before or while the gateway resubscribes, never lost.
        cursors = devserver.publish("fresh.created", KREF, count=5)
        events = reader.wait_for(5)
        wait_until(lambda: reader.statuses[-1]["upstream"] == "live", 10, "the live status")
        reader.stop.set()
        assert [e.id for e in events] == cursors
        assert [s["upstream"] for s in reader.statuses] == ["unavailable", "live"]
        assert reader.statuses[-1]["code"] is None and reader.statuses[-1]["retry_in_ms"] is None
        assert httpx.get(gateway.url + "/readyz", timeout=10).status_code == 200
    finally:
        devserver.stop(signal.SIGKILL)


@pytest.mark.parametrize(
    ("code", "state"), [("UNAVAILABLE", "unavailable"), ("INTERNAL", "failing")]
)
def test_a_stream_opened_while_the_upstream_refuses_loses_nothing(
    make_devserver: Callable[..., DevServer],
    make_gateway: Callable[..., Gateway],
    code: str,
    state: str,
) -> None:
    devserver = make_devserver()
    gateway = make_gateway(devserver.address, *FAST)
    with devserver.client() as c:
        c.set_faults(refuse=True, refuse_code=code)
        reader = Reader(gateway.url, params={"routing_key": "fresh.*"})
        reader.start()
        assert reader.connected.wait(10) and reader.status == 200
        wait_until(lambda: bool(reader.statuses), 10, "the first status")
        during = devserver.publish("fresh.created", KREF, count=2)  # after the 200
        c.set_faults()
        after = devserver.publish("fresh.created", KREF, count=5)  # within ms of the recovery
    events = reader.wait_for(7)
    wait_until(lambda: reader.statuses[-1]["upstream"] == "live", 10, "the live status")
    reader.stop.set()
    assert [e.id for e in events] == during + after
    assert [(s["upstream"], s["code"]) for s in reader.statuses] == [(state, code), ("live", None)]


def test_expired_cursor_gives_a_reset_before_the_next_event(
    make_devserver: Callable[..., DevServer], make_gateway: Callable[..., Gateway]
) -> None:
    devserver = make_devserver("--buffer-size", "10")
    gateway = make_gateway(devserver.address, *FAST)
    cursors = devserver.publish("revision.created", KREF, count=30)
    events = read_events(gateway.url, 11, headers={"Last-Event-ID": cursors[2]})
    assert events[0].event == "gateway.reset"
    assert json.loads(events[0].data) == {
        "reason": "cursor_expired",
        "requested_cursor": cursors[2],
        "resumed_from": "earliest",
    }
    assert events[0].id == ""  # control events never move the browser's Last-Event-ID
    assert [e.id for e in events[1:]] == cursors[20:]


def test_unknown_cursor_resets_and_replays_the_window(
    make_devserver: Callable[..., DevServer], make_gateway: Callable[..., Gateway]
) -> None:
    devserver = make_devserver()
    gateway = make_gateway(devserver.address, *FAST)
    cursors = devserver.publish("revision.created", KREF, count=3)
    future = "9999999999999-0"  # never issued (another server's cursor, say)
    events = read_events(gateway.url, 4, params={"cursor": future})
    assert [e.event for e in events] == ["gateway.reset", "message", "message", "message"]
    assert json.loads(events[0].data)["reason"] == "cursor_unknown"
    assert [e.id for e in events[1:]] == cursors  # the dedupe point was forgotten with the reset


def test_tier_without_cursors_resets_a_resume(
    make_devserver: Callable[..., DevServer], make_gateway: Callable[..., Gateway]
) -> None:
    devserver = make_devserver("--tier", "free")
    gateway = make_gateway(devserver.address, *FAST)
    reader = Reader(gateway.url, headers={"Last-Event-ID": "1700000000000-0"})
    reader.start()
    assert reader.connected.wait(10) and reader.status == 200
    # With the hub: its shared stream, and this client's own (its cursor is not in the ring).
    streams = 2 if gateway.hub else 1
    wait_until(lambda: devserver.open_streams() == streams, 10, "the upstream streams")
    devserver.publish("revision.created", KREF, {"x": "1"})
    events = reader.wait_for(2)
    reader.stop.set()
    assert events[0].event == "gateway.reset"
    assert json.loads(events[0].data) == {
        "reason": "cursor_unsupported",
        "requested_cursor": "1700000000000-0",
        "resumed_from": "latest",
    }
    assert events[1].id == "" and json.loads(events[1].data)["cursor"] == ""  # no id: line at all


def test_disconnect_cancels_the_upstream_call_within_a_second(
    make_devserver: Callable[..., DevServer], make_gateway: Callable[..., Gateway]
) -> None:
    devserver = make_devserver()
    gateway = make_gateway(devserver.address, *FAST, "--hub-linger", "0")
    for _ in range(3):
        with httpx.stream("GET", gateway.url + "/events", timeout=10) as r:
            lines = r.iter_lines()  # keep a reference: a dropped iterator closes the response
            next(lines)
            assert devserver.open_streams() == 1
        closed_at = time.monotonic()
        wait_until(lambda: devserver.open_streams() == 0, 5, "the upstream call to end")
        assert time.monotonic() - closed_at < 1.0


def test_gateway_restart_resume_is_exactly_once(
    make_devserver: Callable[..., DevServer], make_gateway: Callable[..., Gateway]
) -> None:
    devserver = make_devserver()
    gateway = make_gateway(devserver.address, *FAST)
    cursors = devserver.publish("revision.created", KREF, count=20)
    first = read_events(gateway.url, 8, params={"from": "beginning"})
    gateway.stop(signal.SIGKILL)
    gateway.start()
    rest = read_events(gateway.url, 12, headers={"Last-Event-ID": first[-1].id})
    assert [e.id for e in first + rest] == cursors


def test_an_upstream_that_ends_every_stream_at_once_gets_no_hot_loop(
    make_devserver: Callable[..., DevServer], make_gateway: Callable[..., Gateway]
) -> None:
    devserver = make_devserver()
    gateway = make_gateway(devserver.address, *FAST)  # backoff 0.05 s doubling to 0.5 s
    with devserver.client() as c:
        c.set_faults(end_after=0)  # every EventStream ends at once, status OK
    reader = Reader(gateway.url)
    reader.start()
    assert reader.connected.wait(10) and reader.status == 200

    def calls() -> int:
        with devserver.client() as c:
            return int(c.stats().streams_started)

    wait_until(lambda: calls() >= 5, 10, "the backoff to reach its cap")
    first, t0 = calls(), time.monotonic()
    time.sleep(2)  # measuring a rate over a window: the sleep is the measurement
    rate = (calls() - first) / (time.monotonic() - t0)
    # Capped at 0.5 s, jittered down to 0.25 s: at most 4 calls a second.
    # Without a backoff on a clean end it was over a thousand.
    assert rate <= 5, rate
    with devserver.client() as c:
        c.set_faults()
    cursors = devserver.publish("revision.created", KREF, count=3)
    assert [e.id for e in reader.wait_for(3)] == cursors  # nothing published meanwhile is lost
    reader.stop.set()


def test_an_upstream_that_sends_headers_late_answers_at_once(
    make_devserver: Callable[..., DevServer], make_gateway: Callable[..., Gateway]
) -> None:
    devserver = make_devserver("--late-headers")  # as many gRPC servers do
    gateway = make_gateway(devserver.address, *FAST)  # --open-timeout 5
    for key in ("revision.*", "item.*"):  # a new shared stream each time
        started = time.monotonic()
        reader = Reader(gateway.url, params={"routing_key": key})
        reader.start()
        assert reader.connected.wait(10) and reader.status == 200
        # Waiting for the stream's headers took the whole open timeout (5 s).
        assert time.monotonic() - started < 2.5
        cursors = devserver.publish(key.replace("*", "created"), KREF, count=2)
        assert [e.id for e in reader.wait_for(2)] == cursors
        reader.stop.set()


def test_mixed_cursor_and_cursorless_events_resume_exactly(
    make_devserver: Callable[..., DevServer], make_gateway: Callable[..., Gateway]
) -> None:
    # Every upstream stream breaks after 3 events; each resume from the last
    # cursor sends the cursorless events after it again, which must not repeat.
    devserver = make_devserver("--break-after", "3")
    gateway = make_gateway(devserver.address, *FAST)
    reader = Reader(gateway.url)
    reader.start()
    assert reader.connected.wait(10) and reader.status == 200
    # c: an event with a cursor, x: one without (the first comes before any cursor)
    shape = "xcxxcxxcxc"
    for n, kind in enumerate(shape):
        devserver.publish("revision.created", KREF, {"n": str(n)}, without_cursor=kind == "x")
    events = reader.wait_for(len(shape))
    with devserver.client() as c:
        assert c.stats().streams_started >= 4  # the fault really broke the stream
    reader.stop.set()
    assert all(e.event == "message" for e in events), [e.event for e in events]
    assert numbers(events) == list(range(len(shape)))


def test_the_status_turns_live_after_an_outage_even_when_the_upstream_is_silent(
    make_devserver: Callable[..., DevServer], make_gateway: Callable[..., Gateway]
) -> None:
    # An upstream that sends a stream's headers only with its first event: after
    # it comes back, no event may come for hours, yet the client must hear "live".
    devserver = make_devserver("--late-headers")
    gateway = make_gateway(devserver.address, *FAST)
    reader = Reader(gateway.url)
    reader.start()
    assert reader.connected.wait(10) and reader.status == 200
    wait_until(lambda: bool(reader.statuses), 10, "the first status")
    devserver.stop(signal.SIGKILL)
    wait_until(lambda: reader.statuses[-1]["upstream"] != "live", 10, "the outage")
    devserver.start()
    wait_until(lambda: reader.statuses[-1]["upstream"] == "live", 15, "live, with no event")
    reader.stop.set()
    assert [s["upstream"] for s in reader.statuses] == ["live", "unavailable", "live"]
