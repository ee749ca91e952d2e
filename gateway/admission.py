"""Per-client admission: how many streams and polls one address holds, and how fast it opens them.

The address is the one uvicorn gives the request: the TCP peer, or, when the
peer is a proxy named in ``--forwarded-allow-ips``, the client its
``X-Forwarded-For`` names (uvicorn's ProxyHeadersMiddleware rewrites the
scope before the app sees it; ``server.py`` hands it the setting). A client
that is not such a proxy cannot choose its own address by sending the header.

Two limits, both per process (each worker of ``serve --workers N`` counts
its own connections):

- places: streams and waiting polls held open at once
  (``--max-streams-per-client``), taken before anything is asked upstream and
  given back when the stream or poll ends;
- opens: a token bucket (``--max-opens-per-client-per-second``) holding
  ``BURST_SECONDS`` worth of opens, so a page that opens a stream and polls to
  catch up, or an office behind one address reconnecting after a deploy, is
  not refused for a burst.

A refusal is a retryable ``GatewayError`` (429) with ``retry_after_ms``; the
stream routes turn it into a 200 with a ``retry:`` line (CONTRACT.md: an
EventSource stops for good on any other status), the polls answer it as is.

Memory stays bounded whatever addresses arrive: an address is tracked only
while it holds a place or its bucket is refilling (at the default rate, 50 ms
after a single open), the idle ones are swept as requests come, and past
``MAX_TRACKED`` refilling buckets the oldest is forgotten (its address gets a
full bucket again: a sprayer of addresses is not held back by per-address
limits anyway, and the cap keeps it from holding memory instead).
"""

from __future__ import annotations

import collections
import ipaddress
import logging
import math
import time
from collections.abc import Callable

from starlette.requests import HTTPConnection

from gateway.errors import GatewayError
from gateway.metrics import Metrics
from gateway.pump import jittered_retry_ms

log = logging.getLogger("gateway.admission")

BURST_SECONDS = 2.0  # a bucket holds this many seconds' worth of opens
_ADDRESS_CHARS = 64  # an address longer than this (only a trusted proxy can send one) is cut
_LOG_EVERY = 10.0  # seconds between two log lines about refusals, however many there are


def client_address(connection: HTTPConnection) -> str:
    """The request's client address, as uvicorn resolved it, cut to a printable 64 characters.

    Only a trusted proxy can make it something else than an IP address; it
    is still a metric label and a log field, so it stays short and printable.
    """
    client = connection.client
    host = client.host if client else ""
    if len(host) <= _ADDRESS_CHARS and host.isprintable():
        return host
    return "".join(c if c.isprintable() else "?" for c in host[:_ADDRESS_CHARS])


def limit_key(address: str) -> str:
    """Who a limit counts: the IPv4 address, the IPv6 /64 network, or the text as given.

    An IPv6 host usually holds a whole /64 and may pick any address in it, so
    per-address counting would let it multiply its limits at will.
    """
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


class Place:
    """One stream's or poll's place in its client's count; ``release`` gives it back, once."""

    __slots__ = ("_key", "_limits")

    def __init__(self, limits: ClientLimits | None, key: str) -> None:
        self._limits = limits
        self._key = key

    def release(self) -> None:
        limits, self._limits = self._limits, None
        if limits is not None:
            limits.give_back(self._key)


class _Bucket:
    __slots__ = ("stamp", "tokens")

    def __init__(self, tokens: float, stamp: float) -> None:
        self.tokens = tokens
        self.stamp = stamp


