"""The pump on its own, with a scripted source: buffer bounds and the end of a stream."""

from __future__ import annotations

import asyncio
import time

import pytest

from gateway.items import Reset, Sink
from gateway.metrics import Metrics
from gateway.settings import Settings
from gateway.sse import HEARTBEAT
from tests.conftest import make_pump


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
        grace = 0.5
        source = _Burst(150)  # past the bound, under twice the bound
        pump = make_pump(source, buffer_events=100, slow_consumer_grace=grace)
        frames = pump.frames()
        assert (await anext(frames)).startswith(b"retry: ")
        # The writer is idle (it awaits frames in this very task) when the burst comes.
        source.go.set()
        written = b""
        while written.count(b"gateway.reset") < 150:
            written += await anext(frames)
        # The writer took everything before the source's room wait began: that
        # wait must not run out the grace and cut a client that is keeping up.
        await asyncio.sleep(2 * grace)  # past the grace (not a sync)
        assert not source.refused
        pump.close()
        rest = [chunk async for chunk in frames]
        assert rest[-1] == b"" and rest[-2].startswith(b"retry: ")  # then the end of the body

    asyncio.run(asyncio.wait_for(scenario(), 10))


class _Filler:
    """Fills the buffer, then waits for room in a task of its own (as a shared feed's
    subscriber may), which the pump's cancelling of its reader does not reach."""

    def __init__(self) -> None:
        self.room: bool | None = None
        self.waiting = asyncio.Event()
        self.answered = asyncio.Event()

    async def open(self) -> None:
        pass

    async def run(self, sink: Sink) -> None:
        while sink.put(Reset("fill", "", "latest")):
            pass
        self.waiter = asyncio.ensure_future(self._wait(sink))
        await asyncio.Event().wait()  # until cancelled

    async def _wait(self, sink: Sink) -> None:
        self.waiting.set()
        self.room = await sink.room()
        self.answered.set()

    def close(self) -> None:
        pass


def test_a_source_waiting_for_room_stops_when_the_stream_ends() -> None:
    async def scenario() -> None:
        source = _Filler()
        pump = make_pump(source, buffer_events=4, slow_consumer_grace=60)
        frames = pump.frames()
        await anext(frames)  # the retry: line; the reader task now runs the source
        await source.waiting.wait()
        pump.close()  # the client left: the wait ends now, not after the 60 s grace
        await asyncio.wait_for(source.answered.wait(), 1)
        assert source.room is False
        [chunk async for chunk in frames]

    asyncio.run(asyncio.wait_for(scenario(), 5))


def test_tick_policies_with_an_injected_clock() -> None:
    async def scenario() -> None:
        source = _Filler()
        pump = make_pump(source, heartbeat=4, send_timeout=30, buffer_events=10**6)
        pump._heartbeat_after = 4 - 1  # as with a ticker period of 1 s
        pump._last_write = 100.0
        pump.tick(102.0)
        assert pump._frames == []  # quiet for 2 s: nothing owed yet
        pump.tick(103.0)
        assert pump._frames == [HEARTBEAT]  # quiet for 3 s of a 4 s heartbeat
        pump.tick(103.5)
        assert pump._frames == [HEARTBEAT]  # one at a time, never a pile
        pump._frames.clear()
        pump._writing_since = 200.0  # a write began at 200 and has not returned
        pump.tick(229.0)
        assert not pump.stalled
        pump.tick(230.0)
        assert pump.stalled  # blocked for send_timeout: dropped
        assert pump._frames[-1].startswith(b"retry: ")

    asyncio.run(asyncio.wait_for(scenario(), 5))


def test_closing_an_upstream_source_during_its_backoff_stops_it() -> None:
    from gateway.auth import ANONYMOUS
    from gateway.matching import EventFilter
    from gateway.source import UpstreamSource
    from gateway.subscription import Subscription
    from gateway.upstream import Upstream
    from tests.conftest import free_port

    async def scenario() -> None:
        # Nothing listens there: every call fails and the source backs off 30 s.
        settings = Settings(upstream=f"127.0.0.1:{free_port()}", backoff_initial=30, backoff_max=30)
        metrics = Metrics()
        upstream = Upstream(settings)
        await upstream.start()
        sub = Subscription(EventFilter(), None, "latest", None, False, ANONYMOUS)
        source = UpstreamSource(upstream, sub, settings, metrics)
        pump = make_pump(source)
        run = asyncio.create_task(source.run(pump))
        failures = metrics.upstream_failures.labels("UNAVAILABLE")
        while failures._value.get() < 1:  # noqa: ASYNC110 - a poll, bounded by the 15 s deadline
            await asyncio.sleep(0.01)
        source.close()  # in the middle of its 30 s backoff
        await asyncio.wait_for(run, 2)  # it ends now, without another call
        assert failures._value.get() == 1
        await upstream.close()

    asyncio.run(asyncio.wait_for(scenario(), 15))


def test_a_burst_that_goes_on_gathers_longer_each_write_and_a_quiet_spell_starts_afresh() -> None:
    async def scenario() -> None:
        pump = make_pump(_Filler(), flush_interval=0.002)
        pump._frames.append(b"data: x\n\n")  # something queued
        assert pump._gathering() == 0.0  # nothing written for long: a lone event goes now
        pump._last_write = time.monotonic()  # a write a moment ago: a burst
        windows = [pump._gathering() for _ in range(7)]
        assert windows == pytest.approx([0.002, 0.004, 0.008, 0.016, 0.032, 0.032, 0.032])
        pump._last_write = time.monotonic() - 1  # quiet for a second: the burst is over
        assert pump._gathering() == 0.0
        pump._last_write = time.monotonic()
        assert pump._gathering() == pytest.approx(0.002)  # the next burst starts afresh
        pump.close()
        assert pump._gathering() == 0.0  # an ending stream writes its last frames at once

    asyncio.run(asyncio.wait_for(scenario(), 5))
