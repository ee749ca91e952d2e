"""One browser, one connection: kumiho-events.js shares a stream across tabs and subscriptions.

Real headless Chromium over plain HTTP/1.1 (no proxy): the tabs of one origin
elect a leader with Web Locks, it holds one EventSource for the union of every
subscription, and relays each event on a BroadcastChannel to the tabs whose
filters want it. The gateway's ``kumiho_gateway_client_streams_open`` says how
many streams the browser holds. The matcher the tabs filter with is held to
the gateway's by a property test.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import signal
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from gateway._proto import kumiho_pb2
from gateway.backoff import CAP, FACTOR, INITIAL, Backoff
from gateway.matching import EventFilter
from gateway.metrics import ClientStreams
from tests.conftest import BOTH_MODES, FAST, DevServer, Gateway, unique_project, wait_until

ROOT = Path(__file__).resolve().parent.parent
CLIENT = '{client="127.0.0.1"}'
# Unwanted events between a stored cursor and the next wanted one: more than a poll reads
# in one answer, so catching up takes several.
UNWANTED_RUN = 30_000


# -- the matcher: JavaScript and Python agree -----------------------------------

_SEGMENTS = ["a", "b", "ab", "*", "a*", "*b", "**", "#", "", "x-y", "(", "+", "$"]
_VALUE_SEGMENTS = ["a", "b", "ab", "abb", "x-y", "(", "+", "$", "", "\n", "é", "🦊"]
_GLOB_CHARS = "ab*.(+$\\\n?/"


def _joined(parts: list[str], sep: str) -> st.SearchStrategy[str]:
    return st.lists(st.sampled_from(parts), min_size=1, max_size=4).map(sep.join)


_filters = st.fixed_dictionaries(
    {
        "routing_key": st.lists(_joined(_SEGMENTS, "."), max_size=3),
        "kref": st.lists(_joined(_SEGMENTS, "/").map(lambda p: f"kref://{p}"), max_size=3),
        "details": st.dictionaries(
            st.sampled_from(["tag", "kind"]),
            st.lists(st.text(_GLOB_CHARS, min_size=1, max_size=4), min_size=1, max_size=3),
            max_size=2,
        ),
        "author": st.lists(st.text(_GLOB_CHARS, min_size=1, max_size=4), max_size=2),
        "username": st.lists(st.text(_GLOB_CHARS, min_size=1, max_size=4), max_size=2),
    }
)
_events = st.fixed_dictionaries(
    {
        "routing_key": _joined(_VALUE_SEGMENTS, "."),
        "kref": st.tuples(
            _joined(_VALUE_SEGMENTS, "/"), st.sampled_from(["", "?r=1", "?r=2&t=a"])
        ).map(lambda t: f"kref://{t[0]}{t[1]}"),
        "details": st.dictionaries(
            st.sampled_from(["tag", "kind", "n"]), st.text(_GLOB_CHARS, max_size=5), max_size=3
        ),
        "author": st.text(_GLOB_CHARS, max_size=5),
        "username": st.text(_GLOB_CHARS, max_size=5),
    }
)


def _gateway_wants(f: dict[str, Any], e: dict[str, Any]) -> bool:
    event_filter = EventFilter(
        routing_keys=tuple(f["routing_key"]),
        krefs=tuple(f["kref"]),
        details=tuple((k, tuple(v)) for k, v in f["details"].items()),
        authors=tuple(f["author"]),
        usernames=tuple(f["username"]),
    )
    event = kumiho_pb2.Event(
        routing_key=e["routing_key"],
        kref=kumiho_pb2.Kref(uri=e["kref"]),
        details=e["details"],
        author=e["author"],
        username=e["username"],
    )
    return event_filter.wants(event)


@settings(max_examples=25, deadline=None)
@given(st.lists(st.tuples(_filters, _events), min_size=40, max_size=40))
def test_the_browser_matcher_agrees_with_the_gateway(cases: list[tuple[Any, Any]]) -> None:
    payload = json.dumps([{"filter": f, "event": e} for f, e in cases])
    out = subprocess.run(
        ["node", str(ROOT / "tests/js/match.mjs")],
        input=payload,
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout
    assert json.loads(out) == [_gateway_wants(f, e) for f, e in cases]


def test_the_browser_matcher_takes_the_worst_patterns_in_linear_time() -> None:
    # The patterns that took a backtracking matcher seconds to hours, each
    # against the value built for it; node must answer at once.
    worst = [
        ({"username": ["*" * 16 + "x"]}, {"username": "a" * 20}),
        (
            {"details": {"kind": ["a" + "*a" * 126 + "*b"]}},
            {"details": {"kind": "a" * 100_000 + "c"}},
        ),
        ({"routing_key": [".".join(["*e*e*e*x"] * 4)]}, {"routing_key": ".".join(["e" * 28] * 4)}),
        ({"routing_key": ["#." + "*." * 126 + "x"]}, {"routing_key": "e." * 50_000 + "x"}),
        ({"kref": ["kref://**/" + "*e" * 500 + "*x"]}, {"kref": "kref://p/" + "e" * 100_000}),
    ]
    empty = {"routing_key": [], "kref": [], "details": {}, "author": [], "username": []}
    blank = {"routing_key": "a", "kref": "kref://p/s/i.model", "details": {}, "author": "u"}
    cases = [({**empty, **f}, {**blank, "username": "u", **e}) for f, e in worst]
    out = subprocess.run(
        ["node", str(ROOT / "tests/js/match.mjs")],
        input=json.dumps([{"filter": f, "event": e} for f, e in cases]),
        capture_output=True,
        text=True,
        check=True,
        timeout=20,
    ).stdout
    assert (
        json.loads(out)
        == [_gateway_wants(f, e) for f, e in cases]
        == [
            False,
            False,
            False,
            True,
            False,
        ]
    )


def test_the_browser_backs_off_as_the_gateway_does() -> None:
    attempts = list(range(12))
    out = json.loads(
        subprocess.run(
            ["node", str(ROOT / "tests/js/backoff.mjs")],
            input=json.dumps(attempts),
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        ).stdout
    )
    # The numbers the helper's README names: 250 ms, doubling, up to 30 s.
    assert out["numbers"] == {"initialMs": 250, "factor": 2, "capMs": 30_000}
    assert (INITIAL, FACTOR, CAP) == (0.25, 2, 30)

    def gateway_waits(end: float) -> list[float]:
        """The gateway's waits in ms for each failure in a row, its jitter pinned to one end."""
        backoff = Backoff(jitter=lambda: end)
        return [round(backoff.delay() * 1000, 6) for _ in attempts]

    assert [low for low, _ in out["bounds"]] == gateway_waits(0.0)
    assert [high for _, high in out["bounds"]] == gateway_waits(1.0)


