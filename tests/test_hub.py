"""The hub: sharing, ring resume without upstream calls, catch-up hand-over, isolation, linger."""

from __future__ import annotations

import signal
from collections.abc import Callable

import httpx

from tests.conftest import FAST, DevServer, Gateway, Reader, read_events, wait_until

KREF = "kref://hub/shots/sq010.comp"


def started(listeners: list[Reader], gateway: Gateway) -> None:
    for listener in listeners:
        listener.start()
    wait_until(
        lambda: gateway.metric("kumiho_gateway_streams_open") == len(listeners),
        15,
        "all streams open",
    )


def test_clients_with_the_same_filters_share_one_upstream_stream(
    make_devserver: Callable[..., DevServer], make_gateway: Callable[..., Gateway]
) -> None:
    devserver = make_devserver()
    gateway = make_gateway(devserver.address, *FAST)
    same = [Reader(gateway.url, params={"routing_key": "revision.*"}) for _ in range(20)]
    other = Reader(gateway.url, params={"routing_key": "item.#"})
    started([*same, other], gateway)
    assert devserver.open_streams() == 2  # one per distinct filter, not one per client
    cursors = devserver.publish("revision.created", KREF, count=5)
    devserver.publish("item.comp.created", KREF)
    wait_until(
        lambda: all(len(x.events) == 5 for x in same) and len(other.events) == 1, 15, "delivery"
    )
    for listener in same:
        assert [e.id for e in listener.events] == cursors
    assert gateway.metric("kumiho_gateway_hub_upstream_streams") == 2
    assert gateway.metric("kumiho_gateway_hub_subscribers") == 21
    encoded = gateway.metric("kumiho_gateway_hub_frames_encoded_total")
    delivered = gateway.metric("kumiho_gateway_hub_frames_delivered_total")
    assert encoded == 6 and delivered == 5 * 20 + 1  # each event encoded once, delivered to all
    for listener in [*same, other]:
        listener.stop.set()


def test_resume_from_the_ring_makes_no_upstream_call(
    make_devserver: Callable[..., DevServer], make_gateway: Callable[..., Gateway]
) -> None:
    devserver = make_devserver()
    gateway = make_gateway(devserver.address, *FAST)
    keeper = Reader(gateway.url)  # keeps the shared stream (and its ring) alive
    started([keeper], gateway)
    cursors = devserver.publish("revision.created", KREF, count=30)
    wait_until(lambda: len(keeper.events) == 30, 10, "the ring to fill")
    with devserver.client() as c:
        before = c.stats().streams_started
    for cut in (0, 10):
        events = read_events(gateway.url, 29 - cut, headers={"Last-Event-ID": cursors[cut]})
        assert [e.id for e in events] == cursors[cut + 1 :]
    more = devserver.publish("revision.created", KREF, count=2)
    [a, b] = read_events(gateway.url, 2, headers={"Last-Event-ID": cursors[-1]})
    assert [a.id, b.id] == more  # joined the live feed after the (empty) replay
    with devserver.client() as c:
        assert c.stats().streams_started == before  # not one upstream call
    assert gateway.metric("kumiho_gateway_hub_ring_hits_total") == 3
    assert gateway.metric("kumiho_gateway_hub_ring_misses_total") == 0
    keeper.stop.set()


def test_catch_up_hands_over_to_the_shared_feed_without_gap_or_duplicate(
    make_devserver: Callable[..., DevServer], make_gateway: Callable[..., Gateway]
) -> None:
    devserver = make_devserver()
    gateway = make_gateway(devserver.address, *FAST, "--hub-ring-size", "10")
    history = devserver.publish("revision.created", KREF, count=50)  # before anyone listens
    keeper = Reader(gateway.url)
    started([keeper], gateway)
    live = devserver.publish("revision.created", KREF, count=15)  # the ring holds the last 10
    wait_until(lambda: len(keeper.events) == 15, 10, "the shared feed")
    late = Reader(gateway.url, headers={"Last-Event-ID": history[5]})  # far older than the ring
    late.start()
    wait_until(lambda: len(late.events) == 44 + 15, 15, "the catch-up")
    wait_until(
        lambda: gateway.metric("kumiho_gateway_hub_catch_up_streams") == 0, 10, "the hand-over"
    )
    assert devserver.open_streams() == 1  # the catch-up stream is gone; the shared one serves both
    after = devserver.publish("revision.created", KREF, count=5)
    wait_until(lambda: len(late.events) == 44 + 15 + 5, 10, "live events after the hand-over")
    assert [e.id for e in late.events] == history[6:] + live + after
    assert gateway.metric("kumiho_gateway_hub_ring_misses_total") == 1
    keeper.stop.set()
    late.stop.set()


