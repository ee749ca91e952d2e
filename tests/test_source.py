"""UpstreamSource against a real grpc.aio server in this process: cancelling it ends it."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator

import grpc
import pytest

from gateway._proto import kumiho_pb2_grpc
from gateway.auth import ANONYMOUS
from gateway.matching import EventFilter
from gateway.metrics import Metrics
from gateway.poll import Batch
from gateway.settings import Settings
from gateway.source import UpstreamSource
from gateway.subscription import Subscription
from gateway.upstream import Upstream
from tests.test_upstream import Careless


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
