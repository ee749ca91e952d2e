"""One bounded read of a subscription, for polling clients (cron, serverless, workflow tools).

``collect`` runs a Source into a ``Batch`` (a Sink that keeps up to
``max_events`` events) until the batch is full, or until ``timeout``
seconds pass with nothing to return, or until events stop arriving for a
moment after the first one (so a poll answers with what is there without
waiting out the timeout). The answer:

    {"events": [...], "cursor": "<pass it next time>" | null, "more": true | false,
     "reset": {...} | null}

``cursor`` is the id of the last event returned, or of an unwanted event the
stream passed after it (so the next poll does not read past it again), or
the cursor the poll was given; ``more`` is true when another matching event was
already waiting. Polling again with ``cursor`` returns each event once, in
order: the same resume rules as a stream's ``Last-Event-ID``. ``reset`` is a
``gateway.reset``'s data when the given cursor could not be resumed.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable
from dataclasses import dataclass

from gateway._proto import kumiho_pb2
from gateway.cursor import ResumeFilter
from gateway.errors import GatewayError
from gateway.source import Advance, Failure, Item, Reset, SharedEvent, Source, Status
from gateway.sse import dumps, event_json

# After the first event, how long a pause in arrivals ends the batch.
_QUIET = 0.05


@dataclass
class Batch:
    """The Sink of one poll: events up to ``limit``, and whether one more was waiting."""

    limit: int
    cursor: str | None

    def __post_init__(self) -> None:
        self.events: list[str] = []  # each event's JSON
        self.more = False
        self.reset: Reset | None = None
        self.failure: GatewayError | None = None
        self._filter = ResumeFilter(self.cursor)
        self._arrived: asyncio.Future[None] | None = None
        self.done = False

    def put(self, item: Item) -> bool:
        if self.done:
            return False
        if isinstance(item, SharedEvent | kumiho_pb2.Event):
            event = item.event if isinstance(item, SharedEvent) else item
            if not self._filter.accept(item.cursor):
                return True  # a repeat after a resume
            if len(self.events) == self.limit:
                self.more = True  # one past the limit: it stays for the next poll
                self._finish()
                return False
            self.events.append(event_json(event))
            self.cursor = item.cursor or self.cursor
        elif isinstance(item, Reset):
            self._filter.forget()
            self.reset = item
        elif isinstance(item, Failure):
            self.failure = item.error
            self._finish()
            return False
        elif isinstance(item, Status):
            return True  # the answer is what arrived; the state is not news to a poll
        elif isinstance(item, Advance):
            if self._filter.accept(item.cursor):
                self.cursor = item.cursor  # past unwanted events: not read again next time
            return True
        self._wake()
        return True

    async def room(self) -> bool:
        return not self.done

    def slow_consumer(self) -> None:
        """Never: a batch takes everything up to its limit at once."""

    def _finish(self) -> None:
        self.done = True
        self._wake()

    def _wake(self) -> None:
        if self._arrived is not None and not self._arrived.done():
            self._arrived.set_result(None)

    async def arrival(self, within: float) -> bool:
        """Wait up to ``within`` seconds for the next item; False when none came."""
        if self.done:
            return False
        self._arrived = asyncio.get_running_loop().create_future()
        try:
            await asyncio.wait_for(self._arrived, within)
        except TimeoutError:
            return False
        return not self.done

    def answer(self) -> bytes:
        """The JSON body (events are already JSON: joined, not re-encoded)."""
        reset = self.reset.data() if self.reset is not None else None
        return (
            f'{{"events":[{",".join(self.events)}],"cursor":{dumps(self.cursor)},'
            f'"more":{dumps(self.more)},"reset":{dumps(reset)}}}'
        ).encode()


async def collect(source: Source, batch: Batch, wait: float, gone: Awaitable[None]) -> None:
    """Run ``source`` into ``batch`` until full, quiet or ``wait`` is over, or ``gone`` resolves.

    The caller has opened ``source`` and closes it afterwards.
    """
    running = asyncio.ensure_future(source.run(batch))
    left = asyncio.ensure_future(gone)
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        waiting = asyncio.ensure_future(_fill(batch, deadline))
        await asyncio.wait({waiting, left, running}, return_when=asyncio.FIRST_COMPLETED)
        waiting.cancel()
    finally:
        running.cancel()
        left.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await running


async def _fill(batch: Batch, deadline: float) -> None:
    loop = asyncio.get_running_loop()
    while not batch.events and not batch.done:
        # Even timeout=0 gives what is already there (a ring replay) a moment to arrive.
        if not await batch.arrival(max(_QUIET, deadline - loop.time())):
            return  # nothing came in time
    while not batch.done and await batch.arrival(_QUIET):
        pass
