"""The bounded read: /events/poll and /api/v1/events/poll."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from gateway.cursor import cursor_key
from tests.conftest import (
    BOTH_MODES,
    FAST,
    DevServer,
    Gateway,
    Publisher,
    Reader,
    read_events,
    unique_project,
    wait_until,
)


def _poll(gateway: Gateway, path: str = "/events/poll", **params: Any) -> dict[str, Any]:
    r = httpx.get(gateway.url + path, params=params, timeout=70)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/json"
    body: dict[str, Any] = r.json()
    return body


@BOTH_MODES
def test_a_polling_loop_sees_every_event_once_in_order_across_an_upstream_break(
    make_devserver: Callable[..., DevServer], make_gateway: Callable[..., Gateway]
) -> None:
    devserver = make_devserver()
    gateway = make_gateway(devserver.address, *FAST)
    project = unique_project()
    kref = f"kref://{project}/shots/sq010.comp"
    # A dashboard keeps the hub's shared stream (and its ring) open meanwhile.
    dashboard = Reader(gateway.url, {"kref": f"kref://{project}/**"})
    dashboard.start()
    wait_until(lambda: gateway.metric("kumiho_gateway_streams_open") == 1, 15, "the dashboard")
    [start] = devserver.publish("space.created", kref)
    published = devserver.publish("revision.created", kref, count=1500)
    devserver.publish("item.model.created", kref, count=200)  # filtered out

    got: list[str] = []
    cursor = start
    paths = ["/events/poll", "/api/v1/events/poll"]
    for n in range(40):  # bounded: 3,000 events at 500 a poll need 6
        if len(got) == 3000:
            break
        if len(got) == 1500 and devserver.proc is not None:
            devserver.stop()  # the upstream goes away between two polls, then comes back
            devserver.start()
            published += devserver.publish("revision.tagged", kref, count=1500)
        answer = _poll(
            gateway,
            paths[n % 2],
            routing_key_filter="revision.*",
            kref_filter=f"kref://{project}/**",
            cursor=cursor,
            max_events=500,
            timeout=10,
        )
        got += [e["cursor"] for e in answer["events"]]
        # The last event's id, or past it where the stream skipped unwanted events.
        assert cursor_key(answer["cursor"]) >= cursor_key(got[-1] if got else cursor)
        assert answer["more"] is (len(got) not in (1500, 3000)), len(got)
        assert answer["reset"] is None
        cursor = answer["cursor"]
    assert got == published  # each once, in order
    dashboard.stop.set()


def test_polls_with_a_cursor_in_the_ring_make_no_upstream_call(
    make_devserver: Callable[..., DevServer], make_gateway: Callable[..., Gateway]
) -> None:
    devserver = make_devserver()
    gateway = make_gateway(devserver.address, *FAST)
    dashboard = Reader(gateway.url)
    dashboard.start()
    wait_until(lambda: gateway.metric("kumiho_gateway_streams_open") == 1, 15, "the dashboard")
    cursors = devserver.publish("revision.created", f"kref://{unique_project()}/a.model", count=5)
    dashboard.wait_for(5)
    started = devserver.client().stats().streams_started
    answer = _poll(gateway, cursor=cursors[0], max_events=3, timeout=0)
    assert [e["cursor"] for e in answer["events"]] == cursors[1:4] and answer["more"] is True
    answer = _poll(gateway, cursor=answer["cursor"], timeout=0)
    assert [e["cursor"] for e in answer["events"]] == cursors[4:] and answer["more"] is False
    assert devserver.client().stats().streams_started == started
    assert gateway.metric("kumiho_gateway_hub_ring_hits_total") == 2
    dashboard.stop.set()


@BOTH_MODES
def test_a_long_poll_answers_when_the_first_event_comes(
    make_devserver: Callable[..., DevServer], make_gateway: Callable[..., Gateway]
) -> None:
    devserver = make_devserver()
    gateway = make_gateway(devserver.address, *FAST)
    answers: list[dict[str, Any]] = []
    polling = threading.Thread(target=lambda: answers.append(_poll(gateway, timeout=60)))
    polling.start()
    wait_until(lambda: devserver.open_streams() == 1, 15, "the poll's upstream stream")
    [cursor] = devserver.publish("revision.created", "kref://p/s/a.model")
    polling.join(timeout=30)
    assert [e["cursor"] for e in answers[0]["events"]] == [cursor]
    # Nothing new: an empty answer once the timeout passes, with the cursor given.
    assert _poll(gateway, cursor=cursor, timeout=0.2) == {
        "events": [],
        "cursor": cursor,
        "more": False,
        "reset": None,
    }


@BOTH_MODES
def test_timeout_bounds_a_poll_while_events_keep_trickling_in(
    make_devserver: Callable[..., DevServer], make_gateway: Callable[..., Gateway]
) -> None:
    devserver = make_devserver()
    gateway = make_gateway(devserver.address, *FAST)
    project = unique_project()
    # 50 events a second: each comes 20 ms after the last, inside the 50 ms quiet window.
    publisher = Publisher(devserver, f"kref://{project}/shots/busy.comp", rate=50)
    publisher.start()
    try:
        wait_until(lambda: len(publisher.cursors) >= 5, 15, "the first events")
        cursor = publisher.cursors[0]
        got: list[str] = []
        # (timeout, the bound on the whole answer): the timeout, a quiet window and slack
        # for a loaded machine. Well under the 5 s the 250 events would take to fill it.
        for timeout, bound in ((0, 1.5), (1, 2.5), (0, 1.5), (1, 2.5)):
            started = time.monotonic()
            answer = _poll(
                gateway,
                kref_filter=f"kref://{project}/**",
                cursor=cursor,
                max_events=250,
                timeout=timeout,
            )
            elapsed = time.monotonic() - started
            assert elapsed < bound, (timeout, elapsed, len(answer["events"]))
            assert answer["events"], timeout  # the trickle never stops
            got += [e["cursor"] for e in answer["events"]]
            assert answer["cursor"] == got[-1]
            cursor = answer["cursor"]
    finally:
        published = publisher.stop()
    # Each answer's cursor continues where the last one ended: no gap, no repeat.
    assert got == published[1 : 1 + len(got)]


def test_a_client_that_leaves_a_long_poll_frees_its_upstream_stream(
    make_devserver: Callable[..., DevServer], make_gateway: Callable[..., Gateway]
) -> None:
    devserver = make_devserver()
    gateway = make_gateway(devserver.address, *FAST, "--no-hub")
    with pytest.raises(httpx.ReadTimeout):
        httpx.get(gateway.url + "/events/poll", params={"timeout": 60}, timeout=2)
    # Long before the poll's 60 s are over.
    wait_until(lambda: devserver.open_streams() == 0, 10, "the upstream stream to close")


@pytest.mark.parametrize(
    ("params", "needle"),
    [
        ({"max_events": "0"}, "max_events: '0' is not a whole number from 1 to 1000"),
        ({"max_events": "1001"}, "from 1 to 1000"),
        ({"max_events": "2.5"}, "max_events"),
        ({"max_events": "abc"}, "max_events"),
        ({"timeout": "-1"}, "timeout: '-1' is not a number of seconds from 0 to 60"),
        ({"timeout": "61"}, "from 0 to 60"),
        ({"timeout": "nan"}, "timeout"),
        ({"timeout": "1e400"}, "timeout"),
        ({"max_events": ["1", "2"]}, "given more than once"),
        # Spellings Python's int() and float() take, which are not plain ASCII numbers.
        *(
            ({name: value}, f"{name}: {value!r} is not")
            for name, values in (
                ("max_events", ("1_0", "+5", " 5 ", "5 ", "\u0665", "\uff15", "5\u00a0")),
                ("timeout", ("0_0", "+0", " 0 ", "-0", "\u0660", "0e0", "0x0", ".0", "0.")),
            )
            for value in values
        ),
        ({"routing_key_filter": "a,,b"}, "empty entry"),
        ({"cursor": "1-0\n"}, "control character"),
    ],
)
def test_bad_poll_parameters_are_400s(
    stack: tuple[DevServer, Gateway], params: dict[str, Any], needle: str
) -> None:
    _, gateway = stack
    for path in ("/events/poll", "/api/v1/events/poll"):
        r = httpx.get(gateway.url + path, params=params, timeout=10)
        assert r.status_code == 400, r.text
        error = r.json()["error"]
        assert error["code"] == "invalid_parameter" and needle in error["message"]


@BOTH_MODES
def test_a_poll_loop_catches_up_through_a_long_unwanted_run_and_says_when_it_is_live(
    make_devserver: Callable[..., DevServer], make_gateway: Callable[..., Gateway]
) -> None:
    # A small ring, so the stored cursor leaves it and the hub needs a catch-up stream.
    devserver = make_devserver()
    gateway = make_gateway(devserver.address, *FAST, "--hub-ring-size", "64")
    project = unique_project()
    kref = f"kref://{project}/assets/hero.model"
    wanted = {"details.tag": "approved", "kref_filter": f"kref://{project}/**"}
    # Keeps the hub's shared stream (and its ring) open; it wants nothing of this test's.
    keeper = Reader(gateway.url, {"kref": f"kref://{project}/**", "details.tag": "none"})
    keeper.start()
    wait_until(lambda: gateway.metric("kumiho_gateway_streams_open") == 1, 15, "the keeper")
    [stored] = devserver.publish("revision.tagged", kref, {"tag": "approved"})
    # The gateway applies the detail filter: the upstream sends every one of these.
    unwanted = devserver.publish("revision.tagged", kref, {"tag": "wip"}, count=20_000)
    [last] = devserver.publish("revision.tagged", kref, {"tag": "approved"})

    # The one loop every client runs: poll with the returned cursor while "more".
    cursor, got, answers = stored, [], []
    for _ in range(200):  # bounded; a second's poll reads thousands of events
        answer = _poll(gateway, cursor=cursor, timeout=1, **wanted)
        answers.append(answer)
        got += [e["cursor"] for e in answer["events"]]
        # Never back, and never re-reading: the cursor is where this poll got to.
        assert cursor_key(answer["cursor"]) >= cursor_key(cursor)
        cursor = answer["cursor"]
        if not answer["more"]:
            break
    assert got == [last], [(len(a["events"]), a["cursor"], a["more"]) for a in answers]
    # A catch-up still reading unwanted events said so, with its cursor moved past them.
    first = answers[0]
    assert first["events"] == [] and first["more"] is True
    assert first["cursor"] in unwanted
    assert cursor == last
    # Then the stream from that cursor carries on with what comes next, and nothing before.
    [later] = devserver.publish("revision.tagged", kref, {"tag": "approved"})
    [event] = read_events(gateway.url, 1, params=wanted, headers={"Last-Event-ID": cursor})
    assert event.id == later
    keeper.stop.set()


@BOTH_MODES
def test_a_poll_loop_ends_with_a_quiet_upstream_even_where_no_ring_holds_the_cursor(
    make_devserver: Callable[..., DevServer], make_gateway: Callable[..., Gateway]
) -> None:
    # No other client: with the hub, the channel opens with the poll and its ring
    # holds none of these events, so the catch-up stream can never meet it.
    devserver = make_devserver()
    gateway = make_gateway(devserver.address, *FAST)
    cursors = devserver.publish("revision.created", f"kref://{unique_project()}/a.model", count=5)
    answer = _poll(gateway, cursor=cursors[0], timeout=2)
    assert [e["cursor"] for e in answer["events"]] == cursors[1:]
    assert answer["more"] is False  # the upstream had nothing more: caught up
