"""Weighted lists, as ``Accept`` and ``Accept-Encoding`` carry them (RFC 9110, 12.4.2).

One reading of ``q`` for every header that has one: ``Accept`` chooses a
stream's format (``subscription.py``), ``Accept-Encoding`` its compression
(``compression.py``).
"""

from __future__ import annotations

import re
from collections.abc import Iterator

_DECIMAL = re.compile(r"[0-9]+(?:\.[0-9]+)?")


def weights(header: str) -> Iterator[tuple[str, float]]:
    """Each entry of a comma-separated list, lower-cased and trimmed, with its ``q``.

    An entry without a weight weighs 1. A weight that is no plain decimal
    counts as 0 (not acceptable): a client that means "refuse" is never read
    as "accept"; one above 1 counts as 1. Empty entries (``a,,b``) are skipped.
    """
    for part in header.lower().split(","):
        name, *params = (p.strip() for p in part.split(";"))
        if not name:
            continue
        q = 1.0
        for param in params:
            key, _, number = param.partition("=")
            if key.strip() == "q":
                number = number.strip()
                q = min(float(number), 1.0) if _DECIMAL.fullmatch(number) else 0.0
        yield name, q
