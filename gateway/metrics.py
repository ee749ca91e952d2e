"""Prometheus metrics for one gateway process (``GET /metrics``).

In a single process each app gets its own registry, so several apps in one
process (tests) never collide; the process collector adds
``process_open_fds`` and ``process_resident_memory_bytes``.

Under ``serve --workers N`` each worker's numbers go to memory-mapped files
in the pool's ``PROMETHEUS_MULTIPROC_DIR`` (prometheus-client's multiprocess
mode; the parent sets the variable before a worker imports the library), and
whichever worker answers a scrape reads every worker's files, so every scrape
says the same:

- counters and the histogram are summed over every worker that ever ran in
  the pool, the dead ones included, so they never go backwards when a worker
  is replaced (the counters bumped per frame reach the files every second and
  before the worker answers a scrape);
- gauges of things open (streams, upstream calls, hub subscribers) are summed
  over the live workers (``livesum``: the parent removes a dead worker's file);
- what belongs to one process (``process_*``, ``kumiho_gateway_asyncio_tasks``)
  is one series per live worker, labelled ``pid`` (``liveall``); each worker
  writes its own every second and before it answers a scrape.

Only one ``Metrics`` may live in a worker: two would share its files.
"""

from __future__ import annotations

import asyncio
import os

from prometheus_client import CONTENT_TYPE_LATEST as CONTENT_TYPE
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
    values,
)
from prometheus_client.multiprocess import MultiProcessCollector

from gateway import looplag

__all__ = ["CONTENT_TYPE", "MULTIPROC_DIR_ENV", "SAMPLE_PERIOD", "Metrics"]

# Read by prometheus-client when it is imported: set, its values are mmap'd files there.
MULTIPROC_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"
# Seconds between a worker's writes of its own process metrics.
SAMPLE_PERIOD = 1.0


