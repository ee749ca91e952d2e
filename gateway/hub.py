"""The hub: one upstream stream shared by every request with the same credential.

A ``Channel`` owns one upstream EventStream (an ``UpstreamSource`` from the
latest event) for a key (credential identity, and the filter the channel asks
the upstream for), so different credentials never share: tenant isolation
holds by construction. Where filters are applied is ``--hub-filtering``: in
the gateway (one unfiltered channel per credential, every subscription
matched against each event by ``matching.py``), or upstream (a channel per
credential and filter; a list of patterns, which one call cannot carry, is
still matched here). Each event is matched once per distinct filter and
encoded once (``SharedEvent``), and the same bytes go to every matching
subscriber's bounded buffer; a subscriber that cannot keep up is cut off
(slow consumer) and never delays the others. The channel keeps
a ring of recent events: a request whose resume cursor is in the ring is
served from memory and joins the live feed, with no upstream call. An older
cursor (or ``from=beginning`` / a timestamp) gets a dedicated catch-up stream
that hands the client over to the shared feed the moment it delivers an
event the ring holds, without a gap or a repeat. The upstream stream closes
``hub_linger`` seconds after its last subscriber leaves.

On a tier without cursors the channel mints the SSE ids itself
(``gw:<channel>:<n>``, never a Kumiho cursor's shape; the data's ``cursor``
stays empty), so clients still resume gap-free from the ring; an id the ring
no longer holds gets ``gateway.reset`` and the live feed.

``HubSource`` is the per-request ``Source`` the route uses; the pump does
not know whether its events are shared.
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import functools
import logging
import secrets
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import assert_never

from gateway._proto import kumiho_pb2
from gateway.filtering import ADVANCE_EVERY, FilteringSink
from gateway.items import Advance, Failure, Item, Reset, SharedEvent, Sink, Status, wake
from gateway.matching import EventFilter
from gateway.metrics import Metrics
from gateway.settings import Settings
from gateway.source import UpstreamSource
from gateway.subscription import Subscription
from gateway.upstream import Upstream

log = logging.getLogger("gateway.hub")

# (credential identity, x-tenant-id, consumer group, what the upstream filters)
ChannelKey = tuple[str, str | None, str, EventFilter]
MINTED_PREFIX = "gw:"


class Channel:
    """One shared upstream stream, its ring of recent events, and its subscribers."""

    def __init__(self, key: ChannelKey, feed: UpstreamSource, hub: Hub) -> None:
        self.key = key
        self._feed = feed
        self._hub = hub
        self._ring: collections.OrderedDict[str, SharedEvent] = collections.OrderedDict()
        self._ring_size = hub.settings.hub_ring_size
        # Ids for events without a cursor (a tier without cursors): "gw:" never
        # starts a Kumiho cursor, and the random part changes with each channel,
        # so an id from another channel, worker or replica is never mistaken.
        self._id_prefix = f"{MINTED_PREFIX}{secrets.token_hex(4)}:"
        self._minted = 0
        self.newest = ""  # the id of the last event the feed passed (a live subscriber is there)
        self._subscribers: set[HubSource] = set()
        # Subscribers by what is left to match, so each event is matched once per filter.
        self._groups: dict[EventFilter, _Group] = {}
        self._advance_every = min(ADVANCE_EVERY, hub.settings.hub_ring_size // 4)
        self._holders: set[HubSource] = set()
        self._task: asyncio.Task[None] | None = None
        self._linger: asyncio.TimerHandle | None = None
        self.closed = False
        self.status = feed.status  # the upstream's state, told to each new subscriber first
        # A consumer group's member: each event goes to one subscriber, and the
        # ring stays empty (a replay would hand one member's events to another).
        self._group = bool(key[2])
        self._turn = 0

    async def start(self) -> None:
        """Open the shared upstream stream; 401/403 and the like propagate to the first caller."""
        await self._feed.open()
        self.status = self._feed.status
        # A context of its own: its resubscribes serve every subscriber, not the first's request.
        self._task = asyncio.create_task(self._feed.run(self), context=contextvars.Context())
        self._task.add_done_callback(self._feed_ended)
        self._hub.metrics.upstream_shared_streams.inc()

    def _feed_ended(self, task: asyncio.Task[None]) -> None:
        """The shared feed stopped without close(): close the channel, truthfully.

        Its clients get a ``retry:`` line and resume by id on a fresh channel;
        they are never left on heartbeats behind a dead feed.
        """
        if self.closed:
            return
        if not task.cancelled() and task.exception() is not None:
            log.error("a shared upstream stream failed; closing it", exc_info=task.exception())
        self.close()

    # -- Sink of the shared feed ---------------------------------------------

    def put(self, item: Item) -> bool:
        match item:
            case kumiho_pb2.Event():  # never a repeat: the feed's own filtering sink drops them
                self._dispatch(self._shared(item))
            case SharedEvent():
                raise AssertionError("a channel's feed sends Kumiho events")
            case Advance():
                pass  # never sent: the feed asks the upstream for just what it serves
            case Status():
                # Same state: the feed's opening announcement, which subscribers have.
                if not item.same_state(self.status):
                    self.status = item
                    _deliver(self._subscribers, item)
            case Reset():
                self._ring.clear()  # what follows does not continue what the ring holds
                _deliver(self._subscribers, item)
            case Failure():
                _deliver(self._subscribers, item)
                self.close()
            case _:
                assert_never(item)
        return True  # never back-pressure a shared stream: slow subscribers are cut instead

    def _shared(self, event: kumiho_pb2.Event) -> SharedEvent:
        """The event encoded once for all, its id minted if it has no cursor, in the ring."""
        shared = SharedEvent(event, event.cursor or self._mint())
        self.newest = shared.cursor
        self._hub.metrics.frames_encoded.inc()
        if shared.cursor and not self._group:
            self._ring[shared.cursor] = shared
            if len(self._ring) > self._ring_size:
                self._ring.popitem(last=False)
        return shared

    def _dispatch(self, shared: SharedEvent) -> None:
        """Match once per filter group: the event to its members, or an Advance now and then."""
        if self._group:
            # One member of the group, in turn, among those whose filters match.
            candidates = [
                member
                for group in self._groups.values()
                if group.filtering.wants(shared.event)
                for member in group.members
            ]
            if candidates:
                self._turn += 1
                _deliver({candidates[self._turn % len(candidates)]}, shared)
            return
        # A copy: a member cut while this event is delivered may take its group away.
        for group in list(self._groups.values()):
            group.filtering.put(shared)

    async def room(self) -> bool:
        return not self.closed

    def slow_consumer(self) -> None:
        """Never asked: put() never reports a full buffer."""

    def _mint(self) -> str:
        self._minted += 1
        return f"{self._id_prefix}{self._minted}"

    # -- subscribers ------------------------------------------------------------

    @property
    def asked(self) -> EventFilter:
        """What this channel's upstream stream is filtered by."""
        return self.key[3]

    def rest_of(self, wanted: EventFilter) -> EventFilter:
        """What is left to match of ``wanted`` on this channel's events."""
        return wanted.beyond(*self.asked.upstream())

    def after(self, cursor: str, rest: EventFilter) -> list[SharedEvent | Advance] | None:
        """The ring's replay after ``cursor`` for ``rest``, or None when the ring lacks it.

        The events that match ``rest``, then, when the ring's newest event is
        not one of them, an Advance to it: a replay leaves the client's
        position where the ring ends, past the unwanted events it passed.
        """
        if cursor not in self._ring:
            return None
        entries = iter(self._ring.items())
        for key, _ in entries:
            if key == cursor:
                break
        if rest.everything:
            return [event for _, event in entries]
        replay: list[SharedEvent | Advance] = [
            shared for _, shared in entries if rest.wants(shared.event)
        ]
        newest = next(reversed(self._ring))
        if newest != cursor and (not replay or replay[-1].cursor != newest):
            replay.append(Advance(newest))
        return replay

    def hold(self, source: HubSource) -> None:
        """Keep the channel open for a request still catching up (it attaches later)."""
        self._holders.add(source)
        self._cancel_linger()

    def attach(self, subscriber: HubSource) -> None:
        self._holders.discard(subscriber)
        self._cancel_linger()
        self._subscribers.add(subscriber)
        group = self._groups.get(subscriber.rest)
        if group is None:
            group = self._groups[subscriber.rest] = _Group(subscriber.rest, self._advance_every)
        group.members.add(subscriber)
        self._hub.metrics.hub_subscribers.inc()

    def detach(self, source: HubSource) -> None:
        self._holders.discard(source)
        if source in self._subscribers:
            self._subscribers.discard(source)
            group = self._groups[source.rest]
            group.members.discard(source)
            if not group.members:
                del self._groups[source.rest]
            self._hub.metrics.hub_subscribers.dec()
        if self._group and not self._subscribers and not self._holders:
            # A group's member closes at once: the upstream would go on handing
            # it events that no client of this gateway could receive any more.
            self.close()
        self.idle()

    def idle(self) -> None:
        """With nobody left, close after the linger (a newcomer cancels it)."""
        if self._subscribers or self._holders or self.closed or self._linger is not None:
            return
        loop = asyncio.get_running_loop()
        self._linger = loop.call_later(self._hub.settings.hub_linger, self._close_if_idle)

    def _cancel_linger(self) -> None:
        if self._linger is not None:
            self._linger.cancel()
            self._linger = None

    def _close_if_idle(self) -> None:
        self._linger = None
        if not self._subscribers and not self._holders:
            self.close()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._cancel_linger()
        if self._task is not None:
            self._task.cancel()
            self._hub.metrics.upstream_shared_streams.dec()
        self._feed.close()
        self._hub.forget(self)
        for source in [*self._subscribers, *self._holders]:
            source.end()  # each stream ends with a retry: line; clients resume elsewhere


