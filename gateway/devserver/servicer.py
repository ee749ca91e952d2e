"""The reference upstream's gRPC services: KumihoService (events) and DevServer (control).

It answers like a Kumiho server as far as the public record goes: bearer
tokens mapped to tenants, tenants isolated, capabilities per tier, cursors
empty on a tier without them, OUT_OF_RANGE for a cursor that fell out of
retention. On a tier with consumer groups a request naming one joins it
(``groups.py`` has the rules); on any other tier such a request is refused
with FAILED_PRECONDITION naming the tier. What the real server answers there
is not public: this is our choice, made loud so that a client cannot believe
it is sharing events with a group while it receives them all.
It can also misbehave on purpose (see ``Faults``).
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import grpc

from gateway._proto import devserver_pb2, devserver_pb2_grpc, kumiho_pb2, kumiho_pb2_grpc
from gateway.cursor import CursorKey
from gateway.devserver.groups import ConsumerGroups, Member
from gateway.devserver.store import (
    BEFORE_ALL,
    CursorError,
    EventStore,
    NewEvent,
    StoredEvent,
)
from gateway.matching import kref_matcher, routing_key_matcher

Context = grpc.aio.ServicerContext[Any, Any]
DEFAULT_TENANT = "default"
_READ_BATCH = 512
_RECENT = 32

_CURSOR_STATUS = {
    "invalid": grpc.StatusCode.INVALID_ARGUMENT,
    "expired": grpc.StatusCode.OUT_OF_RANGE,
    "unknown": grpc.StatusCode.NOT_FOUND,
}


@dataclass(frozen=True)
class Tier:
    """What a Kumiho subscription tier offers (KUMIHO.md: sources disagree; these are ours)."""

    supports_replay: bool
    supports_cursor: bool
    supports_consumer_groups: bool
    max_retention_hours: int
    max_buffer_size: int


TIERS: Mapping[str, Tier] = {
    "free": Tier(False, False, False, 0, 100),
    "creator": Tier(True, True, False, 1, 10_000),
    "studio": Tier(True, True, False, 24, 100_000),
    "studio_basic": Tier(True, True, False, 24, 100_000),
    "studio_pro": Tier(True, True, False, 24 * 7, 1_000_000),
    "enterprise": Tier(True, True, True, 24 * 30, -1),
}


@dataclass
class Access:
    """Bearer tokens and what they open. No tokens at all means an open server."""

    tokens: dict[str, str] = field(default_factory=dict)  # token -> tenant
    denied: set[str] = field(default_factory=set)  # valid tokens without event access
    revoked: set[str] = field(default_factory=set)

    def tenant_for(self, metadata: Mapping[str, str]) -> tuple[str, str]:
        """(tenant, token) for a call's metadata, or raise a (status, message) AccessError."""
        # x-tenant-id picks the tenant on an open server (as on the hosted cloud's
        # routing); with tokens it must name the token's own tenant.
        asked = metadata.get("x-tenant-id")
        if not self.tokens:
            return asked or DEFAULT_TENANT, ""
        scheme, _, token = metadata.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise AccessError(grpc.StatusCode.UNAUTHENTICATED, "missing bearer token")
        # The messages quote the token, as careless servers do: the gateway must
        # keep it out of its answers and logs all the same.
        if token not in self.tokens or token in self.revoked:
            raise AccessError(grpc.StatusCode.UNAUTHENTICATED, f"invalid or revoked token {token}")
        if token in self.denied:
            raise AccessError(
                grpc.StatusCode.PERMISSION_DENIED, f"token {token} may not read events"
            )
        tenant = self.tokens[token]
        if asked and asked != tenant:
            raise AccessError(
                grpc.StatusCode.PERMISSION_DENIED, f"the token is not valid for tenant {asked}"
            )
        return tenant, token