# -- tabs in one browser ------------------------------------------------------------

# Each tab's subscriptions, as kumiho-events.js options (the project is filled in).
TABS: list[list[dict[str, Any]]] = [
    [{"kref": "kref://{p}/**"}],
    [{"routingKey": "revision.*"}],
    [{"routingKey": ["item.*.created", "revision.deleted"]}],
    [{"details": {"tag": "approved"}}],
    [{"routingKey": "revision.tagged", "details": {"tag": ["approved", "publ*"]}}],
    [{"username": "mina*"}],
    [{"kref": ["kref://{p}/shots/**"]}],
    [{"author": "u-7"}, {"routingKey": "#", "kref": "kref://{p}/chars/**"}],  # two in one page
]

# What the tests publish, round-robin: (routing key, kref path, details, author, username).
KINDS = [
    ("revision.tagged", "chars/hero.model?r=1", {"tag": "approved"}, "u-1", "mina.park"),
    ("revision.tagged", "chars/hero.model?r=2", {"tag": "wip"}, "u-7", "sam"),
    ("item.model.created", "shots/sq010.comp", {}, "u-2", "aiko"),
    ("revision.deleted", "shots/sq010.comp?r=3", {"tag": "published"}, "u-7", "mina.c"),
    ("revision.tagged", "shots/sq020.comp?r=1", {"tag": "published"}, "u-3", "aiko"),
    ("bundle.created", "lib/set.bundle", {"kind": "set"}, "u-1", "sam"),
]


def _options(options: dict[str, Any], project: str) -> dict[str, Any]:
    def fill(value: Any) -> Any:
        if isinstance(value, str):
            return value.replace("{p}", project)
        if isinstance(value, list):
            return [fill(v) for v in value]
        if isinstance(value, dict):
            return {k: fill(v) for k, v in value.items()}
        return value

    return fill(options)


def _query(options: dict[str, Any]) -> dict[str, str]:
    """The gateway's query for kumiho-events.js options (lists comma-joined, sorted)."""

    def joined(value: str | list[str]) -> str:
        return ",".join(sorted(value if isinstance(value, list) else [value]))

    names = ("routingKey", "routing_key"), ("kref", "kref"), ("author", "author")
    query = {name: joined(options[o]) for o, name in names if options.get(o)}
    if options.get("username"):
        query["username"] = joined(options["username"])
    for key, value in sorted(options.get("details", {}).items()):
        query[f"details.{key}"] = joined(value)
    return query


def _filter(options: dict[str, Any]) -> EventFilter:
    def listed(value: Any) -> tuple[str, ...]:
        return tuple(value) if isinstance(value, list) else (value,) if value else ()

    return EventFilter(
        routing_keys=listed(options.get("routingKey")),
        krefs=listed(options.get("kref")),
        details=tuple((k, listed(v)) for k, v in options.get("details", {}).items()),
        authors=listed(options.get("author")),
        usernames=listed(options.get("username")),
    )


