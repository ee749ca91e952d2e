"""The pump: a Source's items become the bytes of one SSE response.

A reader task pulls items from the source, drops what a resume would send
twice, encodes frames and appends them to a bounded buffer; the response
side takes the whole buffer at once. A burst of events thus costs one
socket write per ``flush_interval`` instead of one per event, while a lone
event waits at most that long. When the buffer is full the reader stops
reading, and gRPC flow control holds the upstream back.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator

from gateway import sse
from gateway._proto import kumiho_pb2
from gateway.cursor import CursorKey, cursor_key
from gateway.settings import Settings
from gateway.source import Item, Reset, Source

log = logging.getLogger("gateway.pump")

_MAX_CHUNK = 256 * 1024  # flush at once past this many buffered bytes


def jittered_retry_ms(base_ms: int) -> int:
    """The ``retry:`` value for one connection: base plus up to 50% jitter."""
    return base_ms + random.randrange(base_ms // 2 + 1)


class ResumeFilter:
    """Drops events at or before the last one delivered.

    Exact match always; by order when both cursors have the ``<ms>-<seq>`` shape.
    """

    def __init__(self, cursor: str | None) -> None:
        self._cursor: str | None = cursor or None
        self._key: CursorKey | None = cursor_key(cursor) if cursor else None

    def forget(self) -> None:
        """After a reset the old resume point means nothing."""
        self._cursor = self._key = None

    def accept(self, cursor: str) -> bool:
        """False for a repeat; otherwise True, and ``cursor`` becomes the new resume point."""
        if not cursor:
            return True  # events without cursors cannot be told apart
        if cursor == self._cursor:
            return False
        key = cursor_key(cursor)
        if key is not None and self._key is not None and key <= self._key:
            return False
        self._cursor, self._key = cursor, key
        return True


class Pump:
    """Turns one subscription's source into SSE bytes; it is the source's Sink."""

    def __init__(
        self, source: Source, *, named: bool, cursor: str | None, settings: Settings
    ) -> None:
        self._source = source
        self._named = named
        self._filter = ResumeFilter(cursor)
        self._retry_ms = settings.retry_ms
        self._flush_interval = settings.flush_interval
        self._max_frames = settings.buffer_events
        self._frames: list[bytes] = []
        self._size = 0
        self._has_data = asyncio.Event()
        self._has_room = asyncio.Event()
        self._finished = False

    # -- Sink -----------------------------------------------------------------

    def put(self, item: Item) -> bool:
        frame = self._encode(item)
        if frame is not None:
            self._frames.append(frame)
            self._size += len(frame)
            self._has_data.set()
        return len(self._frames) < self._max_frames

    async def room(self) -> None:
        self._has_room.clear()
        await self._has_room.wait()

    def _encode(self, item: Item) -> bytes | None:
        if isinstance(item, kumiho_pb2.Event):
            if self._filter.accept(item.cursor):
                return sse.event_frame(item, named=self._named)
            log.debug("dropped repeat of cursor %s after resume", item.cursor)
            return None
        if isinstance(item, Reset):
            self._filter.forget()
            return sse.control_frame(
                "gateway.reset",
                {
                    "reason": item.reason,
                    "requested_cursor": item.requested_cursor,
                    "resumed_from": item.resumed_from,
                },
            )
        return sse.control_frame("gateway.error", item.error.envelope()["error"])

    # -- the response body ----------------------------------------------------

    async def _run_source(self) -> None:
        try:
            await self._source.run(self)
        finally:
            self._finished = True
            self._has_data.set()

    async def frames(self) -> AsyncIterator[bytes]:
        """The response body: a ``retry:`` line, then frames in batches, until the source ends."""
        reader = asyncio.create_task(self._run_source())
        try:
            yield sse.retry_frame(jittered_retry_ms(self._retry_ms))
            while True:
                await self._has_data.wait()
                if self._flush_interval and not self._finished and self._size < _MAX_CHUNK:
                    await asyncio.sleep(self._flush_interval)  # let a burst gather
                chunk = b"".join(self._frames)
                self._frames.clear()
                self._size = 0
                self._has_data.clear()
                self._has_room.set()
                if chunk:
                    yield chunk
                if self._finished and not self._frames:
                    if reader.done() and not reader.cancelled() and reader.exception():
                        log.error("stream source failed", exc_info=reader.exception())
                    return
        finally:
            # Synchronous on purpose: this may run inside a cancelled scope.
            reader.cancel()
            self._source.close()
