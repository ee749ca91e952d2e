"""The pump: a Source's items become the bytes of one SSE response.

A reader task runs the source, which pushes items into the pump (its Sink).
The pump encodes frames and appends them to a bounded buffer; the response
side takes the whole buffer at once. (What a resume would send twice never
reaches it: each upstream stream's filtering sink drops it, see filtering.py.)
A burst of events thus costs one socket write per ``flush_interval`` instead
of one per event, while a lone event (nothing written just before it) goes
out at once.

When the buffer is full the source stops reading (gRPC flow control holds
the upstream back). A client that keeps it full for ``slow_consumer_grace``
seconds is a slow consumer: its buffered frames are dropped (it will fetch
them again by resuming), it gets a ``retry:`` line and the stream ends.
Streams also end after a ``retry:`` line when the gateway drains or when
``max_stream_lifetime`` passes, and at the client's token's expiry (a JWT's
``exp``) after a retryable ``gateway.error`` ``token_expired``; always
between frames.

The shared ``Ticker`` visits every pump: a stream quiet for about
``heartbeat`` seconds gets a comment frame, and one whose current write has
blocked for ``send_timeout`` seconds is dropped (``stalled``).

The body goes out one of two ways, by the same rules. On the gateway's own
server the pump owns the connection (``start``, see ``connection.py``): it
writes a frame at once when nothing is ahead of it, gathers a burst on a
timer, and holds what a paused transport cannot take until the transport
says it is writable again; no task waits for it. While the stream is
steady, its hub group's lane writes its shared events instead (``lane.py``):
the pump takes it out of the lane before a frame of its own that cannot go
out at once. Anywhere else the response iterates ``frames()`` and writes
through ASGI.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import AsyncGenerator, Callable
from typing import TYPE_CHECKING, assert_never

from gateway import correlation
from gateway._proto import kumiho_pb2
from gateway.auth import token_expired
from gateway.connection import Connection
from gateway.formats import Format
from gateway.items import Advance, Failure, Item, Reset, SharedEvent, Source, Status, wake
from gateway.lane import Lane
from gateway.lifecycle import Lifecycle
from gateway.metrics import Metrics
from gateway.settings import Settings
from gateway.ticker import Ticker

if TYPE_CHECKING:  # admission.py imports this module's jittered_retry_ms
    from gateway.admission import Place

log = logging.getLogger("gateway.pump")

_MAX_CHUNK = 256 * 1024  # flush at once past this many buffered bytes
_BURST = 5  # writes closer than this many flush intervals apart count as a burst
_GROWTH = 16  # a burst that goes on gathers up to this many flush intervals a write


def jittered_retry_ms(base_ms: int) -> int:
    """The ``retry:`` value for one connection: base plus up to 50% jitter."""
    return base_ms + random.randrange(base_ms // 2 + 1)


class Pump:
    """Turns one subscription's source into SSE bytes; it is the source's Sink."""

    # Slots: thousands of pumps live for hours, and a dict of this many attributes is 1.5 KB.
    __slots__ = (
        "_blocked_since",
        "_cause",
        "_cid",
        "_client",
        "_client_gauge",
        "_connection",
        "_events",
        "_expires_at",
        "_finished",
        "_flush_timer",
        "_format",
        "_frames",
        "_heartbeat_after",
        "_lane",
        "_last_write",
        "_lifecycle",
        "_metrics",
        "_open",
        "_place",
        "_reader",
        "_room",
        "_settings",
        "_size",
        "_source",
        "_started",
        "_ticker",
        "_timers",
        "_wakeup",
        "_window",
        "_writer",
        "_writing_since",
        "burst",
        "media_type",
        "stalled",
    )

    def __init__(
        self,
        source: Source,
        *,
        fmt: Format,
        settings: Settings,
        metrics: Metrics,
        lifecycle: Lifecycle,
        ticker: Ticker,
        client: str = "",
        place: Place | None = None,
        expires_at: float | None = None,
    ) -> None:
        self._source = source
        self._cid = correlation.current()  # its request's id, for its log lines
        self._client = client  # the client's address, for the per-client stream gauge
        self._place = place  # its place under --max-streams-per-client, given back at the end
        self._expires_at = expires_at  # the client's token's exp (epoch seconds), if it has one
        self._format = fmt
        self.media_type = fmt.media_type
        self._settings = settings
        self._metrics = metrics
        self._lifecycle = lifecycle
        self._frames: list[bytes] = []
        self._size = 0
        self._events = 0  # event frames in the buffer, for the delivered counter
        # Bare futures, made only while someone waits: an asyncio.Event per
        # stream would cost a deque each, which adds up over thousands of streams.
        self._wakeup: asyncio.Future[None] | None = None  # the writer waits for frames
        self._room: asyncio.Future[None] | None = None  # the source waits for room
        self._finished = False
        self._cause = "client"
        self._reader: asyncio.Task[None] | None = None
        self._writer: asyncio.Task[object] | None = None
        self._ticker = ticker
        self._heartbeat_after = settings.heartbeat - ticker.period  # so gaps stay <= heartbeat
        self.burst = _BURST * settings.flush_interval  # writes closer together are a burst
        self._window = settings.flush_interval  # how long the burst's next write gathers
        # Set by ``start`` when the pump owns the connection (connection.py).
        self._connection: Connection | None = None
        self._flush_timer: asyncio.TimerHandle | None = None
        self._lane: Lane | None = None  # the hub group's lane that writes its shared frames
        self._timers: tuple[asyncio.TimerHandle, ...] = ()  # lifetime, token expiry
        self._open = False  # between _opened and _closed
        self._started = 0.0
        self._client_gauge = ""  # its label in the per-client stream gauge
        self._last_write = 0.0
        self._writing_since = 0.0  # while the consumer writes a chunk
        self._blocked_since = 0.0  # while the connection takes nothing more (seen by tick)
        self.stalled = False  # dropped by ``tick``: a write blocked for send_timeout

    # -- Sink -----------------------------------------------------------------

    def put(self, item: Item) -> bool:
        if self._finished:
            return False
        if type(item) is SharedEvent:  # nearly every item: the hub's (a fan-out's hot path)
            self._emit(self._format.shared(item), True)
        else:
            self._put(item)
        if not self._frames:
            return True  # written at once: nothing waits
        events, size = self._settings.buffer_events, self._settings.buffer_bytes
        if len(self._frames) >= 2 * events or self._size >= 2 * size:
            # Twice the bound: a source that cannot wait (a shared stream) kept
            # pushing; cut now rather than let memory grow.
            self.slow_consumer()
            return False
        return self._has_room()

    def _put(self, item: Item) -> None:
        """Any item: its frame, and what it means for the stream."""
        match item:
            case SharedEvent() | kumiho_pb2.Event():
                self._emit(self._format.event(item), event=True)
            case Advance():
                self._emit(self._format.advance(item.cursor))
            case Reset():
                self._metrics.resets.labels(item.reason).inc()
                self._emit(self._format.control("gateway.reset", item.data()))
            case Status():
                self._emit(self._format.control("gateway.status", item.data()))
            case Failure():
                self._cause = "upstream_error"
                self._emit(self._format.control("gateway.error", item.error.envelope()["error"]))
            case _:
                assert_never(item)

    def _emit(self, frame: bytes, event: bool = False) -> None:
        """Write ``frame`` to the connection now if nothing is ahead of it; else queue it.

        At once (``_at_once``) only on an owned connection, with nothing queued,
        the transport not paused, no burst gathering (a write moments ago) and
        the stream not ending.
        Otherwise it waits its turn: in order, for the gathering timer, for
        the transport, or for the response's ``frames()``.
        """
        if self._at_once(frame, time.monotonic()):
            self._metrics.writes.add(event, len(frame))
            return
        self.leave()  # what its lane would write next must wait behind this
        self._frames.append(frame)
        self._size += len(frame)
        if event:
            self._events += 1
        self._kick()

    def _kick(self) -> None:
        """Something is queued, or the stream ends: have it written."""
        if self._connection is None:
            wake(self._wakeup)  # frames() writes it
        elif self._flush_timer is None:
            delay = self._gathering()
            if delay:
                loop = asyncio.get_running_loop()
                self._flush_timer = loop.call_later(delay, self._flush)
            else:
                self._flush()

    def _gathering(self) -> float:
        """How long what is queued gathers before its write; 0: write it now.

        A lone event is written at once, with no timer. In a burst (the last
        write was moments ago) the first write gathers for ``flush_interval``
        and each next one twice as long, up to ``_GROWTH`` intervals: a
        backlog (a catch-up from the beginning) goes out in few large writes,
        which cost less CPU an event (BENCHMARKS.md), while a short burst waits
        no longer than before.
        """
        interval = self._settings.flush_interval
        if interval <= 0 or self._finished or self._size >= _MAX_CHUNK:
            return 0.0
        if time.monotonic() - self._last_write >= self.burst:
            self._window = interval  # quiet for a burst's span: the next burst starts afresh
            return 0.0
        delay = self._window
        self._window = min(2 * delay, _GROWTH * interval)
        return delay

    def _take(self) -> tuple[bytes, int]:
        """Everything queued as one chunk, and how many events it holds."""
        chunk, events = b"".join(self._frames), self._events
        self._frames.clear()
        self._size = self._events = 0
        wake(self._room)
        return chunk, events

    def _wrote(self, chunk: bytes, events: int) -> None:
        self._last_write = time.monotonic()
        self._metrics.writes.add(events, len(chunk))

    def _log(self, level: int, message: str, *args: object) -> None:
        """A line about this stream, under its request's correlation id: the pump
        is called from work shared by many streams (the hub's feed, the ticker)."""
        with correlation.as_request(self._cid):
            log.log(level, message, *args)

    def _has_room(self) -> bool:
        settings = self._settings
        return len(self._frames) < settings.buffer_events and self._size < settings.buffer_bytes

    async def room(self) -> bool:
        if self._finished:
            return False
        if self._has_room():
            return True  # the writer emptied the buffer before this wait began
        self._room = asyncio.get_running_loop().create_future()
        try:
            async with asyncio.timeout(
                self._settings.slow_consumer_grace
            ):  # not wait_for: see source.py
                await self._room
        except TimeoutError:
            self.slow_consumer()
            return False
        return not self._finished

    def slow_consumer(self) -> None:
        if self._finished:
            return  # already ending (its retry: line is queued)
        self._log(
            logging.INFO,
            "slow consumer: %d frames (%d bytes) unread",
            len(self._frames),
            self._size,
        )
        self._metrics.slow_consumer_disconnects.inc()
        self._frames.clear()  # the client fetches these again when it resumes
        self._size = self._events = 0
        self._end("slow_consumer")

    # -- ending ---------------------------------------------------------------

    def close(self) -> None:
        """The client left: stop the source and end the stream."""
        self._end("client")

    def drain(self) -> None:
        """The gateway is shutting down: flush, then a retry: line, then close."""
        self._end("drain")

    def _expire(self, expires_at: float) -> None:
        """The client's token expired: say so, then end as any stream ends (a retry: line)."""
        if self._finished:
            return
        error = token_expired(expires_at, retryable=True).envelope()["error"]
        frame = self._format.control("gateway.error", error)
        self._frames.append(frame)
        self._size += len(frame)
        self._end("token_expired")

    def _end(self, cause: str) -> None:
        """Stop the source; the response flushes what is buffered, a retry: line, and ends."""
        if self._finished:
            return
        self.leave()
        self._cause = cause
        self._finished = True
        if self._place is not None:
            self._place.release()  # also when the body never starts (an abandoned response)
        if self._reader is not None and self._reader is not asyncio.current_task():
            self._reader.cancel()
        self._source.close()
        retry = self._format.retry(jittered_retry_ms(self._settings.retry_ms))
        self._frames.append(retry)
        self._size += len(retry)
        wake(self._room)  # a source waiting for room stops now, not after the grace
        if self._open:
            self._kick()

    async def _run_source(self) -> None:
        try:
            await self._source.run(self)
        except Exception:
            log.exception("stream source failed")
        finally:
            if self._cause == "upstream_error":
                self.leave()
                self._finished = True  # after gateway.error: no retry: line, the client stops
                self._kick()
            else:
                # The source ended (its shared feed closed, or it failed): the
                # client gets a retry: line and resumes by id.
                self._end("source_ended")

    # -- the response body ----------------------------------------------------

    def tick(self, now: float) -> None:
        """From the shared Ticker: a heartbeat when idle, or drop a write stuck too long."""
        blocked = now - self._writing_since if self._writing_since else 0.0
        conn = self._connection
        if conn is not None:
            # What the pump wrote waits in the transport while the client reads
            # nothing: that is a blocked write.
            if not conn.blocked():
                self._blocked_since = 0.0
            elif not self._blocked_since:
                self._blocked_since = now
            else:
                blocked = now - self._blocked_since
        if blocked >= self._settings.send_timeout:
            if not self.stalled:
                self._log(
                    logging.WARNING, "dropping a client whose write blocked for %.0fs", blocked
                )
                self.stalled = True
                self._end("send_timeout")
                if conn is not None:
                    conn.abort()  # the kernel aborts it if it still does not read: server.py
                    self._closed()
                elif self._writer is not None:
                    self._writer.cancel()  # the response sees ``stalled`` and closes
        elif (
            not self._frames
            and not self._finished
            and now - self._written_at() >= self._heartbeat_after
        ):
            self._emit(self._format.heartbeat)

    def _opened(self) -> None:
        """The body begins: the source runs, timers and trackers know the stream."""
        settings, metrics = self._settings, self._metrics
        loop = asyncio.get_running_loop()
        self._open = True
        self._started = time.monotonic()
        if settings.max_stream_lifetime:
            lifetime = settings.max_stream_lifetime * random.uniform(0.9, 1.1)
            self._timers += (loop.call_later(lifetime, self._end, "lifetime"),)
        if self._expires_at is not None:
            delay = max(0.0, self._expires_at - time.time())
            self._timers += (loop.call_later(delay, self._expire, self._expires_at),)
        self._reader = asyncio.create_task(self._run_source())
        self._ticker.add(self)
        metrics.streams_open.inc()
        self._client_gauge = metrics.client_streams.opened(self._client)
        self._lifecycle.add(self)  # last: a gateway draining ends the stream at once

    def _closed(self) -> None:
        """The body has ended (or the client left): let go of everything. Synchronous on
        purpose: this may run inside a cancelled task."""
        if not self._open:
            return
        self._open = False
        metrics = self._metrics
        for timer in self._timers:
            timer.cancel()
        if self._flush_timer is not None:
            self._flush_timer.cancel()
        if self._reader is not None and self._reader is not asyncio.current_task():
            self._reader.cancel()
        self._source.close()
        if self._place is not None:
            self._place.release()
        self._lifecycle.discard(self)
        self._ticker.discard(self)
        metrics.streams_open.dec()
        metrics.client_streams.closed(self._client_gauge)
        metrics.stream_closes.labels(self._cause).inc()
        metrics.stream_duration.observe(time.monotonic() - self._started)

    # -- owning the connection (the gateway's own server) ----------------------

    def start(self, conn: Connection) -> None:
        """Own ``conn``'s body from here to its end: the response's task may return."""
        conn.take(self)
        self._connection = conn
        self._emit(self._format.retry(jittered_retry_ms(self._settings.retry_ms)))
        # The stream's first bytes are no burst: its first frame (the hub's status)
        # goes out at once too, so the stream is steady as soon as it is live.
        self._last_write = 0.0
        self._opened()

    def _flush(self) -> None:
        """Write what is queued in one chunk, unless the transport is paused (``writable``
        calls again); after the last frames, end the body."""
        self._flush_timer = None
        conn = self._connection
        if conn is None or not self._open:
            return
        if self._frames:
            if conn.blocked():
                return
            chunk, events = self._take()
            if conn.write(chunk):
                self._wrote(chunk, events)
        if self._finished and not self._frames:
            conn.finish()
            self._closed()

    def paused(self) -> None:
        self.leave()  # the pump holds what the transport cannot take, under its bounds

    def writable(self) -> None:
        if self._frames and self._flush_timer is None:
            self._flush()

    def lost(self) -> None:
        self._end("client")
        self._closed()

    def _at_once(self, frame: bytes, now: float) -> bool:
        """Write ``frame`` now, if nothing is ahead of it (see ``_emit``)."""
        conn = self._connection
        if (
            conn is None
            or self._frames
            or self._finished
            or now - self._written_at() < self.burst
            or not conn.write(frame)
        ):
            return False
        self._last_write = now
        self._window = self._settings.flush_interval  # a burst after it starts afresh
        return True

    def _written_at(self) -> float:
        """When a frame was last written to the stream, by the pump or its lane."""
        lane = self._lane
        return self._last_write if lane is None else max(self._last_write, lane.last)

    # -- in a hub group's lane (lane.Direct) ----------------------------------

    @property
    def shared(self) -> Callable[[SharedEvent], bytes]:
        return self._format.shared

    def steady(self) -> bool:
        return self._connection is not None and not self._frames and not self._finished

    def enter(self, lane: Lane) -> asyncio.WriteTransport | None:
        conn = self._connection
        if self._lane is not None or conn is None or not self.steady() or conn.blocked():
            return None
        self._lane = lane
        return conn.transport

    def leave(self) -> None:
        lane = self._lane
        if lane is not None:
            self._last_write = self._written_at()  # the lane's last frame was its last write
            self._lane = None
            lane.leave(self)

    # -- through ASGI (any other server, or a compressed stream) ---------------

    async def frames(self) -> AsyncGenerator[bytes, None]:
        """The response body: a ``retry:`` line, then frames in batches, until the stream ends.

        The consumer writes each chunk before asking for the next, so the time
        between a yield and the next step is the write: ``tick`` watches it.
        The last chunk is ``b""``: the end of the body, a write watched like the others.
        """
        self._writer = asyncio.current_task()
        self._opened()
        try:
            chunk, events = self._format.retry(jittered_retry_ms(self._settings.retry_ms)), 0
            while True:
                if chunk:
                    self._writing_since = time.monotonic()
                    yield chunk
                    self._writing_since = 0.0
                    self._wrote(chunk, events)
                if self._finished and not self._frames:
                    self._writing_since = time.monotonic()
                    yield b""
                    return
                if not self._frames and not self._finished:
                    self._wakeup = asyncio.get_running_loop().create_future()
                    await self._wakeup
                if delay := self._gathering():
                    await asyncio.sleep(delay)
                chunk, events = self._take()
        finally:
            self._closed()
