"""Event-loop lag: how late the loop runs a timer, always measured.

Every stream of a process shares one event loop, so one step that holds it
(a CPU-bound match, a synchronous call) delays every client at once. A
timer due every ``PERIOD`` seconds notes how late it ran: the lateness goes
to a histogram on ``/metrics``, and lateness over ``WARN_AFTER`` (a step
that held the loop at least that long, or one round of ready work that
took that long, as one event written to thousands of streams) is logged as
a warning, so an operator sees the next freeze before the clients report it.

Four times a second, not more: the timer wakes a process that has nothing
else to do, and on a small busy machine a process that woke 20 times a
second was measured losing more of each round of writes to the readers of
those writes (BENCHMARKS.md, "Fifth turn"). The trade: the timer is a
sample. A freeze longer than ``PERIOD + WARN_AFTER`` (350 ms) is always
warned of; a shorter one over ``WARN_AFTER`` is warned of with a chance that
grows with its length, so one that recurs is soon seen.
"""

from __future__ import annotations

import asyncio
import logging

from prometheus_client import Histogram

log = logging.getLogger(__name__)

PERIOD = 0.25
WARN_AFTER = 0.1


class LoopLag:
    """Measures the running loop's lag into ``histogram`` from ``start()`` to ``stop()``."""

    def __init__(
        self, histogram: Histogram, period: float = PERIOD, warn_after: float = WARN_AFTER
    ) -> None:
        self.histogram = histogram
        self.period = period
        self.warn_after = warn_after
        self._timer: asyncio.TimerHandle | None = None

    def start(self) -> None:
        self._arm(asyncio.get_running_loop())

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _tick(self, due: float) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        late = max(0.0, now - due)
        self.histogram.observe(late)
        if late > self.warn_after:
            log.warning(
                "event loop blocked: a timer ran %d ms late, so one step (or one round of "
                "ready work, such as one event's writes to thousands of streams) held every "
                "stream that long (see kumiho_gateway_event_loop_lag_seconds)",
                late * 1000,
            )
        self._arm(loop)

    def _arm(self, loop: asyncio.AbstractEventLoop) -> None:
        due = loop.time() + self.period
        self._timer = loop.call_at(due, self._tick, due)
