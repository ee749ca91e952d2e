"""Detail and actor filters, applied by the gateway; id-only frames keep resume exact."""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable

import httpx
import pytest
from httpx_sse import connect_sse

from tests.conftest import (
    BOTH_MODES,
    FAST,
    DevServer,
    Gateway,
    data,
    read_events,
    unique_project,
)


@BOTH_MODES
def test_detail_author_and_username_filters_pick_exactly_their_events(
    make_devserver: Callable[..., DevServer], make_gateway: Callable[..., Gateway]
) -> None:
    devserver = make_devserver()
    gateway = make_gateway(devserver.address, *FAST)
    kref = f"kref://{unique_project()}/assets/hero.model?r=1"
    published = []
    for n, (tag, who) in enumerate(
        [("approved", "aiko"), ("wip", "aiko"), ("published", "sam"), ("approved", "mina")] * 3
    ):
        details = {"tag": tag, "n": str(n)} if n % 5 else {"n": str(n)}  # some have no tag
        [cursor] = devserver.publish(
            "revision.tagged", kref, details, author=f"u-{who}", username=who
        )
        published.append((cursor, details, who))

    def expect(keep: Callable[[dict[str, str], str], bool]) -> list[str]:
        return [c for c, details, who in published if keep(details, who)]

    cases = [
        ({"details.tag": "approved"}, lambda d, w: d.get("tag") == "approved"),
        (
            [("details.tag", "approved,publ*"), ("username", "aiko"), ("username", "sam")],
            lambda d, w: d.get("tag") in ("approved", "published") and w in ("aiko", "sam"),
        ),
        ({"author": "u-m*"}, lambda d, w: w == "mina"),
        ({"details.tag": "*", "details.n": "1*"}, lambda d, w: "tag" in d and d["n"][0] == "1"),
    ]
    for params, keep in cases:
        wanted = expect(keep)
        query = [*(params.items() if isinstance(params, dict) else params), ("from", "beginning")]
        # The last event every case wants comes last: anything unwanted would come before it.
        got = read_events(gateway.url, len(wanted), params=query)
        assert [e.id for e in got] == wanted, params
    assert all(e["routing_key"] == "revision.tagged" for e in data(got))


@BOTH_MODES
def test_a_long_unwanted_run_moves_the_clients_id_and_resume_skips_it(
    make_devserver: Callable[..., DevServer], make_gateway: Callable[..., Gateway]
) -> None:
    devserver = make_devserver()
    gateway = make_gateway(devserver.address, *FAST)
    kref = f"kref://{unique_project()}/assets/hero.model"
    query = {"details.tag": "approved"}
    [start] = devserver.publish("space.created", kref)
    [first] = devserver.publish("revision.tagged", kref, {"tag": "approved"})
    with (
        httpx.Client(timeout=20) as client,
        connect_sse(
            client, "GET", gateway.url + "/events", params=query,
            headers={"Last-Event-ID": start},
        ) as source,
    ):  # fmt: skip
        unwanted = devserver.publish("revision.tagged", kref, {"tag": "wip"}, count=350)
        frames = []
        for sse in source.iter_sse():
            if sse.id:
                frames.append(sse)
            if sse.id in unwanted[250:]:
                break
    # The wanted event, then id-only frames (no data: nothing dispatched) at most
    # 100 unwanted events apart, across a catch-up stream's hand-over too.
    assert frames[0].id == first and json.loads(frames[0].data)["cursor"] == first
    assert all(f.data == "" for f in frames[1:])
    positions = [-1] + [unwanted.index(f.id) for f in frames[1:]]
    assert all(0 < b - a <= 100 for a, b in itertools.pairwise(positions)), positions
    held = frames[-1].id
    started = devserver.client().stats().streams_started
    # Resuming by the id the client holds now reads nothing before it again.
    [later] = devserver.publish("revision.tagged", kref, {"tag": "approved"})
    [event] = read_events(gateway.url, 1, params=query, headers={"Last-Event-ID": held})
    assert event.id == later
    with devserver.client() as c:
        requests = c.recent_requests()
    if "--no-hub" in gateway.args:
        assert requests[-1].cursor == held  # the upstream re-reads under 100 events, not 350
    else:  # served from the hub's ring: no upstream call at all
        assert devserver.client().stats().streams_started == started
        assert gateway.metric("kumiho_gateway_hub_ring_hits_total") == 1


@pytest.mark.parametrize(
    ("params", "needle"),
    [
        ({"details.t a g": "x"}, "a detail key is 1 to 64 letters"),
        ({"details.": "x"}, "a detail key"),
        ({"details." + "k" * 65: "x"}, "a detail key"),
        ({"details.tag": ""}, "details.tag: is empty; use * for any value"),
        ({f"details.k{i}": "x" for i in range(9)}, "filters on 9 detail keys; the limit is 8"),
        ({"author": ",".join(["a"] * 17)}, "author: lists 17 patterns"),
        ({"username": "a\x00"}, "U+0000"),
        ({"details.tag": "a" * 257}, "is 257 characters long"),
    ],
)
def test_bad_detail_filters_are_400s(
    stack: tuple[DevServer, Gateway], params: dict[str, str], needle: str
) -> None:
    _, gateway = stack
    r = httpx.get(gateway.url + "/events", params=params, timeout=10)
    assert r.status_code == 400 and needle in r.json()["error"]["message"], r.text
