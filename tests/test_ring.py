"""The ring of a hub channel on its own: replays, eviction, the position a replay leaves."""

from __future__ import annotations

from gateway._proto import kumiho_pb2
from gateway.items import Advance, SharedEvent
from gateway.matching import EventFilter
from gateway.ring import Ring

TAGGED = EventFilter(("revision.tagged",), ("",))


def _shared(n: int, routing_key: str = "revision.tagged") -> SharedEvent:
    return SharedEvent(kumiho_pb2.Event(routing_key=routing_key, cursor=f"1-{n}"))


def _ids(replay: list[SharedEvent | Advance] | None) -> list[str] | None:
    if replay is None:
        return None
    return [("+" if isinstance(item, Advance) else "") + item.cursor for item in replay]


def test_a_replay_is_what_follows_the_cursor_and_none_for_a_cursor_it_lacks() -> None:
    ring = Ring(10)
    for n in range(1, 6):
        ring.append(_shared(n))
    assert _ids(ring.after("1-2", EventFilter())) == ["1-3", "1-4", "1-5"]
    assert _ids(ring.after("1-5", EventFilter())) == []
    assert ring.after("1-9", EventFilter()) is None


def test_the_oldest_event_goes_once_the_ring_is_full_and_a_clear_forgets_all() -> None:
    ring = Ring(3)
    for n in range(1, 6):
        ring.append(_shared(n))
    assert ring.after("1-2", EventFilter()) is None
    assert _ids(ring.after("1-3", EventFilter())) == ["1-4", "1-5"]
    ring.clear()
    assert ring.after("1-5", EventFilter()) is None
    assert Ring(0).after("1-1", EventFilter()) is None  # a ring of none keeps none


def test_a_replay_ends_at_the_newest_event_even_when_it_is_unwanted() -> None:
    ring = Ring(10)
    ring.append(_shared(1))
    ring.append(_shared(2, "revision.created"))
    ring.append(_shared(3))
    ring.append(_shared(4, "revision.created"))
    ring.append(_shared(5, "revision.created"))
    # The wanted events, then an Advance to the newest: the client's position is there.
    assert _ids(ring.after("1-1", TAGGED)) == ["1-3", "+1-5"]
    assert _ids(ring.after("1-3", TAGGED)) == ["+1-5"]
    assert _ids(ring.after("1-5", TAGGED)) == []  # already at the newest
    ring.append(_shared(6))
    assert _ids(ring.after("1-1", TAGGED)) == ["1-3", "1-6"]  # the newest is wanted: no Advance
