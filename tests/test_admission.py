"""The per-client limits' rules, without a server: keys, places, buckets, bounded memory.

End to end, through nginx and with real clients: tests/test_client_limits.py.
"""

from __future__ import annotations

import contextlib
import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import generate_latest
from starlette.requests import HTTPConnection

from gateway.admission import BURST_SECONDS, ClientLimits, client_address, limit_key
from gateway.errors import GatewayError
from gateway.metrics import Metrics
from tests.conftest import metric_value


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def limits(streams: int, rate: float, clock: Clock | None = None) -> ClientLimits:
    return ClientLimits(streams, rate, Metrics(), retry_ms=2000, clock=clock or Clock())


def refusal(limits: ClientLimits, address: str) -> GatewayError:
    with pytest.raises(GatewayError) as refused:
        limits.admit(address)
    error = refused.value
    assert error.status == 429 and error.retryable
    assert error.retry_after_ms is not None and error.retry_after_ms > 0
    return error


def sample(limits: ClientLimits, name: str, labels: str = "") -> float | None:
    """One sample of the limits' metrics, as /metrics would show it."""
    return metric_value(generate_latest(limits.metrics.registry).decode(), name, labels)


def refusals(limits: ClientLimits, limit: str) -> float | None:
    return sample(limits, "kumiho_gateway_client_limit_refusals_total", f'{{limit="{limit}"}}')


def test_places_are_counted_per_address_and_come_back_once() -> None:
    lim = limits(2, 0)
    a = [lim.admit("192.0.2.1"), lim.admit("192.0.2.1")]
    error = refusal(lim, "192.0.2.1")
    assert error.code == "too_many_streams" and "--max-streams-per-client" in error.message
    assert 2000 <= (error.retry_after_ms or 0) <= 3000  # --retry-ms, jittered: no one knows when
    lim.admit("192.0.2.2")  # another address is not touched
    a[0].release()
    a[0].release()  # a second release gives nothing more back
    lim.admit("192.0.2.1")
    refusal(lim, "192.0.2.1")
    assert refusals(lim, "streams") == 2


def test_the_bucket_allows_a_burst_then_the_rate_and_says_when_to_come_back() -> None:
    clock = Clock()
    lim = limits(0, 5, clock)  # a burst of 10, then 5 a second
    for _ in range(int(5 * BURST_SECONDS)):
        lim.admit("192.0.2.1")
    error = refusal(lim, "192.0.2.1")
    assert error.code == "rate_limited" and "--max-opens-per-client-per-second" in error.message
    # One token comes in 200 ms; the answer adds up to half of it, to spread who comes back.
    assert 200 <= (error.retry_after_ms or 0) <= 300
    lim.admit("192.0.2.2")
    clock.now += 0.199
    refusal(lim, "192.0.2.1")  # a refusal takes no token: the next one is still due at 200 ms
    clock.now += 0.002
    lim.admit("192.0.2.1")
    refusal(lim, "192.0.2.1")
    assert refusals(lim, "opens") == 3


def test_a_client_at_its_place_limit_spends_no_opens() -> None:
    clock = Clock()
    lim = limits(1, 1, clock)  # a burst of 2
    place = lim.admit("192.0.2.1")
    for _ in range(5):
        assert refusal(lim, "192.0.2.1").code == "too_many_streams"
    place.release()
    lim.admit("192.0.2.1")  # the second token of the burst is still there


def test_no_limits_keep_nothing() -> None:
    lim = limits(0, 0)
    for n in range(1000):
        lim.admit(f"192.0.2.{n % 250}")
    assert lim.tracked == 0


def test_refilled_buckets_and_released_places_are_forgotten() -> None:
    clock = Clock()
    lim = limits(4, 10, clock)
    places = [lim.admit(f"198.51.100.{n}") for n in range(100)]
    assert lim.tracked == 200  # 100 places held, 100 buckets refilling
    for place in places:
        place.release()
    assert lim.tracked == 100
    clock.now += 0.1  # one token back: every bucket is full again
    lim.admit("203.0.113.1")
    assert lim.tracked == 2  # that address's place and bucket only
    assert sample(lim, "kumiho_gateway_client_limit_tracked") == 2


@given(st.lists(st.integers(0, 2**32 - 1), min_size=1, max_size=300))
def test_an_address_sprayer_holds_a_bounded_number_of_buckets(addresses: list[int]) -> None:
    clock = Clock()
    lim = limits(0, 0.001, clock)  # a bucket takes 1,000 s to refill: none is swept
    lim.MAX_TRACKED = 50
    for n in addresses:
        with contextlib.suppress(GatewayError):  # a repeated address is refused: fine
            lim.admit(str(ipaddress.IPv4Address(n)))
        clock.now += 0.01
    assert lim.tracked <= 50
    assert lim.tracked == min(50, len(set(addresses)))


@given(st.integers(0, 2**128 - 1), st.integers(0, 2**64 - 1))
def test_an_ipv6_host_counts_as_its_64(address: int, other_host: int) -> None:
    ip = ipaddress.IPv6Address(address)
    if ip.ipv4_mapped is not None:
        return
    sibling = ipaddress.IPv6Address((address >> 64 << 64) | other_host)
    key = limit_key(str(ip))
    assert key == limit_key(str(sibling)) == limit_key(ip.exploded)
    assert ipaddress.IPv6Network(key).prefixlen == 64 and ip in ipaddress.IPv6Network(key)
    neighbour = ipaddress.IPv6Address(address ^ (1 << 64))  # the next /64 over
    assert limit_key(str(neighbour)) != key


def test_ipv4_keys_are_the_address_and_ipv4_mapped_ipv6_is_ipv4() -> None:
    assert limit_key("192.0.2.7") == "192.0.2.7"
    assert limit_key("::ffff:192.0.2.7") == "192.0.2.7"
    assert limit_key("unknown") == "unknown"  # what a proxy may send: counted as given


def _connection(host: str | None) -> HTTPConnection:
    scope = {"type": "http", "headers": [], "client": None if host is None else (host, 1)}
    return HTTPConnection(scope)


@given(st.text(max_size=500))
def test_a_client_address_is_short_and_printable_whatever_a_proxy_sent(host: str) -> None:
    address = client_address(_connection(host))
    assert len(address) <= 64 and address.isprintable()
    if len(host) <= 64 and host.isprintable():
        assert address == host


def test_a_connection_without_a_peer_has_the_empty_address() -> None:
    assert client_address(_connection(None)) == ""
