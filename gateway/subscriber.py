"""A subscriber: one request's view of a hub channel (``HubSource``, the route's Source).

It joins the channel's feed at once (from the latest event, or after the
ring's replay when the ring holds its resume point), or first runs a
catch-up stream (``catchup.py``) that hands it over at the ring. Live items
come from the channel synchronously (``deliver``); while the client's
buffer is full, or a replay is still being written, they wait in a bounded
backlog that ``run`` feeds at the client's own pace. An id minted by a hub
that the ring no longer holds gets ``gateway.reset`` and the live feed. The
pump does not know whether its events are shared.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

from gateway.catchup import CatchUp
from gateway.channel import MINTED_PREFIX, Channel
from gateway.items import Advance, Failure, Item, Reset, SharedEvent, Sink, wake
from gateway.lane import Direct
from gateway.source import UpstreamSource
from gateway.subscription import Subscription

if TYPE_CHECKING:
    from gateway.hub import Hub


class HubSource:
    """One request's view of a channel: ring replay, catch-up, then the live feed.

    Live items go straight into the client's buffer while it has room. When it
    is full, or while a replay is still being written, they queue behind it in
    a backlog that ``run`` feeds to the client at the client's own pace: a
    replay of any length makes progress, and only a client that falls further
    behind than ``hub_ring_size + buffer_events`` items (or stops reading for
    the slow-consumer grace) is cut. The backlog holds references to events
    the ring shares, not copies.
    """

    # Slots: one per stream, alive as long as it.
    __slots__ = (
        "_backlog",
        "_catch_up",
        "_catching_up",
        "_channel",
        "_ended",
        "_hub",
        "_joined",
        "_limit",
        "_live",
        "_seen",
        "_sink",
        "_sub",
        "_wakeup",
        "direct",
        "rest",
    )

    def __init__(self, hub: Hub, subscription: Subscription) -> None:
        self._hub = hub
        self._sub = subscription
        self._channel: Channel | None = None
        self._catch_up: UpstreamSource | None = None
        self._catching_up: CatchUp | None = None  # the catch-up stream's sink, while it runs
        self._joined = False  # attached to the shared feed: live
        self._seen = ""  # the feed's newest event when this joined it
        self._sink: Sink | None = None
        self.direct: Direct | None = None  # the sink, when it may be in a lane (lane.py)
        # Made when something waits (None while live: thousands of idle deques add up).
        self._backlog: collections.deque[Item] | None = None
        self._limit = hub.settings.hub_ring_size + hub.settings.buffer_events
        self._live = False  # items may go straight to the sink (caught up, buffer not full)
        self._ended = False
        self._wakeup: asyncio.Future[None] | None = None  # run() waits: caught up
        self.rest = subscription.filter  # what the channel's events must still match

    async def open(self) -> None:
        sub = self._sub
        metrics = self._hub.metrics
        channel = self._channel = await self._hub.channel(sub)
        self.rest = channel.rest_of(sub.filter)
        if sub.cursor is None and sub.start == "latest":
            self._join(channel, [])
            return
        if sub.cursor is not None:
            replay = channel.after(sub.cursor, self.rest)
            if replay is not None:
                # Replay and joining happen with no await in between: no live
                # event can fall between them, and none comes twice.
                metrics.ring_hits.inc()
                self._join(channel, replay)
                return
            metrics.ring_misses.inc()
            if sub.cursor.startswith(MINTED_PREFIX):
                # The hub's own id, no longer in this ring: Kumiho cannot resume it.
                self._join(channel, [Reset("cursor_unknown", sub.cursor, "latest")])
                return
        # Older than the ring, or from the beginning / a time: a stream of its own first.
        channel.hold(self)
        asked = replace(sub, filter=channel.asked)
        self._catch_up = UpstreamSource(self._hub.upstream, asked, self._hub.settings, metrics)
        await self._catch_up.open()

    def _join(self, channel: Channel, first: Sequence[Item]) -> None:
        """Subscribe to the feed: the upstream's state, then ``first``, then live items."""
        backlog = self._queue()
        backlog.append(channel.status)
        backlog.extend(first)
        channel.attach(self)
        self._joined, self._seen = True, channel.newest

    def caught_up(self, quiet: float) -> bool:
        """On the shared feed: live. Catching up: when it joins the feed at the ring.

        Only when the ring holds nothing the catch-up could meet (a channel
        that has seen no event yet) does a quiet catch-up stream count as
        caught up: a pause is a guess (a loaded machine makes one mid-run),
        the hand-over is not.
        """
        if self._joined:
            return not self._ended
        catching_up, channel = self._catch_up, self._channel
        if catching_up is None or (channel is not None and channel.holds_events):
            return False
        return catching_up.caught_up(quiet)

    def flush(self) -> None:
        if self._catching_up is not None:
            self._catching_up.flush()
        elif self._joined and self._sink is not None and self._channel is not None:
            # Every item up to the feed's newest event has been handed over (or
            # queued before this): a subscriber is there, whatever it skipped.
            if self._channel.newest == self._seen:
                return  # nothing passed since it joined (its replay ends at the newest)
            advance = Advance(self._channel.newest)
            if self._backlog:
                self._backlog.append(advance)
            else:
                self._sink.put(advance)

    async def run(self, sink: Sink) -> None:
        if self._catch_up is not None:
            metrics = self._hub.metrics
            metrics.catch_up_streams.inc()
            catch_up = self._catching_up = CatchUp(sink, self.rest, self._hand_over)
            try:
                await self._catch_up.run(catch_up)
            finally:
                metrics.catch_up_streams.dec()
                self._catch_up.close()
                self._catching_up = None
            if not catch_up.handed_over:
                return  # the client left, or the catch-up stream failed for good
        self._sink = sink
        self.direct = sink if isinstance(sink, Direct) else None
        delivered = self._hub.metrics.frames_delivered
        while True:
            while self._backlog:
                item = self._backlog.popleft()
                has_room = sink.put(item)
                if isinstance(item, SharedEvent):
                    delivered.inc()
                elif isinstance(item, Failure):
                    return
                if not has_room and not await sink.room():
                    return  # cut as a slow consumer, or the stream ended
            if self._ended:
                return
            # Caught up: deliver() writes straight into the buffer until it fills.
            self._backlog = None
            self._live = True
            self._steady()
            self._wakeup = asyncio.get_running_loop().create_future()
            await self._wakeup
            self._wakeup = None
            if not self._ended and not await sink.room():
                return

    def _hand_over(self, cursor: str) -> bool:
        """After the catch-up delivered ``cursor``: join the feed if the ring holds it."""
        channel = self._channel
        assert channel is not None
        replay = channel.after(cursor, self.rest)
        if replay is None or channel.closed:
            return False
        backlog = self._queue()
        if channel.status.upstream != "live":  # the catch-up stream had it live
            backlog.append(channel.status)
        backlog.extend(replay)
        channel.attach(self)
        self._joined, self._seen = True, channel.newest
        return True

    def deliver(self, item: Item) -> bool:
        """Called by the channel for every shared item (synchronously, never waits).

        True when the item went into the client's buffer now, not into the backlog.
        """
        if self._ended:
            return False
        sink = self._sink
        if self._live and sink is not None:
            if not sink.put(item):
                self._live = False  # full: what follows waits in the backlog
                wake(self._wakeup)
            elif type(item) is SharedEvent:
                self._steady()  # written at once: its group's lane may go on
            if type(item) is Failure:
                self.end()
            return True
        backlog = self._queue()
        backlog.append(item)
        if len(backlog) > self._limit:
            # Further behind than the ring plus a buffer: cut it (it resumes by id).
            backlog.clear()
            if self._sink is not None:
                self._sink.slow_consumer()
            self.close()
        return False

    def _steady(self) -> None:
        """Live, with nothing waiting: its group's lane (lane.py) may write its shared events."""
        direct, channel = self.direct, self._channel
        if direct is not None and channel is not None and direct.steady():
            channel.join(self, direct)

    def _queue(self) -> collections.deque[Item]:
        if self._backlog is None:
            self._backlog = collections.deque()
        return self._backlog

    def end(self) -> None:
        """No more items come: the stream ends once what is queued is written."""
        self._ended = True
        wake(self._wakeup)
        if self._catch_up is not None:
            self._catch_up.close()

    def close(self) -> None:
        self.end()
        if self._channel is not None:
            self._channel.detach(self)