def _deliver(subscribers: set[HubSource], item: Item) -> None:
    for subscriber in list(subscribers):
        try:
            subscriber.deliver(item)
        except Exception:
            # One subscriber's failure ends its own stream, never the others'.
            log.exception("delivering to a subscriber failed; ending its stream")
            subscriber.close()


class _Group:
    """A channel's subscribers with the same filter left to match, behind one filtering sink.

    The event is matched once for all of them, and their shared count of
    unwanted events sends them an Advance together. It is the Sink of its
    filtering sink: it hands what passes to every member.
    """

    __slots__ = ("filtering", "members")

    def __init__(self, rest: EventFilter, every: int) -> None:
        self.members: set[HubSource] = set()
        # No repeat filter: the channel's feed has dropped its repeats already.
        self.filtering = FilteringSink(self, rest, every=every)

    def put(self, item: Item) -> bool:
        _deliver(self.members, item)
        return True  # members are never waited for: a slow one is cut instead

    async def room(self) -> bool:
        return True

    def slow_consumer(self) -> None:
        """Never asked: put() never reports a full buffer."""


class Hub:
    """All channels of one gateway process."""

    def __init__(self, upstream: Upstream, settings: Settings, metrics: Metrics) -> None:
        self.upstream = upstream
        self.settings = settings
        self.metrics = metrics
        self._channels: dict[ChannelKey, Channel] = {}
        filtering = settings.hub_filtering
        if filtering == "auto":
            # One credential for many people (none, service): their filters differ,
            # so one stream for all of them. In passthrough each credential is one
            # person with few filters: an unfiltered stream each would fetch the
            # events nobody asked for, once per person.
            filtering = "upstream" if settings.auth == "passthrough" else "gateway"
        self._covering = filtering == "gateway"
        self._starting: dict[ChannelKey, _Opening] = {}

    def source(self, subscription: Subscription) -> HubSource:
        return HubSource(self, subscription)

    async def channel(self, subscription: Subscription) -> Channel:
        """The live channel for this subscription's key, started on first use.

        Requests that find it opening wait for that same opening. It goes on
        while any of them waits: the one that began it may leave (its client
        hung up) without cutting off the others. When all have left, it stops.
        """
        if self._covering:
            asked = EventFilter()
        else:
            routing_key, kref = subscription.filter.upstream()
            asked = EventFilter((routing_key,), (kref,))
        credential = subscription.credential
        key = (credential.identity, credential.tenant, subscription.consumer_group, asked)
        channel = self._channels.get(key)
        if channel is not None and not channel.closed:
            return channel
        opening = self._starting.get(key)
        if opening is None:
            live = replace(
                subscription, filter=asked, cursor=None, start="latest", from_timestamp=None
            )
            opening = self._starting[key] = _Opening(asyncio.ensure_future(self._open(key, live)))
            opening.task.add_done_callback(functools.partial(self._opened, key, opening))
        opening.waiting += 1
        try:
            # Shielded: one waiter's cancellation is its own, not the opening's.
            return await asyncio.shield(opening.task)
        finally:
            opening.waiting -= 1
            if not opening.waiting:
                if not opening.task.done():
                    # Nobody wants it any more: stop it, and let a later request begin
                    # afresh (rather than join an opening about to end as cancelled).
                    opening.task.cancel()
                    self._opened(key, opening)
                elif not opening.task.cancelled() and opening.task.exception() is None:
                    # The linger starts only now, once every waiter has had the channel
                    # (each joins it before its next await, which cancels the linger):
                    # started when the opening ended, a short linger could close it first.
                    opening.task.result().idle()

    def _opened(self, key: ChannelKey, opening: _Opening, *_: object) -> None:
        """``opening`` is over (or abandoned): the next request for ``key`` looks again."""
        if self._starting.get(key) is opening:
            del self._starting[key]

    async def _open(self, key: ChannelKey, live: Subscription) -> Channel:
        """Start the channel for ``key``; 401/403 and the like reach every waiting request."""
        channel = Channel(
            key, UpstreamSource(self.upstream, live, self.settings, self.metrics), self
        )
        try:
            await channel.start()
        except BaseException:
            channel.close()
            raise
        self._channels[key] = channel
        return channel

    def close(self) -> None:
        """Close every shared stream (at shutdown)."""
        for channel in list(self._channels.values()):
            channel.close()

    def forget(self, channel: Channel) -> None:
        if self._channels.get(channel.key) is channel:
            del self._channels[channel.key]