class AccessError(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class Faults:
    """Misbehaviour on purpose, for resilience tests."""

    break_after: int = 0  # abort each stream with UNAVAILABLE after this many events
    refuse: bool = False  # answer every EventStream call with UNAVAILABLE
    delay_ms: int = 0  # pause before each event
    end_after: int | None = None  # end each stream cleanly (status OK) after this many events
    late_headers: bool = False  # headers only with the first event, as many gRPC servers do
    refuse_code: str = "UNAVAILABLE"  # the status refuse answers with


class EventLog:
    """The store plus a wake-up for live streams; shared by both services."""

    def __init__(self, store: EventStore) -> None:
        self.store = store
        self._changed = asyncio.Event()

    def publish(self, tenant: str, events: list[NewEvent]) -> list[StoredEvent]:
        stored = self.store.append(tenant, events)
        self.wake()
        return stored

    def wake(self) -> None:
        """Wake every stream waiting for news (new events, a revoked token)."""
        self._changed.set()
        self._changed = asyncio.Event()

    @property
    def changed(self) -> asyncio.Event:
        """Take this *before* reading, then wait on it if the read was empty."""
        return self._changed


class KumihoEvents(kumiho_pb2_grpc.KumihoServiceServicer):
    """KumihoService.EventStream and GetEventCapabilities."""

    def __init__(self, log: EventLog, tier: str, tier_info: Tier, access: Access) -> None:
        self.log = log
        self.tier_name = tier
        self.tier = tier_info
        self.access = access
        self.groups = ConsumerGroups(log.store)
        self.faults = Faults()
        self.open_streams = 0
        self.streams_started = 0
        # (request, tenant, x-correlation-id, traceparent) of the latest calls, for tests.
        self.recent: collections.deque[tuple[bytes, str, str, str]] = collections.deque(
            maxlen=_RECENT
        )

    async def GetEventCapabilities(
        self, request: kumiho_pb2.GetEventCapabilitiesRequest, context: Context
    ) -> kumiho_pb2.EventCapabilities:
        await self._authorize(context)
        t = self.tier
        return kumiho_pb2.EventCapabilities(
            supports_replay=t.supports_replay,
            supports_cursor=t.supports_cursor,
            supports_consumer_groups=t.supports_consumer_groups,
            max_retention_hours=t.max_retention_hours,
            max_buffer_size=t.max_buffer_size,
            tier=self.tier_name,
        )

    async def _authorize(self, context: Context) -> tuple[str, str]:
        metadata = {k: v for k, v in context.invocation_metadata() or () if isinstance(v, str)}
        try:
            return self.access.tenant_for(metadata)
        except AccessError as exc:
            await context.abort(exc.code, str(exc))
            raise  # unreachable: abort raises

    def _start_key(self, tenant: str, request: kumiho_pb2.EventStreamRequest) -> CursorKey:
        store = self.log.store
        cursor = ""
        if request.HasField("cursor"):
            cursor = request.cursor
        elif request.WhichOneof("start_position") == "from_cursor":
            cursor = request.from_cursor
        if cursor and self.tier.supports_cursor:
            return store.resume_key(tenant, cursor)
        position = request.WhichOneof("start_position")
        if position == "from_beginning" and request.from_beginning and self.tier.supports_replay:
            return BEFORE_ALL
        if position == "from_timestamp" and self.tier.supports_replay:
            return store.key_at_timestamp(request.from_timestamp)
        return store.last_key

    async def EventStream(
        self, request: kumiho_pb2.EventStreamRequest, context: Context
    ) -> AsyncIterator[kumiho_pb2.Event]:
        tenant, token = await self._authorize(context)
        metadata = dict(context.invocation_metadata() or ())
        correlation_id, traceparent = (
            str(metadata.get(key, "")) for key in ("x-correlation-id", "traceparent")
        )
        self.recent.append((request.SerializeToString(), tenant, correlation_id, traceparent))
        if self.faults.refuse:
            code = grpc.StatusCode[self.faults.refuse_code]
            await context.abort(code, "refusing streams (fault injected)")
        try:
            routing_ok = routing_key_matcher(request.routing_key_filter)
            kref_ok = kref_matcher(request.kref_filter)
        except ValueError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"invalid filter: {exc}")

        def matches(stored: StoredEvent) -> bool:
            return routing_ok(stored.routing_key) and kref_ok(stored.kref)

        group = request.consumer_group if request.HasField("consumer_group") else ""
        if group and not self.tier.supports_consumer_groups:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, self._no_groups_message())
        feed: _Solo | Member
        try:
            if group:
                feed = self.groups.join(
                    tenant, group, matches, lambda: self._start_key(tenant, request)
                )
            else:
                feed = _Solo(self.log.store, tenant, self._start_key(tenant, request), matches)
        except CursorError as exc:
            await context.abort(_CURSOR_STATUS[exc.kind], str(exc))
        with_cursor = self.tier.supports_cursor
        self.open_streams += 1
        self.streams_started += 1
        sent = 0
        try:
            if not self.faults.late_headers:
                # Headers now, so a client knows the stream is open (and, in a
                # group, already a member) before any event.
                await context.send_initial_metadata(())
            while True:
                faults = self.faults
                if faults.end_after is not None and sent >= faults.end_after:
                    return
                changed = self.log.changed
                if token and token in self.access.revoked:
                    await context.abort(grpc.StatusCode.UNAUTHENTICATED, "token revoked")
                stored = await feed.next(changed)
                if stored is None:
                    continue  # woken without an event: check the conditions again
                try:
                    if faults.break_after and sent >= faults.break_after:
                        await context.abort(
                            grpc.StatusCode.UNAVAILABLE, "stream broken (fault injected)"
                        )
                    if faults.delay_ms:
                        await asyncio.sleep(faults.delay_ms / 1000)
                except BaseException:
                    # Not sent: a group hands it to another member.
                    feed.unread(stored)
                    raise
                yield _to_proto(stored, with_cursor)
                sent += 1
        finally:
            self.open_streams -= 1
            if isinstance(feed, Member):
                self.groups.leave(feed)

    def _no_groups_message(self) -> str:
        having = ", ".join(name for name, tier in TIERS.items() if tier.supports_consumer_groups)
        return (
            f"consumer groups are not available on the {self.tier_name} tier "
            f"(supports_consumer_groups is false; tiers with them: {having})"
        )


