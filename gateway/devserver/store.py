"""The reference upstream's event log: SQLite, ordered ``<ms>-<seq>`` cursors, retention.

Cursors are minted from one clock for the whole log, so they order events
across tenants and survive a restart. Retention is per tenant, by count
(the tier's buffer size) and by age; the newest cursor a tenant lost to
retention is remembered, so a resume from before it is told apart
(expired) from a resume that is merely old. Consumer groups keep their
position here too (see ``groups.py``), so a group survives a restart as its
events do.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from gateway.cursor import CursorKey, cursor_key, format_cursor

BEFORE_ALL: CursorKey = (-1, -1)

_MAX_KEY_PART = 2**63 - 1  # SQLite integers are signed 64-bit

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    ms INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    tenant TEXT NOT NULL,
    routing_key TEXT NOT NULL,
    kref TEXT NOT NULL,
    timestamp TEXT NOT NULL,
    author TEXT NOT NULL,
    username TEXT NOT NULL,
    details TEXT NOT NULL,
    cursorless INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (ms, seq)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS events_by_tenant ON events (tenant, ms, seq);
CREATE TABLE IF NOT EXISTS pruned (
    tenant TEXT PRIMARY KEY,
    ms INTEGER NOT NULL,
    seq INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS groups (
    tenant TEXT NOT NULL,
    name TEXT NOT NULL,
    ms INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    PRIMARY KEY (tenant, name)
) WITHOUT ROWID;
"""


@dataclass(frozen=True, slots=True)
class StoredEvent:
    """One event as the log keeps it."""

    key: CursorKey
    tenant: str
    routing_key: str
    kref: str
    timestamp: str
    author: str
    username: str
    details: Mapping[str, str]
    cursorless: bool = False  # served with an empty cursor

    @property
    def cursor(self) -> str:
        return "" if self.cursorless else format_cursor(self.key)


@dataclass(frozen=True, slots=True)
class NewEvent:
    """An event to append; the log assigns its cursor and timestamp."""

    routing_key: str
    kref: str
    details: Mapping[str, str]
    author: str = ""
    username: str = ""
    cursorless: bool = False