def test_tenants_never_share_a_stream(
    make_devserver: Callable[..., DevServer], make_gateway: Callable[..., Gateway]
) -> None:
    devserver = make_devserver(
        "--token", "tok-a=studio-a", "--token", "tok-b=studio-b", "--token", "tok-a2=studio-a"
    )
    gateway = make_gateway(devserver.address, *FAST, "--auth", "passthrough")
    a = Reader(gateway.url, headers={"Authorization": "Bearer tok-a"})
    a2 = Reader(gateway.url, headers={"Authorization": "Bearer tok-a2"})
    b = Reader(gateway.url, headers={"Authorization": "Bearer tok-b"})
    started([a, a2, b], gateway)
    assert devserver.open_streams() == 3  # one per credential, even within a tenant
    only_a = devserver.publish("revision.created", "kref://a/x.model", tenant="studio-a")
    only_b = devserver.publish("revision.created", "kref://b/y.model", tenant="studio-b")
    wait_until(lambda: len(a.events) == len(a2.events) == len(b.events) == 1, 10, "delivery")
    assert [e.id for e in a.events] == [e.id for e in a2.events] == only_a
    assert [e.id for e in b.events] == only_b
    for listener in (a, a2, b):
        listener.stop.set()


def test_the_shared_stream_lingers_then_closes(
    make_devserver: Callable[..., DevServer], make_gateway: Callable[..., Gateway]
) -> None:
    devserver = make_devserver()
    gateway = make_gateway(devserver.address, *FAST, "--hub-linger", "3")
    with httpx.stream("GET", gateway.url + "/events", timeout=10) as r:
        lines = r.iter_lines()
        next(lines)
    assert devserver.open_streams() == 1  # still open: a reconnect would find it
    with httpx.stream("GET", gateway.url + "/events", timeout=10) as r:
        lines = r.iter_lines()
        next(lines)
        with devserver.client() as c:
            assert c.stats().streams_started == 1  # the second client reused it
    wait_until(lambda: devserver.open_streams() == 0, 10, "the linger to end")


def test_two_workers_both_serve_and_resume(
    make_devserver: Callable[..., DevServer], make_gateway: Callable[..., Gateway]
) -> None:
    devserver = make_devserver()
    gateway = make_gateway(devserver.address, *FAST, "--workers", "2")
    pids = set()
    for _ in range(60):
        pids.add(httpx.get(gateway.url + "/healthz").json()["pid"])
        if len(pids) == 2:
            break
    assert len(pids) == 2, "both workers answer"
    cursors = devserver.publish("revision.created", KREF, count=20)
    got: list[str] = []
    for _ in range(5):  # five reconnects, landing on either worker
        headers = {"Last-Event-ID": got[-1]} if got else {}
        params = {} if got else {"from": "beginning"}
        got += [e.id for e in read_events(gateway.url, 4, headers=headers, params=params)]
    assert got == cursors
    assert gateway.proc is not None
    gateway.proc.send_signal(signal.SIGTERM)
    assert gateway.proc.wait(15) == 0  # the parent forwards it; every worker drains and exits


def test_a_tier_without_cursors_resumes_from_minted_ids(
    make_devserver: Callable[..., DevServer], make_gateway: Callable[..., Gateway]
) -> None:
    devserver = make_devserver("--tier", "free")
    gateway = make_gateway(devserver.address, *FAST)
    keeper = Reader(gateway.url)
    started([keeper], gateway)
    devserver.publish("revision.created", KREF, count=6)
    wait_until(lambda: len(keeper.events) == 6, 10, "the shared feed")
    ids = [e.id for e in keeper.events]
    assert all(i.startswith("gw:") for i in ids) and len(set(ids)) == 6
    assert all(e.json()["cursor"] == "" for e in keeper.events)  # Kumiho gave none
    rest = read_events(gateway.url, 3, headers={"Last-Event-ID": ids[2]})
    assert [e.id for e in rest] == ids[3:]  # resumed from the ring, no gap, no repeat
    assert [e.json()["details"]["n"] for e in rest] == ["3", "4", "5"]
    [reset] = read_events(gateway.url, 1, headers={"Last-Event-ID": "gw:00000000:1"})
    assert reset.event == "gateway.reset"
    assert reset.json()["reason"] == "cursor_unknown" and reset.json()["resumed_from"] == "latest"
    keeper.stop.set()
