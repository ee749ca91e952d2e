"""Consumer groups: streams that share a group name split the events among them.

Kumiho offers them on the enterprise tier (``EventStreamRequest.consumer_group``,
field 4) "as with Redis stream consumer groups"; the real server's rules are
not public, so these are the reference upstream's, modelled on Redis:

- **Identity.** A group is (tenant, name): the same name in two tenants is two
  groups. An empty name is no group at all (the servicer's concern).
- **Delivery.** Each event of the tenant goes to exactly one live member whose
  filters match it: the next member in join order after the one that was
  handed the previous event (round-robin), skipping members whose filters do
  not match. An event that no live member's filters match is passed over: the
  group, as a whole, did not ask for it, and a member that joins later with
  wider filters does not get it.
- **Windows.** A member is handed at most ``WINDOW`` events ahead of what its
  stream has sent, so a member that reads slowly takes a smaller share rather
  than hoarding events. When every matching member's window is full the group
  waits there (events are handed out in cursor order), until one has room.
- **Position.** The group keeps one position in the log, as Redis keeps a
  group's last-delivered id. Events published while no member is live wait
  there: the next member to join receives them. A member's own start position
  (``cursor``, ``from_cursor``, ``from_beginning``, ``from_timestamp``, latest
  by default) matters only when its request creates the group; a member that
  joins an existing group starts at the group's position, and its start
  position is ignored (not even validated). The position is kept in the event
  log's SQLite file, so a group outlives a restart of the server. A group whose
  position fell out of retention carries on from the oldest event kept, as a
  Redis group does after XTRIM.
- **Leaving.** A member whose stream ends (cancelled by its client, broken)
  stops receiving at once. The events in its window that its stream had not
  sent go back to the group and to the other members (to the next member to
  join if none is live), ahead of newer events; such an event can reach its
  new member after events with later cursors, as an entry claimed from a
  Redis pending list does. An event the stream was already sending when it
  ended counts as delivered: there are no acknowledgements (Redis's NOACK).
- **Restarts.** The position saved is just before the oldest event handed out
  but not yet sent, so a restart may deliver an event twice but never loses
  one (at-least-once, as KUMIHO.md describes resumes).
"""

from __future__ import annotations

import asyncio
import collections
import enum
from collections.abc import Callable

from gateway.cursor import CursorKey
from gateway.devserver.store import EventStore, StoredEvent

WINDOW = 16  # events handed to one member ahead of its stream
_READ_BATCH = 512

Matches = Callable[[StoredEvent], bool]


class _Placed(enum.Enum):
    HANDED = "handed"  # a member has it now
    PASSED = "passed"  # no live member's filters match it
    FULL = "full"  # members match it but none has room


def _just_before(key: CursorKey) -> CursorKey:
    """The position to read after so that ``key`` is read again (positions are exclusive)."""
    return (key[0], key[1] - 1)


