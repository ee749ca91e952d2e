"""One bounded read of a subscription, for polling clients (cron, serverless, workflow tools).

``collect`` opens a Source and runs it into a ``Batch`` (a Sink that keeps
up to ``max_events`` events) until the batch is full, or events stop
arriving for a moment after the first one (so a poll answers with what is
there without waiting out the timeout), or ``timeout`` seconds have passed
since the source opened, however many events keep coming. A draining
gateway ends every batch at once (``Batch.drain``). The answer:

    {"events": [...], "cursor": "<pass it next time>" | null, "more": true | false,
     "reset": {...} | null}

``cursor`` is the id of the last event returned, or of the last unwanted
event the stream passed after it (so the next poll does not read past it
again), or the cursor the poll was given. ``more`` is true when another
matching event was already waiting, or when the source had not reached the
live stream when the answer was due (``Source.caught_up``): a client polls
while ``more`` and then streams from the last cursor, and that one loop
catches up. Polling again with ``cursor`` returns each event once, in
order: the same resume rules as a stream's ``Last-Event-ID``. ``reset`` is a
``gateway.reset``'s data when the given cursor could not be resumed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import assert_never

from gateway._proto import kumiho_pb2
from gateway.errors import GatewayError
from gateway.items import Advance, Failure, Item, Reset, SharedEvent, Source, Status, wake
from gateway.sse import dumps, event_json

log = logging.getLogger("gateway.poll")

# After the first event, how long a pause in arrivals ends the batch; and how
# long a stream of its own must have been silent to count as caught up.
_QUIET = 0.05


@dataclass(eq=False)  # tracked in a set by the lifecycle, by identity
class Batch:
    """The Sink of one poll: events up to ``limit``, whether one more was waiting, and
    whether the source was live when the answer was due."""

    limit: int
    cursor: str | None

    def __post_init__(self) -> None:
        self.events: list[str] = []  # each event's JSON
        self.more = False  # one past the limit was waiting
        self.live = False  # set by collect() as the answer is due
        self.reset: Reset | None = None
        self.failure: GatewayError | None = None
        self._arrived: asyncio.Future[None] | None = None  # _fill waits: the next item
        self._stopped: asyncio.Future[None] | None = None  # collect waits: done
        self.done = False
        self.drained = False  # ended by the gateway's drain, not by the poll's own rules

    def put(self, item: Item) -> bool:
        if self.done:
            return False
        match item:
            case SharedEvent() | kumiho_pb2.Event():
                if len(self.events) == self.limit:
                    self.more = True  # one past the limit: it stays for the next poll
                    self._finish()
                    return False
                event = item.event if isinstance(item, SharedEvent) else item
                self.events.append(event_json(event))
                self.cursor = item.cursor or self.cursor
            case Advance():
                self.cursor = item.cursor  # past unwanted events: not read again next time
                return True
            case Reset():
                self.reset = item
            case Failure():
                self.failure = item.error
                self._finish()
                return False
            case Status():
                return True  # the answer is what arrived; the state is not news to a poll
            case _:
                assert_never(item)
        wake(self._arrived)
        return True

    async def room(self) -> bool:
        return not self.done

    def slow_consumer(self) -> None:
        """Never: a batch takes everything up to its limit at once."""

    def drain(self) -> None:
        """The gateway shuts down: take nothing more; the poll answers with what it has."""
        if not self.done:
            self.drained = True
            self._finish()

    def _finish(self) -> None:
        self.done = True
        wake(self._arrived)
        wake(self._stopped)

    async def arrival(self, within: float) -> bool:
        """Wait up to ``within`` seconds for the next item; False when none came."""
        if self.done:
            return False
        self._arrived = asyncio.get_running_loop().create_future()
        try:
            async with asyncio.timeout(within):  # not wait_for: see source.py
                await self._arrived
        except TimeoutError:
            return False
        return not self.done

    async def stopped(self) -> None:
        """Return once the batch takes nothing more (full, failed or drained)."""
        if not self.done:
            self._stopped = asyncio.get_running_loop().create_future()
            await self._stopped

    def answer(self) -> bytes:
        """The JSON body (events are already JSON: joined, not re-encoded)."""
        reset = self.reset.data() if self.reset is not None else None
        return (
            f'{{"events":[{",".join(self.events)}],"cursor":{dumps(self.cursor)},'
            f'"more":{dumps(self.more or not self.live)},"reset":{dumps(reset)}}}'
        ).encode()


async def collect(source: Source, batch: Batch, wait: float, gone: Awaitable[None]) -> None:
    """Open ``source``, run it into ``batch`` until the answer is due, and close it.

    The answer is due when the batch is full or drained, when events pause
    for ``_QUIET`` after the first one, ``wait`` seconds after the source
    opened (at least ``_QUIET``, so ``timeout=0`` still gets what is already
    there), or when ``gone`` resolves (the client left). A drain or the
    client leaving ends the opening too. Refusals while opening (GatewayError)
    propagate. Then ``_settle`` says whether the source is live.
    """
    left = asyncio.ensure_future(gone)
    stopped = asyncio.ensure_future(batch.stopped())
    opening = asyncio.ensure_future(source.open())
    tasks = [left, stopped, opening]
    running: asyncio.Future[None] | None = None
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        if not opening.done():
            return  # drained, or the client left, before the upstream answered
        opening.result()  # a refusal: raised to the route
        deadline = asyncio.get_running_loop().time() + max(wait, _QUIET)
        running = asyncio.ensure_future(source.run(batch))
        filling = asyncio.ensure_future(_fill(batch, deadline))
        tasks += [running, filling]
        await asyncio.wait({filling, left, running}, return_when=asyncio.FIRST_COMPLETED)
        if not left.done():
            await _settle(source, batch, deadline)
    finally:
        for task in tasks:
            task.cancel()
        source.close()
        # Synchronous cleanup above; this only lets the cancelled tasks finish.
        await asyncio.gather(*tasks, return_exceptions=True)
        if running is not None and not running.cancelled() and running.exception():
            # A bug in the source, not a refusal: the poll still answers with what it has.
            log.error("a poll's source failed", exc_info=running.exception())


async def _fill(batch: Batch, deadline: float) -> None:
    """Until full, or a quiet moment after the first event, or ``deadline``, whatever comes."""
    loop = asyncio.get_running_loop()
    while not batch.done and (left := deadline - loop.time()) > 0:
        # Before the first event, wait for one up to the deadline; after it, for
        # a moment only. Either way never past the deadline: a steady trickle of
        # events must not hold the answer back.
        if not await batch.arrival(min(_QUIET, left) if batch.events else left):
            return


async def _settle(source: Source, batch: Batch, deadline: float) -> None:
    """As the answer is due: is the source live, and the cursor past what it skipped.

    A stream of its own that read something within the last ``_QUIET`` gets
    one more quiet window (never past the deadline) to show it has caught up:
    a poll answered as its catch-up ends then says so.
    """
    loop = asyncio.get_running_loop()
    if not batch.done and not source.caught_up(_QUIET) and (left := deadline - loop.time()) > 0:
        await batch.arrival(min(_QUIET, left))
    batch.live = source.caught_up(_QUIET)
    source.flush()
