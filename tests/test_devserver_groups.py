"""Consumer groups in the reference upstream (EventStreamRequest field 4, enterprise tier).

Real devserver processes, real grpc.aio EventStream calls; the rules under
test are written in gateway/devserver/groups.py.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import grpc
import pytest

from gateway._proto import kumiho_pb2, kumiho_pb2_grpc
from gateway.devserver.groups import WINDOW, ConsumerGroups
from gateway.devserver.store import BEFORE_ALL, EventStore, NewEvent, StoredEvent
from tests.conftest import DevServer

DEADLINE = 20.0
KREF = "kref://groups/s/hero.model"


async def eventually(predicate: Callable[[], bool], what: str, deadline: float = DEADLINE) -> None:
    """Poll ``predicate`` until it holds, or fail after ``deadline`` seconds."""
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline
    while not predicate():
        if loop.time() > end:
            raise AssertionError(f"timed out after {deadline}s waiting for {what}")
        await asyncio.sleep(0.02)


class Stream:
    """One EventStream call, read in the background."""

    def __init__(
        self,
        channel: grpc.aio.Channel,
        group: str | None,
        *,
        token: str = "",
        **fields: Any,
    ) -> None:
        request = kumiho_pb2.EventStreamRequest(**fields)
        if group is not None:
            request.consumer_group = group
        metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self.call = kumiho_pb2_grpc.KumihoServiceStub(channel).EventStream(
            request, metadata=metadata
        )
        self.events: list[kumiho_pb2.Event] = []
        self.error: grpc.aio.AioRpcError | None = None
        self._task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            async for event in self.call:
                self.events.append(event)
        except grpc.aio.AioRpcError as exc:
            self.error = exc

    @property
    def cursors(self) -> list[str]:
        return [e.cursor for e in self.events]

    async def opened(self) -> Stream:
        """Wait for the response headers: the server has the stream (and its member) by then."""
        await asyncio.wait_for(self.call.initial_metadata(), DEADLINE)
        return self

    async def close(self) -> None:
        self.call.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(self._task, DEADLINE)


@contextlib.asynccontextmanager
async def connected(devserver: DevServer) -> Any:
    """A grpc.aio channel to the devserver, and every Stream opened on it closed at the end."""
    streams: list[Stream] = []
    async with grpc.aio.insecure_channel(devserver.address) as channel:

        async def open_(group: str | None, **fields: Any) -> Stream:
            stream = Stream(channel, group, **fields)
            streams.append(stream)
            return await stream.opened()

        try:
            yield open_
        finally:
            for stream in streams:
                await stream.close()


async def publish(
    devserver: DevServer, count: int, routing_key: str = "revision.created", **kw: Any
) -> list[str]:
    return await asyncio.to_thread(devserver.publish, routing_key, KREF, count=count, **kw)


async def open_streams(devserver: DevServer) -> int:
    return await asyncio.to_thread(devserver.open_streams)


async def wait_for_streams(devserver: DevServer, count: int) -> None:
    """Poll the control plane until the server has ``count`` open streams (it saw a leave)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + DEADLINE
    while await open_streams(devserver) != count:
        assert loop.time() < end, f"the devserver never had {count} open streams"
        await asyncio.sleep(0.02)


def assert_split(members: Sequence[Stream], published: Sequence[str]) -> None:
    """Each published cursor reached exactly one member, each member in cursor order."""
    received = [c for m in members for c in m.cursors]
    assert len(received) == len(set(received)), "an event reached two members"
    assert set(received) == set(published)
    for member in members:
        assert member.cursors == sorted(member.cursors, key=_key)


def _key(cursor: str) -> tuple[int, int]:
    ms, _, seq = cursor.partition("-")
    return int(ms), int(seq)


def total(members: Sequence[Stream]) -> Callable[[], int]:
    return lambda: sum(len(m.events) for m in members)


async def test_three_members_split_the_events_and_a_second_group_gets_them_all_again(
    make_devserver: Callable[..., DevServer],
) -> None:
    devserver = make_devserver("--tier", "enterprise")
    async with connected(devserver) as open_:
        workers = [await open_("workers") for _ in range(3)]
        auditors = [await open_("auditors") for _ in range(2)]
        alone = await open_(None)  # no group: every event
        published: list[str] = []
        for _ in range(3):
            published += await publish(devserver, 100)

        await eventually(lambda: total(workers)() >= 300, "the workers' 300 events")
        await eventually(lambda: total(auditors)() >= 300, "the auditors' 300 events")
        await eventually(lambda: len(alone.events) >= 300, "the lone stream's 300 events")
        assert_split(workers, published)
        assert_split(auditors, published)
        assert alone.cursors == published
        for member in workers:
            assert len(member.events) >= 30, [len(m.events) for m in workers]
        assert all(len(m.events) >= 30 for m in auditors)


