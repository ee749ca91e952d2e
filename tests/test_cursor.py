"""Cursor ordering and the resume filter, without a server."""

from __future__ import annotations

import pytest

from gateway.cursor import ResumeFilter, cursor_key, format_cursor
from gateway.pump import jittered_retry_ms


@pytest.mark.parametrize(
    ("cursor", "key"),
    [
        ("1701594000000-0", (1701594000000, 0)),
        ("0-12", (0, 12)),
        ("abc", None),
        ("1-", None),
        ("-1", None),
        ("1-2-3", None),
        ("\uff11-\uff12", None),  # full-width digits are not a Redis id
        ("9" * 21 + "-0", None),
    ],
)
def test_cursor_key(cursor: str, key: tuple[int, int] | None) -> None:
    assert cursor_key(cursor) == key
    if key:
        assert format_cursor(key) == cursor


def test_resume_filter_orders_redis_ids() -> None:
    f = ResumeFilter("100-5")
    assert not f.accept("100-5") and not f.accept("100-4") and not f.accept("99-9")
    assert f.accept("")  # cursorless events are never dropped
    assert f.accept("100-6")
    assert not f.accept("100-6")  # now the resume point
    assert f.accept("101-0")
    assert not f.accept("100-7")


def test_resume_filter_with_opaque_cursors_matches_exactly() -> None:
    f = ResumeFilter("opaque-cursor")
    assert not f.accept("opaque-cursor")
    assert f.accept("another")
    assert f.accept("1-0")  # the opaque resume point gives no order to compare with


def test_resume_filter_forgets_on_reset() -> None:
    f = ResumeFilter("9999999999999-0")
    f.forget()
    assert f.accept("1-0")
    assert ResumeFilter(None).accept("1-0")


def test_retry_jitter_stays_within_half_the_base() -> None:
    values = {jittered_retry_ms(2000) for _ in range(200)}
    assert min(values) >= 2000 and max(values) <= 3000
    assert len(values) > 20  # actually jittered