class Member:
    """One stream's place in a group: its filters and the events handed to it."""

    def __init__(self, group: Group, matches: Matches) -> None:
        self.group = group
        self.matches = matches
        self.window: collections.deque[StoredEvent] = collections.deque()
        self.handed = asyncio.Event()  # set when the group puts an event in the window

    async def next(self, changed: asyncio.Event) -> StoredEvent | None:
        """The next event for this member's stream, or None after a wake-up without one.

        ``changed`` is the event log's wake-up, taken before this call by the
        caller, which rechecks its own conditions (a revoked token) on None.
        """
        self.handed.clear()
        group = self.group
        # A member with events in hand needs nothing new yet, unless the group is
        # held up by full windows; then refill at half, not per event sent, so a
        # busy group reads the log once per several events rather than each.
        if not self.window or (group.stalled and len(self.window) <= WINDOW // 2):
            group.dispatch()
        if self.window:
            return self.window.popleft()
        await _first_of(changed, self.handed)
        return None

    def unread(self, stored: StoredEvent) -> None:
        """Put back an event that ``next`` returned and the stream did not send.

        When the stream then ends, leaving returns it to the group.
        """
        self.window.appendleft(stored)


class Group:
    """A consumer group with at least one live member (or events waiting for one)."""

    def __init__(self, store: EventStore, tenant: str, name: str, position: CursorKey) -> None:
        self.store = store
        self.tenant = tenant
        self.name = name
        self.position = position  # everything up to here was handed out or passed over
        self.members: list[Member] = []
        self.turn = 0  # index in members of the next member to try
        self.returned: collections.deque[StoredEvent] = collections.deque()  # by leavers
        self.stalled = False  # the last dispatch stopped at an event with no room for it
        self._saved = position

    @property
    def idle(self) -> bool:
        """No live member and nothing held in memory: the stored position is all there is."""
        return not self.members and not self.returned

    def join(self, matches: Matches) -> Member:
        member = Member(self, matches)
        self.members.append(member)
        return member

    def leave(self, member: Member) -> None:
        """Remove a member; the events it was handed but did not send go to the others."""
        index = self.members.index(member)
        del self.members[index]
        if index < self.turn:
            self.turn -= 1
        if self.turn >= len(self.members):
            self.turn = 0
        if member.window:
            # Older than anything still in the log: they go out first, in cursor order.
            self.returned = collections.deque(
                sorted([*self.returned, *member.window], key=lambda e: e.key)
            )
            member.window.clear()
        self.dispatch()
        self._save()

    def dispatch(self) -> None:
        """Hand out events, returned ones first, until none is left or no member has room."""
        if not self.members:
            return  # events wait at the group's position for the next member
        self.stalled = False
        while self.returned:
            if self._place(self.returned[0]) is _Placed.FULL:
                self.stalled = True
                break
            self.returned.popleft()
        while not self.stalled:
            batch = self.store.read_after(self.tenant, self.position, _READ_BATCH)
            for event in batch:
                if self._place(event) is _Placed.FULL:
                    self.stalled = True
                    break
                self.position = event.key
            if len(batch) < _READ_BATCH:
                break
        self._save()

    def _place(self, event: StoredEvent) -> _Placed:
        """Round-robin from ``turn``: the first member whose filters match and has room."""
        full = False
        count = len(self.members)
        for step in range(count):
            index = (self.turn + step) % count
            member = self.members[index]
            if not member.matches(event):
                continue
            if len(member.window) >= WINDOW:
                full = True
                continue
            member.window.append(event)
            member.handed.set()
            self.turn = (index + 1) % count
            return _Placed.HANDED
        return _Placed.FULL if full else _Placed.PASSED

    def _save(self) -> None:
        """Store the position, held back to before any event handed out but not yet sent."""
        held = [m.window[0].key for m in self.members if m.window]
        if self.returned:
            held.append(self.returned[0].key)
        position = min([self.position, *map(_just_before, held)])
        if position != self._saved:
            self.store.save_group_position(self.tenant, self.name, position)
            self._saved = position


class ConsumerGroups:
    """The groups of one server that have live members, by (tenant, name)."""

    def __init__(self, store: EventStore) -> None:
        self.store = store
        self._live: dict[tuple[str, str], Group] = {}

    def join(
        self, tenant: str, name: str, matches: Matches, start: Callable[[], CursorKey]
    ) -> Member:
        """Join (tenant, name), creating the group at ``start()`` if it never existed.

        ``start`` is called only for a new group; a CursorError from it leaves
        no group behind.
        """
        key = (tenant, name)
        group = self._live.get(key)
        if group is None:
            position = self.store.group_position(tenant, name)
            if position is None:
                position = start()
                self.store.save_group_position(tenant, name, position)
            group = self._live[key] = Group(self.store, tenant, name, position)
        return group.join(matches)

    def leave(self, member: Member) -> None:
        group = member.group
        group.leave(member)
        if group.idle:
            # Its position is stored; forget it so idle groups cost no memory.
            del self._live[(group.tenant, group.name)]


async def _first_of(*events: asyncio.Event) -> None:
    """Wait until any of ``events`` is set."""
    waits = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for wait in waits:
            wait.cancel()