class Published:
    """Every event a test published (cursor and what a filter sees of it), in order."""

    def __init__(self, devserver: DevServer, project: str) -> None:
        self.devserver = devserver
        self.project = project
        self.events: list[tuple[str, kumiho_pb2.Event]] = []
        self._lock = threading.Lock()

    def publish(self, count: int) -> None:
        for _ in range(count):
            with self._lock:
                key, path, details, author, username = KINDS[len(self.events) % len(KINDS)]
                kref = f"kref://{self.project}/{path}"
                [cursor] = self.devserver.publish(
                    key, kref, details, author=author, username=username
                )
                event = kumiho_pb2.Event(
                    routing_key=key,
                    kref=kumiho_pb2.Kref(uri=kref),
                    details=details,
                    author=author,
                    username=username,
                )
                self.events.append((cursor, event))

    def wanted(self, options: dict[str, Any], since: int = 0) -> list[str]:
        """The cursors a subscription with these options must see, from event ``since`` on."""
        f = _filter(options)
        with self._lock:
            return [cursor for cursor, event in self.events[since:] if f.wants(event)]


SUBSCRIBE = """async ([subscriptions, extra]) => {
  const { subscribe } = await import("/kumiho-events.js");
  window.got = subscriptions.map(() => []);
  window.errors = [];
  window.feeds = subscriptions.map((options, i) => subscribe({
    ...options, ...extra,
    onEvent: (e) => window.got[i].push(e.cursor),
    onError: (e) => window.errors.push(e.code),
  }));
}"""


class Tab:
    """A page of the gateway's origin that subscribes with kumiho-events.js."""

    def __init__(self, context: Any, gateway: Gateway, subscriptions: list[dict[str, Any]]):
        self.page = context.new_page()
        self.gateway = gateway
        self.subscriptions = subscriptions
        self.requests: list[str] = []
        self.page.on("request", lambda r: self.requests.append(r.url))
        self.open(since=0)

    def open(self, since: int) -> None:
        """Load the page and subscribe; ``since``: how many events were published before."""
        self.since = since
        # Any page of the origin will do: the library is all the page runs.
        self.page.goto(self.gateway.url + "/healthz")
        self.page.evaluate(SUBSCRIBE, [self.subscriptions, {}])

    def got(self) -> list[list[str]]:
        result: list[list[str]] = self.page.evaluate("window.got")
        return result

    def states(self) -> list[str]:
        result: list[str] = self.page.evaluate("window.feeds.map((f) => f.state())")
        return result

    def role(self) -> str:
        result: str = self.page.evaluate("window.feeds[0].role()")
        return result


@pytest.fixture
def browser(chromium: Any) -> Iterator[Any]:
    """One browser profile: its pages share locks, channels and storage, as tabs do."""
    context = chromium.new_context()
    yield context
    context.close()


def _live(tabs: list[Tab]) -> None:
    wait_until(
        lambda: all(state == "live" for tab in tabs for state in tab.states()),
        20,
        "every subscription of every tab live",
    )


def _received(tabs: list[Tab], published: Published) -> None:
    """Every tab gets exactly its wanted events since it opened, in order: no gap, no repeat."""

    def expected(tab: Tab) -> list[list[str]]:
        return [published.wanted(options, tab.since) for options in tab.subscriptions]

    def done() -> bool:
        return all(tab.got() == expected(tab) for tab in tabs)

    try:
        wait_until(done, 20, "every tab's events")
    except AssertionError:
        for tab in tabs:
            assert tab.got() == expected(tab), tab.subscriptions
        raise


def test_eight_tabs_cost_one_connection_and_each_sees_its_own_events(
    browser: Any, make_devserver: Callable[..., DevServer], make_gateway: Callable[..., Gateway]
) -> None:
    devserver = make_devserver()
    gateway = make_gateway(devserver.address, *FAST)
    project = unique_project()
    subscriptions = [[_options(o, project) for o in tab] for tab in TABS]
    tabs = [Tab(browser, gateway, s) for s in subscriptions]
    _live(tabs)
    # Six would be the most HTTP/1.1 allows; one is what the browser holds.
    assert gateway.metric("kumiho_gateway_client_streams_open", CLIENT) == 1
    assert gateway.metric("kumiho_gateway_streams_open") == 1
    assert sorted(tab.role() for tab in tabs) == ["follower"] * 7 + ["leader"]

    published = Published(devserver, project)
    published.publish(24)
    _received(tabs, published)
    assert all(tab.page.evaluate("window.errors") == [] for tab in tabs)
    # Sanity of the table: the filters really split the events.
    assert len({tuple(map(len, tab.got())) for tab in tabs}) > 4

    # The leader goes while events keep coming: another tab takes over from the last id.
    [leader] = [tab for tab in tabs if tab.role() == "leader"]
    rest = [tab for tab in tabs if tab is not leader]
    publisher = threading.Thread(target=published.publish, args=(30,))
    publisher.start()
    wait_until(lambda: len(published.events) >= 30, 20, "publishing under way")
    leader.page.close()
    publisher.join(30)
    published.publish(6)  # after the hand-over for certain
    _received(rest, published)
    assert sorted(tab.role() for tab in rest) == ["follower"] * 6 + ["leader"]
    wait_until(
        lambda: gateway.metric("kumiho_gateway_client_streams_open", CLIENT) == 1,
        10,
        "the old leader's stream to close",
    )


