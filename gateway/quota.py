"""Caps on the upstream streams one gateway process holds, overall and per credential.

Every ``UpstreamSource`` holds one place from ``open()`` to ``close()``
(through its backoffs too: it will call again); a hub's shared stream is one
source however many clients read it. A request that would pass a cap is told
to come back later (``QuotaExceeded``), before anything is asked upstream.
"""

from __future__ import annotations

import collections


class QuotaExceeded(Exception):
    """No place left; ``scope`` says which cap: ``total`` or ``credential``."""

    def __init__(self, scope: str, limit: int) -> None:
        what = "in all" if scope == "total" else "for this credential"
        super().__init__(f"the gateway holds its limit of {limit} upstream streams {what}")
        self.scope = scope


class StreamQuota:
    """Counts held upstream streams; 0 as a limit means no limit."""

    def __init__(self, total: int, per_credential: int) -> None:
        self._total = total
        self._per_credential = per_credential
        self._held = 0
        self._by_credential: collections.Counter[str] = collections.Counter()

    def acquire(self, identity: str) -> None:
        """Take a place for ``identity``, or raise QuotaExceeded."""
        if self._total and self._held >= self._total:
            raise QuotaExceeded("total", self._total)
        if self._per_credential and self._by_credential[identity] >= self._per_credential:
            raise QuotaExceeded("credential", self._per_credential)
        self._held += 1
        self._by_credential[identity] += 1

    def release(self, identity: str) -> None:
        """Give back a place ``acquire`` took."""
        self._held -= 1
        self._by_credential[identity] -= 1
        if not self._by_credential[identity]:
            del self._by_credential[identity]
