"""A lane: the steady streams of one hub group and format, written each shared frame in one loop.

One event fanned out to thousands of streams is thousands of socket writes.
Through each stream's subscriber and pump, every write also walks three
objects a stream and makes two calls, which cost more than the write's own
Python (BENCHMARKS.md, "Fourth turn"). A lane holds, for each steady stream,
its connection's transport, and writes the frame's chunk to each in one
loop, as a bare server would.

A steady stream (``Direct``: a pump that owns its connection) has nothing of
its own waiting, a transport that is not paused, and a stream that goes on:
what the lane writes is what its pump would have written at once. Its pump
takes it out of the lane (``Direct.leave``) the moment that stops being
true: before a frame of its own that cannot go out at once (it would
queue), at its end, and when its transport pauses. The lane lets all its
members go when a burst begins (its last frame moments ago), so each pump
gathers the burst by its own rules. Whoever leaves goes back to its group's
loose members, which get shared events one by one through their subscribers.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from gateway.connection import chunk
from gateway.items import SharedEvent

if TYPE_CHECKING:
    from gateway.metrics import Writes
    from gateway.subscriber import HubSource

log = logging.getLogger("gateway.lane")


@runtime_checkable
class Direct(Protocol):
    """A Sink that may be in a lane: a pump that owns its connection."""

    burst: float  # writes closer together than this (seconds) are a burst, which it gathers

    @property
    def shared(self) -> Callable[[SharedEvent], bytes]:
        """How its format frames a shared event: every stream of a format has the same."""
        ...

    def steady(self) -> bool:
        """Nothing of its own waits to be written and the stream goes on: a lane may take it."""
        ...

    def enter(self, lane: Lane) -> asyncio.WriteTransport | None:
        """Into ``lane``, if steady and in none: the transport the lane writes to until it
        leaves. None when it may not enter."""
        ...

    def leave(self) -> None:
        """Out of its lane, if in one (``Lane.leave``): it writes its own again."""


class Lane:
    """Steady streams that each shared frame is written to in one loop (see the module)."""

    __slots__ = (
        "_burst",
        "_leaving",
        "_loose",
        "_members",
        "_transports",
        "_writes",
        "_writing",
        "last",
        "shared",
    )

    def __init__(
        self,
        shared: Callable[[SharedEvent], bytes],
        burst: float,
        loose: set[HubSource],
        writes: Writes,
    ) -> None:
        self.shared = shared  # its members' format's framing of a shared event
        self._burst = burst
        self._loose = loose  # the group's members given shared events one by one
        self._writes = writes
        # By pump: the transports alone are what the loop touches (a cache miss a
        # stream for each other object), the members are for whoever leaves.
        self._transports: dict[Direct, asyncio.WriteTransport] = {}
        self._members: dict[Direct, HubSource] = {}
        self._writing = False  # in the loop, which must not change the dict it walks
        self._leaving: list[Direct] = []  # who left during the loop (their frame is written)
        self.last = 0.0  # when a frame was last written to its members (time.monotonic)

    def __len__(self) -> int:
        return len(self._transports)

    def join(self, member: HubSource, direct: Direct) -> bool:
        """``member``'s stream is live with nothing waiting: the lane writes its shared
        frames from now, unless its pump may not enter."""
        transport = direct.enter(self)
        if transport is None:
            return False
        # Its last write (the frame just before, say) is not the lane's: the next
        # frame may follow it closer than a burst, once, rather than gather.
        self._transports[direct] = transport
        self._members[direct] = member
        return True

    def leave(self, direct: Direct) -> None:
        """From ``direct`` (``Direct.leave``): back to the loose members."""
        if self._writing:
            self._leaving.append(direct)
        elif self._transports.pop(direct, None) is not None:
            self._loose.add(self._members.pop(direct))

    def ready(self, now: float) -> bool:
        """Whether the shared frame of ``now`` goes through the lane. Not in a burst (its
        last frame moments ago): every member leaves, and its pump gathers the burst."""
        if not self._transports:
            return False
        if now - self.last >= self._burst:
            return True
        for direct in list(self._transports):
            direct.leave()
        return False

    def write(self, item: SharedEvent, now: float) -> int:
        """``item``'s frame to every member; how many took it."""
        frame = self.shared(item)
        data = chunk(frame)
        self.last = now
        broken: list[asyncio.WriteTransport] = []
        self._writing = True
        try:
            for transport in self._transports.values():
                try:
                    transport.write(data)
                except Exception:
                    # One stream's failure ends its own stream, never the others'.
                    log.exception("writing to a stream failed; ending it")
                    broken.append(transport)
        finally:
            self._writing = False
        written = len(self._transports) - len(broken)
        leaving, self._leaving = self._leaving, []
        for direct in leaving:  # its transport paused as it took the frame
            self.leave(direct)
        if broken:
            self._end(broken)
        self._writes.add(written, written * len(frame))
        return written

    def _end(self, broken: list[asyncio.WriteTransport]) -> None:
        """The streams whose write raised: out of the lane, and ended."""
        failed = set(broken)
        for direct, transport in list(self._transports.items()):
            if transport in failed:
                member = self._members[direct]
                direct.leave()
                member.close()
