"""The hub: every channel of one gateway process, opened on first use and shared.

A request's key (credential identity, tenant, consumer group, and the filter
its channel asks the upstream for) picks its ``Channel`` (``channel.py``):
requests with the same key share one upstream stream. Where filters are
applied is ``--hub-filtering``: in the gateway (one unfiltered channel per
credential, every subscription matched against each event by
``matching.py``), or upstream (a channel per credential and filter; a list
of patterns, which one call cannot carry, is still matched here). Requests
that find their channel opening wait for that one opening.

The parts, each in its own module: ``channel.py`` (the shared feed and its
fan-out), ``ring.py`` (recent events, a resume from memory),
``subscriber.py`` (``HubSource``, one request's view: replay, backlog, live
items) and ``catchup.py`` (a stream of its own until the ring takes over).
"""

from __future__ import annotations

import asyncio
import functools
from dataclasses import replace

from gateway.channel import Channel, ChannelKey
from gateway.matching import EventFilter
from gateway.metrics import Metrics
from gateway.settings import Settings
from gateway.source import UpstreamSource
from gateway.subscriber import HubSource
from gateway.subscription import Subscription
from gateway.upstream import Upstream

# Re-exported: what the routes and the tests take from the hub.
__all__ = ["Channel", "ChannelKey", "Hub", "HubSource"]


class Hub:
    """All channels of one gateway process."""

    def __init__(self, upstream: Upstream, settings: Settings, metrics: Metrics) -> None:
        self.upstream = upstream
        self.settings = settings
        self.metrics = metrics
        self._channels: dict[ChannelKey, Channel] = {}
        filtering = settings.hub_filtering
        if filtering == "auto":
            # One credential for many people (none, service): their filters differ,
            # so one stream for all of them. In passthrough each credential is one
            # person with few filters: an unfiltered stream each would fetch the
            # events nobody asked for, once per person.
            filtering = "upstream" if settings.auth == "passthrough" else "gateway"
        self._covering = filtering == "gateway"
        self._starting: dict[ChannelKey, _Opening] = {}

    def source(self, subscription: Subscription) -> HubSource:
        return HubSource(self, subscription)

    async def channel(self, subscription: Subscription) -> Channel:
        """The live channel for this subscription's key, started on first use.

        Requests that find it opening wait for that same opening. It goes on
        while any of them waits: the one that began it may leave (its client
        hung up) without cutting off the others. When all have left, it stops.
        """
        if self._covering:
            asked = EventFilter()
        else:
            routing_key, kref = subscription.filter.upstream()
            asked = EventFilter((routing_key,), (kref,))
        credential = subscription.credential
        key = (credential.identity, credential.tenant, subscription.consumer_group, asked)
        channel = self._channels.get(key)
        if channel is not None and not channel.closed:
            return channel
        opening = self._starting.get(key)
        if opening is None:
            live = replace(
                subscription, filter=asked, cursor=None, start="latest", from_timestamp=None
            )
            opening = self._starting[key] = _Opening(asyncio.ensure_future(self._open(key, live)))
            opening.task.add_done_callback(functools.partial(self._opened, key, opening))
        opening.waiting += 1
        try:
            # Shielded: one waiter's cancellation is its own, not the opening's.
            return await asyncio.shield(opening.task)
        finally:
            opening.waiting -= 1
            if not opening.waiting:
                if not opening.task.done():
                    # Nobody wants it any more: stop it, and let a later request begin
                    # afresh (rather than join an opening about to end as cancelled).
                    opening.task.cancel()
                    self._opened(key, opening)
                elif not opening.task.cancelled() and opening.task.exception() is None:
                    # The linger starts only now, once every waiter has had the channel
                    # (each joins it before its next await, which cancels the linger):
                    # started when the opening ended, a short linger could close it first.
                    opening.task.result().idle()

    def _opened(self, key: ChannelKey, opening: _Opening, *_: object) -> None:
        """``opening`` is over (or abandoned): the next request for ``key`` looks again."""
        if self._starting.get(key) is opening:
            del self._starting[key]

    async def _open(self, key: ChannelKey, live: Subscription) -> Channel:
        """Start the channel for ``key``; 401/403 and the like reach every waiting request."""
        channel = Channel(
            key, UpstreamSource(self.upstream, live, self.settings, self.metrics), self
        )
        try:
            await channel.start()
        except BaseException:
            channel.close()
            raise
        self._channels[key] = channel
        return channel

    def close(self) -> None:
        """Close every shared stream (at shutdown)."""
        for channel in list(self._channels.values()):
            channel.close()

    def forget(self, channel: Channel) -> None:
        if self._channels.get(channel.key) is channel:
            del self._channels[channel.key]


class _Opening:
    """A channel being opened, and how many requests wait for it."""

    def __init__(self, task: asyncio.Task[Channel]) -> None:
        self.task = task
        self.waiting = 0
