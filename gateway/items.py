"""The items a source delivers, and the two seams they cross: ``Sink`` and ``Source``.

Every consumer (the pump, a poll's batch, a hub channel, a catch-up, the
filtering sink) takes an ``Item`` with ``match`` and ends with
``assert_never``: a new kind of item is a type error until each of them
handles it. Nothing here does I/O; the machinery lives in the modules that
use these (``source.py``, ``channel.py``, ``pump.py``, ``poll.py``, ...).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal, Protocol

from gateway import sse
from gateway._proto import kumiho_pb2
from gateway.errors import GatewayError


@dataclass(frozen=True, slots=True)
class Reset:
    """The requested resume point could not be honoured; what follows starts elsewhere."""

    reason: str
    requested_cursor: str
    resumed_from: Literal["earliest", "latest"]

    def data(self) -> dict[str, str]:
        """The ``gateway.reset`` object (CONTRACT.md)."""
        return {
            "reason": self.reason,
            "requested_cursor": self.requested_cursor,
            "resumed_from": self.resumed_from,
        }


UpstreamState = Literal["live", "unavailable", "failing"]


@dataclass(frozen=True, slots=True)
class Status:
    """The upstream's state as a stream sees it (CONTRACT.md: ``gateway.status``)."""

    upstream: UpstreamState
    code: str | None  # the gRPC status name that caused a state other than live
    retry_at: float | None  # time.monotonic() of the next attempt
    since: str  # ISO 8601, UTC

    @classmethod
    def now(cls, upstream: UpstreamState, code: str | None, retry_in: float | None) -> Status:
        """The state as of now; ``retry_in`` seconds until the next attempt, if one is planned."""
        since = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        retry_at = None if retry_in is None else time.monotonic() + retry_in
        return cls(upstream, code, retry_at, since)

    def retry_in_ms(self) -> int | None:
        """Until the next attempt, as of now (a hub's later joiner gets the true wait)."""
        if self.retry_at is None:
            return None
        return max(0, round((self.retry_at - time.monotonic()) * 1000))

    def same_state(self, other: Status) -> bool:
        """Whether ``other`` says the same (state and code): no news for a client."""
        return (self.upstream, self.code) == (other.upstream, other.code)

    def data(self) -> dict[str, str | int | None]:
        """The ``gateway.status`` object (CONTRACT.md)."""
        return {
            "upstream": self.upstream,
            "code": self.code,
            "retry_in_ms": self.retry_in_ms(),
            "since": self.since,
        }


@dataclass(frozen=True, slots=True)
class Advance:
    """The stream passed events the client's filter does not want, up to ``cursor``.

    Sent now and then (see ``filtering.py``), so the id a client resumes by
    never lags far behind: the resume is served from the hub's ring, not
    re-read upstream.
    """

    cursor: str


@dataclass(frozen=True, slots=True)
class Failure:
    """A terminal error after the stream started; the stream ends after it."""

    error: GatewayError


class SharedEvent:
    """An event encoded once for every subscriber of a shared stream (see channel.py)."""

    __slots__ = ("_named", "_plain", "cursor", "event")

    def __init__(self, event: kumiho_pb2.Event, minted_id: str = "") -> None:
        self.event = event
        # The SSE id: Kumiho's cursor, or one the hub minted when there is none.
        self.cursor = event.cursor or minted_id
        self._plain: bytes | None = None
        self._named: bytes | None = None

    def plain_frame(self) -> bytes:
        """The frame without ``event:``, built on first use and shared from then on."""
        if self._plain is None:
            self._plain = sse.event_frame(self.event, named=False, event_id=self.cursor)
        return self._plain

    def named_frame(self) -> bytes:
        """The frame with ``event:``, built on first use and shared from then on."""
        if self._named is None:
            self._named = sse.event_frame(self.event, named=True, event_id=self.cursor)
        return self._named


Item = kumiho_pb2.Event | SharedEvent | Reset | Failure | Status | Advance


class Sink(Protocol):
    """Where a source delivers: one subscriber's bounded buffer."""

    def put(self, item: Item) -> bool:
        """Take an item; False when the buffer is now full (await ``room()`` before more)."""

    async def room(self) -> bool:
        """Wait until the buffer can take items again; False: the subscriber is gone, stop."""

    def slow_consumer(self) -> None:
        """Cut the subscriber: it reads slower than its events arrive (it resumes by id)."""


class Source(Protocol):
    """What the pump and a poll consume: items for one subscription, pushed into a Sink."""

    async def open(self) -> None:
        """Start; raise GatewayError for refusals that must be answered before the stream."""

    async def run(self, sink: Sink) -> None:
        """Deliver events and resets in order; return after delivering a Failure."""

    def close(self) -> None:
        """Stop now (synchronous, so it is safe inside a cancelled task's cleanup)."""

    def caught_up(self, quiet: float) -> bool:
        """Whether the source has reached the live stream (a poll's ``more`` is its negation).

        A shared feed's subscriber knows it; a stream of its own judges by
        ``quiet``: the upstream sent nothing, wanted or not, for that long.
        """

    def flush(self) -> None:
        """Deliver an Advance now for the unwanted events passed since the last item."""


def wake(waiter: asyncio.Future[None] | None) -> None:
    """Resolve a waiter's bare future (cheaper per stream than an asyncio.Event's deque)."""
    if waiter is not None and not waiter.done():
        waiter.set_result(None)
