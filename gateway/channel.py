"""A channel: one upstream stream shared by the requests with the same key.

A ``Channel`` owns one upstream EventStream (an ``UpstreamSource`` from the
latest event) for a key (credential identity, tenant, consumer group, and
the filter the channel asks the upstream for), so different credentials
never share: tenant isolation holds by construction. It is the Sink of that
feed. Each event is encoded once (``SharedEvent``), kept in the channel's
``Ring``, and matched once per filter group (``_Group``: the subscribers
with the same filter left to match, behind one ``FilteringSink``), and the
same bytes go to every matching subscriber's bounded buffer (or, for the
steady ones, straight to their connections in one loop: the group's lanes);
a subscriber that cannot keep up is cut off (slow consumer) and never
delays the others.
A consumer group's channel hands each event to one member in turn and keeps
no ring. The upstream stream closes ``hub_linger`` seconds after its last
subscriber leaves.

On a tier without cursors the channel mints the SSE ids itself
(``gw:<channel>:<n>``, never a Kumiho cursor's shape; the data's ``cursor``
stays empty), so clients still resume gap-free from the ring.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import secrets
import time
from collections.abc import Callable, Collection
from typing import TYPE_CHECKING, assert_never

from gateway._proto import kumiho_pb2
from gateway.filtering import ADVANCE_EVERY, FilteringSink
from gateway.items import Advance, Failure, Item, Reset, SharedEvent, Status
from gateway.lane import Direct, Lane
from gateway.matching import EventFilter
from gateway.ring import Ring
from gateway.source import UpstreamSource

if TYPE_CHECKING:
    from gateway.hub import Hub
    from gateway.metrics import Tally, Writes
    from gateway.subscriber import HubSource

log = logging.getLogger("gateway.channel")

# (credential identity, x-tenant-id, consumer group, what the upstream filters)
ChannelKey = tuple[str, str | None, str, EventFilter]
MINTED_PREFIX = "gw:"


class Channel:
    """One shared upstream stream, its ring of recent events, and its subscribers."""

    def __init__(self, key: ChannelKey, feed: UpstreamSource, hub: Hub) -> None:
        self.key = key
        self._feed = feed
        self._hub = hub
        self._ring = Ring(hub.settings.hub_ring_size)
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
            self._ring.append(shared)
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
                if _deliver({candidates[self._turn % len(candidates)]}, shared):
                    self._hub.metrics.frames_delivered.inc()
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

    @property
    def holds_events(self) -> bool:
        """Whether the ring holds an event a catch-up stream would meet (and hand over at)."""
        return bool(self._ring)

    def after(self, cursor: str, rest: EventFilter) -> list[SharedEvent | Advance] | None:
        """The ring's replay after ``cursor`` for ``rest`` (see ``Ring.after``), or None."""
        return self._ring.after(cursor, rest)

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
            metrics = self._hub.metrics
            group = self._groups[subscriber.rest] = _Group(
                subscriber.rest, self._advance_every, metrics.frames_delivered, metrics.writes
            )
        group.add(subscriber)
        self._hub.metrics.hub_subscribers.inc()

    def join(self, subscriber: HubSource, direct: Direct) -> None:
        """``subscriber``'s stream is steady: its group's lane may write to it (see _Group)."""
        group = self._groups.get(subscriber.rest)
        if group is not None and not self._group:  # a consumer group's events go one by one
            group.join(subscriber, direct)

    def detach(self, source: HubSource) -> None:
        self._holders.discard(source)
        if source in self._subscribers:
            self._subscribers.discard(source)
            group = self._groups[source.rest]
            group.discard(source)
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


def _deliver(subscribers: Collection[HubSource], item: Item) -> int:
    """``item`` to every subscriber; how many took it into their buffers at once."""
    taken = 0
    for subscriber in list(subscribers):
        try:
            taken += subscriber.deliver(item)
        except Exception:
            # One subscriber's failure ends its own stream, never the others'.
            log.exception("delivering to a subscriber failed; ending its stream")
            subscriber.close()
    return taken


class _Group:
    """A channel's subscribers with the same filter left to match, behind one filtering sink.

    The event is matched once for all of them, and their shared count of
    unwanted events sends them an Advance together. It is the Sink of its
    filtering sink: it hands what passes to every member.

    A shared event goes to most members through a lane (``lane.py``), one
    for each frame format: the steady streams, whose frame is written to
    their connections in one loop. A member joins its lane as soon as it is
    live (and again after an event its pump wrote at once), and leaves it,
    back to the loose members (each given the event through its subscriber,
    which queues, gathers and holds back as ever), the moment its pump would
    not write at once.
    """

    __slots__ = ("delivered", "filtering", "lanes", "loose", "members", "writes")

    def __init__(self, rest: EventFilter, every: int, delivered: Tally, writes: Writes) -> None:
        self.members: set[HubSource] = set()
        self.loose: set[HubSource] = set()  # the members given shared events one by one
        self.lanes: dict[Callable[[SharedEvent], bytes], Lane] = {}
        self.delivered = delivered  # the hub's count of shared frames handed over
        self.writes = writes
        # No repeat filter: the channel's feed has dropped its repeats already.
        self.filtering = FilteringSink(self, rest, every=every)

    def add(self, member: HubSource) -> None:
        self.members.add(member)
        self.loose.add(member)

    def discard(self, member: HubSource) -> None:
        if member.direct is not None:
            # Its pump left its lane as its stream ended: no lane writes after that end.
            member.direct.leave()
        self.members.discard(member)
        self.loose.discard(member)

    def join(self, member: HubSource, direct: Direct) -> None:
        if member in self.loose:
            lane = self.lanes.get(direct.shared)
            if lane is None:
                lane = Lane(direct.shared, direct.burst, self.loose, self.writes)
                self.lanes[direct.shared] = lane
            if lane.join(member, direct):
                self.loose.discard(member)

    def put(self, item: Item) -> bool:
        if type(item) is SharedEvent:
            now = time.monotonic()
            lanes = [lane for lane in self.lanes.values() if lane.ready(now)]
            # Taken before the lanes write: a member that leaves its lane in the
            # loop (its transport paused as it took the frame) has the event.
            loose = list(self.loose)
            taken = sum(lane.write(item, now) for lane in lanes) + _deliver(loose, item)
            if taken:
                self.delivered.inc(taken)
        else:
            _deliver(self.members, item)
        return True  # members are never waited for: a slow one is cut instead

    async def room(self) -> bool:
        return True

    def slow_consumer(self) -> None:
        """Never asked: put() never reports a full buffer."""
