"""The reference upstream's event log: cursors, persistence, retention, start positions."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from gateway.cursor import cursor_key
from gateway.devserver.store import BEFORE_ALL, CursorError, EventStore, NewEvent, iso_timestamp


class Clock:
    def __init__(self, t: float = 1_700_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def _new(n: int) -> list[NewEvent]:
    return [
        NewEvent("revision.created", f"kref://p/s/i.model?r={i}", {"i": str(i)}) for i in range(n)
    ]


def test_cursors_are_ordered_redis_ids_even_when_the_clock_stalls_or_steps_back(
    tmp_path: Path,
) -> None:
    clock = Clock()
    store = EventStore(tmp_path / "log.sqlite3", clock=clock)
    a = store.append("t", _new(3))
    clock.t -= 5  # the wall clock steps back
    b = store.append("t", _new(2))
    keys = [cursor_key(e.cursor) for e in a + b]
    assert keys == sorted(keys) and len(set(keys)) == 5
    assert a[0].cursor == "1700000000000-0" and a[2].cursor == "1700000000000-2"
    assert a[0].timestamp == "2023-11-14T22:13:20.000Z" == iso_timestamp(1_700_000_000_000)


def test_events_and_cursors_survive_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "log.sqlite3"
    store = EventStore(path)
    first = store.append("t", _new(2))
    store.close()
    store = EventStore(path)
    second = store.append("t", _new(1))
    assert cursor_key(second[0].cursor) > cursor_key(first[-1].cursor)  # type: ignore[operator]
    assert [e.cursor for e in store.read_after("t", BEFORE_ALL, 10)] == [
        e.cursor for e in first + second
    ]
    assert store.resume_key("t", first[0].cursor) == first[0].key


def test_read_after_is_exclusive_and_per_tenant(tmp_path: Path) -> None:
    store = EventStore(tmp_path / "log.sqlite3")
    mine = store.append("a", _new(3))
    store.append("b", _new(3))
    after = store.read_after("a", mine[0].key, 10)
    assert [e.cursor for e in after] == [e.cursor for e in mine[1:]]
    assert all(e.tenant == "a" for e in after)
    assert after[0].details == {"i": "1"}


def test_retention_by_count_expires_old_cursors(tmp_path: Path) -> None:
    store = EventStore(tmp_path / "log.sqlite3", max_events=5)
    events = store.append("t", _new(8))
    assert store.count("t") == 5
    with pytest.raises(CursorError) as err:
        store.resume_key("t", events[1].cursor)
    assert err.value.kind == "expired"
    # The newest pruned cursor is still a valid resume point: nothing after it was lost.
    assert store.resume_key("t", events[2].cursor) == events[2].key
    assert [e.cursor for e in store.read_after("t", BEFORE_ALL, 10)] == [
        e.cursor for e in events[3:]
    ]
    store.append("other", _new(2))
    assert store.count("t") == 5  # retention is per tenant


def test_retention_by_age(tmp_path: Path) -> None:
    clock = Clock()
    store = EventStore(tmp_path / "log.sqlite3", retention_hours=1, clock=clock)
    old = store.append("t", _new(2))
    clock.t += 3601
    new = store.append("t", _new(1))
    assert [e.cursor for e in store.read_after("t", BEFORE_ALL, 10)] == [new[0].cursor]
    with pytest.raises(CursorError):
        store.resume_key("t", old[0].cursor)


@pytest.mark.parametrize(
    ("cursor", "kind"),
    [
        ("nonsense", "invalid"),
        ("9999999999999-0", "unknown"),
        ("1-9223372036854775808", "invalid"),  # past SQLite's integers: refused, not a crash
        ("99999999999999999999-0", "invalid"),
    ],
)
def test_bad_cursors(tmp_path: Path, cursor: str, kind: str) -> None:
    store = EventStore(tmp_path / "log.sqlite3")
    store.append("t", _new(1))
    with pytest.raises(CursorError) as err:
        store.resume_key("t", cursor)
    assert err.value.kind == kind


def test_start_at_a_timestamp_includes_events_at_that_instant(tmp_path: Path) -> None:
    clock = Clock()
    store = EventStore(tmp_path / "log.sqlite3", clock=clock)
    store.append("t", _new(1))
    clock.t += 10
    later = store.append("t", _new(2))
    key = store.key_at_timestamp(later[0].timestamp)
    assert [e.cursor for e in store.read_after("t", key, 10)] == [e.cursor for e in later]
    with pytest.raises(CursorError):
        store.key_at_timestamp("not a time")


def test_fractional_retention_hours_are_kept(tmp_path: Path) -> None:
    from gateway.devserver.server import DevServerConfig, running_devserver

    async def scenario() -> None:
        config = DevServerConfig(port=0, db=tmp_path / "half.sqlite3", retention_hours=0.5)
        async with running_devserver(config) as running:
            assert running.events.log.store._retention_ms == 30 * 60 * 1000  # not 0 (= none)
            assert running.events.tier.max_retention_hours == 1  # whole hours, rounded up

    asyncio.run(scenario())
