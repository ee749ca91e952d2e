"""A catch-up: a request older than the ring reads a stream of its own, then joins the feed.

A request whose resume point the ring does not hold (an older cursor,
``from=beginning``, a timestamp) gets a catch-up stream: an
``UpstreamSource`` asking the upstream what the channel asks, from the
request's own start. Its Sink (``CatchUp``) passes the wanted events on
through a ``FilteringSink`` and, on every event it brings (wanted or not),
asks the channel whether the ring holds it: the moment it does, the client
is handed over to the shared feed (the ring's replay after that event, then
the live items), without a gap or a repeat, and the catch-up stream stops.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import assert_never

from gateway._proto import kumiho_pb2
from gateway.filtering import FilteringSink
from gateway.items import Advance, Failure, Item, Reset, SharedEvent, Sink, Status
from gateway.matching import EventFilter


class CatchUp:
    """The Sink of a catch-up stream: forwards to the client until the ring takes over.

    The catch-up stream asks the upstream what the channel asks, so any event
    it brings (wanted by the client or not) may be where the ring takes over;
    a filtering sink passes on the wanted ones and advances past the rest.
    """

    def __init__(self, sink: Sink, rest: EventFilter, handover: Callable[[str], bool]) -> None:
        # No repeat filter: the catch-up's UpstreamSource has dropped its repeats.
        self._filtering = FilteringSink(sink, rest)
        self._handover = handover
        self.handed_over = False

    def flush(self) -> None:
        """An Advance to the last event passed, if unwanted ones came since the last item."""
        if not self.handed_over:
            self._filtering.flush()

    def put(self, item: Item) -> bool:
        if self.handed_over:
            return False
        ok = self._filtering.put(item)
        match item:
            case kumiho_pb2.Event() | Advance():
                if item.cursor and self._handover(item.cursor):
                    self.handed_over = True
                    # The shared feed counts unwanted events afresh: bring the client's
                    # id up to here first, so that it never lags more than one interval.
                    self._filtering.flush()
                    return False  # stop the catch-up stream: the shared feed continues
            case SharedEvent():
                raise AssertionError("a catch-up stream sends Kumiho events")
            case Reset() | Status() | Failure():
                pass
            case _:
                assert_never(item)
        return ok

    async def room(self) -> bool:
        return not self.handed_over and await self._filtering.room()

    def slow_consumer(self) -> None:
        self._filtering.slow_consumer()
