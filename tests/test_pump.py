"""The pump on its own, with a scripted source: buffer bounds and the end of a stream."""

from __future__ import annotations

import asyncio

from gateway.lifecycle import Lifecycle
from gateway.metrics import Metrics
from gateway.pump import Pump
from gateway.settings import Settings
from gateway.source import Reset, Sink
from gateway.ticker import Ticker


class _Burst:
    """Pushes ``count`` items at once (a ring replay) and, like HubSource, waits for
    room in a task of its own when the buffer says it is full."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.go = asyncio.Event()
        self.refused = False
        self._done: asyncio.Future[None] | None = None

    async def open(self) -> None:
        pass

    async def run(self, sink: Sink) -> None:
        self._done = asyncio.get_running_loop().create_future()
        await self.go.wait()
        waiting: asyncio.Future[None] | None = None
        for _ in range(self.count):
            if not sink.put(Reset("x" * 300, "", "latest")) and waiting is None:
                waiting = asyncio.ensure_future(self._wait_for_room(sink))
        await self._done

    async def _wait_for_room(self, sink: Sink) -> None:
        if not await sink.room():
            self.refused = True
            self.close()

    def close(self) -> None:
        if self._done is not None and not self._done.done():
            self._done.set_result(None)


def test_a_buffer_emptied_before_the_room_wait_is_not_a_slow_consumer() -> None:
    async def scenario() -> None:
        # No burst gathering: the writer flushes the moment it wakes, which is
        # before the source's room-waiting task first runs (asyncio runs them in order).
        settings = Settings(
            buffer_events=100, slow_consumer_grace=0.5, heartbeat=60, flush_interval=0
        )
        source = _Burst(150)  # past the bound, under twice the bound
        pump = Pump(
            source,
            named=False,
            cursor=None,
            settings=settings,
            metrics=Metrics(),
            lifecycle=Lifecycle(),
            ticker=Ticker(15),
        )
        frames = pump.frames()
        assert (await anext(frames)).startswith(b"retry: ")
        # The writer is idle (it awaits frames in this very task) when the burst comes.
        source.go.set()
        written = b""
        while written.count(b"gateway.reset") < 150:
            written += await anext(frames)
        # The writer took everything before the source's room wait began: that
        # wait must not run out the grace and cut a client that is keeping up.
        await asyncio.sleep(2 * settings.slow_consumer_grace)  # past the grace (not a sync)
        assert not source.refused
        pump.close()
        rest = [chunk async for chunk in frames]
        assert rest[-1] == b"" and rest[-2].startswith(b"retry: ")  # then the end of the body

    asyncio.run(asyncio.wait_for(scenario(), 10))
