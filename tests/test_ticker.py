"""The shared timer: visits every open stream, and keeps no timer when none is open."""

from __future__ import annotations

import asyncio

from gateway.ticker import Ticker


class _Stream:
    def __init__(self) -> None:
        self.ticks: list[float] = []
        self.ticked = asyncio.Event()

    def tick(self, now: float) -> None:
        self.ticks.append(now)
        if len(self.ticks) == 3:
            self.ticked.set()


def test_ticks_every_stream_then_stops_when_none_is_left() -> None:
    async def scenario() -> None:
        ticker = Ticker(period=0.05)
        a, b = _Stream(), _Stream()
        ticker.add(a)
        ticker.add(b)
        await asyncio.wait_for(asyncio.gather(a.ticked.wait(), b.ticked.wait()), 5)
        gaps = [later - earlier for earlier, later in zip(a.ticks, a.ticks[1:], strict=False)]
        assert all(gap >= ticker.period * 0.9 for gap in gaps)
        ticker.discard(a)
        ticker.discard(b)
        assert ticker._timer is None  # no timer left behind while idle
        count = len(a.ticks)
        await asyncio.sleep(3 * ticker.period)  # nothing may tick now (not a synchronisation)
        assert len(a.ticks) == count

    asyncio.run(scenario())
