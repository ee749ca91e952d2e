"""UpstreamSource against a real grpc.aio server in this process: cancelling it ends it,
and an at-least-once upstream's repeats never get past it."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator

import grpc
import pytest

from gateway._proto import kumiho_pb2, kumiho_pb2_grpc
from gateway.auth import ANONYMOUS
from gateway.items import Item
from gateway.matching import EventFilter
from gateway.metrics import Metrics
from gateway.poll import Batch
from gateway.settings import Settings
from gateway.source import UpstreamSource
from gateway.subscription import Subscription
from gateway.upstream import Upstream
from tests.test_upstream import Careless, Context


@pytest.fixture
async def refusing() -> AsyncIterator[Upstream]:
    """An Upstream whose server refuses every stream at once, and resubscribes within ms."""
    careless = Careless()
    careless.code, careless.where = grpc.StatusCode.INTERNAL, "open"
    server = grpc.aio.server()
    kumiho_pb2_grpc.add_KumihoServiceServicer_to_server(careless, server)  # type: ignore[no-untyped-call]
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    settings = Settings(
        upstream=f"127.0.0.1:{port}",
        backoff_initial=0.001,
        backoff_max=0.002,
        capabilities_ttl=0,
    )
    upstream = Upstream(settings)
    await upstream.start()
    yield upstream
    await upstream.close()
    await server.stop(None)


async def test_a_cancelled_source_stops_whenever_the_cancellation_lands(
    refusing: Upstream,
) -> None:
    # A poll cancels its source when it has its answer; a cancellation that
    # lands just as the upstream answers must end the source all the same, or
    # the poll never answers and the source resubscribes until the process ends.
    settings = Settings(backoff_initial=0.001, backoff_max=0.002)
    left_running = 0
    for _ in range(300):
        subscription = Subscription(EventFilter(), None, "latest", None, False, ANONYMOUS)
        source = UpstreamSource(refusing, subscription, settings, Metrics())
        await source.open()
        task = asyncio.ensure_future(source.run(Batch(10, None)))
        # Not synchronisation: a spread of moments for the cancellation to land.
        await asyncio.sleep(random.uniform(0, 0.02))
        task.cancel()
        done, _ = await asyncio.wait({task}, timeout=5)
        source.close()
        if not done:
            left_running += 1
        await asyncio.wait({task}, timeout=5)
    assert left_running == 0, f"{left_running} of 300 sources ignored their cancellation"


_LOG = tuple(f"1-{n}" for n in range(1, 13))


class _AtLeastOnce(kumiho_pb2_grpc.KumihoServiceServicer):
    """Resumes one event early (the one before the cursor, and the cursor's own), sends
    three new ones, then breaks the stream: a server that is at-least-once, and flaky."""

    async def GetEventCapabilities(
        self, request: kumiho_pb2.GetEventCapabilitiesRequest, context: Context
    ) -> kumiho_pb2.EventCapabilities:
        return kumiho_pb2.EventCapabilities(supports_replay=True, supports_cursor=True)

    async def EventStream(
        self, request: kumiho_pb2.EventStreamRequest, context: Context
    ) -> AsyncIterator[kumiho_pb2.Event]:
        start = max(0, _LOG.index(request.cursor) - 1) if request.cursor else 0
        for cursor in _LOG[start : start + 5]:
            yield kumiho_pb2.Event(
                routing_key="revision.tagged" if cursor != "1-6" else "revision.created",
                kref=kumiho_pb2.Kref(uri="kref://p/a.model"),
                cursor=cursor,
            )
        await context.abort(grpc.StatusCode.UNAVAILABLE, "the stream broke")


class _Events:
    """A Sink that keeps the events' cursors and says when it has the last one."""

    def __init__(self, last: str) -> None:
        self.cursors: list[str] = []
        self.last = last
        self.done = asyncio.Event()

    def put(self, item: Item) -> bool:
        if isinstance(item, kumiho_pb2.Event):
            self.cursors.append(item.cursor)
            if item.cursor == self.last:
                self.done.set()
        return True

    async def room(self) -> bool:
        return True

    def slow_consumer(self) -> None:
        pass


async def test_an_at_least_once_upstreams_repeats_stop_at_the_source() -> None:
    # The stream's one repeat filter is the source's: nothing after it keeps another.
    server = grpc.aio.server()
    kumiho_pb2_grpc.add_KumihoServiceServicer_to_server(_AtLeastOnce(), server)  # type: ignore[no-untyped-call]
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    settings = Settings(upstream=f"127.0.0.1:{port}", backoff_initial=0.001, backoff_max=0.002)
    upstream = Upstream(settings)
    await upstream.start()
    try:
        # A list of routing keys, which the gateway matches itself: one event is unwanted.
        wanted = EventFilter(("revision.tagged", "item.*"), ("",))
        sources = {
            "from the beginning": Subscription(wanted, None, "beginning", None, False, ANONYMOUS),
            "after 1-2": Subscription(wanted, "1-2", "latest", None, False, ANONYMOUS),
        }
        for name, subscription in sources.items():
            source = UpstreamSource(upstream, subscription, settings, Metrics())
            await source.open()
            sink = _Events("1-12")
            task = asyncio.ensure_future(source.run(sink))
            await asyncio.wait_for(sink.done.wait(), 10)
            source.close()
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            first = 1 if subscription.cursor is None else 3
            expected = [f"1-{n}" for n in range(first, 13) if n != 6]
            assert sink.cursors == expected, name
    finally:
        await upstream.close()
        await server.stop(None)
