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