def test_a_reloaded_tab_resumes_from_its_stored_cursor_on_the_shared_stream(
    browser: Any, make_devserver: Callable[..., DevServer], make_gateway: Callable[..., Gateway]
) -> None:
    devserver = make_devserver()
    gateway = make_gateway(devserver.address, *FAST)
    project = unique_project()
    everything = {"kref": f"kref://{project}/**"}
    tagged = {"routingKey": "revision.tagged", "details": {"tag": "approved"}}
    first = Tab(browser, gateway, [everything])
    second = Tab(browser, gateway, [tagged])
    _live([first, second])
    published = Published(devserver, project)
    published.publish(12)
    _received([first, second], published)

    for tab in (first, second):  # the first leader, then the tab that took over from it
        assert tab.role() == "leader"
        other = second if tab is first else first
        stored = tab.page.evaluate("window.feeds[0].cursor()")
        tab.page.goto("about:blank")
        assert other.page.evaluate("window.feeds[0].role()") == "leader"  # within the goto
        # Stored as the tab went, under the subscription's own default key:
        # "kumiho-events:cursor", the gateway URL, "?" and its filters.
        query = urlencode(_query(tab.subscriptions[0]), safe="*")
        key = f"kumiho-events:cursor {gateway.url}/events?{query}"
        assert other.page.evaluate("(key) => localStorage.getItem(key)", key) == stored
        since = len(published.events)
        published.publish(7)  # while the tab is away
        tab.requests.clear()
        tab.open(since)
        tab.since = since
        _live([first, second])
        published.publish(5)
        # The reloaded tab: exactly what it missed, then what came after; the other: no seam.
        _received([first, second], published)
        assert tab.role() == "follower"
        assert any("/events/poll" in url and f"cursor={stored}" in url for url in tab.requests)
        # Back on the shared stream: one connection from this browser.
        assert gateway.metric("kumiho_gateway_client_streams_open", CLIENT) == 1


def test_without_web_locks_each_subscription_has_its_own_eventsource(
    browser: Any, make_devserver: Callable[..., DevServer], make_gateway: Callable[..., Gateway]
) -> None:
    devserver = make_devserver()
    gateway = make_gateway(devserver.address, *FAST)
    project = unique_project()
    browser.add_init_script(
        "Object.defineProperty(Navigator.prototype, 'locks', { get: () => undefined })"
    )
    tab = Tab(browser, gateway, [{"routingKey": "revision.*"}, {"kref": f"kref://{project}/**"}])
    _live([tab])
    assert tab.page.evaluate("window.feeds.map((f) => f.role())") == ["own", "own"]
    assert gateway.metric("kumiho_gateway_client_streams_open", CLIENT) == 2
    published = Published(devserver, project)
    published.publish(8)
    _received([tab], published)


def test_shared_false_and_a_consumer_group_keep_a_connection_of_their_own(
    browser: Any, make_devserver: Callable[..., DevServer], make_gateway: Callable[..., Gateway]
) -> None:
    devserver = make_devserver("--tier", "enterprise")
    gateway = make_gateway(devserver.address, *FAST)
    project = unique_project()
    own = [{"kref": f"kref://{project}/**", "shared": False}, {"consumerGroup": "render-farm"}]
    tab = Tab(browser, gateway, [{"kref": f"kref://{project}/**"}, *own])
    _live([tab])
    assert tab.page.evaluate("window.feeds.map((f) => f.role())") == ["leader", "own", "own"]
    assert gateway.metric("kumiho_gateway_client_streams_open", CLIENT) == 3
    published = Published(devserver, project)
    published.publish(4)
    _received([tab], published)


def test_a_refused_filter_stops_only_its_own_subscription(
    browser: Any, make_devserver: Callable[..., DevServer], make_gateway: Callable[..., Gateway]
) -> None:
    devserver = make_devserver()
    gateway = make_gateway(devserver.address, *FAST)
    project = unique_project()
    good = {"kref": f"kref://{project}/**"}
    tab = Tab(browser, gateway, [good, {"routingKey": "x" * 300}, {"details": {"bad key": "a"}}])
    wait_until(lambda: tab.states() == ["live", "stopped", "stopped"], 20, "one live, two refused")
    assert tab.page.evaluate("window.errors") == ["invalid_parameter", "invalid_parameter"]
    published = Published(devserver, project)
    published.publish(4)
    wait_until(lambda: tab.got()[0] == published.wanted(good), 10, "the good one's events")
    assert tab.got()[1:] == [[], []]
    assert gateway.metric("kumiho_gateway_client_streams_open", CLIENT) == 1