class CursorError(Exception):
    """A resume point the log cannot honour; ``kind`` names the gRPC status to answer with."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind  # "invalid" | "expired" | "unknown"


def iso_timestamp(ms: int) -> str:
    """ISO 8601 in UTC with milliseconds, as Kumiho writes timestamps."""
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def parse_timestamp_ms(value: str) -> int:
    """Milliseconds since the epoch of an ISO 8601 timestamp (naive means UTC)."""
    parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00").replace("z", "+00:00"))
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return int(parsed.timestamp() * 1000)


class EventStore:
    """An append-only event log in SQLite with per-tenant retention."""

    def __init__(
        self,
        path: str | Path,
        *,
        max_events: int = -1,
        retention_hours: float = -1,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._db = sqlite3.connect(str(path), isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(events)")}
        if "cursorless" not in columns:  # a log written by an older version
            self._db.execute("ALTER TABLE events ADD COLUMN cursorless INTEGER NOT NULL DEFAULT 0")
        self._max_events = max_events
        self._retention_ms = int(retention_hours * 3_600_000) if retention_hours > 0 else 0
        self._clock = clock
        row = self._db.execute("SELECT ms, seq FROM events ORDER BY ms DESC, seq DESC LIMIT 1")
        last = row.fetchone()
        self._last: CursorKey = (last[0], last[1]) if last else BEFORE_ALL
        self._counts: dict[str, int] = dict(
            self._db.execute("SELECT tenant, COUNT(*) FROM events GROUP BY tenant").fetchall()
        )

    def close(self) -> None:
        self._db.close()

    @property
    def last_key(self) -> CursorKey:
        """The key of the newest event in the log (any tenant)."""
        return self._last

    def count(self, tenant: str | None = None) -> int:
        if tenant is None:
            return sum(self._counts.values())
        return self._counts.get(tenant, 0)

    def append(self, tenant: str, events: Iterable[NewEvent]) -> list[StoredEvent]:
        """Append events for a tenant in one transaction; returns them with cursors."""
        stored: list[StoredEvent] = []
        now_ms = int(self._clock() * 1000)
        for new in events:
            ms = max(now_ms, self._last[0])
            key = (ms, self._last[1] + 1 if ms == self._last[0] else 0)
            self._last = key
            stored.append(
                StoredEvent(
                    key,
                    tenant,
                    new.routing_key,
                    new.kref,
                    iso_timestamp(ms),
                    new.author,
                    new.username,
                    dict(new.details),
                    new.cursorless,
                )
            )
        with self._db:
            self._db.execute("BEGIN")
            self._db.executemany(
                "INSERT INTO events VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        e.key[0],
                        e.key[1],
                        e.tenant,
                        e.routing_key,
                        e.kref,
                        e.timestamp,
                        e.author,
                        e.username,
                        json.dumps(e.details, ensure_ascii=False),
                        int(e.cursorless),
                    )
                    for e in stored
                ],
            )
            self._counts[tenant] = self._counts.get(tenant, 0) + len(stored)
            self._prune(tenant, now_ms)
        return stored

    def _prune(self, tenant: str, now_ms: int) -> None:
        cutoffs: list[CursorKey] = []
        excess = self._counts[tenant] - self._max_events if self._max_events >= 0 else 0
        if excess > 0:
            row = self._db.execute(
                "SELECT ms, seq FROM events WHERE tenant = ? ORDER BY ms, seq LIMIT 1 OFFSET ?",
                (tenant, excess - 1),
            ).fetchone()
            cutoffs.append((row[0], row[1]))
        if self._retention_ms:
            row = self._db.execute(
                "SELECT ms, seq FROM events WHERE tenant = ? AND ms < ? "
                "ORDER BY ms DESC, seq DESC LIMIT 1",
                (tenant, now_ms - self._retention_ms),
            ).fetchone()
            if row:
                cutoffs.append((row[0], row[1]))
        if not cutoffs:
            return
        through = max(cutoffs)
        deleted = self._db.execute(
            "DELETE FROM events WHERE tenant = ? AND (ms, seq) <= (?, ?)", (tenant, *through)
        ).rowcount
        self._counts[tenant] -= deleted
        self._db.execute(
            "INSERT INTO pruned VALUES (?, ?, ?) "
            "ON CONFLICT (tenant) DO UPDATE SET ms = excluded.ms, seq = excluded.seq",
            (tenant, *through),
        )

    def pruned_through(self, tenant: str) -> CursorKey:
        """The newest key this tenant lost to retention, or BEFORE_ALL."""
        row = self._db.execute("SELECT ms, seq FROM pruned WHERE tenant = ?", (tenant,)).fetchone()
        return (row[0], row[1]) if row else BEFORE_ALL

    def resume_key(self, tenant: str, cursor: str) -> CursorKey:
        """The key to read after when resuming after ``cursor``; CursorError if impossible."""
        key = cursor_key(cursor)
        if key is None:
            raise CursorError("invalid", f"malformed cursor {cursor!r}: expected <ms>-<seq>")
        if max(key) > _MAX_KEY_PART:
            raise CursorError("invalid", f"cursor {cursor} is out of range (64-bit parts)")
        if key < self.pruned_through(tenant):
            raise CursorError("expired", f"cursor {cursor} is older than the retention window")
        if key > self._last:
            raise CursorError("unknown", f"cursor {cursor} was never issued by this server")
        return key

    def key_at_timestamp(self, timestamp: str) -> CursorKey:
        """The key to read after so that events at or after ``timestamp`` are included."""
        try:
            ms = parse_timestamp_ms(timestamp)
        except ValueError as exc:
            raise CursorError("invalid", f"malformed timestamp {timestamp!r}") from exc
        return (ms - 1, 2**62)

    def group_position(self, tenant: str, group: str) -> CursorKey | None:
        """The key a consumer group has read through, or None if the group was never created."""
        row = self._db.execute(
            "SELECT ms, seq FROM groups WHERE tenant = ? AND name = ?", (tenant, group)
        ).fetchone()
        return (row[0], row[1]) if row else None

    def save_group_position(self, tenant: str, group: str, key: CursorKey) -> None:
        """Record (or create) a consumer group's position."""
        self._db.execute(
            "INSERT INTO groups VALUES (?, ?, ?, ?) "
            "ON CONFLICT (tenant, name) DO UPDATE SET ms = excluded.ms, seq = excluded.seq",
            (tenant, group, *key),
        )

    def read_after(self, tenant: str, key: CursorKey, limit: int) -> list[StoredEvent]:
        """Up to ``limit`` of the tenant's events after ``key``, oldest first."""
        rows = self._db.execute(
            "SELECT ms, seq, routing_key, kref, timestamp, author, username, details, cursorless "
            "FROM events WHERE tenant = ? AND (ms, seq) > (?, ?) ORDER BY ms, seq LIMIT ?",
            (tenant, key[0], key[1], limit),
        ).fetchall()
        return [
            StoredEvent(
                (r[0], r[1]), tenant, r[2], r[3], r[4], r[5], r[6], json.loads(r[7]), bool(r[8])
            )
            for r in rows
        ]