class _Solo:
    """A stream of its own: the tenant's events after a key that match its filters."""

    def __init__(
        self, store: EventStore, tenant: str, key: CursorKey, matches: Callable[[StoredEvent], bool]
    ) -> None:
        self.store = store
        self.tenant = tenant
        self.key = key  # read through here
        self.matches = matches
        self.ready: collections.deque[StoredEvent] = collections.deque()

    async def next(self, changed: asyncio.Event) -> StoredEvent | None:
        """The next matching event, or None after ``changed`` woke a wait for one."""
        while not self.ready:
            batch = self.store.read_after(self.tenant, self.key, _READ_BATCH)
            if not batch:
                await changed.wait()
                return None
            self.key = batch[-1].key
            self.ready.extend(e for e in batch if self.matches(e))
        return self.ready.popleft()

    def unread(self, stored: StoredEvent) -> None:
        """Put back an event that ``next`` returned and the stream did not send."""
        self.ready.appendleft(stored)


def _to_proto(stored: StoredEvent, with_cursor: bool) -> kumiho_pb2.Event:
    return kumiho_pb2.Event(
        routing_key=stored.routing_key,
        kref=kumiho_pb2.Kref(uri=stored.kref),
        timestamp=stored.timestamp,
        author=stored.author,
        tenant_id=stored.tenant,
        details=stored.details,
        username=stored.username,
        cursor=stored.cursor if with_cursor else "",
    )


class DevControl(devserver_pb2_grpc.DevServerServicer):
    """The control plane: publish, faults, token revocation, statistics."""

    def __init__(self, events: KumihoEvents) -> None:
        self.events = events

    async def Publish(
        self, request: devserver_pb2.PublishRequest, context: Context
    ) -> devserver_pb2.PublishReply:
        count = max(1, request.count)
        details = dict(request.details)
        batch = [
            NewEvent(
                request.routing_key,
                request.kref,
                {**details, "n": str(i)} if count > 1 else details,
                request.author,
                request.username,
                request.without_cursor,
            )
            for i in range(count)
        ]
        stored = self.events.log.publish(request.tenant_id or DEFAULT_TENANT, batch)
        return devserver_pb2.PublishReply(cursors=[e.cursor for e in stored])

    async def SetFaults(
        self, request: devserver_pb2.Faults, context: Context
    ) -> devserver_pb2.Faults:
        if request.refuse_code and request.refuse_code not in grpc.StatusCode.__members__:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "refuse_code: no such status")
        self.events.faults = Faults(
            request.break_after,
            request.refuse,
            request.delay_ms,
            request.end_after if request.HasField("end_after") else None,
            request.late_headers,
            request.refuse_code or "UNAVAILABLE",
        )
        return request

    async def RevokeToken(
        self, request: devserver_pb2.RevokeTokenRequest, context: Context
    ) -> devserver_pb2.RevokeTokenReply:
        self.events.access.revoked.add(request.token)
        self.events.log.wake()
        return devserver_pb2.RevokeTokenReply()

    async def GetStats(
        self, request: devserver_pb2.StatsRequest, context: Context
    ) -> devserver_pb2.Stats:
        ev = self.events
        return devserver_pb2.Stats(
            open_streams=ev.open_streams,
            streams_started=ev.streams_started,
            recent_requests=[r for r, _, _, _ in ev.recent],
            recent_tenants=[t for _, t, _, _ in ev.recent],
            recent_correlation_ids=[c for _, _, c, _ in ev.recent],
            recent_traceparents=[p for _, _, _, p in ev.recent],
            events_stored=ev.log.store.count(),
        )
