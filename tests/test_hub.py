"""The hub: sharing, ring resume without upstream calls, catch-up hand-over, isolation, linger."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import AsyncIterator, Callable

import httpx
import pytest
from httpx_sse import connect_sse

from gateway._proto import kumiho_pb2
from gateway.auth import ANONYMOUS
from gateway.channel import Channel
from gateway.hub import Hub
from gateway.items import Item, SharedEvent, Sink, Status
from gateway.lane import Lane
from gateway.matching import EventFilter
from gateway.metrics import Metrics
from gateway.pump import Pump
from gateway.settings import Settings
from gateway.subscriber import HubSource
from gateway.subscription import Subscription
from gateway.upstream import Upstream
from tests.conftest import FAST, DevServer, Gateway, Reader, make_pump, read_events, wait_until

KREF = "kref://hub/shots/sq010.comp"


def started(listeners: list[Reader], gateway: Gateway) -> None:
    for listener in listeners:
        listener.start()
    wait_until(
        lambda: gateway.metric("kumiho_gateway_streams_open") == len(listeners),
        15,
        "all streams open",
    )


@pytest.mark.parametrize(
    ("filtering", "streams"),
    [("gateway", 1), ("upstream", 2)],  # one per credential, or one per credential and filter
)
def test_clients_share_upstream_streams(
    make_devserver: Callable[..., DevServer],
    make_gateway: Callable[..., Gateway],
    filtering: str,
    streams: int,
) -> None:
    devserver = make_devserver()
    gateway = make_gateway(devserver.address, *FAST, "--hub-filtering", filtering)
    same = [Reader(gateway.url, params={"routing_key": "revision.*"}) for _ in range(20)]
    other = Reader(gateway.url, params={"routing_key": "item.#"})
    started([*same, other], gateway)
    assert devserver.open_streams() == streams  # never one per client
    cursors = devserver.publish("revision.created", KREF, count=5)
    devserver.publish("item.comp.created", KREF)
    wait_until(
        lambda: all(len(x.events) == 5 for x in same) and len(other.events) == 1, 15, "delivery"
    )
    for listener in same:
        assert [e.id for e in listener.events] == cursors
    assert gateway.metric("kumiho_gateway_hub_upstream_streams") == streams
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


def test_a_ring_resume_moves_the_clients_position_past_the_unwanted_events_it_passed(
    make_devserver: Callable[..., DevServer], make_gateway: Callable[..., Gateway]
) -> None:
    devserver = make_devserver()
    gateway = make_gateway(devserver.address, *FAST)  # --auth none: one unfiltered channel
    keeper = Reader(gateway.url)
    started([keeper], gateway)
    wanted = {"routing_key": "revision.tagged"}
    [first] = devserver.publish("revision.tagged", KREF)
    unwanted = devserver.publish("revision.created", KREF, count=300)
    keeper.wait_for(301)  # all in the ring now
    # A poll from the wanted event: nothing new, and its cursor past all 300.
    r = httpx.get(
        gateway.url + "/events/poll", params={**wanted, "cursor": first, "timeout": 0}, timeout=10
    )
    assert r.json() == {"events": [], "cursor": unwanted[-1], "more": False, "reset": None}
    # A stream resumed from it: an id-only frame at the newest event the replay
    # passed, before the next wanted event.
    with (
        httpx.Client(timeout=20) as client,
        connect_sse(
            client, "GET", gateway.url + "/events", params=wanted,
            headers={"Last-Event-ID": first},
        ) as source,
    ):  # fmt: skip
        [later] = devserver.publish("revision.tagged", KREF)
        frames = []
        for sse in source.iter_sse():
            if sse.id:
                frames.append((sse.id, sse.data and json.loads(sse.data)["cursor"]))
            if sse.id == later:
                break
    assert frames == [(unwanted[-1], ""), (later, later)]
    # Both were served from the ring, and so is the next resume, from that position.
    [event] = read_events(gateway.url, 1, params=wanted, headers={"Last-Event-ID": unwanted[-1]})
    assert event.id == later
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


def test_a_catch_up_hands_over_on_an_event_its_client_does_not_want(
    make_devserver: Callable[..., DevServer], make_gateway: Callable[..., Gateway]
) -> None:
    devserver = make_devserver()
    gateway = make_gateway(devserver.address, *FAST)  # --auth none: one unfiltered channel
    [old] = devserver.publish("rare.event", KREF)
    keeper = Reader(gateway.url)
    narrow = Reader(gateway.url, {"routing_key": "rare.event", "from": "beginning"})
    started([keeper, narrow], gateway)
    assert [e.id for e in narrow.wait_for(1)] == [old]
    assert gateway.metric("kumiho_gateway_hub_catch_up_streams") == 1
    # Events it does not want, which the ring holds: the catch-up stream ends on one.
    for _ in range(20):
        [cursor] = devserver.publish("revision.created", KREF)
        wait_until(lambda c=cursor: any(e.id == c for e in keeper.events), 10, "the ring")  # type: ignore[misc]
        if gateway.metric("kumiho_gateway_hub_catch_up_streams") == 0:
            break
    wait_until(
        lambda: gateway.metric("kumiho_gateway_hub_catch_up_streams") == 0, 10, "the hand-over"
    )
    [new] = devserver.publish("rare.event", KREF)
    assert [e.id for e in narrow.wait_for(2)] == [old, new]
    assert all(json.loads(e.data)["routing_key"] == "rare.event" for e in narrow.events)
    keeper.stop.set()
    narrow.stop.set()


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

    def shared() -> float:
        return gateway.metric("kumiho_gateway_hub_upstream_streams")

    def gone() -> bool:
        return gateway.metric("kumiho_gateway_streams_open") == 0

    with httpx.stream("GET", gateway.url + "/events", timeout=10) as r:
        lines = r.iter_lines()
        next(lines)
    # Once the gateway has seen the client leave (a linger of 0 would close the
    # shared stream in that same moment), the stream is still there.
    wait_until(gone, 10, "the client to leave")
    assert shared() == 1 and devserver.open_streams() == 1
    with httpx.stream("GET", gateway.url + "/events", timeout=10) as r:
        lines = r.iter_lines()
        next(lines)
        with devserver.client() as c:
            assert c.stats().streams_started == 1  # the second client reused it
    wait_until(gone, 10, "the second client to leave")
    left = time.monotonic()
    wait_until(lambda: shared() == 0, 10, "the linger to end")
    assert time.monotonic() - left > 2  # about the 3 s linger, not at once
    wait_until(lambda: devserver.open_streams() == 0, 10, "the upstream call to end")


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


BLOB = "x" * 750  # about 800 bytes a frame, as in the report that found the stuck resume


@pytest.mark.parametrize(
    "settings",
    [(), ("--buffer-events", "16", "--buffer-bytes", "4096")],
    ids=["defaults", "tiny-buffers"],
)
def test_a_replay_longer_than_the_buffer_makes_progress(
    make_devserver: Callable[..., DevServer],
    make_gateway: Callable[..., Gateway],
    settings: tuple[str, ...],
) -> None:
    devserver = make_devserver()
    gateway = make_gateway(devserver.address, *FAST, *settings)
    keeper = Reader(gateway.url)  # keeps the shared stream and its ring (4,096) alive
    started([keeper], gateway)
    cursors = devserver.publish("revision.created", KREF, {"blob": BLOB}, count=4000)
    wait_until(lambda: len(keeper.events) == 4000, 60, "the ring to fill")
    # From the ring: 3,999 events (3 MiB) behind, far past twice any buffer bound.
    events = read_events(gateway.url, 3999, headers={"Last-Event-ID": cursors[0]}, timeout=60)
    assert [e.id for e in events] == cursors[1:]
    # Older than the ring: a catch-up stream, then the ring's 4,096 at the hand-over.
    more = devserver.publish("revision.created", KREF, {"blob": BLOB}, count=1000)
    wait_until(lambda: len(keeper.events) == 5000, 60, "the shared feed")
    everything = cursors + more
    events = read_events(gateway.url, 4999, headers={"Last-Event-ID": cursors[0]}, timeout=60)
    assert [e.id for e in events] == everything[1:]
    assert gateway.metric("kumiho_gateway_hub_ring_misses_total") == 1
    assert gateway.metric("kumiho_gateway_slow_consumer_disconnects_total") == 0
    keeper.stop.set()


# -- the channel's fan-out, without a server ----------------------------------


class _Feed:
    """A shared feed the test drives: it delivers what it is given, or dies."""

    def __init__(self) -> None:
        self.sink: Sink | None = None
        self.ready = asyncio.Event()
        self.die = asyncio.Event()
        self.status = Status.now("live", None, None)

    async def open(self) -> None:
        pass

    async def run(self, sink: Sink) -> None:
        self.sink = sink
        self.ready.set()
        await self.die.wait()
        raise RuntimeError("a bug in the feed")

    def close(self) -> None:
        pass


class _Broken:
    """A subscriber whose delivery raises."""

    closed = False
    rest = EventFilter()

    def deliver(self, item: Item) -> None:
        raise RuntimeError("this subscriber is broken")

    def end(self) -> None:
        self.closed = True

    def close(self) -> None:
        self.closed = True


def _event(n: int) -> kumiho_pb2.Event:
    return kumiho_pb2.Event(
        routing_key="revision.created", kref=kumiho_pb2.Kref(uri=KREF), cursor=f"1-{n}"
    )


async def _hub_with_subscriber() -> tuple[Hub, Channel, _Feed, Pump, AsyncIterator[bytes]]:
    settings = Settings(heartbeat=60, flush_interval=0)
    metrics = Metrics()
    hub = Hub(Upstream(settings), settings, metrics)
    feed = _Feed()
    channel = Channel(("anonymous", "", ""), feed, hub)
    await channel.start()
    await feed.ready.wait()
    subscriber = HubSource(hub, Subscription(EventFilter(), None, "latest", None, False, ANONYMOUS))
    subscriber._channel = channel
    channel.attach(subscriber)
    pump = make_pump(subscriber)
    frames = pump.frames()
    assert (await anext(frames)).startswith(b"retry: ")
    return hub, channel, feed, pump, frames


def test_a_failing_subscriber_never_reaches_the_others() -> None:
    async def scenario() -> None:
        _, channel, feed, pump, frames = await _hub_with_subscriber()
        broken = _Broken()
        channel.attach(broken)  # type: ignore[arg-type]
        assert feed.sink is not None
        feed.sink.put(_event(1))
        assert b"id: 1-1" in await anext(frames)
        assert broken.closed and not channel.closed
        feed.sink.put(_event(2))
        assert b"id: 1-2" in await anext(frames)  # the shared feed goes on
        pump.close()
        [chunk async for chunk in frames]

    asyncio.run(asyncio.wait_for(scenario(), 10))


def test_a_dead_shared_feed_closes_its_channel_and_sends_clients_away() -> None:
    async def scenario() -> None:
        hub, channel, feed, _, frames = await _hub_with_subscriber()
        assert feed.sink is not None
        feed.sink.put(_event(1))
        feed.die.set()  # an exception that is not an RPC error
        rest = b"".join([chunk async for chunk in frames])  # the stream ends by itself
        assert b"id: 1-1" in rest
        assert rest.rstrip().rsplit(b"\n", 1)[-1].startswith(b"retry: ")  # it resumes by id
        assert channel.closed
        assert hub.metrics.upstream_shared_streams._value.get() == 0

    asyncio.run(asyncio.wait_for(scenario(), 10))


def test_a_late_joiner_never_gets_an_event_from_before_it_connected(
    make_devserver: Callable[..., DevServer], make_gateway: Callable[..., Gateway]
) -> None:
    devserver = make_devserver()
    gateway = make_gateway(devserver.address, *FAST)
    early = Reader(gateway.url)
    started([early], gateway)
    devserver.publish("revision.created", KREF, {"n": "0"})
    devserver.publish("revision.created", KREF, {"n": "1"}, without_cursor=True)
    early.wait_for(2)
    late = Reader(gateway.url)
    late.start()
    wait_until(lambda: gateway.metric("kumiho_gateway_streams_open") == 2, 15, "the late stream")
    # The shared stream breaks and resumes from "0": the upstream sends "1" again.
    devserver.stop(signal.SIGKILL)
    devserver.start()
    devserver.publish("revision.created", KREF, {"n": "2"})
    early.wait_for(3)
    late.wait_for(1)
    for reader in (early, late):
        reader.stop.set()
    assert [e.data.count('"n":"1"') for e in early.events] == [0, 1, 0]
    assert len(late.events) == 1 and '"n":"2"' in late.events[0].data


def test_a_late_joiner_is_told_the_true_time_to_the_next_retry(
    make_devserver: Callable[..., DevServer], make_gateway: Callable[..., Gateway]
) -> None:
    devserver = make_devserver("--refuse")
    gateway = make_gateway(
        devserver.address, "--backoff-initial", "6", "--backoff-max", "6", "--heartbeat", "0.5"
    )
    first = Reader(gateway.url)
    first.start()
    wait_until(lambda: bool(first.statuses), 10, "the first status")
    time.sleep(1.5)  # not synchronisation: the time that passes is what is measured
    late = Reader(gateway.url)
    late.start()
    wait_until(lambda: bool(late.statuses), 10, "the late status")
    for reader in (first, late):
        reader.stop.set()
    [early], [later] = first.statuses, late.statuses
    assert early["upstream"] == later["upstream"] == "unavailable"
    assert later["since"] == early["since"]  # the same outage, shared
    assert early["retry_in_ms"] > 2900  # the backoff's jitter: between 3 and 6 s
    assert later["retry_in_ms"] <= early["retry_in_ms"] - 1400  # counted down, not stale


def test_ndjson_carries_the_hubs_id_on_a_tier_without_cursors(
    make_devserver: Callable[..., DevServer], make_gateway: Callable[..., Gateway]
) -> None:
    devserver = make_devserver("--tier", "free")
    gateway = make_gateway(devserver.address, *FAST)
    params = {"format": "ndjson", "routing_key": "nd.*"}
    with httpx.stream("GET", gateway.url + "/events", params=params, timeout=10) as r:
        lines = (line for line in r.iter_lines() if line)
        assert json.loads(next(lines))["gateway"] == "status"  # subscribed: now publish
        devserver.publish("nd.created", KREF, count=2)
        first, second = (json.loads(next(lines)) for _ in range(2))
    assert first["cursor"] == "" and first["id"].startswith("gw:")
    # Resume as a script does, with the id it printed: the next event, from the ring.
    resumed = {**params, "cursor": first["id"]}
    with httpx.stream("GET", gateway.url + "/events", params=resumed, timeout=10) as r:
        events = (json.loads(line) for line in r.iter_lines() if '"routing_key"' in line)
        assert next(events)["id"] == second["id"]


class _Collected:
    """A Sink that keeps every event it is given, and says when one comes."""

    def __init__(self) -> None:
        self.cursors: list[str] = []
        self.arrived = asyncio.Event()

    def put(self, item: Item) -> bool:
        if isinstance(item, SharedEvent):
            self.cursors.append(item.cursor)
            self.arrived.set()
        return True

    async def room(self) -> bool:
        return True

    def slow_consumer(self) -> None:
        raise AssertionError("a sink that takes everything is never slow")


def test_a_request_waiting_on_an_opening_channel_outlives_its_cancelled_opener(
    make_devserver: Callable[..., DevServer],
) -> None:
    # Late headers: the opener spends a quarter of a second in the open, after the
    # capabilities call; the whole scenario below takes microseconds of it.
    devserver = make_devserver("--late-headers")
    settings = Settings(upstream=devserver.address, heartbeat=60, flush_interval=0)
    subscription = Subscription(EventFilter(), None, "latest", None, False, ANONYMOUS)

    async def scenario() -> None:
        upstream = Upstream(settings)
        await upstream.start()
        hub = Hub(upstream, settings, Metrics())
        try:
            # The first request opens the shared channel; a second one waits on it.
            opener = asyncio.create_task(hub.channel(subscription))
            await asyncio.sleep(0)  # one step: the opener registers its channel as opening
            waiter = asyncio.create_task(hub.channel(subscription))
            await asyncio.sleep(0)  # one step: the waiter finds it opening and waits
            # The first client hangs up while the channel is still opening.
            opener.cancel()
            with pytest.raises(asyncio.CancelledError):
                await opener
            assert opener.cancelled()
            # The second is not cancelled: it gets a live channel all the same.
            channel = await asyncio.wait_for(waiter, 15)
            assert not channel.closed
            source = hub.source(subscription)
            await source.open()
            sink = _Collected()
            running = asyncio.create_task(source.run(sink))
            [cursor] = await asyncio.to_thread(devserver.publish, "revision.created", KREF)
            await asyncio.wait_for(sink.arrived.wait(), 15)
            assert sink.cursors == [cursor]
            source.close()
            running.cancel()
        finally:
            hub.close()
            await upstream.close()

    asyncio.run(asyncio.wait_for(scenario(), 60))


class _BrokenTransport:
    def write(self, data: bytes) -> None:
        raise RuntimeError("this stream's connection is broken")


class _BrokenLaneMember:
    """A subscriber whose stream is in a lane, and whose transport's write raises."""

    rest = EventFilter()
    burst = 0.0
    shared = staticmethod(SharedEvent.plain_frame)

    def __init__(self, channel: Channel) -> None:
        self.channel = channel
        self.direct = self
        self.lane: Lane | None = None
        self.closed = False
        self.given = 0  # items handed over one by one, out of the lane

    def deliver(self, item: Item) -> bool:
        self.given += 1
        return True

    def steady(self) -> bool:
        return True

    def enter(self, lane: Lane) -> _BrokenTransport:
        self.lane = lane
        return _BrokenTransport()

    def leave(self) -> None:
        if self.lane is not None:
            lane, self.lane = self.lane, None
            lane.leave(self)  # type: ignore[arg-type]

    def end(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True
        self.channel.detach(self)  # type: ignore[arg-type]


def test_a_lane_member_that_fails_ends_its_own_stream_only() -> None:
    async def scenario() -> None:
        _, channel, feed, pump, frames = await _hub_with_subscriber()
        broken = _BrokenLaneMember(channel)
        channel.attach(broken)  # type: ignore[arg-type]
        channel.join(broken, broken)  # type: ignore[arg-type]
        assert broken.lane is not None  # in its lane
        assert feed.sink is not None
        feed.sink.put(_event(1))
        assert broken.closed and broken.lane is None  # out of the lane, its stream ended
        assert b"id: 1-1" in await anext(frames)  # the others still get it
        feed.sink.put(_event(2))
        assert broken.given == 0  # detached: not handed anything again
        assert b"id: 1-2" in await anext(frames)
        pump.close()
        [chunk async for chunk in frames]

    asyncio.run(asyncio.wait_for(scenario(), 10))
