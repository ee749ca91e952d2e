"""Nothing a client asks for holds the event loop: hostile filters, and the lag metric."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import httpx
import pytest
from prometheus_client import CollectorRegistry, Histogram

from gateway.looplag import LoopLag
from tests.conftest import BOTH_MODES, DevServer, Gateway, Reader, metric_value, unique_project

LAG = "kumiho_gateway_event_loop_lag_seconds"

# The worst filters the API accepts, each aimed at a backtracking matcher: up
# to 255 stars in a glob (hours per event before), a detail glob, and lists
# of "*e*e...*x" patterns (seconds per event against one 28-"e" segment),
# one of them alone so the reference upstream matches it too.
HOSTILE: list[list[tuple[str, str]]] = [
    [("username", "*" * 255 + "x")],
    [("details.kind", "*" * 16 + "x")],
    [("author", "*a" * 127 + "x")],
    [("routing_key", ",".join("*e" * n + "*x" for n in (120, 121, 122, 123)))],
    [("routing_key", "*e" * 127 + "*x")],
    [("kref", ",".join("kref://**/" + "*e" * n + "*x" for n in (480, 490, 500, 505)))],
]


def _healthz_seconds(client: httpx.Client, url: str) -> float:
    started = time.monotonic()
    assert client.get(url + "/healthz").status_code == 200
    return time.monotonic() - started


@BOTH_MODES
def test_hostile_filters_never_hold_the_event_loop(
    make_devserver: Callable[..., DevServer], make_gateway: Callable[..., Gateway]
) -> None:
    devserver = make_devserver()
    gateway = make_gateway(devserver.address)
    project = unique_project()
    everything = Reader(gateway.url, {"kref": f"kref://{project}/**"})
    hostile = [Reader(gateway.url, dict(params)) for params in HOSTILE]
    readers = [everything, *hostile]
    for reader in readers:
        reader.start()
    try:
        for reader in readers:
            assert reader.connected.wait(15) and reader.status == 200, reader.error
        slowest = 0.0
        with httpx.Client(timeout=60) as client:
            for n in range(1, 6):
                # Values built to make each hostile pattern try every split.
                devserver.publish(
                    "e" * 28,
                    f"kref://{project}/" + "e" * 28,
                    {"kind": "a" * 40},
                    author="a" * 40,
                    username="a" * 40,
                )
                everything.wait_for(n)
                slowest = max(slowest, _healthz_seconds(client, gateway.url))
            metrics = client.get(gateway.url + "/metrics").text
        # Before linear matching each of these events held the loop for seconds.
        assert slowest < 2.0
        assert all(not reader.events and reader.error is None for reader in hostile)
        # The lag histogram saw no stall either (a loaded machine's scheduling aside).
        observed = metric_value(metrics, LAG + "_count")
        assert observed and metric_value(metrics, LAG + "_bucket", '{le="2.5"}') == observed
    finally:
        for reader in readers:
            reader.stop.set()


def test_a_blocking_step_is_measured_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    registry = CollectorRegistry()
    histogram = Histogram("lag", "test", buckets=(0.05, 0.1, 0.2, 1), registry=registry)

    async def block_once() -> None:
        lag = LoopLag(histogram, period=0.01)
        lag.start()
        try:
            await asyncio.sleep(0.05)  # let it tick unblocked first
            time.sleep(0.3)  # noqa: ASYNC251 (the blocking step under test)
            await asyncio.sleep(0.05)
        finally:
            lag.stop()

    with caplog.at_level(logging.WARNING, logger="gateway.looplag"):
        asyncio.run(block_once())
    warnings = [r.getMessage() for r in caplog.records if "event loop blocked" in r.getMessage()]
    assert len(warnings) == 1, warnings
    late = int(warnings[0].split("ran ")[1].split(" ms")[0])
    assert 250 <= late < 2000
    assert registry.get_sample_value("lag_bucket", {"le": "0.2"}) < (
        registry.get_sample_value("lag_count") or 0
    )
