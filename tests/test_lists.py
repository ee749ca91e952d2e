"""Lists of filters: any of them, each event once, in cursor order, resumable by its plain id.

The gateway matches lists itself (the upstream takes one pattern per call),
so its matcher must agree with the reference upstream's filters: one table
of patterns and values runs through both.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import grpc
import pytest

from gateway._proto import kumiho_pb2, kumiho_pb2_grpc
from gateway.matching import EventFilter
from tests.conftest import (
    BOTH_MODES,
    FAST,
    DevServer,
    Gateway,
    Reader,
    data,
    read_events,
    unique_project,
    wait_until,
)

ROUTING_PATTERNS = [
    "revision.*",
    "revision.#",
    "item.*.created",
    "item.#.created",
    "item.**",
    "revision.tagged",
    "**.**",
    "item.#.**.created",
    "*.created",
    "space.*",
    "revision.tag?ed",
    "*",
]
ROUTING_VALUES = [
    "revision.created",
    "revision.tagged",
    "revision",
    "revision.tag.extra",
    "item.model.created",
    "item.model.deleted",
    "item.created",
    "item.a.b.created",
    "space.created",
    "project.deleted",
    "revision.tag?ed",
]
KREF_PATTERNS = [
    "kref://{p}/**",
    "kref://{p}/**/*.model",
    "kref://{p}/*/hero.model",
    "kref://{p}/chars/hero.model?r=3",
    "kref://{p}/a/**/**",
    "kref://{p}/ch*/*",
    "kref://{p}/狐/**",
]
KREF_VALUES = [
    "kref://{p}/chars/hero.model?r=3&a=mesh",
    "kref://{p}",
    "kref://{p}/chars/hero.model",
    "kref://{p}/chars/hero.model?r=3",
    "kref://{p}/a/b/c/hero.model?r=1",
    "kref://{p}/chars/hero.rig",
    "kref://{p}/a/b/hero.model",
    "kref://{p}x/chars/hero.model",
    "kref://{p}/狐/空間/item.model",
]


def _example(pattern: str, sep: str) -> str:
    """A value the pattern surely matches: every wildcard replaced by a literal."""
    return re.sub(r"\*\*|#|\*", "zz", pattern) if sep == "." else pattern.replace("*", "zz")


def _upstream_matches(devserver: DevServer, kind: str, pattern: str, scope: str) -> set[str]:
    """What the reference upstream streams for ``pattern``: read up to its own sentinel."""
    sentinel = _example(pattern, "." if kind == "routing_key" else "/")
    if kind == "routing_key":
        request = kumiho_pb2.EventStreamRequest(
            routing_key_filter=pattern, kref_filter=scope, from_beginning=True
        )
    else:
        request = kumiho_pb2.EventStreamRequest(
            routing_key_filter=scope, kref_filter=pattern, from_beginning=True
        )
    seen: set[str] = set()
    with grpc.insecure_channel(devserver.address) as channel:
        call = kumiho_pb2_grpc.KumihoServiceStub(channel).EventStream(request, timeout=20)
        for event in call:
            value = event.routing_key if kind == "routing_key" else event.kref.uri
            seen.add(value)
            if value == sentinel:
                call.cancel()
                break
    return seen


def _filter(kind: str, patterns: list[str]) -> EventFilter:
    return (
        EventFilter(routing_keys=tuple(patterns))
        if kind == "routing_key"
        else EventFilter(krefs=tuple(patterns))
    )


def _hit(wanted: EventFilter, kind: str, value: str) -> bool:
    if kind == "routing_key":
        return wanted.wants(kumiho_pb2.Event(routing_key=value))
    return wanted.wants(kumiho_pb2.Event(kref=kumiho_pb2.Kref(uri=value)))


@pytest.mark.parametrize("kind", ["routing_key", "kref"])
def test_the_gateway_matches_as_the_reference_upstream_filters(
    make_devserver: Callable[..., DevServer], make_gateway: Callable[..., Gateway], kind: str
) -> None:
    devserver = make_devserver()
    project = unique_project()
    probe = f"{project}.probe"  # the routing key of the kref table's events
    if kind == "routing_key":
        sep, scope = ".", f"kref://{project}/**"
        patterns, values = ROUTING_PATTERNS, ROUTING_VALUES
        publish = lambda value: devserver.publish(value, f"kref://{project}/s/x.model")  # noqa: E731
    else:
        sep, scope = "/", probe
        patterns = [p.format(p=project) for p in KREF_PATTERNS]
        values = [v.format(p=project) for v in KREF_VALUES]
        publish = lambda value: devserver.publish(probe, value)  # noqa: E731
    sentinels = [_example(p, sep) for p in patterns]
    for value in [*values, *sentinels]:
        publish(value)

    # The same table through the gateway's matcher and the upstream's filter.
    everything = [*values, *sentinels]
    for pattern, sentinel in zip(patterns, sentinels, strict=True):
        upstream = _upstream_matches(devserver, kind, pattern, scope)
        mine = _filter(kind, [pattern])
        assert _hit(mine, kind, sentinel)
        # The upstream's stream was read up to this pattern's sentinel, in order.
        before = everything[: everything.index(sentinel) + 1]
        assert upstream == {v for v in before if _hit(mine, kind, v)}, pattern

    # And the whole table as one list, through a gateway that matches it itself.
    gateway = make_gateway(devserver.address, *FAST)
    narrow = [p for p in patterns if p not in ("*", "**.**")]  # those mean everything
    listed = _filter(kind, narrow)
    wanted = [v for v in everything if _hit(listed, kind, v)]
    other = "kref" if kind == "routing_key" else "routing_key"
    params = {"from": "beginning", kind: ",".join(narrow), other: scope}
    got = data(read_events(gateway.url, len(wanted), params=params))
    assert [e["routing_key" if kind == "routing_key" else "kref"] for e in got] == wanted


@BOTH_MODES
def test_a_list_streams_each_matching_event_once_in_order_and_resumes_by_plain_id(
    make_devserver: Callable[..., DevServer], make_gateway: Callable[..., Gateway]
) -> None:
    devserver = make_devserver()
    gateway = make_gateway(devserver.address, *FAST)
    project = unique_project()
    kref = f"kref://{project}/shots/sq010.comp"
    published: list[tuple[str, str, str]] = []
    for n in range(30):
        key = ("item.deleted", "item.deprecated", "revision.tagged", "revision.created")[n % 4]
        where = kref if n % 3 else f"kref://{project}/assets/hero.model"
        [cursor] = devserver.publish(key, where)
        published.append((cursor, key, where))
    # Both lists at once, in the n8n node's spelling and as repeated parameters.
    query = [
        ("from", "beginning"),
        ("routing_key_filter", "item.deleted,item.deprecated"),
        ("routing_key", "revision.tagged"),
        ("kref", f"kref://{project}/shots/**"),
        ("kref_filter", f"kref://{project}/nothing/**"),
    ]
    wanted = [c for c, key, where in published if key != "revision.created" and where == kref]
    first = read_events(gateway.url, 7, params=query)
    assert [e.id for e in first] == wanted[:7]
    # The last id is a plain Kumiho cursor: resume with it, as a browser would.
    rest = read_events(
        gateway.url, len(wanted) - 7, headers={"Last-Event-ID": first[-1].id}, params=query
    )
    assert [e.id for e in rest] == wanted[7:]


def test_different_lists_share_one_upstream_stream_per_credential(
    make_devserver: Callable[..., DevServer], make_gateway: Callable[..., Gateway]
) -> None:
    devserver = make_devserver()
    gateway = make_gateway(devserver.address, *FAST, "--auth", "service", "--api-keys", "k1,k2")
    auth = {"Authorization": "Bearer k1"}
    # The last event is one every reader wants: anything unwanted would come before it.
    end = "item.end.created"
    filters = [
        "item.*.created",
        f"revision.tagged,revision.created,{end}",
        "space.*,item.#",
        "",
    ]
    readers = [Reader(gateway.url, params={"routing_key": f}, headers=auth) for f in filters]
    for reader in readers:
        reader.start()
    wait_until(lambda: gateway.metric("kumiho_gateway_streams_open") == 4, 15, "streams open")
    assert devserver.open_streams() == 1
    keys = ["item.model.created", "revision.tagged", "space.created", "revision.created", end]
    for key in keys:
        devserver.publish(key, "kref://p/s/x.model")
    expected = [
        ["item.model.created", end],
        ["revision.tagged", "revision.created", end],
        ["item.model.created", "space.created", end],
        keys,
    ]
    for reader, want in zip(readers, expected, strict=True):
        assert [e["routing_key"] for e in data(reader.wait_for(len(want)))] == want
    for reader in readers:
        reader.stop.set()
