"""Run the reference upstream: a grpc.aio server with both services, plus activity."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from gateway._proto import devserver_pb2_grpc, kumiho_pb2_grpc
from gateway.devserver.activity import StudioActivity
from gateway.devserver.servicer import (
    DEFAULT_TENANT,
    TIERS,
    Access,
    DevControl,
    EventLog,
    KumihoEvents,
    Tier,
)
from gateway.devserver.store import EventStore

log = logging.getLogger("gateway.devserver")

# Accept the keepalive pings Kumiho's SDKs (and the gateway) send: every 30 s,
# even on an idle channel. gRPC's defaults would answer them with GOAWAY.
SERVER_OPTIONS = [
    # gRPC binds with SO_REUSEPORT by default: a second devserver on a busy port
    # would start without a word and take half the traffic. Refuse instead.
    ("grpc.so_reuseport", 0),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    ("grpc.http2.max_ping_strikes", 0),
]


@dataclass
class DevServerConfig:
    """Everything the reference upstream can be told at start."""

    host: str = "127.0.0.1"
    port: int = 8080
    db: Path = Path("kumiho-devserver.sqlite3")
    tier: str = "studio"
    buffer_size: int | None = None  # overrides the tier's max_buffer_size
    retention_hours: float | None = None  # overrides the tier's max_retention_hours
    tokens: dict[str, str] = field(default_factory=dict)  # token -> tenant
    denied_tokens: set[str] = field(default_factory=set)
    activity: float = 0.0  # events per second (0 = none)
    break_after: int = 0
    refuse: bool = False
    late_headers: bool = False

    def activity_tenants(self) -> list[str]:
        """Where the activity goes: every tenant a token opens, or the open server's default.

        A tenant that no token reads would make ``--activity`` with ``--token`` invisible.
        """
        return sorted(set(self.tokens.values())) or [DEFAULT_TENANT]

    def effective_tier(self) -> Tier:
        base = TIERS[self.tier]
        return Tier(
            base.supports_replay,
            base.supports_cursor,
            base.supports_consumer_groups,
            # Capabilities report whole hours; the store keeps the exact window.
            math.ceil(self.retention_hours)
            if self.retention_hours is not None
            else base.max_retention_hours,
            self.buffer_size if self.buffer_size is not None else base.max_buffer_size,
        )


class AddressInUse(OSError):
    """The devserver's address is taken (or cannot be bound)."""

    def __init__(self, address: str) -> None:
        super().__init__(f"cannot listen on {address}: address already in use (or not available)")
        self.address = address


@dataclass
class RunningDevServer:
    """A started devserver: its port and its services."""

    port: int
    server: grpc.aio.Server
    events: KumihoEvents


@contextlib.asynccontextmanager
async def running_devserver(config: DevServerConfig) -> AsyncIterator[RunningDevServer]:
    """Start the devserver on the running loop; stop it on exit."""
    tier = config.effective_tier()
    store = EventStore(
        config.db,
        max_events=tier.max_buffer_size,
        retention_hours=config.retention_hours if config.retention_hours is not None else -1,
    )
    access = Access(tokens=dict(config.tokens), denied=set(config.denied_tokens))
    events = KumihoEvents(EventLog(store), config.tier, tier, access)
    events.faults.break_after = config.break_after
    events.faults.refuse = config.refuse
    events.faults.late_headers = config.late_headers
    server = grpc.aio.server(options=SERVER_OPTIONS)
    kumiho_pb2_grpc.add_KumihoServiceServicer_to_server(events, server)
    devserver_pb2_grpc.add_DevServerServicer_to_server(DevControl(events), server)
    address = f"{config.host}:{config.port}"
    try:
        port = server.add_insecure_port(address)
    except RuntimeError:  # grpc says only "Failed to bind"
        store.close()
        raise AddressInUse(address) from None
    await server.start()
    activity = (
        asyncio.create_task(_generate(events.log, config.activity, config.activity_tenants()))
        if config.activity > 0
        else None
    )
    try:
        yield RunningDevServer(port, server, events)
    finally:
        if activity:
            activity.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await activity
        await server.stop(grace=0.5)
        store.close()


async def _generate(log_: EventLog, rate: float, tenants: list[str]) -> None:
    """``rate`` events a second, each published to every one of ``tenants``."""
    studio = StudioActivity()
    interval = 1.0 / rate
    loop = asyncio.get_running_loop()
    next_at = loop.time()
    while True:
        # Catch up in one batch after a stall rather than drifting behind.
        due = max(1, int((loop.time() - next_at) / interval) + 1)
        batch = [studio.next_event() for _ in range(min(due, 1000))]
        for tenant in tenants:
            log_.publish(tenant, batch)
        next_at += due * interval
        await asyncio.sleep(max(0.0, next_at - loop.time()))
