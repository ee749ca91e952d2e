"""Consumer groups through the gateway: each event to one member of the group."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable

import httpx

from tests.conftest import BOTH_MODES, FAST, DevServer, Gateway, Reader, wait_until

KREF = "kref://groups/shots/sq010.comp"


@BOTH_MODES
def test_three_members_of_a_group_split_the_events_between_them(
    make_devserver: Callable[..., DevServer], make_gateway: Callable[..., Gateway]
) -> None:
    devserver = make_devserver("--tier", "enterprise")
    gateway = make_gateway(devserver.address, *FAST)
    group = {"consumer_group": "renderers"}
    members = [Reader(gateway.url, group) for _ in range(3)]
    # A member on the hosted route too (Reader reads /events; this one reads there).
    hosted: list[str] = []

    def read_hosted() -> None:
        try:
            with httpx.stream(
                "GET", gateway.url + "/api/v1/events/stream", params=group, timeout=30
            ) as r:
                for line in r.iter_lines():
                    if line.startswith("data:"):
                        hosted.append(json.loads(line[5:])["cursor"])
        except httpx.TransportError:
            pass  # the gateway stops at the end of the test

    threading.Thread(target=read_hosted, daemon=True).start()
    outsider = Reader(gateway.url)  # no group: sees everything
    for reader in [*members, outsider]:
        reader.start()
    wait_until(lambda: gateway.metric("kumiho_gateway_streams_open") == 5, 15, "all streams")
    published = devserver.publish("revision.created", KREF, count=120)
    wait_until(
        lambda: sum(len(m.events) for m in members) + len(hosted) == 120, 20, "the group's share"
    )
    shares = [[e.id for e in m.events] for m in members] + [hosted]
    every = [c for share in shares for c in share]
    assert sorted(every) == sorted(published) and len(set(every)) == 120  # disjoint, complete
    assert all(share for share in shares)  # each member got a part
    for share in shares:
        assert share == sorted(share, key=published.index)  # each in cursor order
    assert [e.id for e in outsider.wait_for(120)] == published
    for reader in [*members, outsider]:
        reader.stop.set()


def test_a_tier_without_consumer_groups_is_a_400(
    make_devserver: Callable[..., DevServer], make_gateway: Callable[..., Gateway]
) -> None:
    devserver = make_devserver("--tier", "studio")
    gateway = make_gateway(devserver.address, *FAST)
    for path in ("/events", "/api/v1/events/stream"):
        r = httpx.get(gateway.url + path, params={"consumer_group": "g"}, timeout=10)
        assert r.status_code == 400, r.text
        error = r.json()["error"]
        assert error["code"] == "consumer_groups_unsupported"
        assert "tier (studio) has no consumer groups" in error["message"]
    assert devserver.client().stats().streams_started == 0
    # A poll cannot hold a member's events between polls, on any tier.
    r = httpx.get(gateway.url + "/events/poll", params={"consumer_group": "g"}, timeout=10)
    assert r.status_code == 400 and "consumer_group" in r.json()["error"]["message"]
