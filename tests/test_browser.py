"""A real headless Chromium against the gateway: EventSource, the library, CORS, credentials.

The dashboard's own tests are in test_dashboard.py.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from tests.conftest import (
    FAST,
    DevServer,
    Gateway,
    PageServer,
    Publisher,
    unique_project,
    wait_until,
)

EXPIRED = '{cause="token_expired"}'
STREAMS = "kumiho_gateway_streams_open"


@pytest.fixture
def page(chromium: Any) -> Any:
    context = chromium.new_context(viewport={"width": 1280, "height": 760})
    page = context.new_page()
    yield page
    context.close()


def test_the_api_docs_render_with_nothing_from_another_host(
    page: Any, make_devserver: Callable[..., DevServer], make_gateway: Callable[..., Gateway]
) -> None:
    gateway = make_gateway(make_devserver().address, *FAST)
    requested: list[str] = []
    page.on("request", lambda request: requested.append(request.url))
    page.goto(gateway.url + "/docs")
    page.wait_for_selector(".swagger-ui .information-container .title", timeout=15_000)
    assert "kumiho-sse-gateway" in page.locator(".swagger-ui .title").first.inner_text()
    page.wait_for_selector("text=/events", timeout=10_000)  # the operations rendered
    assert requested and all(url.startswith(gateway.url) for url in requested), requested


def _hosts_named(text: str) -> set[str]:
    """The hosts of every absolute http(s) URL in ``text``."""
    return {urlsplit(url).netloc for url in re.findall(r"https?://[^\s\"'<>)]+", text)}


# Each page, and what shows once it has rendered the operations.
DOC_PAGES = {"/redoc": "[role=menuitem] >> nth=3", "/docs": ".swagger-ui .opblock >> nth=3"}


@pytest.mark.parametrize("path", list(DOC_PAGES))
def test_the_api_doc_pages_load_nothing_from_another_host(
    page: Any,
    make_devserver: Callable[..., DevServer],
    make_gateway: Callable[..., Gateway],
    path: str,
) -> None:
    gateway = make_gateway(make_devserver().address, *FAST)
    here = urlsplit(gateway.url).netloc
    html = httpx.get(gateway.url + path, timeout=10)
    assert html.status_code == 200
    assert _hosts_named(html.text) <= {here}, html.text
    # What the browser asks for while the page renders, images and fonts included.
    requested: list[str] = []
    page.on("request", lambda request: requested.append(request.url))
    page.goto(gateway.url + path)
    page.wait_for_selector(DOC_PAGES[path], timeout=20_000)
    page.wait_for_load_state("networkidle", timeout=20_000)
    # data: and blob: URLs are the page's own memory.
    hosts = {urlsplit(url).netloc for url in requested if not url.startswith(("data:", "blob:"))}
    assert hosts == {here}, requested


def test_a_400_stops_eventsource_for_good(
    page: Any, make_devserver: Callable[..., DevServer], make_gateway: Callable[..., Gateway]
) -> None:
    devserver = make_devserver()
    gateway = make_gateway(devserver.address, *FAST)
    page.goto(gateway.url + "/")
    state = page.evaluate(
        """() => new Promise((resolve) => {
            const es = new EventSource('/events?routing_key=' + 'x'.repeat(300));
            es.onerror = () => setTimeout(() => resolve(es.readyState), 200);
        })"""
    )
    assert state == 2  # EventSource.CLOSED: it will not retry


def test_named_events_reach_add_event_listener(
    page: Any, make_devserver: Callable[..., DevServer], make_gateway: Callable[..., Gateway]
) -> None:
    devserver = make_devserver()
    gateway = make_gateway(devserver.address, *FAST)
    project = unique_project()
    devserver.publish("revision.tagged", f"kref://{project}/a.model?r=1", {"tag": "approved"})
    devserver.publish("revision.created", f"kref://{project}/a.model?r=2")
    page.goto(gateway.url + "/")
    got = page.evaluate(
        """(kref) => new Promise((resolve) => {
            const query = `named=true&from=beginning&kref=${encodeURIComponent(kref)}`;
            const es = new EventSource(`/events?${query}`);
            const seen = {tagged: [], created: [], message: 0};
            es.onmessage = () => { seen.message += 1; };
            es.addEventListener('revision.tagged', (e) => {
                seen.tagged.push(JSON.parse(e.data).details.tag);
            });
            es.addEventListener('revision.created', (e) => {
                seen.created.push(e.lastEventId);
                es.close();
                resolve(seen);
            });
        })""",
        f"kref://{project}/**",
    )
    assert got["tagged"] == ["approved"]
    assert len(got["created"]) == 1 and got["message"] == 0


def test_the_library_sends_lists_and_detail_filters(
    page: Any, make_devserver: Callable[..., DevServer], make_gateway: Callable[..., Gateway]
) -> None:
    devserver = make_devserver()
    gateway = make_gateway(devserver.address, *FAST)
    project = unique_project()
    kref = f"kref://{project}/hero.model?r=1"
    wanted = []
    for n, (key, tag, who) in enumerate(
        [
            ("revision.tagged", "approved", "aiko"),
            ("revision.tagged", "wip", "aiko"),
            ("item.model.deleted", "approved", "aiko"),
            ("revision.created", "approved", "mina"),
            ("revision.tagged", "published", "sam"),  # wanted, and last: nothing unwanted after
        ]
    ):
        [cursor] = devserver.publish(key, kref, {"tag": tag, "n": str(n)}, username=who)
        if tag != "wip" and who != "mina" and key != "revision.created":
            wanted.append(cursor)
    page.goto(gateway.url + "/")
    page.evaluate(
        """async (project) => {
          const { subscribe } = await import("/kumiho-events.js");
          window.got = [];
          subscribe({
            from: "beginning", storageKey: null,
            routingKey: ["revision.tagged", "item.*.deleted"],
            kref: [`kref://${project}/**`],
            details: { tag: ["approved", "publ*"] },
            username: ["aiko", "sam"],
            onEvent: (e) => window.got.push(e.cursor),
          });
        }""",
        project,
    )
    wait_until(lambda: page.evaluate("window.got.length") >= len(wanted), 10, "the events")
    assert page.evaluate("window.got") == wanted


def _cross_origin_page(gateway: Gateway, query: str, credentials: bool) -> str:
    return f"""<!doctype html><meta charset="utf-8"><script>
      window.result = {{events: [], state: 'pending'}};
      const es = new EventSource('{gateway.url}/events?{query}',
                                 {{withCredentials: {str(credentials).lower()}}});
      es.onopen = () => {{ window.result.state = 'open'; }};
      es.onmessage = (m) => {{ window.result.events.push(JSON.parse(m.data).kref); }};
      es.onerror = () => {{
        if (es.readyState === EventSource.CLOSED) window.result.state = 'closed';
      }};
    </script>"""


def test_cors_allowlist_in_a_real_browser(
    page: Any,
    make_devserver: Callable[..., DevServer],
    make_gateway: Callable[..., Gateway],
    page_server: Callable[[dict[str, str]], PageServer],
) -> None:
    devserver = make_devserver()
    project = unique_project()
    devserver.publish("revision.created", f"kref://{project}/c.model")
    query = f"from=beginning&kref=kref://{project}/**"
    allowed = page_server({})
    gateway = make_gateway(devserver.address, *FAST, "--cors-origins", allowed.origin)
    allowed_url = allowed.write("index.html", _cross_origin_page(gateway, query, credentials=True))
    other = page_server({"index.html": _cross_origin_page(gateway, query, credentials=True)})

    page.goto(allowed_url)
    page.wait_for_function("window.result.events.length === 1", timeout=10_000)
    page.goto(other.origin + "/index.html")
    page.wait_for_function("window.result.state === 'closed'", timeout=10_000)
    assert page.evaluate("window.result.events") == []

    # The preflight a fetch-based client sends, and what an unlisted origin gets.
    headers = {"Origin": allowed.origin, "Access-Control-Request-Method": "GET",
               "Access-Control-Request-Headers": "last-event-id, authorization"}  # fmt: skip
    r = httpx.options(gateway.url + "/events", headers=headers)
    assert r.status_code == 200
    assert r.headers["access-control-allow-origin"] == allowed.origin
    assert r.headers["access-control-allow-credentials"] == "true"
    allowed_headers = r.headers["access-control-allow-headers"].lower()
    assert "last-event-id" in allowed_headers and "authorization" in allowed_headers
    r = httpx.get(gateway.url + "/healthz", headers={"Origin": other.origin})
    assert "access-control-allow-origin" not in r.headers


def test_star_origin_never_allows_credentials(
    make_devserver: Callable[..., DevServer], make_gateway: Callable[..., Gateway]
) -> None:
    devserver = make_devserver()
    gateway = make_gateway(devserver.address, "--cors-origins", "*")
    r = httpx.get(gateway.url + "/healthz", headers={"Origin": "http://anywhere.example"})
    assert r.headers["access-control-allow-origin"] == "*"
    assert "access-control-allow-credentials" not in r.headers


def test_browser_credentials_and_tenant_isolation(
    chromium: Any,
    make_devserver: Callable[..., DevServer],
    make_gateway: Callable[..., Gateway],
    page_server: Callable[[dict[str, str]], PageServer],
) -> None:
    devserver = make_devserver("--token", "tok-a=studio-a", "--token", "tok-b=studio-b")
    pages = page_server({})
    gateway = make_gateway(
        devserver.address, *FAST, "--auth", "passthrough", "--cors-origins", pages.origin
    )
    devserver.publish("revision.created", "kref://a/only-a.model", tenant="studio-a")
    devserver.publish("revision.created", "kref://b/only-b.model", tenant="studio-b")
    cookie_url = pages.write(
        "cookie.html", _cross_origin_page(gateway, "from=beginning", credentials=True)
    )
    param_url = pages.write(
        "param.html",
        _cross_origin_page(gateway, "from=beginning&access_token=tok-b", credentials=False),
    )

    a = chromium.new_context()
    b = chromium.new_context()
    try:
        # Cookies ignore ports: a kumiho_token cookie for 127.0.0.1 goes with withCredentials.
        a.add_cookies(
            [{"name": "kumiho_token", "value": "tok-a", "domain": "127.0.0.1", "path": "/"}]
        )
        page_a, page_b = a.new_page(), b.new_page()
        page_a.goto(cookie_url)
        page_b.goto(param_url)
        page_a.wait_for_function("window.result.events.length >= 1", timeout=10_000)
        page_b.wait_for_function("window.result.events.length >= 1", timeout=10_000)
        devserver.publish("revision.tagged", "kref://a/later-a.model", tenant="studio-a")
        devserver.publish("revision.tagged", "kref://b/later-b.model", tenant="studio-b")
        page_a.wait_for_function("window.result.events.length >= 2", timeout=10_000)
        page_b.wait_for_function("window.result.events.length >= 2", timeout=10_000)
        assert page_a.evaluate("window.result.events") == [
            "kref://a/only-a.model",
            "kref://a/later-a.model",
        ]
        assert page_b.evaluate("window.result.events") == [
            "kref://b/only-b.model",
            "kref://b/later-b.model",
        ]
    finally:
        a.close()
        b.close()
    log = gateway.log()
    assert "access_token=***" in log and "tok-b" not in log and "tok-a" not in log


def _importing_page(gateway: Gateway, options: str) -> str:
    """A page that imports the library from the gateway and subscribes with ``options``."""
    return f"""<!doctype html><meta charset="utf-8"><script type="module">
      import {{ subscribe }} from "{gateway.url}/kumiho-events.js";
      window.got = [];
      window.errors = [];
      window.feed = subscribe({{
        storageKey: null, ...{options},
        onEvent: (e) => window.got.push(e.cursor),
        onError: (e) => window.errors.push(e),
      }});
    </script>"""


@pytest.mark.parametrize("shared", [True, False], ids=["shared", "own"])
def test_the_library_imported_from_another_origin_reads_the_gateway_it_came_from(
    page: Any,
    make_devserver: Callable[..., DevServer],
    make_gateway: Callable[..., Gateway],
    page_server: Callable[[dict[str, str]], PageServer],
    shared: bool,
) -> None:
    devserver = make_devserver()
    project = unique_project()
    pages = page_server({})
    gateway = make_gateway(devserver.address, *FAST, "--cors-origins", pages.origin)
    before = devserver.publish("revision.created", f"kref://{project}/a.model", count=2)
    options = f'{{from: "beginning", kref: "kref://{project}/**", shared: {str(shared).lower()}}}'
    url = pages.write("index.html", _importing_page(gateway, options))
    requested: list[str] = []
    page.on("request", lambda request: requested.append(request.url))
    page.goto(url)
    page.wait_for_function(f"window.got.length === {len(before)}", timeout=20_000)
    page.wait_for_function("window.feed.state() === 'live'", timeout=20_000)
    after = devserver.publish("revision.created", f"kref://{project}/b.model")
    page.wait_for_function(f"window.got.length === {len(before) + 1}", timeout=20_000)
    assert page.evaluate("window.got") == before + after
    assert page.evaluate("window.errors") == []
    # The page's own origin served the page, and nothing else was asked of it.
    assert [u for u in requested if u.startswith(pages.origin)] == [url]
    assert any(u.startswith(gateway.url + "/events") for u in requested)


@pytest.mark.parametrize("shared", [True, False], ids=["shared", "own"])
def test_the_library_reports_a_url_that_answers_404(
    page: Any,
    make_devserver: Callable[..., DevServer],
    make_gateway: Callable[..., Gateway],
    page_server: Callable[[dict[str, str]], PageServer],
    shared: bool,
) -> None:
    pages = page_server({})
    gateway = make_gateway(make_devserver().address, *FAST, "--cors-origins", pages.origin)
    # A server that is no gateway: the page's own, where nothing is at /nothing/.
    options = f'{{url: location.origin + "/nothing/events", shared: {str(shared).lower()}}}'
    page.goto(pages.write("index.html", _importing_page(gateway, options)))
    page.wait_for_function("window.errors.length > 0", timeout=20_000)
    [error] = page.evaluate("window.errors")
    assert error["code"] == "not_a_gateway" and error["status"] == 404, error
    assert error["retryable"] is False
    assert f"{pages.origin}/nothing/events/poll answered 404" in error["message"], error
    assert page.evaluate("window.feed.state()") == "stopped"


# A page that subscribes with a token function: each token it makes lasts LIFETIME seconds.
REFRESHING = """async ([project, shared, lifetime, asynchronous]) => {
  const { subscribe } = await import("/kumiho-events.js");
  const part = (o) =>
    btoa(JSON.stringify(o)).replace(/=+$/, "").replace(/\\+/g, "-").replace(/\\//g, "_");
  window.tokens = 0;
  const mint = () => {
    window.tokens += 1;
    const claims = { sub: "mina", exp: Date.now() / 1000 + lifetime };
    return `${part({ alg: "HS256", typ: "JWT" })}.${part(claims)}.c2ln`;
  };
  // A page's refresher may answer at once or after a round trip to its login server.
  const later = () => new Promise((resolve) => setTimeout(() => resolve(mint()), 30));
  const accessToken = asynchronous ? later : mint;
  window.got = [];
  window.errors = [];
  window.feed = subscribe({
    kref: `kref://${project}/**`, shared, accessToken, storageKey: null,
    onEvent: (e) => window.got.push(e.cursor),
    onError: (e) => window.errors.push(e.code),
  });
}"""
LIFETIME = 3


@pytest.mark.parametrize(
    ("make_gateway", "shared", "asynchronous"),
    [("hub", True, True), ("no-hub", False, False)],
    indirect=["make_gateway"],
    ids=["shared-promise", "own-sync"],
)
def test_a_token_function_renews_expiring_tokens_and_every_event_arrives_once(
    page: Any,
    make_devserver: Callable[..., DevServer],
    make_gateway: Callable[..., Gateway],
    shared: bool,
    asynchronous: bool,
) -> None:
    devserver = make_devserver()
    gateway = make_gateway(devserver.address, "--auth", "passthrough", *FAST)
    project = unique_project()
    page.goto(gateway.url + "/healthz")
    page.evaluate(REFRESHING, [project, shared, LIFETIME, asynchronous])
    wait_until(lambda: page.evaluate("window.feed.state()") == "live", 20, "the feed live")
    publisher = Publisher(devserver, f"kref://{project}/hero.model", rate=10)
    publisher.start()
    # Three tokens' lifetimes of events: the stream ends at each expiry and resumes.
    wait_until(
        lambda: gateway.metric("kumiho_gateway_stream_closes_total", EXPIRED) >= 2,
        4 * LIFETIME + 20,
        "two expiries",
    )
    # Asked again for each connection: the third stream is up (its token fresh).
    wait_until(
        lambda: page.evaluate("window.tokens") >= 3 and gateway.metric(STREAMS) == 1,
        20,
        "the stream after the second expiry",
    )
    published = publisher.stop()
    published += devserver.publish("revision.created", f"kref://{project}/hero.model")
    wait_until(lambda: len(page.evaluate("window.got")) >= len(published), 20, "every event")
    assert page.evaluate("window.got") == published  # exactly once, in order
    errors = page.evaluate("window.errors")
    assert len(errors) >= 2 and set(errors) == {"token_expired"}  # told, and nothing else
    assert page.evaluate("window.feed.state()") == "live"
    assert gateway.metric(STREAMS) == 1  # no stream left behind


def test_a_token_function_that_gives_expired_tokens_keeps_reconnecting_quietly(
    page: Any, make_devserver: Callable[..., DevServer], make_gateway: Callable[..., Gateway]
) -> None:
    devserver = make_devserver()
    gateway = make_gateway(devserver.address, "--auth", "passthrough", *FAST)
    project = unique_project()
    page.goto(gateway.url + "/healthz")
    # Every token has expired already: the gateway answers 401 token_expired each time.
    page.evaluate(REFRESHING, [project, False, -10, False])
    wait_until(lambda: page.evaluate("window.tokens") >= 4, 20, "the function asked again")
    assert page.evaluate("window.feed.state()") == "reconnecting"  # not stopped: it may recover
    assert page.evaluate("window.errors") == []
    assert gateway.metric(STREAMS) == 0
