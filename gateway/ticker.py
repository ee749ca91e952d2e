"""One timer for every open stream: heartbeats and stalled writes.

A stream that waited on its own heartbeat timer would cost a timer (or a
task) per connection, re-armed after every write; with thousands of streams
that is most of the idle cost. Instead one loop callback visits every open
stream a few times per heartbeat interval and each stream decides, from the
time of its last write, whether it owes a heartbeat or has been stuck in a
write for too long.
"""

from __future__ import annotations

import asyncio
import contextvars
import time
from typing import Protocol


class Ticking(Protocol):
    def tick(self, now: float) -> None:
        """Called every ``Ticker.period`` seconds with ``time.monotonic()``."""


class Ticker:
    """Calls ``tick(now)`` on every added stream every ``period`` seconds, while any is open."""

    def __init__(self, period: float) -> None:
        self.period = period
        self._streams: set[Ticking] = set()
        self._timer: asyncio.TimerHandle | None = None

    def add(self, stream: Ticking) -> None:
        self._streams.add(stream)
        if self._timer is None:
            # A context of its own: made while one stream opens, it serves them all
            # and must not carry that stream's correlation id (``correlation.py``).
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(self.period, self._tick, context=contextvars.Context())

    def discard(self, stream: Ticking) -> None:
        self._streams.discard(stream)
        if not self._streams and self._timer is not None:
            self._timer.cancel()  # nothing left to visit: no timer while idle
            self._timer = None

    def _tick(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            now = time.monotonic()  # the streams' clock (not uvloop's, cached per iteration)
            for stream in list(self._streams):
                stream.tick(now)
        finally:
            # Re-armed even if a stream failed: every other stream depends on it.
            self._timer = loop.call_later(self.period, self._tick) if self._streams else None