def test_a_tab_that_starts_at_the_beginning_reads_the_past_then_shares_the_stream(
    browser: Any, make_devserver: Callable[..., DevServer], make_gateway: Callable[..., Gateway]
) -> None:
    devserver = make_devserver()
    gateway = make_gateway(devserver.address, *FAST)
    project = unique_project()
    published = Published(devserver, project)
    published.publish(9)  # before any tab
    live = Tab(browser, gateway, [{"routingKey": ["revision.tagged", "revision.deleted"]}])
    _live([live])
    live.since = len(published.events)
    # The live tab gets an event before the second tab widens the shared stream, which
    # then resumes after it. (Before any event it would resume from a second before the
    # stream first opened, by design, and hand the live tab some of the nine above.)
    for _ in range(len(KINDS)):
        if published.wanted(live.subscriptions[0], live.since):
            break
        published.publish(1)
    _wait_got([live], [published.wanted(live.subscriptions[0], live.since)], "its first event")
    history = [{"routingKey": "revision.*", "from": "beginning", "kref": f"kref://{project}/**"}]
    past = Tab(browser, gateway, history)
    publisher = threading.Thread(target=published.publish, args=(12,))
    publisher.start()  # while the second tab reads the past
    _live([live, past])
    publisher.join(30)
    published.publish(3)
    _received([live, past], published)
    assert past.role() == "follower"
    # Both tabs ask for routing keys only, so the shared stream asks for their union.
    wanted = "routing_key=revision.*%2Crevision.deleted%2Crevision.tagged"
    assert any(f"/events?{wanted}" in url for url in live.requests)
    assert gateway.metric("kumiho_gateway_client_streams_open", CLIENT) == 1


def test_a_union_past_16_patterns_asks_for_everything_and_each_still_gets_its_own(
    browser: Any, make_devserver: Callable[..., DevServer], make_gateway: Callable[..., Gateway]
) -> None:
    devserver = make_devserver()
    gateway = make_gateway(devserver.address, *FAST)
    project = unique_project()
    keys = [f"k{i}.created" for i in range(17)]  # the gateway takes 16 patterns a list
    tab = Tab(browser, gateway, [{"routingKey": key} for key in keys])
    _live([tab])
    streams = [url for url in tab.requests if urlsplit(url).path == "/events"]
    assert streams and "routing_key" not in streams[-1], streams
    cursors = [devserver.publish(key, f"kref://{project}/a")[0] for key in [*keys, "k99.created"]]
    wait_until(lambda: tab.got() == [[c] for c in cursors[:17]], 10, "one event for each")


def _two_tabs_live(
    browser: Any, make_devserver: Callable[..., DevServer], make_gateway: Callable[..., Gateway]
) -> tuple[DevServer, Gateway, list[Tab], Published]:
    """Two tabs (everything in a project; a detail filter), live, with three events read."""
    devserver = make_devserver()
    gateway = make_gateway(devserver.address, *FAST, "--retry-ms", "300")
    project = unique_project()
    tabs = [Tab(browser, gateway, [o]) for o in ({"kref": f"kref://{project}/**"}, *TABS[3])]
    _live(tabs)
    published = Published(devserver, project)
    published.publish(3)
    _received(tabs, published)
    return devserver, gateway, tabs, published


def test_tabs_ride_out_a_gateway_restart_and_an_upstream_outage(
    browser: Any, make_devserver: Callable[..., DevServer], make_gateway: Callable[..., Gateway]
) -> None:
    devserver, gateway, tabs, published = _two_tabs_live(browser, make_devserver, make_gateway)

    gateway.stop(signal.SIGKILL)
    wait_until(
        lambda: all(tab.states() == ["reconnecting"] for tab in tabs), 10, "tabs reconnecting"
    )
    published.publish(6)  # while the gateway is down
    gateway.start()
    _live(tabs)
    published.publish(6)
    _received(tabs, published)

    devserver.stop(signal.SIGKILL)
    wait_until(lambda: all(tab.states() == ["upstream-down"] for tab in tabs), 20, "upstream down")
    devserver.start()
    _live(tabs)
    published.publish(6)
    _received(tabs, published)
    assert gateway.metric("kumiho_gateway_client_streams_open", CLIENT) == 1


def test_the_runnable_example_shares_one_connection(
    browser: Any, make_devserver: Callable[..., DevServer], make_gateway: Callable[..., Gateway]
) -> None:
    devserver = make_devserver()
    gateway = make_gateway(devserver.address, *FAST)
    pages = [browser.new_page() for _ in range(3)]
    for page in pages:
        page.goto(gateway.url + "/tabs.html")
    for page in pages:
        page.wait_for_function(
            "[0, 1].every((i) => document.querySelector(`#state-${i}`).textContent === 'live')",
            timeout=20_000,
        )
    kref = f"kref://{unique_project()}/hero.model?r=1"
    devserver.publish("revision.tagged", kref, {"tag": "approved"})
    for page in pages:
        for list_id in ("#list-0", "#list-1"):
            page.wait_for_function(
                f"document.querySelector('{list_id}').textContent.includes('{kref}')",
                timeout=10_000,
            )
    roles = sorted(page.locator("#role").inner_text() for page in pages)
    assert roles == ["holds the connection"] + ["reads through another tab"] * 2
    assert gateway.metric("kumiho_gateway_client_streams_open", CLIENT) == 1