class _Opening:
    """A channel being opened, and how many requests wait for it."""

    def __init__(self, task: asyncio.Task[Channel]) -> None:
        self.task = task
        self.waiting = 0


class _CatchUp:
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

    def __init__(self, hub: Hub, subscription: Subscription) -> None:
        self._hub = hub
        self._sub = subscription
        self._channel: Channel | None = None
        self._catch_up: UpstreamSource | None = None
        self._catching_up: _CatchUp | None = None  # the catch-up stream's sink, while it runs
        self._joined = False  # attached to the shared feed: live
        self._seen = ""  # the feed's newest event when this joined it
        self._sink: Sink | None = None
        self._backlog: collections.deque[Item] = collections.deque()
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
        self._backlog.append(channel.status)
        self._backlog.extend(first)
        channel.attach(self)
        self._joined, self._seen = True, channel.newest

    def caught_up(self, quiet: float) -> bool:
        """On the shared feed: live. Catching up: when its own stream went quiet.

        The catch-up normally joins the feed at the ring; a quiet catch-up
        stream that has not (the ring holds nothing it will bring: a channel
        that has seen no event yet) has read all there was.
        """
        if self._joined:
            return not self._ended
        catching_up = self._catch_up
        return catching_up is not None and catching_up.caught_up(quiet)

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
            catch_up = self._catching_up = _CatchUp(sink, self.rest, self._hand_over)
            try:
                await self._catch_up.run(catch_up)
            finally:
                metrics.catch_up_streams.dec()
                self._catch_up.close()
                self._catching_up = None
            if not catch_up.handed_over:
                return  # the client left, or the catch-up stream failed for good
        self._sink = sink
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
            self._live = True
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
        if channel.status.upstream != "live":  # the catch-up stream had it live
            self._backlog.append(channel.status)
        self._backlog.extend(replay)
        channel.attach(self)
        self._joined, self._seen = True, channel.newest
        return True

    def deliver(self, item: Item) -> None:
        """Called by the channel for every shared item (synchronously, never waits)."""
        if self._ended:
            return
        if self._live:
            sink = self._sink
            assert sink is not None
            if isinstance(item, SharedEvent):
                self._hub.metrics.frames_delivered.inc()
            if not sink.put(item):
                self._live = False  # full: what follows waits in the backlog
                wake(self._wakeup)
            if isinstance(item, Failure):
                self.end()
            return
        self._backlog.append(item)
        if len(self._backlog) > self._limit:
            # Further behind than the ring plus a buffer: cut it (it resumes by id).
            self._backlog.clear()
            if self._sink is not None:
                self._sink.slow_consumer()
            self.close()

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
