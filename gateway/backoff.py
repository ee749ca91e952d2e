"""The one backoff: capped doubling with equal jitter, for every retry loop.

The n-th failure in a row (n = 1, 2, ...) waits a delay drawn uniformly
between half and all of its ceiling::

    ceiling(n) = min(cap, initial * 2 ** (n - 1))
    delay(n)   = ceiling(n) * (0.5 + random() / 2)

and a success starts over at n = 1. Doubling spaces the attempts out while
the other side stays down; the jitter keeps a fleet that failed together
from coming back together; the half that is never jittered away keeps a
retry from hammering at once. The defaults are 0.25 s and 30 s.

Users, each with its own numbers for the same rule:

- ``UpstreamSource`` resubscribing: ``--backoff-initial`` (0.25 s) to
  ``--backoff-max`` (10 s);
- the supervisor restarting a worker: 0.5 s to 30 s, starting over once a
  worker stayed up a minute;
- ``tail`` reconnecting after failed attempts: from the server's ``retry:``
  (at least 0.1 s) to 30 s (or that ``retry:``, if longer);
- the browser helper (``static/kumiho-events.js``) keeps a JavaScript twin
  with the defaults: 250 ms, doubling, 30 s cap, the same jitter.

Pure: no I/O and no imports from the server, so the terminal client uses it
too.
"""

from __future__ import annotations

import random
from collections.abc import Callable

INITIAL = 0.25  # seconds: the first failure's ceiling
FACTOR = 2.0  # each failure in a row doubles the ceiling...
CAP = 30.0  # ...up to this many seconds
_MAX_DOUBLINGS = 64  # past any cap; keeps the power small


class Backoff:
    """Delays for failures in a row: doubling from ``initial`` up to ``cap``, equal jitter."""

    __slots__ = ("_jitter", "cap", "failures", "initial")

    def __init__(
        self,
        initial: float = INITIAL,
        cap: float = CAP,
        *,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        self.initial = initial
        self.cap = max(cap, initial)
        self._jitter = jitter  # a number in [0, 1): random.random, or fixed in tests
        self.failures = 0  # in a row, so far

    def ceiling(self, n: int) -> float:
        """The most the ``n``-th failure in a row waits (``n`` >= 1)."""
        return min(self.cap, self.initial * FACTOR ** min(max(n, 1) - 1, _MAX_DOUBLINGS))

    def nth(self, n: int) -> float:
        """The delay after the ``n``-th failure in a row: half to all of its ceiling."""
        return self.ceiling(n) * (0.5 + self._jitter() / 2)

    def delay(self) -> float:
        """One more failure: the seconds to wait before the next attempt."""
        self.failures += 1
        return self.nth(self.failures)

    def reset(self) -> None:
        """A success: the next failure waits as little as the first."""
        self.failures = 0