def test_a_tab_that_opened_after_the_last_event_takes_over_from_it(
    browser: Any, make_devserver: Callable[..., DevServer], make_gateway: Callable[..., Gateway]
) -> None:
    devserver = make_devserver()
    gateway = make_gateway(devserver.address, *FAST)
    project = unique_project()
    everything = {"kref": f"kref://{project}/**"}
    first = Tab(browser, gateway, [everything])
    _live([first])
    published = Published(devserver, project)
    published.publish(3)
    _received([first], published)
    second = Tab(browser, gateway, [everything])  # it has seen no event relayed
    second.since = len(published.events)
    _live([second])
    first.page.close()
    wait_until(lambda: second.role() == "leader", 10, "the second tab to lead")
    published.publish(4)
    _received([second], published)
    # It resumed where the stream was, not at "latest": nothing published meanwhile is lost.
    last = published.events[2][0]
    assert any("/events?" in url and f"cursor={last}" in url for url in second.requests)


def test_the_client_stream_count_follows_each_address_and_forgets_it(
    make_devserver: Callable[..., DevServer], make_gateway: Callable[..., Gateway]
) -> None:
    gateway = make_gateway(make_devserver().address, *FAST)
    # All of 127/8 is this machine: three client addresses without leaving it.
    sources = ["127.0.0.2", "127.0.0.2", "127.0.0.3"]
    with contextlib.ExitStack() as stack:
        for source in sources:
            transport = httpx.HTTPTransport(local_address=source)
            client = stack.enter_context(httpx.Client(transport=transport, timeout=30))
            response = stack.enter_context(client.stream("GET", gateway.url + "/events"))
            assert response.status_code == 200
        wait_until(lambda: gateway.metric("kumiho_gateway_streams_open") == 3, 10, "streams")
        assert gateway.metric("kumiho_gateway_client_streams_open", '{client="127.0.0.2"}') == 2
        assert gateway.metric("kumiho_gateway_client_streams_open", '{client="127.0.0.3"}') == 1
    wait_until(lambda: gateway.metric("kumiho_gateway_streams_open") == 0, 10, "closed")
    text = httpx.get(gateway.url + "/metrics").text
    assert "127.0.0.2" not in text and "127.0.0.3" not in text  # no series left behind


def test_past_the_address_limit_streams_count_as_other(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ClientStreams, "LIMIT", 2)
    registry = CollectorRegistry()
    streams = ClientStreams(registry, multiprocess=False)
    labels = [streams.opened(a) for a in ("10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.1")]
    assert labels == ["10.0.0.1", "10.0.0.2", "other", "10.0.0.1"]

    def value(client: str) -> float | None:
        return registry.get_sample_value("kumiho_gateway_client_streams_open", {"client": client})

    assert (value("10.0.0.1"), value("other")) == (2, 1)
    for label in labels:
        streams.closed(label)
    assert [value(c) for c in ("10.0.0.1", "10.0.0.2", "other")] == [None, None, None]
    assert streams.opened("10.0.0.4") == "10.0.0.4"  # room again
    # A worker of a pool cannot drop a label from its file: past the limit, "other" for good.
    pooled = ClientStreams(CollectorRegistry(), multiprocess=True)
    for label in [pooled.opened(a) for a in ("10.0.0.1", "10.0.0.2")]:
        pooled.closed(label)
    assert pooled.opened("10.0.0.3") == "other"


class _BadGateway(http.server.BaseHTTPRequestHandler):
    """What a proxy answers while the gateway behind it is down."""

    def do_GET(self) -> None:
        self.send_response(502)
        self.send_header("Content-Length", "0")
        self.end_headers()
        self.server.hits += 1  # type: ignore[attr-defined]

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_a_proxy_502_does_not_stop_the_tabs_as_it_stops_eventsource(
    browser: Any, make_devserver: Callable[..., DevServer], make_gateway: Callable[..., Gateway]
) -> None:
    _, gateway, tabs, published = _two_tabs_live(browser, make_devserver, make_gateway)

    gateway.stop(signal.SIGKILL)
    proxy = http.server.ThreadingHTTPServer(("127.0.0.1", gateway.port), _BadGateway)
    proxy.hits = 0  # type: ignore[attr-defined]
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    try:
        # The stream's retry meets the 502 (EventSource gives up), then the poll asking why.
        wait_until(lambda: proxy.hits >= 2, 20, "502s answered")  # type: ignore[attr-defined]
        published.publish(3)  # while the gateway is down
    finally:
        proxy.shutdown()
        proxy.server_close()
    gateway.start()
    _live(tabs)
    published.publish(3)
    _received(tabs, published)
    assert all(tab.page.evaluate("window.errors") == [] for tab in tabs)
    assert gateway.metric("kumiho_gateway_client_streams_open", CLIENT) == 1


def test_a_revoked_token_stops_every_tab_with_the_gateways_error(
    browser: Any, make_devserver: Callable[..., DevServer], make_gateway: Callable[..., Gateway]
) -> None:
    devserver = make_devserver("--token", "tok-a=studio-a")
    gateway = make_gateway(devserver.address, *FAST, "--auth", "passthrough")
    project = unique_project()
    tabs = [
        Tab(browser, gateway, [{**o, "accessToken": "tok-a"}])
        for o in ({"kref": f"kref://{project}/**"}, {"routingKey": "revision.*"})
    ]
    _live(tabs)
    assert sorted(tab.role() for tab in tabs) == ["follower", "leader"]
    devserver.stop()
    devserver.args = ["--token", "tok-b=studio-b"]  # tok-a is no longer valid
    devserver.start()
    wait_until(lambda: all(tab.states() == ["stopped"] for tab in tabs), 20, "every tab stopped")
    for tab in tabs:
        assert tab.page.evaluate("window.errors") == ["unauthenticated"]
    assert "tok-a" not in gateway.log()


