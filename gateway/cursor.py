"""Kumiho cursors: opaque strings that, when shaped ``<ms>-<seq>``, are ordered.

Kumiho's cursors are Redis stream ids in practice, but nothing promises the
shape, so ordering is used only when both cursors parse.
"""

from __future__ import annotations

CursorKey = tuple[int, int]

_MAX_PART = 20  # digits: more than any 64-bit ms or sequence number


def cursor_key(cursor: str) -> CursorKey | None:
    """The ``(ms, seq)`` order key of a cursor, or None when it has another shape."""
    ms, dash, seq = cursor.partition("-")
    if (
        not dash
        or not ms.isdigit()
        or not seq.isdigit()
        or not ms.isascii()
        or not seq.isascii()
        or len(ms) > _MAX_PART
        or len(seq) > _MAX_PART
    ):
        return None
    return int(ms), int(seq)


def format_cursor(key: CursorKey) -> str:
    """The cursor string for an ``(ms, seq)`` key."""
    return f"{key[0]}-{key[1]}"


class ResumeFilter:
    """Drops events at or before the last one delivered.

    Exact match always; by order when both cursors have the ``<ms>-<seq>`` shape.
    """

    def __init__(self, cursor: str | None) -> None:
        self._cursor: str | None = cursor or None
        self._key: CursorKey | None = cursor_key(cursor) if cursor else None

    def forget(self) -> None:
        """After a reset the old resume point means nothing."""
        self._cursor = self._key = None

    @property
    def position(self) -> str | None:
        """The last cursor accepted (or the one it started from): where a resume goes on."""
        return self._cursor

    def repeat(self, cursor: str) -> bool:
        """Whether ``accept`` would refuse ``cursor``; nothing changes."""
        return bool(cursor) and (cursor == self._cursor or self._before(cursor_key(cursor)))

    def accept(self, cursor: str) -> bool:
        """False for a repeat; otherwise True, and ``cursor`` becomes the new resume point."""
        if not cursor:
            return True  # events without cursors cannot be told apart: no new resume point
        if cursor == self._cursor:
            return False
        key = cursor_key(cursor)  # once: this runs for every event of every upstream stream
        if self._before(key):
            return False
        self._cursor, self._key = cursor, key
        return True

    def _before(self, key: CursorKey | None) -> bool:
        """Whether ``key`` is at or before the resume point (when both are ordered)."""
        return key is not None and self._key is not None and key <= self._key
