"""Prometheus metrics for one gateway process (``GET /metrics``).

Each app gets its own registry, so several apps in one process (tests) never
collide; the process collector adds ``process_open_fds`` and
``process_resident_memory_bytes``.
"""

from __future__ import annotations

import asyncio

from prometheus_client import CONTENT_TYPE_LATEST as CONTENT_TYPE
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)

__all__ = ["CONTENT_TYPE", "Metrics"]


class Metrics:
    """Every number the gateway exports."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        r = self.registry
        self.streams_open = Gauge("kumiho_gateway_streams_open", "Open /events streams", registry=r)
        self.events_delivered = Counter(
            "kumiho_gateway_events_delivered", "Event frames written to clients", registry=r
        )
        self.bytes_written = Counter(
            "kumiho_gateway_bytes_written", "Bytes of SSE written to clients", registry=r
        )
        self.upstream_streams_open = Gauge(
            "kumiho_gateway_upstream_streams_open", "Open upstream EventStream calls", registry=r
        )
        self.upstream_connects = Counter(
            "kumiho_gateway_upstream_connects",
            "Upstream EventStream calls that opened",
            registry=r,
        )
        self.upstream_failures = Counter(
            "kumiho_gateway_upstream_failures",
            "Upstream EventStream calls that failed, by gRPC status",
            ["code"],
            registry=r,
        )
        self.upstream_stream_limit = Counter(
            "kumiho_gateway_upstream_stream_limit_refusals",
            "Requests told to retry later because an upstream stream cap was reached, by cap",
            ["scope"],
            registry=r,
        )
        self.resets = Counter(
            "kumiho_gateway_resets", "gateway.reset events sent, by reason", ["reason"], registry=r
        )
        self.slow_consumer_disconnects = Counter(
            "kumiho_gateway_slow_consumer_disconnects",
            "Streams closed because the client read slower than events arrived",
            registry=r,
        )
        self.stream_closes = Counter(
            "kumiho_gateway_stream_closes",
            "Streams ended, by cause (client, upstream_error, slow_consumer, lifetime, drain)",
            ["cause"],
            registry=r,
        )
        self.stream_duration = Histogram(
            "kumiho_gateway_stream_duration_seconds",
            "How long /events streams stayed open",
            buckets=(1, 5, 15, 60, 300, 900, 3600, 4 * 3600, 24 * 3600),
            registry=r,
        )
        self.upstream_shared_streams = Gauge(
            "kumiho_gateway_hub_upstream_streams",
            "Shared upstream streams open in the hub",
            registry=r,
        )
        self.hub_subscribers = Gauge(
            "kumiho_gateway_hub_subscribers",
            "Clients attached to shared streams (divide by hub_upstream_streams for the fan-out)",
            registry=r,
        )
        self.ring_hits = Counter(
            "kumiho_gateway_hub_ring_hits",
            "Resumes served from the hub's ring, with no upstream call",
            registry=r,
        )
        self.ring_misses = Counter(
            "kumiho_gateway_hub_ring_misses",
            "Resumes the ring could not serve (a catch-up stream was opened)",
            registry=r,
        )
        self.catch_up_streams = Gauge(
            "kumiho_gateway_hub_catch_up_streams",
            "Dedicated catch-up streams open",
            registry=r,
        )
        self.frames_encoded = Counter(
            "kumiho_gateway_hub_frames_encoded", "Events encoded by the hub (once each)", registry=r
        )
        self.frames_delivered = Counter(
            "kumiho_gateway_hub_frames_delivered",
            "Shared frames handed to subscribers",
            registry=r,
        )
        tasks = Gauge(
            "kumiho_gateway_asyncio_tasks", "asyncio tasks alive in the event loop", registry=r
        )
        tasks.set_function(_task_count)

    def render(self) -> bytes:
        return generate_latest(self.registry)


def _task_count() -> float:
    try:
        return float(len(asyncio.all_tasks()))
    except RuntimeError:  # scraped outside the loop
        return 0.0
