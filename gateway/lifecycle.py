"""The process's lifecycle: which streams and polls are open, and draining them on shutdown.

On SIGTERM (see ``server.py``) the gateway first reports not-ready, then asks
every open stream to end: each flushes what it holds, writes a jittered
``retry:`` line and closes, so its client reconnects (to another replica)
with its Last-Event-ID and loses nothing. Each open poll answers at once
with the events it has gathered and their cursor, or, with none, a 503 to
poll again elsewhere. Only then does the server stop.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Protocol

log = logging.getLogger("gateway.lifecycle")


class Drainable(Protocol):
    def drain(self) -> None:
        """End soon: a stream flushes, writes a retry: line and closes; a poll answers."""


def _never() -> bool:
    return False


class Lifecycle:
    """Open streams and polls, and the draining flag, shared by the routes and the server.

    ``pool_failing`` says whether this process's pool (``serve --workers N``)
    has a place whose workers fail to start: /readyz then answers 503.
    """

    def __init__(self, pool_failing: Callable[[], bool] = _never) -> None:
        self.pool_failing = pool_failing
        self.draining = False
        self._streams: set[Drainable] = set()
        self._empty = asyncio.Event()
        self._empty.set()

    @property
    def open_streams(self) -> int:
        return len(self._streams)

    def add(self, stream: Drainable) -> None:
        """Track an open stream; one that opens while the gateway drains is drained at once."""
        self._streams.add(stream)
        self._empty.clear()
        if self.draining:
            stream.drain()

    def discard(self, stream: Drainable) -> None:
        self._streams.discard(stream)
        if not self._streams:
            self._empty.set()

    async def drain(self, budget: float, delay: float = 0.0) -> None:
        """Stop being ready, wait ``delay``, end every stream, wait up to ``budget`` for them."""
        self.draining = True
        if delay:
            await asyncio.sleep(delay)
        count = len(self._streams)
        for stream in list(self._streams):
            stream.drain()
        try:
            async with asyncio.timeout(budget):  # not wait_for: see source.py
                await self._empty.wait()
            log.info("drained %s", streams_phrase(count))
        except TimeoutError:
            log.warning(
                "%s still open after %.1fs (of %d)",
                streams_phrase(len(self._streams)),
                budget,
                count,
            )


def streams_phrase(count: int) -> str:
    """Say "1 stream" or "N streams", so log lines read as sentences."""
    return f"{count} stream" if count == 1 else f"{count} streams"
