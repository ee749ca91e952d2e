"""The filtering sink on its own: repeats, the filter, skips and flush, with no server."""

from __future__ import annotations

from gateway._proto import kumiho_pb2
from gateway.cursor import ResumeFilter
from gateway.errors import GatewayError
from gateway.filtering import ADVANCE_EVERY, FilteringSink
from gateway.items import Advance, Failure, Item, Reset, SharedEvent, Status
from gateway.matching import EventFilter

WANTED = EventFilter(("revision.tagged",), ("",))


class _Collect:
    """A Sink that keeps what it is given; ``full`` makes put() say the buffer is full."""

    def __init__(self, full: bool = False) -> None:
        self.items: list[Item] = []
        self.full = full

    def put(self, item: Item) -> bool:
        self.items.append(item)
        return not self.full

    async def room(self) -> bool:
        return True

    def slow_consumer(self) -> None:
        pass


def _event(n: int, routing_key: str = "revision.tagged", cursor: str | None = None) -> Item:
    return kumiho_pb2.Event(
        routing_key=routing_key,
        kref=kumiho_pb2.Kref(uri="kref://p/a.model"),
        cursor=f"1-{n}" if cursor is None else cursor,
    )


def _cursors(items: list[Item]) -> list[tuple[str, str]]:
    """(kind, cursor) of each positioned item."""
    out = []
    for item in items:
        if isinstance(item, Advance):
            out.append(("advance", item.cursor))
        elif isinstance(item, kumiho_pb2.Event | SharedEvent):
            out.append(("event", item.cursor))
    return out


def test_wanted_events_pass_and_unwanted_ones_advance_every_so_often() -> None:
    sink = _Collect()
    filtering = FilteringSink(sink, WANTED, every=3)
    for n in range(1, 9):
        assert filtering.put(_event(n, "revision.created" if n != 4 else "revision.tagged"))
    # 1-3 unwanted: an Advance at the third; 4 wanted; 5-7 unwanted: one at 7; 8 counted.
    assert _cursors(sink.items) == [("advance", "1-3"), ("event", "1-4"), ("advance", "1-7")]
    assert filtering.passed == "1-8"


def test_the_default_interval_is_the_readmes_hundred() -> None:
    sink = _Collect()
    filtering = FilteringSink(sink, WANTED)
    for n in range(1, 2 * ADVANCE_EVERY + 1):
        filtering.put(_event(n, "revision.created"))
    assert ADVANCE_EVERY == 100
    assert _cursors(sink.items) == [("advance", "1-100"), ("advance", "1-200")]


def test_flush_advances_to_the_last_event_passed_only_when_something_was_skipped() -> None:
    sink = _Collect()
    filtering = FilteringSink(sink, WANTED)
    assert filtering.flush() and sink.items == []  # nothing passed at all
    filtering.put(_event(1))
    assert filtering.flush() and _cursors(sink.items) == [("event", "1-1")]  # nothing skipped
    filtering.put(_event(2, "revision.created"))
    filtering.put(_event(3, "revision.created"))
    filtering.flush()
    filtering.flush()  # once: the position is there now
    assert _cursors(sink.items) == [("event", "1-1"), ("advance", "1-3")]


def test_everything_wanted_needs_no_matching_and_never_advances() -> None:
    sink = _Collect()
    filtering = FilteringSink(sink, EventFilter())
    for n in range(1, 301):
        filtering.put(_event(n, "anything.at.all"))
    filtering.flush()
    assert [c for _, c in _cursors(sink.items)] == [f"1-{n}" for n in range(1, 301)]


def test_repeats_at_or_before_the_position_are_dropped_until_a_reset() -> None:
    sink = _Collect()
    repeats = ResumeFilter("1-5")
    filtering = FilteringSink(sink, EventFilter(), repeats)
    for n in (3, 5, 6, 6, 4, 7):
        filtering.put(_event(n))
    filtering.put(Advance("1-7"))  # not past the position: nothing to move
    assert _cursors(sink.items) == [("event", "1-6"), ("event", "1-7")]
    assert repeats.position == "1-7"
    # After a reset the old position means nothing: what follows starts elsewhere.
    reset = Reset("cursor_expired", "1-7", "earliest")
    filtering.put(reset)
    filtering.put(_event(1))
    assert sink.items[-2:] == [reset, _event(1)]
    assert repeats.position == "1-1"


def test_repeat_asks_without_moving_the_position() -> None:
    repeats = ResumeFilter("1-5")
    filtering = FilteringSink(_Collect(), EventFilter(), repeats)
    assert filtering.repeat("1-5") and filtering.repeat("1-2")
    assert not filtering.repeat("1-6") and not filtering.repeat("")
    assert repeats.position == "1-5"
    assert not FilteringSink(_Collect(), EventFilter()).repeat("1-1")  # no repeat filter


def test_events_without_cursors_pass_and_are_never_advanced_to() -> None:
    sink = _Collect()
    filtering = FilteringSink(sink, WANTED, ResumeFilter("1-5"), every=2)
    for _ in range(4):
        filtering.put(_event(0, "revision.created", cursor=""))
    filtering.put(_event(0, cursor=""))
    filtering.flush()
    assert _cursors(sink.items) == [("event", "")]


def test_a_shared_event_is_matched_by_its_event_and_passed_on_as_it_is() -> None:
    sink = _Collect()
    filtering = FilteringSink(sink, WANTED, every=1)
    wanted = SharedEvent(kumiho_pb2.Event(routing_key="revision.tagged", cursor="1-1"))
    unwanted = SharedEvent(kumiho_pb2.Event(routing_key="revision.created", cursor="1-2"))
    filtering.put(wanted)
    filtering.put(unwanted)
    assert sink.items == [wanted, Advance("1-2")]


def test_signals_pass_through_and_the_sinks_answer_comes_back() -> None:
    sink = _Collect(full=True)
    filtering = FilteringSink(sink, WANTED, every=1)
    status = Status.now("live", None, None)
    failure = Failure(GatewayError(401, "unauthenticated", "no"))
    assert filtering.put(status) is False and filtering.put(failure) is False
    assert filtering.put(_event(1)) is False  # full: the source waits for room
    assert filtering.put(_event(2, "revision.created")) is False  # its Advance filled it
    assert sink.items[:2] == [status, failure]
