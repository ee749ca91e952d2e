"""Filtering what a source delivers: skipped events still move the client's position.

``Skips`` counts the unwanted events since the client's last item and says
when an ``Advance`` is due: every ``ADVANCE_EVERY`` of them, so the id a
client resumes by never lags further behind.
"""

from __future__ import annotations

from gateway.items import Advance

# How many unwanted events in a row before the client's resume point is moved.
ADVANCE_EVERY = 100


class Skips:
    """Counts the unwanted events since the client's last frame; says when to send an Advance."""

    __slots__ = ("_count", "_every")

    def __init__(self, every: int = ADVANCE_EVERY) -> None:
        self._every = max(1, every)
        self._count = 0

    def passed(self, cursor: str) -> Advance | None:
        """One more unwanted event: an Advance to its cursor every ``every`` of them."""
        self._count += 1
        if self._count < self._every or not cursor:
            return None
        self._count = 0
        return Advance(cursor)

    def reset(self) -> None:
        """A wanted event went out: its id is the client's resume point."""
        self._count = 0

    def flush(self, cursor: str) -> Advance | None:
        """An Advance to ``cursor`` now if unwanted events passed since the client's last frame."""
        if not self._count or not cursor:
            return None
        self._count = 0
        return Advance(cursor)