async def test_a_member_that_leaves_stops_receiving_and_the_group_loses_nothing(
    make_devserver: Callable[..., DevServer],
) -> None:
    devserver = make_devserver("--tier", "enterprise")
    async with connected(devserver) as open_:
        members = [await open_("g") for _ in range(3)]
        first = await publish(devserver, 90)
        await eventually(lambda: total(members)() >= 90, "the first 90 events")
        leaver, *stayers = members
        had = list(leaver.cursors)
        assert had, "the leaver took no share before leaving"
        await leaver.close()
        await wait_for_streams(devserver, 2)

        second = await publish(devserver, 90)
        await eventually(lambda: total(stayers)() >= 180 - len(had), "the second 90 events")
        assert leaver.cursors == had
        assert_split([leaver, *stayers], first + second)
        for member in stayers:
            assert len(set(member.cursors) & set(second)) >= 20


async def test_an_event_a_broken_stream_did_not_send_goes_to_the_group(
    make_devserver: Callable[..., DevServer],
) -> None:
    devserver = make_devserver("--tier", "enterprise")
    with devserver.client() as control:
        await asyncio.to_thread(control.set_faults, break_after=5)
    async with connected(devserver) as open_:
        members = [await open_("g") for _ in range(2)]
        published = await publish(devserver, 14)
        await eventually(lambda: all(m.error for m in members), "both streams to break")
        assert all(m.error and m.error.code() == grpc.StatusCode.UNAVAILABLE for m in members)
        assert [len(m.events) for m in members] == [5, 5]
        with devserver.client() as control:
            await asyncio.to_thread(control.set_faults)
        successor = await open_("g")  # what the broken streams held waits for it
        members.append(successor)
        await eventually(lambda: total(members)() >= 14, "all 14 events")
        assert_split(members, published)


async def test_events_wait_at_the_group_position_while_no_member_is_live(
    make_devserver: Callable[..., DevServer],
) -> None:
    devserver = make_devserver("--tier", "enterprise")
    await publish(devserver, 5)  # before the group: a new group starts at the latest event
    async with connected(devserver) as open_:
        member = await open_("g")
        seen = await publish(devserver, 10)
        await eventually(lambda: len(member.events) >= 10, "10 events")
        assert member.cursors == seen
        await member.close()
        await wait_for_streams(devserver, 0)

        waiting = await publish(devserver, 30)
        late = await open_("g", from_beginning=True)  # the group exists: its position wins
        more = await publish(devserver, 5)
        await eventually(lambda: len(late.events) >= 35, "the 35 events since the group's position")
        assert late.cursors == waiting + more


async def test_the_start_position_of_the_member_that_creates_the_group_counts(
    make_devserver: Callable[..., DevServer],
) -> None:
    devserver = make_devserver("--tier", "enterprise")
    history = await publish(devserver, 20)
    async with connected(devserver) as open_:
        first = await open_("g", cursor=history[9])
        await eventually(lambda: len(first.events) >= 10, "the history after the cursor")
        second = await open_("g", from_beginning=True)  # joins: no replay for it
        more = await publish(devserver, 40)
        await eventually(lambda: total([first, second])() >= 50, "50 events")
        assert_split([first, second], history[10:] + more)
        assert not set(second.cursors) & set(history)


async def test_a_group_keeps_its_position_across_a_restart(
    make_devserver: Callable[..., DevServer], tmp_path: Path
) -> None:
    db = tmp_path / "kept.sqlite3"
    devserver = make_devserver("--tier", "enterprise", db=db)
    async with connected(devserver) as open_:
        member = await open_("g")
        await publish(devserver, 10)
        await eventually(lambda: len(member.events) >= 10, "10 events")
    devserver.stop()

    devserver = make_devserver("--tier", "enterprise", db=db)
    missed = await publish(devserver, 7)
    async with connected(devserver) as open_:
        member = await open_("g")  # latest by default, but the group has a position
        newcomer = await open_("new")  # a new group starts at the latest event
        after = await publish(devserver, 3)
        await eventually(lambda: len(member.events) >= 10, "the 7 missed events and 3 more")
        await eventually(lambda: len(newcomer.events) >= 3, "the 3 new events")
        assert member.cursors == missed + after
        assert newcomer.cursors == after


