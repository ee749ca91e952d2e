"""A channel's ring: its recent events by id, so a resume is served from memory.

``Ring.after`` is the replay for a client that resumes from an id the ring
holds: the events after it that the client wants, ending at the ring's
newest event (an ``Advance`` to it when that one is unwanted), so the
client's position is the newest at once and its next resume is again a hit.
"""

from __future__ import annotations

import collections

from gateway.items import Advance, SharedEvent
from gateway.matching import EventFilter


class Ring:
    """The last ``size`` events of a shared feed, oldest first, by id."""

    __slots__ = ("_events", "_size")

    def __init__(self, size: int) -> None:
        self._size = size
        self._events: collections.OrderedDict[str, SharedEvent] = collections.OrderedDict()

    def append(self, shared: SharedEvent) -> None:
        """Keep ``shared`` as the newest; the oldest goes once there are ``size``."""
        self._events[shared.cursor] = shared
        if len(self._events) > self._size:
            self._events.popitem(last=False)

    def __len__(self) -> int:
        return len(self._events)

    def clear(self) -> None:
        """Forget every event (after a reset, what follows does not continue them)."""
        self._events.clear()

    def after(self, cursor: str, rest: EventFilter) -> list[SharedEvent | Advance] | None:
        """The replay after ``cursor`` for ``rest``, or None when the ring lacks ``cursor``.

        The events that match ``rest``, then, when the ring's newest event is
        not one of them, an Advance to it: a replay leaves the client's
        position where the ring ends, past the unwanted events it passed.
        """
        if cursor not in self._events:
            return None
        entries = iter(self._events.items())
        for key, _ in entries:
            if key == cursor:
                break
        if rest.everything:
            return [event for _, event in entries]
        replay: list[SharedEvent | Advance] = [
            shared for _, shared in entries if rest.wants(shared.event)
        ]
        newest = next(reversed(self._events))
        if newest != cursor and (not replay or replay[-1].cursor != newest):
            replay.append(Advance(newest))
        return replay
