"""The upstream client: ``UpstreamSource``, one upstream EventStream for a subscription.

It is a ``Source`` (``items.py``), the one a request reads with ``--no-hub``,
a hub channel's shared feed, and a hub catch-up stream (the hub's own
``HubSource`` is the other).

``UpstreamSource`` keeps the client's stream alive whatever the upstream
does: a broken stream or an unreachable server means resubscribing from the
last cursor it yielded, after a capped, jittered backoff; a resume point the
upstream cannot honour becomes a ``Reset`` item (so the gap is never
silent); a refused credential becomes a ``Failure`` (before the stream
starts, ``open()`` raises it instead, so the route can answer 401/403). It
announces the upstream's state first and on every change (``Status``, sent
as ``gateway.status``), and holds a place under the caps on upstream
streams (``quota.py``) from ``open()`` to ``close()``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import logging
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import cast

import grpc

from gateway._proto import kumiho_pb2
from gateway.auth import SERVICE
from gateway.backoff import Backoff
from gateway.cursor import ResumeFilter
from gateway.errors import GatewayError
from gateway.filtering import FilteringSink
from gateway.items import Failure, Item, Reset, Sink, Status, wake
from gateway.metrics import Metrics
from gateway.quota import QuotaExceeded
from gateway.settings import Settings
from gateway.subscription import Subscription
from gateway.upstream import (
    CREDENTIAL_REFUSED,
    CURSOR_REJECTED,
    EventCall,
    Rejected,
    Upstream,
    down,
    terminal_error,
)

log = logging.getLogger("gateway.source")

_EOF: object = grpc.aio.EOF  # type: ignore[attr-defined]  # missing from grpc-stubs

# How long open() waits for the upstream to refuse a new stream (a bad filter
# or cursor is refused at once; an accepted stream may say nothing until its
# first event, so waiting for its headers would delay the client's 200).
_SETTLE = 0.25
# A "latest" stream whose first call fails asks, once the upstream is back, for
# everything since this long before the client's 200: the gateway's and the
# upstream's clocks may differ, and a few early events beat a silent gap.
_CLOCK_MARGIN = timedelta(seconds=1)
# Events without a cursor remembered after the last cursor, to drop their repeats.
_MAX_SINCE_CURSOR = 4096


class UpstreamSource:
    """One upstream EventStream per subscription, resubscribed until closed."""

    def __init__(
        self, upstream: Upstream, subscription: Subscription, settings: Settings, metrics: Metrics
    ) -> None:
        self._upstream = upstream
        self._metrics = metrics
        self._sub = subscription
        self._open_timeout = settings.open_timeout
        self._backoff = Backoff(settings.backoff_initial, settings.backoff_max)
        # The stream's one repeat filter; its position is where a resubscribe resumes.
        self._repeats = ResumeFilter(subscription.cursor)
        self._start = subscription.start
        self._live_since: str | None = None  # when a "latest" client stream began
        self._attempts = 0  # upstream calls made
        # Events without a cursor cannot be resumed by one. Those delivered after
        # the last cursor (their bytes) are dropped when a resume from that cursor
        # sends them again; with no cursor to resume from, a break is a reset.
        self._since_cursor: list[bytes] = []  # digests
        self._replayed: collections.deque[bytes] = collections.deque()
        self._unresumable = False
        self._pending: list[Item] = []
        self._call: EventCall | None = None
        self._replay = True  # whether the upstream can start from the beginning
        self._closed = False
        self._holds_quota = False  # a place under the upstream stream caps, from open()
        self._wake: asyncio.Future[None] | None = None  # ends a backoff sleep early on close
        self.status = Status.now("live", None, None)  # announced first by run()
        self._first_retry: float | None = None  # open() failed: wait this long first
        self._sink: FilteringSink | None = None  # what run() delivers through
        self._last_read = 0.0  # loop time of the last event read (or of the last connect)
        # What the upstream cannot filter (a list of patterns) is matched here.
        self._filters = subscription.filter.upstream()
        self._rest = subscription.filter.beyond(*self._filters)

    # -- requests -------------------------------------------------------------

    @property
    def _resume(self) -> str | None:
        """The cursor to resume after: the last event read, or the client's own."""
        return self._repeats.position

    def _request(self) -> kumiho_pb2.EventStreamRequest:
        sub = self._sub
        routing_key_filter, kref_filter = self._filters
        req = kumiho_pb2.EventStreamRequest(
            routing_key_filter=routing_key_filter, kref_filter=kref_filter
        )
        if sub.consumer_group:
            req.consumer_group = sub.consumer_group
        if self._resume:
            req.cursor = self._resume
        elif self._start == "beginning":
            req.from_beginning = True
        elif self._start == "timestamp" and sub.from_timestamp:
            req.from_timestamp = sub.from_timestamp
        elif self._live_since and self._attempts:
            # A "latest" stream failed or broke before its first event: ask for
            # what happened since the client's stream began instead of skipping it.
            req.from_timestamp = self._live_since
        return req

    def _reset(self, reason: str) -> Reset:
        """Give up the current resume point: restart from the earliest event available."""
        reset = Reset(reason, self._resume or "", "earliest" if self._replay else "latest")
        self._repeats.forget()
        self._start = "beginning" if self._replay else "latest"
        self._live_since = None
        return reset

    # -- connecting -----------------------------------------------------------

    async def _connect(self, wait: float) -> bool:
        """Start a call and wait (up to ``wait`` seconds) until it is open or has failed.

        True when the upstream answered (its headers came); False when it is
        still silent, which many servers are until their first event.
        """
        request = self._request()
        self._attempts += 1
        self._last_read = asyncio.get_running_loop().time()
        call = self._upstream.event_stream(request, self._sub.credential)
        self._call = call
        gauge = self._metrics.upstream_streams_open
        gauge.inc()
        call.add_done_callback(lambda _: gauge.dec())
        try:
            # asyncio.timeout, never wait_for: on 3.11 wait_for swallows a
            # cancellation that lands as its awaitable finishes, and a source
            # cancelled then would resubscribe until someone closes it.
            async with asyncio.timeout(wait):
                await asyncio.shield(call.initial_metadata())
        except TimeoutError:
            return False  # no answer yet: stream anyway, reads will tell
        if call.done():
            code = await call.code()
            if code != grpc.StatusCode.OK:
                self._call = None
                raise self._upstream.rejected(code, await call.details(), self._sub.credential)
        self._metrics.upstream_connects.inc()
        return True

    def _live_after(self, answered: bool) -> Status:
        """The state after a call that was not refused: live, unless nothing says so yet."""
        if answered or self._upstream.connected():
            return Status.now("live", None, None)
        # Silent, and not even connected: live only once an event comes through.
        return Status.now("unavailable", None, None)

    def _classify(self, exc: Rejected) -> Item | None:
        """Reset or Failure for a refused call; None when retrying may fix it."""
        self._metrics.upstream_failures.labels(exc.code.name).inc()
        if self._resume and exc.code in CURSOR_REJECTED:
            return self._reset(CURSOR_REJECTED[exc.code])
        error = terminal_error(exc)
        return Failure(error) if error else None

    async def _check_capabilities(self, wait: float) -> None:
        """Decide the credential with the (cached) unary call; learn what the tier offers.

        The stream's own headers cannot decide it: many gRPC servers send them
        only with the first event, which may be hours away.
        """
        try:
            async with asyncio.timeout(wait):  # not wait_for: see _connect
                caps = await self._upstream.capabilities(self._sub.credential)
        except grpc.aio.AioRpcError as exc:
            rejected = self._upstream.rejected(exc.code(), exc.details(), self._sub.credential)
            if self._rotated(rejected.code):
                return await self._check_capabilities(wait)
            if rejected.code in CREDENTIAL_REFUSED:
                self._metrics.upstream_failures.labels(rejected.code.name).inc()
                error = terminal_error(rejected)
                assert error is not None
                raise error from None
            log.info("GetEventCapabilities failed (%s); assuming cursors work", rejected.code.name)
            return
        except TimeoutError:
            log.info("GetEventCapabilities did not answer in time; assuming cursors work")
            return
        self._replay = caps.supports_replay
        if self._sub.consumer_group and not caps.supports_consumer_groups:
            raise GatewayError(
                400,
                "consumer_groups_unsupported",
                f"the upstream's tier ({caps.tier or 'unknown'}) has no consumer groups: "
                "send the request without consumer_group",
            )
        if self._resume and not caps.supports_cursor:
            self._pending.append(self._reset("cursor_unsupported"))

    async def open(self) -> None:
        identity = self._sub.credential.identity
        try:
            self._upstream.quota.acquire(identity)
        except QuotaExceeded as exc:
            self._metrics.upstream_stream_limit.labels(exc.scope).inc()
            raise GatewayError(503, "too_many_streams", str(exc), retryable=True) from None
        self._holds_quota = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._open_timeout
        if not self._resume and self._start == "latest":
            # Should the first call fail, the retry asks for everything since the
            # client's 200 (a little before it: the clocks may differ), never "latest".
            since = datetime.now(UTC) - _CLOCK_MARGIN
            self._live_since = since.isoformat(timespec="milliseconds")
        await self._check_capabilities(self._open_timeout)
        while True:
            # A refusal of the request itself (a bad filter or cursor) comes at
            # once; an accepted stream may stay silent until its first event.
            settle = min(_SETTLE, max(0.0, deadline - loop.time()))
            try:
                self.status = self._live_after(await self._connect(settle))
                return
            except Rejected as exc:
                if self._rotated(exc.code):
                    continue
                item = self._classify(exc)
                if isinstance(item, Failure):
                    raise item.error from None
                if item is None:
                    log.info("upstream unavailable at open (%s); streaming anyway", exc)
                    self._first_retry = self._backoff.delay()
                    self.status = down(exc.code, self._first_retry)
                    return
                self._pending.append(item)

    # -- streaming ------------------------------------------------------------

    async def run(self, sink: Sink) -> None:
        # Everything goes through the filtering sink: repeats, the filter, skips.
        sink = self._sink = FilteringSink(sink, self._rest, self._repeats)
        loop = asyncio.get_running_loop()
        pending, self._pending = [self.status, *self._pending], []
        for item in pending:
            if not sink.put(item) and not await sink.room():
                return
        if self._first_retry is not None:
            await self._sleep(self._first_retry, self.status.code)
        while not self._closed:
            if self._call is None:
                try:
                    answered = await self._connect(_SETTLE)
                except Rejected as exc:
                    if await self._refused(exc, sink):
                        return
                    continue
                self._announce(self._live_after(answered), sink)
            call = self._call
            assert call is not None
            delivered = ended_cleanly = False
            try:
                # call.read() rather than `async for`: one async generator
                # fewer per event on the hottest path.
                while (read := await call.read()) is not _EOF:
                    self._last_read = loop.time()
                    event = cast(kumiho_pb2.Event, read)
                    if event.cursor:
                        if self._since_cursor or self._unresumable:  # (rarely: mixed streams)
                            if sink.repeat(event.cursor):
                                continue  # a repeat (at-least-once) must not reset what follows
                            self._since_cursor.clear()
                            self._replayed.clear()
                            self._unresumable = False
                    elif self._seen_before(event):
                        continue
                    if not delivered:
                        delivered = True
                        self._backoff.reset()
                        self._live_since = None
                        if self.status.upstream != "live":  # events flow: it is live
                            self._announce(Status.now("live", None, None), sink)
                    # The sink drops a repeat, and counts an unwanted event into an Advance.
                    if not sink.put(event) and not await sink.room():
                        return
                ended_cleanly = True
            except grpc.aio.AioRpcError as exc:
                rejected = self._upstream.rejected(exc.code(), exc.details(), self._sub.credential)
                if await self._refused(rejected, sink):
                    return
            finally:
                call.cancel()  # no-op when finished; stops the RPC if we are being closed
                self._call = None
            self._interrupted(sink)
            if ended_cleanly:
                # A clean end (status OK) is retried through the backoff too: an
                # upstream that ends every stream at once must not get a hot loop.
                await self._sleep(self._backoff.delay(), "the upstream ended the stream")

    def caught_up(self, quiet: float) -> bool:
        """True when the upstream sent nothing for ``quiet`` seconds: it has no backlog left.

        Kumiho says nothing about where its live stream begins, so a pause is
        the only sign. A pause while the upstream itself skips a long run its
        filter rejects looks the same: the position then stays at the last
        event read, so whoever continues from it loses nothing.
        """
        return asyncio.get_running_loop().time() - self._last_read >= quiet

    def flush(self) -> None:
        if self._sink is not None:
            self._sink.flush()

    def _seen_before(self, event: kumiho_pb2.Event) -> bool:
        """For an event without a cursor: True when it repeats one delivered before a break."""
        if self._resume is None:
            self._unresumable = True  # nothing to resume from (a tier without cursors)
            return False
        payload = event.SerializeToString(deterministic=True)
        digest = hashlib.blake2b(payload, digest_size=16).digest()
        if self._replayed:
            if self._replayed[0] == digest:
                self._replayed.popleft()
                return True
            self._replayed.clear()  # the upstream does not send them again: this one is new
        if len(self._since_cursor) < _MAX_SINCE_CURSOR:
            self._since_cursor.append(digest)
        else:
            self._unresumable = True
        return False

    def _interrupted(self, sink: Sink) -> None:
        """After a stream ended: arrange an exact resume, or say where it resumes."""
        if self._unresumable:
            # Nothing to resume from: say so, and go on from the latest event.
            sink.put(Reset("stream_interrupted", "", "latest"))
            self._unresumable = False
            self._repeats.forget()
            self._start, self._live_since = "latest", None
            self._since_cursor.clear()
        self._replayed = collections.deque(self._since_cursor)

    def _rotated(self, code: grpc.StatusCode) -> bool:
        """The upstream refused the gateway's own token: take a rotated one from its file."""
        if code != grpc.StatusCode.UNAUTHENTICATED or self._sub.credential.identity != SERVICE:
            return False
        newer = self._upstream.service_token.newer_than(self._sub.credential.upstream_token)
        if newer is None:
            return False
        log.info("the upstream refused the service token; using the new one from its file")
        self._sub = replace(
            self._sub, credential=replace(self._sub.credential, upstream_token=newer)
        )
        return True

    async def _refused(self, exc: Rejected, sink: Sink) -> bool:
        """Deliver what a refused call means; True when the stream must end."""
        if self._rotated(exc.code):
            return False  # resubscribe at once with the new token
        item = self._classify(exc)
        if item is None:
            delay = self._backoff.delay()
            self._announce(down(exc.code, delay), sink)
            await self._sleep(delay, exc)
            return False
        sink.put(item)
        return isinstance(item, Failure)

    def _announce(self, status: Status, sink: Sink) -> None:
        """Tell the client when the upstream's state changes (never a repeat of the same)."""
        if not status.same_state(self.status):
            self.status = status
            sink.put(status)

    async def _sleep(self, delay: float, why: object) -> None:
        """The backoff wait before resubscribing; close() ends it early."""
        log.info("upstream stream: %s; resubscribing in %.2fs", why, delay)
        self._wake = asyncio.get_running_loop().create_future()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay):  # not wait_for: see _connect
                await self._wake  # close() ends the wait
        self._wake = None

    def close(self) -> None:
        self._closed = True
        if self._holds_quota:
            self._holds_quota = False
            self._upstream.quota.release(self._sub.credential.identity)
        wake(self._wake)
        if self._call is not None:
            self._call.cancel()
            self._call = None