async def test_each_event_goes_to_a_member_whose_filters_match_it(
    make_devserver: Callable[..., DevServer],
) -> None:
    devserver = make_devserver("--tier", "enterprise")
    async with connected(devserver) as open_:
        revisions_only = await open_("g", routing_key_filter="revision.*")
        anything = await open_("g")
        other_project = await open_("g", kref_filter="kref://elsewhere/**")
        revisions: list[str] = []
        items: list[str] = []
        for _ in range(20):
            revisions += await publish(devserver, 2, "revision.created")
            items += await publish(devserver, 2, "item.model.created")
        members = [revisions_only, anything, other_project]
        await eventually(lambda: total(members)() >= 80, "80 events")
        assert_split(members, revisions + items)
        assert set(revisions_only.cursors) <= set(revisions)
        assert len(revisions_only.events) >= 10  # it shares the revisions with `anything`
        assert set(items) <= set(anything.cursors)
        assert not other_project.events


async def test_a_tier_without_consumer_groups_refuses_a_group_but_not_an_empty_name(
    make_devserver: Callable[..., DevServer],
) -> None:
    devserver = make_devserver("--tier", "studio")
    async with connected(devserver) as open_:
        refused = Stream(grpc.aio.insecure_channel(devserver.address), "g")
        await eventually(lambda: refused._task.done(), "the refusal")
        assert refused.error is not None
        assert refused.error.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "studio tier" in (refused.error.details() or "")

        plain = await open_("")  # an empty name is no group
        published = await publish(devserver, 3)
        await eventually(lambda: len(plain.events) >= 3, "3 events")
        assert plain.cursors == published


async def test_a_group_name_is_per_tenant(make_devserver: Callable[..., DevServer]) -> None:
    devserver = make_devserver("--tier", "enterprise", "--token", "ta=A", "--token", "tb=B")
    async with connected(devserver) as open_:
        in_a = await open_("g", token="ta")
        in_b = await open_("g", token="tb")
        for_a = await publish(devserver, 10, tenant="A")
        for_b = await publish(devserver, 10, tenant="B")
        await eventually(lambda: len(in_a.events) >= 10, "tenant A's events")
        await eventually(lambda: len(in_b.events) >= 10, "tenant B's events")
        assert in_a.cursors == for_a and in_b.cursors == for_b


# The group's rules without a server: windows, hand-back on leave, the stored position.


def _append(store: EventStore, count: int) -> list[StoredEvent]:
    return store.append("t", [NewEvent("revision.created", KREF, {}) for _ in range(count)])


async def test_a_leaver_hands_its_unsent_window_to_the_others(tmp_path: Path) -> None:
    store = EventStore(tmp_path / "log.sqlite3")
    groups = ConsumerGroups(store)
    a = groups.join("t", "g", lambda e: True, lambda: BEFORE_ALL)
    b = groups.join("t", "g", lambda e: True, lambda: pytest.fail("the group exists"))
    events = _append(store, 3 * WINDOW)
    changed = asyncio.Event()
    first = await a.next(changed)  # dispatches: each window fills, round-robin
    assert first is not None and first.key == events[0].key
    assert len(a.window) == WINDOW - 1 and len(b.window) == WINDOW
    assert a.group.stalled  # the rest waits for room
    # The stored position stops before the oldest event handed out but not sent
    # (as of the dispatch: the position is saved when events are handed out).
    assert store.group_position("t", "g") == (events[0].key[0], events[0].key[1] - 1)

    held = list(a.window)
    groups.leave(a)
    assert not a.window
    got: list[StoredEvent] = []
    for _ in range(3 * WINDOW - 1):  # all but the one a sent
        event = await asyncio.wait_for(b.next(changed), DEADLINE)
        assert event is not None
        got.append(event)
    assert {e.key for e in got} == {e.key for e in events[1:]}
    assert {e.key for e in held} <= {e.key for e in got}

    groups.leave(b)
    assert store.group_position("t", "g") == events[-1].key
    store.close()


async def test_a_last_leaver_leaves_its_window_for_the_next_member(tmp_path: Path) -> None:
    store = EventStore(tmp_path / "log.sqlite3")
    groups = ConsumerGroups(store)
    member = groups.join("t", "g", lambda e: True, lambda: BEFORE_ALL)
    events = _append(store, 5)
    changed = asyncio.Event()
    assert await member.next(changed) == events[0]
    groups.leave(member)  # four handed out, not sent
    successor = groups.join("t", "g", lambda e: True, lambda: pytest.fail("the group exists"))
    assert [await successor.next(changed) for _ in range(4)] == events[1:]
    store.close()