class ClientLimits:
    """The two per-client limits of one process; 0 as a limit means no limit."""

    MAX_TRACKED = 50_000  # refilling buckets kept at most (12 MB, measured with tracemalloc)

    def __init__(
        self,
        max_streams: int,
        opens_per_second: float,
        metrics: Metrics,
        retry_ms: int = 2000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._max_streams = max_streams
        self._retry_ms = retry_ms  # when to come back for a place: no one knows, so --retry-ms
        self._rate = opens_per_second
        self._capacity = max(1.0, opens_per_second * BURST_SECONDS)
        self.metrics = metrics
        self._clock = clock
        self._held: dict[str, int] = {}  # places held, by key; absent = none
        # Buckets that are not full, oldest touch first: a full bucket is the
        # same as none, so only these are kept.
        self._buckets: collections.OrderedDict[str, _Bucket] = collections.OrderedDict()
        self._logged = -math.inf

    @property
    def tracked(self) -> int:
        """Entries kept now: addresses holding places, plus buckets refilling."""
        return len(self._held) + len(self._buckets)

    def admit(self, address: str) -> Place:
        """A place for a new stream or poll from ``address``, or a retryable GatewayError (429)."""
        if not self._max_streams and not self._rate:
            return Place(None, "")
        key = limit_key(address)
        now = self._clock()
        self._sweep(now)
        held = self._held.get(key, 0)
        if self._max_streams and held >= self._max_streams:
            # Checked first: a refusal here takes no token, so a client waiting
            # for a place is not also slowed when one frees.
            self._refused(address, "streams", now)
            raise GatewayError(
                429,
                "too_many_streams",
                f"this address holds its limit of {self._max_streams} open streams and polls "
                "(--max-streams-per-client); close one, or retry later",
                retryable=True,
                retry_after_ms=jittered_retry_ms(self._retry_ms),
            )
        if self._rate:
            wait = self._take(key, now)
            if wait:
                self._refused(address, "opens", now)
                retry_ms = jittered_retry_ms(math.ceil(wait * 1000))  # spread who comes back
                raise GatewayError(
                    429,
                    "rate_limited",
                    f"this address opens streams and polls faster than {self._rate:g} a second "
                    f"(--max-opens-per-client-per-second); retry in {retry_ms} ms",
                    retryable=True,
                    retry_after_ms=retry_ms,
                )
        if not self._max_streams:
            self._count()
            return Place(None, "")  # places are counted only where they are limited
        self._held[key] = held + 1
        self._count()
        return Place(self, key)

    def _take(self, key: str, now: float) -> float:
        """Take a token from ``key``'s bucket: 0, or the seconds until one is there."""
        bucket = self._buckets.pop(key, None)
        if bucket is None:
            bucket = _Bucket(self._capacity, now)
        else:
            bucket.tokens = min(self._capacity, bucket.tokens + (now - bucket.stamp) * self._rate)
            bucket.stamp = now
        wait = 0.0
        if bucket.tokens >= 1:
            bucket.tokens -= 1
        else:
            wait = (1 - bucket.tokens) / self._rate
        self._buckets[key] = bucket  # now the most recently touched
        if len(self._buckets) > self.MAX_TRACKED:
            self._buckets.popitem(last=False)
        return wait

    def _sweep(self, now: float) -> None:
        """Forget buckets that have refilled, oldest touch first, up to one that has not.

        Every bucket is full again within ``BURST_SECONDS`` of its last touch,
        so one that stops the sweep keeps the younger ones at most that long.
        """
        buckets, rate, capacity = self._buckets, self._rate, self._capacity
        while buckets:
            key, oldest = next(iter(buckets.items()))
            if oldest.tokens + (now - oldest.stamp) * rate < capacity:
                return
            del buckets[key]

    def give_back(self, key: str) -> None:
        """A place of ``key`` ends (``Place.release`` calls it once per place)."""
        held = self._held[key] - 1
        if held:
            self._held[key] = held
        else:
            del self._held[key]
        self._count()

    def _count(self) -> None:
        self.metrics.client_limit_tracked.set(self.tracked)

    def _refused(self, address: str, limit: str, now: float) -> None:
        self.metrics.client_limit_refusals.labels(limit).inc()
        self._count()
        # One line now and then, not one per refusal: a client in a loop
        # would otherwise write the log as fast as it asks.
        if now - self._logged >= _LOG_EVERY:
            self._logged = now
            flag = "streams-per-client" if limit == "streams" else "opens-per-client-per-second"
            log.warning(
                "refusing %s: past --max-%s (further refusals counted in "
                "kumiho_gateway_client_limit_refusals_total, not logged for %gs); if it is "
                "a proxy, name it in --forwarded-allow-ips",
                address,
                flag,
                _LOG_EVERY,
            )