def test_tabs_with_different_tokens_never_share_a_stream_or_an_event(
    browser: Any, make_devserver: Callable[..., DevServer], make_gateway: Callable[..., Gateway]
) -> None:
    devserver = make_devserver("--token", "tok-a=studio-a", "--token", "tok-b=studio-b")
    gateway = make_gateway(devserver.address, *FAST, "--auth", "passthrough")
    tabs = {
        tenant: [Tab(browser, gateway, [{"accessToken": f"tok-{tenant[-1]}"}]) for _ in range(2)]
        for tenant in ("studio-a", "studio-b")
    }
    everyone = [tab for pair in tabs.values() for tab in pair]
    _live(everyone)
    # One stream per credential, each shared by its own two tabs.
    assert gateway.metric("kumiho_gateway_client_streams_open", CLIENT) == 2
    for pair in tabs.values():
        assert sorted(tab.role() for tab in pair) == ["follower", "leader"]
    sent = {t: devserver.publish("item.created", f"kref://{t}/x", count=3, tenant=t) for t in tabs}
    for tenant, pair in tabs.items():
        for tab in pair:
            wait_until(lambda t=tab, s=sent[tenant]: t.got() == [s], 10, f"{tenant}'s events")
    assert "tok-a" not in gateway.log() and "tok-b" not in gateway.log()


# -- where a subscription starts -----------------------------------------------------

OPEN_ONE = """async (options) => {
  const { subscribe } = await import("/kumiho-events.js");
  window.got ??= [];
  window.feeds ??= [];
  const got = [];
  window.got.push(got);
  window.feeds.push(subscribe({ ...options, onEvent: (e) => got.push(e.cursor) }));
  return window.feeds.length - 1;
}"""


def _wait_got(tabs: list[Tab], expected: list[list[str]], what: str) -> None:
    """Every tab's subscriptions got exactly ``expected``; on a timeout, what they got instead."""
    try:
        wait_until(lambda: all(tab.got() == expected for tab in tabs), 20, what)
    except AssertionError:
        for tab in tabs:
            assert tab.got() == expected, what
        raise


def _open_one(tab: Tab, options: dict[str, Any]) -> int:
    """One more subscription in a tab; its index in window.feeds (and window.got)."""
    index: int = tab.page.evaluate(OPEN_ONE, options)
    wait_until(
        lambda: tab.page.evaluate("(i) => window.feeds[i].state()", index) == "live",
        20,
        f"subscription {index} live",
    )
    return index


@BOTH_MODES
def test_a_stored_cursor_belongs_to_its_gateway_and_credential(
    browser: Any, make_devserver: Callable[..., DevServer], make_gateway: Callable[..., Gateway]
) -> None:
    devserver = make_devserver("--token", "tok-a=studio-a", "--token", "tok-b=studio-b")
    here = make_gateway(devserver.address, *FAST, "--auth", "passthrough")
    tab = Tab(browser, here, [])
    elsewhere = make_gateway(
        devserver.address, *FAST, "--auth", "passthrough", "--cors-origins", here.url
    )
    project = unique_project()
    everything = {"kref": f"kref://{project}/**"}
    first = _open_one(tab, {**everything, "accessToken": "tok-a"})
    [cursor] = devserver.publish("item.created", f"kref://{project}/x", tenant="studio-a")
    wait_until(lambda: tab.got()[first] == [cursor], 10, "token A's event")
    tab.page.evaluate("(i) => window.feeds[i].close()", first)  # its cursor stored

    # The same filters with another token, and with the same token at another gateway:
    # neither starts from token A's cursor here (nor reports it unknown as a gap).
    tab.requests.clear()
    _open_one(tab, {**everything, "accessToken": "tok-b"})
    _open_one(tab, {**everything, "accessToken": "tok-a", "url": elsewhere.url + "/events"})
    assert not [url for url in tab.requests if cursor in url]
    assert tab.page.evaluate("window.feeds.slice(1).map((f) => f.cursor())") == ["", ""]
    # Tokens are never written into storage keys; a fingerprint tells them apart.
    keys = tab.page.evaluate("Object.keys(localStorage)")
    assert keys and not [key for key in keys if "tok-" in key]

    # Token A at this gateway again: it resumes after its own cursor.
    tab.requests.clear()
    _open_one(tab, {**everything, "accessToken": "tok-a"})
    assert any("/events/poll" in url and f"cursor={cursor}" in url for url in tab.requests)


