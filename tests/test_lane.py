"""A hub group's lane (lane.py), its bookkeeping alone: who is written, who leaves, when.

The real thing is attacked end to end elsewhere: a burst to laned streams
(test_connection), a laned stream that stops reading (test_lifecycle), a
laned stream whose write raises (test_hub).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from gateway import connection
from gateway._proto import kumiho_pb2
from gateway.items import SharedEvent
from gateway.lane import Direct, Lane
from gateway.metrics import Metrics

BURST = 0.01


class _Transport:
    """Records what it is written; ``on_write`` runs inside the write, as a pause does."""

    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.on_write: Callable[[], None] = lambda: None

    def write(self, data: bytes) -> None:
        self.written.append(data)
        self.on_write()


class _Member:
    """A subscriber and its pump in one: enters when steady, leaves when told."""

    burst = BURST
    shared = staticmethod(SharedEvent.plain_frame)

    def __init__(self, steady: bool = True) -> None:
        self.transport = _Transport()
        self.lane: Lane | None = None
        self.is_steady = steady

    def steady(self) -> bool:
        return self.is_steady

    def enter(self, lane: Lane) -> Any:
        if not self.is_steady or self.lane is not None:
            return None
        self.lane = lane
        return self.transport

    def leave(self) -> None:
        if self.lane is not None:
            lane, self.lane = self.lane, None
            lane.leave(self)


def _lane(members: list[_Member]) -> tuple[Lane, set[Any], Metrics]:
    metrics, loose = Metrics(), set[Any](members)
    lane = Lane(SharedEvent.plain_frame, BURST, loose, metrics.writes)
    for member in members:
        if lane.join(member, member):  # type: ignore[arg-type]
            loose.discard(member)
    return lane, loose, metrics


def _shared(n: int) -> SharedEvent:
    return SharedEvent(kumiho_pb2.Event(routing_key="revision.created", cursor=f"1-{n}"))


def test_members_are_pumps_with_a_transport() -> None:
    assert isinstance(_Member(), Direct)  # the test's members take the protocol's shape


def test_every_member_gets_the_frame_as_one_chunk_and_it_counts_once() -> None:
    members = [_Member(), _Member(), _Member(steady=False)]
    lane, loose, metrics = _lane(members)
    assert len(lane) == 2 and loose == {members[2]}  # one not steady: not let in
    event = _shared(1)
    assert lane.ready(1.0)
    assert lane.write(event, 1.0) == 2
    chunk = connection.chunk(event.plain_frame())
    assert members[0].transport.written == members[1].transport.written == [chunk]
    assert members[2].transport.written == []
    assert metrics.writes.events.pending == 2


def test_a_member_paused_by_its_write_leaves_after_the_loop_with_its_frame_written() -> None:
    members = [_Member(), _Member(), _Member()]
    lane, loose, _ = _lane(members)
    members[0].transport.on_write = members[0].leave  # its transport pauses as it takes it
    assert lane.write(_shared(1), 1.0) == 3  # the loop is not broken by who leaves
    assert all(m.transport.written for m in members)
    assert loose == {members[0]} and len(lane) == 2
    assert lane.write(_shared(2), 2.0) == 2  # not written by the lane again
    assert len(members[0].transport.written) == 1


def test_a_burst_lets_every_member_go_and_a_quiet_lane_writes() -> None:
    members = [_Member(), _Member()]
    lane, loose, _ = _lane(members)
    lane.write(_shared(1), 1.0)
    assert not lane.ready(1.0 + BURST / 2)  # moments after the last: a burst
    assert len(lane) == 0 and loose == set(members)
    assert all(m.lane is None for m in members)
    for member in members:  # steady again later: in again, and written
        assert lane.join(member, member)  # type: ignore[arg-type]
        loose.discard(member)
    assert lane.ready(1.0 + 2 * BURST)
    assert lane.write(_shared(2), 1.0 + 2 * BURST) == 2


def test_an_empty_lane_is_never_ready_and_a_member_in_one_is_let_in_no_other() -> None:
    member = _Member()
    lane, _, _ = _lane([member])
    other, _, _ = _lane([])
    assert not other.join(member, member)  # type: ignore[arg-type]
    assert not other.ready(5.0)
    member.leave()
    assert len(lane) == 0
    member.leave()  # twice: nothing more