class Metrics:
    """Every number the gateway exports.

    ``directory`` is the pool's ``PROMETHEUS_MULTIPROC_DIR`` in a worker of
    ``serve --workers N`` (None in a single process); ``restarted`` says the
    worker replaced one that died.
    """

    def __init__(self, directory: str | None = None, *, restarted: bool = False) -> None:
        self.directory = directory
        self.registry = CollectorRegistry()
        r = self.registry
        if directory is None:
            ProcessCollector(registry=r)
        else:
            _check_multiprocess(directory)
        self.streams_open = Gauge(
            "kumiho_gateway_streams_open",
            "Open /events streams",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.client_streams = ClientStreams(r, multiprocess=directory is not None)
        self.writes = Writes(
            Counter(
                "kumiho_gateway_events_delivered", "Event frames written to clients", registry=r
            ),
            Counter(
                "kumiho_gateway_bytes_written",
                "Bytes of stream frames written to clients, before any compression",
                registry=r,
            ),
        )
        self.upstream_streams_open = Gauge(
            "kumiho_gateway_upstream_streams_open",
            "Open upstream EventStream calls",
            registry=r,
            multiprocess_mode="livesum",
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
        self.client_limit_refusals = Counter(
            "kumiho_gateway_client_limit_refusals",
            "Streams and polls told to retry later by a per-client limit, by limit "
            "(streams: places held at once; opens: opens per second)",
            ["limit"],
            registry=r,
        )
        self.client_limit_tracked = Gauge(
            "kumiho_gateway_client_limit_tracked",
            "Entries the per-client limits keep: addresses holding places, plus buckets refilling",
            registry=r,
            multiprocess_mode="livesum",
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
            "Streams ended, by cause (client, upstream_error, slow_consumer, lifetime, drain, "
            "send_timeout, source_ended, token_expired)",
            ["cause"],
            registry=r,
        )
        self.stream_duration = Histogram(
            "kumiho_gateway_stream_duration_seconds",
            "How long /events streams stayed open",
            buckets=(1, 5, 15, 60, 300, 900, 3600, 4 * 3600, 24 * 3600),
            registry=r,
        )
        self.loop_lag = Histogram(
            "kumiho_gateway_event_loop_lag_seconds",
            f"How late the event loop ran a timer due every {looplag.PERIOD * 1000:g} ms (a step "
            "that blocks delays every stream)",
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=r,
        )
        self.upstream_shared_streams = Gauge(
            "kumiho_gateway_hub_upstream_streams",
            "Shared upstream streams open in the hub",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.hub_subscribers = Gauge(
            "kumiho_gateway_hub_subscribers",
            "Clients attached to shared streams (divide by hub_upstream_streams for the fan-out)",
            registry=r,
            multiprocess_mode="livesum",
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
            multiprocess_mode="livesum",
        )
        self.frames_encoded = Tally(
            Counter(
                "kumiho_gateway_hub_frames_encoded",
                "Events encoded by the hub (once each)",
                registry=r,
            )
        )
        self.frames_delivered = Tally(
            Counter(
                "kumiho_gateway_hub_frames_delivered",
                "Shared frames handed to subscribers",
                registry=r,
            )
        )
        # The counters bumped once per frame gather in the process (a Tally is a
        # float add; a prometheus-client increment takes a lock, and in a worker
        # writes a file) and reach the counter at each scrape, and in a worker
        # every second: a scrape always sees every frame written before it.
        self._tallies: tuple[Tally | Writes, ...] = (
            self.writes,
            self.frames_encoded,
            self.frames_delivered,
        )
        if directory is None:
            tasks = Gauge(
                "kumiho_gateway_asyncio_tasks", "asyncio tasks alive in the event loop", registry=r
            )
            tasks.set_function(_task_count)
            self._exported = r
            return
        # What a worker adds, and the registry that reads every worker's files.
        self._process = ProcessCollector(registry=None)
        self._per_process: dict[str, Gauge] = {}
        self._tasks = Gauge(
            "kumiho_gateway_asyncio_tasks",
            "asyncio tasks alive in the event loop",
            registry=r,
            multiprocess_mode="liveall",
        )
        Gauge(
            "kumiho_gateway_workers",
            "Worker processes serving (serve --workers N)",
            registry=r,
            multiprocess_mode="livesum",
        ).set(1)
        restarts = Counter(
            "kumiho_gateway_worker_restarts",
            "Workers started in place of one that died",
            registry=r,
        )
        if restarted:
            restarts.inc()
        self._exported = CollectorRegistry()
        MultiProcessCollector(self._exported, path=directory)  # type: ignore[no-untyped-call]
        self.sample()

    def render(self) -> bytes:
        if self.directory is None:
            self._flush()
        else:
            self.sample()  # this worker's numbers as of now; the others' at most a period old
        return generate_latest(self._exported)

    def _flush(self) -> None:
        for tally in self._tallies:
            tally.flush()

    def sample(self) -> None:
        """In a worker: write what the counters gathered, and this process's own numbers
        (memory, fds, CPU, tasks), to its files."""
        if self.directory is None:
            return
        self._flush()
        for family in self._process.collect():
            for sample in family.samples:
                gauge = self._per_process.get(sample.name)
                if gauge is None:
                    gauge = self._per_process[sample.name] = Gauge(
                        sample.name,
                        family.documentation,
                        registry=None,
                        multiprocess_mode="liveall",
                    )
                gauge.set(sample.value)
        self._tasks.set(_task_count())

    async def sample_forever(self, period: float = SAMPLE_PERIOD) -> None:
        """In a worker: ``sample()`` every ``period`` seconds, so any worker's scrape is fresh."""
        while True:
            self.sample()
            await asyncio.sleep(period)


class Tally:
    """Increments of a counter, gathered in memory until ``flush()`` adds them to it."""

    __slots__ = ("_counter", "pending")

    def __init__(self, counter: Counter) -> None:
        self._counter = counter
        self.pending = 0.0

    def inc(self, amount: float = 1) -> None:
        self.pending += amount

    def flush(self) -> None:
        if self.pending:
            pending, self.pending = self.pending, 0.0
            self._counter.inc(pending)


class Writes:
    """What streams wrote: event frames and bytes, two Tallies bumped in one call a write."""

    __slots__ = ("events", "size")

    def __init__(self, events: Counter, size: Counter) -> None:
        self.events, self.size = Tally(events), Tally(size)

    def add(self, events: int, size: int) -> None:
        self.events.pending += events
        self.size.pending += size

    def flush(self) -> None:
        self.events.flush()
        self.size.flush()


class ClientStreams:
    """Open streams by client address: how many connections one browser (or host) holds.

    A browser over HTTP/1.1 stalls at six connections to a host, so this is
    the number to watch. Addresses are labels, so at most ``LIMIT`` of them
    are told apart in a process (at a time; in a worker of a pool, ever, since
    its file keeps every label it wrote); streams from any further address
    count as "other". Behind a proxy the address is the proxy's unless uvicorn
    is told to trust its forwarded headers.
    """

    LIMIT = 256

    def __init__(self, registry: CollectorRegistry, *, multiprocess: bool) -> None:
        self._gauge = Gauge(
            "kumiho_gateway_client_streams_open",
            "Open streams by client address (at most 256 addresses a worker; the rest as other)",
            ["client"],
            registry=registry,
            multiprocess_mode="livesum",
        )
        self._multiprocess = multiprocess
        self._open: dict[str, int] = {}
        self._labels: set[str] = set()  # the labels that exist now (in a pool: ever did)

    def opened(self, client: str) -> str:
        """Count a stream from ``client``; returns the label to give ``closed``."""
        label = client if client in self._labels or len(self._labels) < self.LIMIT else "other"
        self._labels.add(label)
        self._open[label] = self._open.get(label, 0) + 1
        self._gauge.labels(label).inc()
        return label

    def closed(self, label: str) -> None:
        self._gauge.labels(label).dec()
        self._open[label] -= 1
        if not self._open[label]:
            del self._open[label]
            if not self._multiprocess:  # a worker's file keeps the label, at 0
                self._gauge.remove(label)
                self._labels.discard(label)


def _check_multiprocess(directory: str) -> None:
    """Multiprocess mode is chosen when prometheus-client is imported: check that it was."""
    if not getattr(values.ValueClass, "_multiprocess", False):
        raise RuntimeError(f"{MULTIPROC_DIR_ENV} must be set before prometheus_client is imported")
    if os.environ.get(MULTIPROC_DIR_ENV) != directory:
        raise RuntimeError(f"{MULTIPROC_DIR_ENV} is not {directory}")


def _task_count() -> float:
    try:
        return float(len(asyncio.all_tasks()))
    except RuntimeError:  # scraped outside the loop
        return 0.0