@BOTH_MODES
def test_a_take_over_before_any_event_resumes_from_where_the_stream_first_opened(
    browser: Any, make_devserver: Callable[..., DevServer], make_gateway: Callable[..., Gateway]
) -> None:
    devserver = make_devserver()
    gateway = make_gateway(devserver.address, *FAST)
    project = unique_project()
    everything = {"kref": f"kref://{project}/**"}
    tabs = [Tab(browser, gateway, [everything]) for _ in range(5)]
    _live(tabs)
    [leader] = [tab for tab in tabs if tab.role() == "leader"]
    rest = [tab for tab in tabs if tab is not leader]
    during: list[str] = []

    def publish_first(route: Any) -> None:
        # The new leader's stream is asked for only now: the event comes between the old
        # stream's end and the new one's start, the take-over's blind spot.
        if not during:
            during.extend(devserver.publish("revision.created", f"kref://{project}/a"))
        route.continue_()

    for tab in rest:
        tab.page.route(lambda url: urlsplit(url).path == "/events", publish_first)
    leader.page.close()
    # Each role() call lets Playwright run the route handler (sync Playwright dispatches
    # only inside its own calls).
    wait_until(
        lambda: sum(tab.role() == "leader" for tab in rest) == 1 and bool(during),
        20,
        "a new leader to ask for its stream",
    )
    after = devserver.publish("revision.created", f"kref://{project}/b")
    _wait_got(rest, [during + after], "both events")


@BOTH_MODES
def test_a_stream_broken_before_its_first_event_resumes_from_when_it_opened(
    browser: Any, make_devserver: Callable[..., DevServer], make_gateway: Callable[..., Gateway]
) -> None:
    devserver = make_devserver()
    gateway = make_gateway(devserver.address, *FAST, "--retry-ms", "300")
    project = unique_project()
    everything = {"kref": f"kref://{project}/**"}
    # The shared stream, and an EventSource of the helper's own.
    tab = Tab(browser, gateway, [everything, {**everything, "shared": False}])
    _live([tab])
    assert tab.page.evaluate("window.feeds.map((f) => f.role())") == ["leader", "own"]
    gateway.stop(signal.SIGKILL)
    wait_until(lambda: tab.states() == ["reconnecting"] * 2, 10, "both reconnecting")
    down = devserver.publish("revision.created", f"kref://{project}/a")  # while it is down
    gateway.start()
    _live([tab])
    up = devserver.publish("revision.created", f"kref://{project}/b")
    _wait_got([tab], [down + up] * 2, "both events in both")


# Wraps localStorage.setItem so a test sees every cursor stored, in order with the events.
RECORD_WRITES = """
window.log = [];
const setItem = Storage.prototype.setItem;
Storage.prototype.setItem = function (key, value) {
  window.log.push(["stored", key, value]);
  return setItem.call(this, key, value);
};
"""


def _order(cursor: str) -> tuple[int, int]:
    ms, _, seq = cursor.partition("-")
    return int(ms), int(seq)


@BOTH_MODES
def test_a_catch_up_through_a_long_unwanted_run_delivers_the_event_after_it(
    browser: Any, make_devserver: Callable[..., DevServer], make_gateway: Callable[..., Gateway]
) -> None:
    devserver = make_devserver()
    gateway = make_gateway(devserver.address, *FAST)
    project = unique_project()
    kref = f"kref://{project}/hero.model"
    # A detail filter: the gateway, not the upstream, reads past every unwanted event.
    approved = {"kref": f"kref://{project}/**", "details": {"tag": "approved"}}
    [first] = devserver.publish("revision.tagged", kref, {"tag": "approved"})
    devserver.publish("revision.tagged", kref, {"tag": "wip"}, count=UNWANTED_RUN)
    [wanted] = devserver.publish("revision.tagged", kref, {"tag": "approved"})
    browser.add_init_script(RECORD_WRITES)
    page = browser.new_page()
    page.goto(gateway.url + "/healthz")
    key = f"kumiho-events:cursor {gateway.url}/events?" + urlencode(_query(approved), safe="*")
    page.evaluate("([key, cursor]) => localStorage.setItem(key, cursor)", [key, first])
    page.evaluate(
        """async (options) => {
          const { subscribe } = await import("/kumiho-events.js");
          window.feed = subscribe({ ...options,
            onEvent: (e) => window.log.push(["event", e.cursor]) });
        }""",
        approved,
    )
    page.wait_for_function("window.feed.state() === 'live'", timeout=60_000)
    [later] = devserver.publish("revision.tagged", kref, {"tag": "approved"})

    def events() -> list[str]:
        return [entry[1] for entry in page.evaluate("window.log") if entry[0] == "event"]

    try:
        wait_until(lambda: len(events()) >= 2, 30, "the wanted event and the later one")
    finally:
        assert events() == [wanted, later]
    # The stored cursor never went past the wanted event before it was delivered (it is
    # stored as it is delivered, so it may be that event's).
    log = page.evaluate("window.log")
    before = log[: log.index(["event", wanted])]
    stored = [entry[2] for entry in before if entry[0] == "stored" and entry[1] == key]
    assert all(_order(cursor) <= _order(wanted) for cursor in stored), stored
