"""The filtering sink: what a client wants goes on, and the rest still moves its position.

``FilteringSink`` wraps a Sink, as a middleware wraps an app, and does to
what passes through the four things every path needs, in one place:

- repeats: with a ``ResumeFilter``, an event at or before the position (an
  upstream is at-least-once, and resubscribes after a break) is dropped.
  Each upstream stream has exactly one, in its ``UpstreamSource``; what
  comes out of it (a hub channel's feed, a catch-up stream) is free of
  repeats, so the layers after it keep none.
- keep: only events that match ``rest`` (what is left of the client's filter
  once the upstream has applied its part) are passed on;
- skips: the unwanted ones are counted, and every ``every`` of them an
  ``Advance`` to the last one moves the client's resume point, so it never
  lags further behind;
- flush: an Advance now, to the last event passed, when unwanted ones came
  since the client's last item (at a catch-up's hand-over, at the end of a
  poll).

Used by ``UpstreamSource`` (for what the upstream cannot filter), the hub's
catch-up, and each filter group of a hub channel.
"""

from __future__ import annotations

from typing import assert_never

from gateway._proto import kumiho_pb2
from gateway.cursor import ResumeFilter
from gateway.items import Advance, Failure, Item, Reset, SharedEvent, Sink, Status
from gateway.matching import EventFilter

# How many unwanted events in a row before the client's resume point is moved.
ADVANCE_EVERY = 100


class FilteringSink:
    """A Sink that drops repeats, keeps what ``rest`` wants and advances past the rest."""

    __slots__ = ("_count", "_every", "_repeats", "_rest", "passed", "sink")

    def __init__(
        self,
        sink: Sink,
        rest: EventFilter,
        repeats: ResumeFilter | None = None,
        every: int = ADVANCE_EVERY,
    ) -> None:
        self.sink = sink
        self._rest = None if rest.everything else rest
        self._repeats = repeats
        self._every = max(1, every)
        self._count = 0  # unwanted events since the client's last item
        self.passed = ""  # the cursor of the last event that came through, wanted or not

    def wants(self, event: kumiho_pb2.Event) -> bool:
        """Whether the client's filter keeps ``event``."""
        return self._rest is None or self._rest.wants(event)

    def repeat(self, cursor: str) -> bool:
        """Whether an event with ``cursor`` would be dropped as a repeat (nothing changes)."""
        return self._repeats is not None and self._repeats.repeat(cursor)

    def put(self, item: Item) -> bool:
        match item:
            case kumiho_pb2.Event() | SharedEvent():
                cursor = item.cursor
                if self._repeats is not None and not self._repeats.accept(cursor):
                    return True  # a repeat after a resume or a resubscribe
                if cursor:
                    self.passed = cursor
                event = item.event if isinstance(item, SharedEvent) else item
                if self.wants(event):
                    self._count = 0
                    return self.sink.put(item)
                self._count += 1
                if self._count < self._every or not cursor:
                    return True
                self._count = 0
                return self.sink.put(Advance(cursor))
            case Advance():
                if self._repeats is not None and not self._repeats.accept(item.cursor):
                    return True  # not past the position: nothing to move
                self.passed = item.cursor
                self._count = 0
                return self.sink.put(item)
            case Reset():
                # What follows starts elsewhere: the old position means nothing.
                if self._repeats is not None:
                    self._repeats.forget()
                self._count = 0
                self.passed = ""
                return self.sink.put(item)
            case Status() | Failure():
                return self.sink.put(item)
            case _:
                assert_never(item)

    def flush(self) -> bool:
        """An Advance to the last event passed, if unwanted ones came since the last item.

        Returns what the sink's ``put`` said (True when nothing was due).
        """
        if not self._count or not self.passed:
            return True
        self._count = 0
        return self.sink.put(Advance(self.passed))

    async def room(self) -> bool:
        return await self.sink.room()

    def slow_consumer(self) -> None:
        self.sink.slow_consumer()
