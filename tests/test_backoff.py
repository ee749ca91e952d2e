"""The one backoff: its numbers, which the browser helper's JavaScript twin repeats."""

from __future__ import annotations

import random

from gateway import backoff
from gateway.backoff import Backoff

TOP, BOTTOM = (lambda: 0.999999), (lambda: 0.0)


def test_the_numbers_the_javascript_twin_repeats() -> None:
    assert (backoff.INITIAL, backoff.FACTOR, backoff.CAP) == (0.25, 2, 30.0)
    ceilings = [Backoff().ceiling(n) for n in range(1, 10)]
    assert ceilings == [0.25, 0.5, 1, 2, 4, 8, 16, 30, 30]


def test_each_delay_is_half_to_all_of_its_doubling_ceiling() -> None:
    high, low = Backoff(jitter=TOP), Backoff(jitter=BOTTOM)
    assert [round(high.delay(), 4) for _ in range(4)] == [0.25, 0.5, 1, 2]
    assert [low.delay() for _ in range(4)] == [0.125, 0.25, 0.5, 1]
    rng = random.Random(7)
    real = Backoff(1, 8, jitter=rng.random)
    for n in range(1, 30):
        delay = real.delay()
        assert real.ceiling(n) / 2 <= delay < real.ceiling(n)
    assert real.failures == 29


def test_a_success_starts_over_and_the_cap_holds_however_long_it_fails() -> None:
    b = Backoff(0.5, 4, jitter=TOP)
    for _ in range(1000):
        last = b.delay()
    assert round(last, 4) == 4  # capped, and no overflow after a thousand doublings
    b.reset()
    assert b.failures == 0 and round(b.delay(), 4) == 0.5


def test_a_cap_below_the_first_delay_is_the_first_delay() -> None:
    assert Backoff(2, 1, jitter=TOP).ceiling(5) == 2
