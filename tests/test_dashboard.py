"""The dashboard at / in a real headless Chromium, against a real devserver and gateway."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import FAST, DevServer, Gateway, free_port, unique_project, wait_until

ROOT = Path(__file__).resolve().parent.parent
# Not tracked (.gitignore): a test run leaves the tree clean. docs/dashboard.png
# is a copy of the wide one, refreshed by hand when the dashboard changes.
SCREENSHOTS = ROOT / "docs" / "screenshots"
QUICK_RETRY = ("--retry-ms", "300")
WIDE = {"width": 1280, "height": 760}
PANEL = "#panels > .panel:nth-child({})"
FIRST = PANEL.format(1)
LIGHT_BAR = (0x24, 0x57, 0xD6)  # --accent, light theme
DARK_BAR = (0x7A, 0xA2, 0xFF)  # --accent, dark theme


@pytest.fixture
def page(chromium: Any) -> Iterator[Any]:
    context = chromium.new_context(viewport=WIDE)
    page = context.new_page()
    yield page
    context.close()


def _row_cursors(page: Any, panel: int = 1) -> list[str]:
    """The cursors of a panel's event rows, oldest first (the table is newest first)."""
    rows = page.eval_on_selector_all(
        f"{PANEL.format(panel)} tbody tr.event", "rows => rows.map(r => r.dataset.cursor)"
    )
    return list(reversed(rows))


def _wait_live(page: Any) -> None:
    page.wait_for_function(
        "document.querySelector('#state').dataset.state === 'live'", timeout=10_000
    )


def _column_widths(page: Any, panel: int = 1) -> list[float]:
    return page.eval_on_selector_all(
        f"{PANEL.format(panel)} thead th", "ths => ths.map(th => th.getBoundingClientRect().width)"
    )


def _key_counts(page: Any, panel: int = 1) -> list[tuple[str, str]]:
    pairs = page.eval_on_selector_all(
        f"{PANEL.format(panel)} .key-count",
        """buttons => buttons.map(b => [b.querySelector('.name').textContent,
                                        b.querySelector('.count').textContent])""",
    )
    return [tuple(pair) for pair in pairs]


def _bar_pixels(page: Any, rgb: tuple[int, int, int], panel: int = 1) -> int:
    """How many of the chart's pixels have exactly this colour."""
    return page.evaluate(
        """([selector, rgb]) => {
            const canvas = document.querySelector(selector);
            const context = canvas.getContext('2d');
            const data = context.getImageData(0, 0, canvas.width, canvas.height).data;
            let n = 0;
            for (let i = 0; i < data.length; i += 4) {
                if (data[i] === rgb[0] && data[i + 1] === rgb[1] && data[i + 2] === rgb[2]
                    && data[i + 3] === 255) n += 1;
            }
            return n;
        }""",
        [f"{PANEL.format(panel)} canvas", list(rgb)],
    )


def test_a_utc_start_time_survives_the_dashboard_in_any_time_zone(
    chromium: Any, make_devserver: Callable[..., DevServer], make_gateway: Callable[..., Gateway]
) -> None:
    gateway = make_gateway(make_devserver().address, *FAST)
    instant = "2026-01-02T03:04:05.000Z"
    for zone, local in (
        ("Asia/Tokyo", "2026-01-02T12:04:05"),
        ("America/Denver", "2026-01-01T20:04:05"),
    ):
        context = chromium.new_context(timezone_id=zone)
        page = context.new_page()
        page.goto(gateway.url + f"/?from={instant}")
        assert page.input_value("input[name=at]") == local  # shown in the viewer's time
        page.click("button[type=submit]")  # the form writes the URL back from the input
        page.wait_for_function("location.search.includes('from=')", timeout=5_000)
        sent = page.evaluate("new URLSearchParams(location.search).get('from')")
        assert sent == instant  # the same instant, not shifted by the zone
        context.close()


def test_dashboard_shows_published_events_within_two_seconds(
    page: Any, make_devserver: Callable[..., DevServer], make_gateway: Callable[..., Gateway]
) -> None:
    devserver = make_devserver("--activity", "8")
    gateway = make_gateway(devserver.address, *FAST)
    requested: list[str] = []
    page.on("request", lambda request: requested.append(request.url))
    page.goto(gateway.url + "/?from=beginning")
    _wait_live(page)
    # Nothing from another host: no CDN, no font, no analytics.
    assert requested and all(url.startswith(gateway.url) for url in requested), requested
    project = unique_project()
    kref = f"kref://{project}/chars/hero.model?r=1"
    published = time.monotonic()
    devserver.publish(
        "revision.tagged", kref, {"tag": "approved"}, author="u-1f2a", username="mina.park"
    )
    page.wait_for_selector(f"{FIRST} td.kref:text-is('{kref}')", timeout=2_000)
    assert time.monotonic() - published < 2.0
    # The readouts move: rate, cursor, no reconnects.
    page.wait_for_function("Number(document.querySelector('#rate').textContent) > 0", timeout=5_000)
    assert page.locator("#cursor").inner_text() != "none"
    assert page.locator("#reconnects").inner_text() == "0"
    # Pause keeps receiving and counts; resume renders what waited.
    rows = f"{FIRST} tbody tr.event"
    page.keyboard.press("p")
    before = page.locator(rows).count()
    page.wait_for_function(
        "/\\d+ waiting/.test(document.querySelector('#waiting').textContent)", timeout=5_000
    )
    assert page.locator(rows).count() == before
    page.click("#pause")
    page.wait_for_function(f"document.querySelectorAll('{rows}').length > {before}", timeout=5_000)
    assert page.locator("#waiting").inner_text() == ""


def test_the_chart_draws_each_seconds_events_in_the_theme_colours(
    page: Any, make_devserver: Callable[..., DevServer], make_gateway: Callable[..., Gateway]
) -> None:
    devserver = make_devserver()
    gateway = make_gateway(devserver.address, *FAST)
    project = unique_project()
    page.goto(gateway.url + f"/?kref=kref://{project}/**")
    _wait_live(page)
    canvas = f"{FIRST} canvas"
    assert page.get_attribute(canvas, "data-total") == "0"
    assert _bar_pixels(page, LIGHT_BAR) == 0  # no events, no bars
    devserver.publish("revision.created", f"kref://{project}/c.model", count=7)
    page.wait_for_function(
        f"document.querySelector('{canvas}').dataset.total === '7'", timeout=10_000
    )
    assert 1 <= int(page.get_attribute(canvas, "data-peak")) <= 7
    assert 1 <= int(page.get_attribute(canvas, "data-seconds")) <= 7
    assert page.locator(f"{FIRST} .chart .total").inner_text() == "7"
    assert page.get_attribute(canvas, "data-bar") == "#2457d6"
    assert _bar_pixels(page, LIGHT_BAR) > 0
    # The dark theme redraws the same bars in its own colour.
    page.click("#theme")
    assert page.get_attribute(canvas, "data-bar") == "#7aa2ff"
    assert _bar_pixels(page, DARK_BAR) > 0
    assert _bar_pixels(page, LIGHT_BAR) == 0
    assert page.get_attribute(canvas, "data-total") == "7"


def test_counts_by_routing_key_and_a_click_filters_on_one(
    page: Any, make_devserver: Callable[..., DevServer], make_gateway: Callable[..., Gateway]
) -> None:
    devserver = make_devserver()
    gateway = make_gateway(devserver.address, *FAST)
    project = unique_project()
    kref = f"kref://{project}/k.model"
    tagged = devserver.publish("revision.tagged", kref, {"tag": "wip"})
    models = devserver.publish("item.model.created", kref, count=2)
    devserver.publish("revision.created", kref, count=3)
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url) if "/events" in r.url else None)
    page.goto(gateway.url + f"/?from=beginning&kref=kref://{project}/**")
    wait_until(
        lambda: (
            _key_counts(page)
            == [("revision.created", "3"), ("item.model.created", "2"), ("revision.tagged", "1")]
        ),
        10,
        "the counts, largest first",
    )
    # Enter on a count: that panel's routing-key filter, a new subscription.
    page.focus(f"{FIRST} .key-count[data-key='item.model.created']")
    page.keyboard.press("Enter")
    wait_until(lambda: _row_cursors(page) == models, 10, "only the model rows")
    assert page.input_value(f"{FIRST} input[name=routing_key]") == "item.model.created"
    params = page.evaluate("Object.fromEntries(new URLSearchParams(location.search))")
    assert params["routing_key"] == "item.model.created"
    assert any("routing_key=item.model.created" in url for url in requests)
    wait_until(lambda: _key_counts(page) == [("item.model.created", "2")], 10, "one count")
    assert page.get_attribute(f"{FIRST} .key-count", "aria-pressed") == "true"
    # Back to everything, then a mouse click on another key.
    page.fill(f"{FIRST} input[name=routing_key]", "")
    page.click(f"{FIRST} button[type=submit]")
    wait_until(lambda: len(_row_cursors(page)) == 6, 10, "all six rows again")
    page.click(f"{FIRST} .key-count[data-key='revision.tagged']")
    wait_until(lambda: _row_cursors(page) == tagged, 10, "only the tagged row")
    assert page.input_value(f"{FIRST} input[name=routing_key]") == "revision.tagged"


def test_a_row_opens_into_its_event_with_copy_buttons(
    chromium: Any, make_devserver: Callable[..., DevServer], make_gateway: Callable[..., Gateway]
) -> None:
    devserver = make_devserver()
    gateway = make_gateway(devserver.address, *FAST)
    project = unique_project()
    kref = f"kref://{project}/chars/hero.model?r=2"
    [cursor] = devserver.publish(
        "revision.tagged", kref, {"tag": "approved"}, author="u-9", username="aiko.tanaka"
    )
    context = chromium.new_context(viewport=WIDE, permissions=["clipboard-read", "clipboard-write"])
    try:
        page = context.new_page()
        page.goto(gateway.url + f"/?from=beginning&kref=kref://{project}/**")
        row = f"{FIRST} tbody tr.event"
        detail = f"{FIRST} tbody tr.detail"
        page.wait_for_selector(row, timeout=10_000)
        assert page.locator(detail).count() == 0
        page.click(row)
        event = json.loads(page.locator(f"{detail} pre").inner_text())
        assert event["kref"] == kref and event["cursor"] == cursor
        assert event["details"] == {"tag": "approved"}
        assert (event["routing_key"], event["author"], event["username"]) == (
            "revision.tagged",
            "u-9",
            "aiko.tanaka",
        )
        assert page.get_attribute(row, "aria-expanded") == "true"
        clipboard = "navigator.clipboard.readText()"
        page.click(f"{detail} button:text-is('copy kref')")
        page.wait_for_selector(f"{detail} .copied:text-is('copied')", timeout=5_000)
        assert page.evaluate(clipboard) == kref
        page.click(f"{detail} button:text-is('copy cursor')")
        wait_until(lambda: page.evaluate(clipboard) == cursor, 5, "the cursor copied")
        page.click(row)  # a second click closes it
        assert page.locator(detail).count() == 0
        assert page.get_attribute(row, "aria-expanded") == "false"
        # From the keyboard: Enter opens, Space closes.
        page.focus(row)
        page.keyboard.press("Enter")
        assert page.locator(detail).count() == 1
        page.keyboard.press(" ")
        assert page.locator(detail).count() == 0
    finally:
        context.close()


def test_panels_each_show_their_own_events_and_survive_a_reload(
    page: Any, make_devserver: Callable[..., DevServer], make_gateway: Callable[..., Gateway]
) -> None:
    devserver = make_devserver()
    gateway = make_gateway(devserver.address, *FAST)
    project = unique_project()
    a_kref, b_kref = f"kref://{project}/a/x.model", f"kref://{project}/b/y.model"

    def publish() -> tuple[list[str], list[str]]:
        a = devserver.publish("revision.created", a_kref)
        devserver.publish("revision.tagged", b_kref, {"tag": "wip"}, username="mina.park")
        b = devserver.publish("revision.tagged", b_kref, {"tag": "approved"}, username="mina.park")
        devserver.publish("revision.tagged", b_kref, {"tag": "approved"}, username="sam.okafor")
        return a, b

    a1, b1 = publish()
    page.goto(gateway.url + f"/?from=beginning&kref=kref://{project}/a/**")
    wait_until(lambda: _row_cursors(page) == a1, 10, "the first panel's row")
    page.click("#add-panel")
    second = PANEL.format(2)
    assert page.evaluate("document.activeElement.name") == "routing_key"
    assert page.evaluate(
        f"document.activeElement.closest('.panel') === document.querySelector('{second}')"
    )
    page.fill(f"{second} input[name=kref]", f"kref://{project}/b/**")
    details = f"{second} input[name=details]"
    page.fill(details, "approved")  # not key=value: the form refuses it
    assert page.eval_on_selector(details, "input => input.matches(':invalid')")
    page.fill(details, "tag=approved")
    page.fill(f"{second} input[name=username]", "mina.park")
    page.select_option(f"{second} select[name=from]", "beginning")
    page.click(f"{second} button[type=submit]")
    wait_until(lambda: _row_cursors(page, 2) == b1, 10, "the second panel's row")
    a2, b2 = publish()
    wait_until(lambda: _row_cursors(page, 2) == b1 + b2, 10, "the second panel's new row")
    wait_until(lambda: _row_cursors(page) == a1 + a2, 10, "the first panel's new row")
    # The counts are drawn at the next animation frame after the rows.
    wait_until(lambda: _key_counts(page) == [("revision.created", "2")], 10, "first counts")
    wait_until(lambda: _key_counts(page, 2) == [("revision.tagged", "2")], 10, "second counts")
    assert page.evaluate(
        "kumihoFeeds.length === 2 && kumihoFeed === kumihoFeeds[0]"
        " && kumihoFeeds[0] !== kumihoFeeds[1]"
    )
    second_id = page.get_attribute(second, "data-panel-id")
    assert second_id != page.get_attribute(FIRST, "data-panel-id")
    assert (
        page.evaluate(f"localStorage.getItem('kumiho-dashboard:panel:{second_id}:cursor')")
        == (b2[-1])
    )

    # A reload brings back both panels, their filters and their rows, each
    # resuming from its own cursor (a catch-up poll each), then both on one shared stream.
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url) if "/events" in r.url else None)
    page.reload()
    assert page.locator("#panels > .panel").count() == 2
    assert page.input_value(f"{second} input[name=details]") == "tag=approved"
    assert page.input_value(f"{second} input[name=username]") == "mina.park"
    assert page.input_value(f"{FIRST} input[name=kref]") == f"kref://{project}/a/**"
    assert _row_cursors(page) == a1 + a2 and _row_cursors(page, 2) == b1 + b2
    _wait_live(page)
    a3, b3 = publish()
    wait_until(lambda: _row_cursors(page, 2) == b1 + b2 + b3, 10, "the second panel resumed")
    wait_until(lambda: _row_cursors(page) == a1 + a2 + a3, 10, "the first panel resumed")
    polls = [url for url in requests if "/events/poll?" in url]
    # Two panels, one connection (the stream reopens when the second panel joins).
    assert gateway.metric("kumiho_gateway_client_streams_open", '{client="127.0.0.1"}') == 1
    assert any(f"cursor={b2[-1]}" in url and "details.tag=approved" in url for url in polls)
    assert any(f"cursor={a2[-1]}" in url for url in polls)

    # Removing a panel closes its feed and forgets it.
    page.click(f"{second} button.remove")
    assert page.locator("#panels > .panel").count() == 1
    assert page.evaluate("kumihoFeeds.length === 1 && kumihoFeed === kumihoFeeds[0]")
    assert page.evaluate("JSON.parse(localStorage.getItem('kumiho-dashboard:panels')).length") == 1
    gone = f"localStorage.getItem('kumiho-dashboard:panel:{second_id}:events')"
    assert page.evaluate(gone) is None
    assert page.locator(f"{FIRST} button.remove").is_hidden()  # the last one stays


def test_reload_restores_the_rows_and_resumes_without_duplicate_or_gap(
    page: Any, make_devserver: Callable[..., DevServer], make_gateway: Callable[..., Gateway]
) -> None:
    devserver = make_devserver()
    gateway = make_gateway(devserver.address, *FAST)
    project = unique_project()
    kref = f"kref://{project}/r.model"
    first = devserver.publish("revision.created", kref, count=3)
    page.goto(gateway.url + f"/?from=beginning&kref=kref://{project}/**")
    wait_until(lambda: _row_cursors(page) == first, 10, "the first three rows")
    panel_id = page.get_attribute(FIRST, "data-panel-id")
    key = f"kumiho-dashboard:panel:{panel_id}:cursor"
    assert page.evaluate(f"localStorage.getItem('{key}')") == first[-1]
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url) if "/events" in r.url else None)
    page.reload()
    assert _row_cursors(page) == first  # shown from storage, before the feed says anything
    _wait_live(page)
    second = devserver.publish("revision.created", kref, count=2)
    wait_until(lambda: len(_row_cursors(page)) >= 5, 10, "the two new rows")
    assert _row_cursors(page) == first + second  # exactly five, in order
    assert any(f"cursor={first[-1]}" in url for url in requests)


def test_a_page_that_died_before_saving_its_rows_still_misses_nothing(
    chromium: Any, make_devserver: Callable[..., DevServer], make_gateway: Callable[..., Gateway]
) -> None:
    devserver = make_devserver()
    gateway = make_gateway(devserver.address, *FAST)
    project = unique_project()
    kref = f"kref://{project}/d.model"
    url = gateway.url + f"/?from=beginning&kref=kref://{project}/**"
    first = devserver.publish("revision.created", kref, count=3)
    context = chromium.new_context(viewport=WIDE)
    page = context.new_page()
    page.goto(url)
    wait_until(lambda: _row_cursors(page) == first, 10, "three rows")
    panel_id = page.get_attribute(FIRST, "data-panel-id")
    saved = f"JSON.parse(localStorage.getItem('kumiho-dashboard:panel:{panel_id}:events'))"
    page.wait_for_function(f"{saved}?.entries.length === 3", timeout=10_000)  # saved each second
    state = context.storage_state()
    context.close()
    # As if the page died between the library storing the third cursor and the
    # dashboard saving the third row: the rows end one event before the cursor.
    [origin] = [o for o in state["origins"] if o["origin"] == gateway.url]
    stored = {item["name"]: item for item in origin["localStorage"]}
    assert stored[f"kumiho-dashboard:panel:{panel_id}:cursor"]["value"] == first[-1]
    rows = stored[f"kumiho-dashboard:panel:{panel_id}:events"]
    kept = json.loads(rows["value"])
    assert [e["data"]["cursor"] for e in kept["entries"]] == first
    kept["entries"] = kept["entries"][:2]
    rows["value"] = json.dumps(kept)
    context = chromium.new_context(viewport=WIDE, storage_state=state)
    try:
        page = context.new_page()
        page.goto(url)
        wait_until(lambda: _row_cursors(page) == first, 10, "the third row again, once")
        _wait_live(page)
        second = devserver.publish("revision.created", kref, count=2)
        wait_until(lambda: len(_row_cursors(page)) >= 5, 10, "the new rows")
        assert _row_cursors(page) == first + second
    finally:
        context.close()


def test_a_gap_is_a_marked_row_kept_across_a_reload(
    page: Any, make_devserver: Callable[..., DevServer], make_gateway: Callable[..., Gateway]
) -> None:
    devserver = make_devserver()
    gateway = make_gateway(devserver.address, *FAST)
    project = unique_project()
    page.goto(gateway.url + f"/?kref=kref://{project}/**")
    _wait_live(page)
    panel_id = page.get_attribute(FIRST, "data-panel-id")
    page.evaluate(
        f"localStorage.setItem('kumiho-dashboard:panel:{panel_id}:cursor', 'no-such-cursor')"
    )
    page.reload()  # resumes from a cursor the upstream does not know
    gap = f"{FIRST} tbody tr.gap"
    page.wait_for_selector(gap, timeout=10_000)
    text = page.locator(gap).inner_text()
    assert "gateway.reset" in text and "requested no-such-cursor" in text
    assert "resumed from" in text
    _wait_live(page)
    [cursor] = devserver.publish("revision.created", f"kref://{project}/g.model")
    wait_until(lambda: _row_cursors(page) == [cursor], 10, "the event after the gap")
    order = f"{FIRST} tbody tr"
    newest_first = ["event", "gap"]
    assert page.eval_on_selector_all(order, "rows => rows.map(r => r.className)") == newest_first
    page.reload()
    assert page.eval_on_selector_all(order, "rows => rows.map(r => r.className)") == newest_first
    _wait_live(page)
    [later] = devserver.publish("revision.created", f"kref://{project}/g.model")
    wait_until(lambda: _row_cursors(page) == [cursor, later], 10, "the next event")
    assert page.locator(gap).count() == 1  # the kept cursor resumed without a new gap


def test_columns_keep_their_widths_as_long_rows_arrive(
    page: Any, make_devserver: Callable[..., DevServer], make_gateway: Callable[..., Gateway]
) -> None:
    devserver = make_devserver()
    gateway = make_gateway(devserver.address, *FAST)
    project = unique_project()
    page.goto(gateway.url + f"/?kref=kref://{project}/**")
    _wait_live(page)
    devserver.publish("a.b", f"kref://{project}/s")
    wait_until(lambda: len(_row_cursors(page)) == 1, 10, "one short row")
    before = _column_widths(page)
    devserver.publish(
        "revision." + "tagged" * 40,
        f"kref://{project}/" + "long-name/" * 80 + "hero.model?r=1",
        {"tag": "approved " * 60, "note": "x" * 900},
        username="a.very.long.username." * 10,
        count=50,
    )
    wait_until(lambda: len(_row_cursors(page)) == 51, 10, "fifty long rows")
    assert _column_widths(page) == before
    wrap = f"{FIRST} .table-wrap"
    assert page.eval_on_selector(wrap, "w => w.scrollWidth <= w.clientWidth")
    assert page.evaluate("document.documentElement.scrollWidth") <= WIDE["width"]


def test_hostile_event_data_stays_text_and_keeps_the_layout(
    page: Any, make_devserver: Callable[..., DevServer], make_gateway: Callable[..., Gateway]
) -> None:
    devserver = make_devserver()
    gateway = make_gateway(devserver.address, *FAST)
    project = unique_project()
    dialogs: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    page.goto(gateway.url + f"/?from=beginning&kref=kref://{project}/**")
    _wait_live(page)
    before = _column_widths(page)
    routing_key = "<img src=x onerror=alert(1)>"
    kref = f"kref://{project}/<b>bold</b>/" + "k" * 5000
    details = {
        "note": "<img src=x onerror=window.pwned=1>",
        "script": "<script>window.pwned=2</script>",
        "controls": "a\x00b\x07c\u2028d\r\ne\x1b[31m",
    }
    author = "<svg onload=window.pwned=3>"
    username = '"><iframe src="javascript:window.pwned=4"></iframe>'
    [cursor] = devserver.publish(routing_key, kref, details, author=author, username=username)
    page.wait_for_selector(f"{FIRST} tbody tr.event", timeout=10_000)
    wait_until(lambda: len(_key_counts(page)) == 1, 10, "the routing key counted")
    cells = page.eval_on_selector_all(
        f"{FIRST} tbody tr.event td", "tds => tds.map(td => td.textContent)"
    )
    assert cells[1:4] == [routing_key, kref, username]
    assert _key_counts(page) == [(routing_key, "1")]
    page.click(f"{FIRST} tbody tr.event")  # the whole event, opened
    event = json.loads(page.locator(f"{FIRST} tbody tr.detail pre").inner_text())
    assert (event["kref"], event["cursor"], event["details"]) == (kref, cursor, details)
    # Nothing ran, nothing was parsed as markup, nothing was fetched for it.
    assert page.evaluate("window.pwned") is None
    assert dialogs == []
    hostile = "#panels img, #panels script, #panels svg, #panels iframe, #panels b"
    assert page.locator(hostile).count() == 0
    assert not any(url.endswith("/x") for url in requests)
    # The 5,000 characters stay inside their columns, closed or open.
    assert _column_widths(page) == before
    assert page.evaluate("document.documentElement.scrollWidth") <= WIDE["width"]


def test_the_keyboard_and_a_narrow_dark_screen(
    chromium: Any, make_devserver: Callable[..., DevServer], make_gateway: Callable[..., Gateway]
) -> None:
    devserver = make_devserver()
    gateway = make_gateway(devserver.address, *FAST)
    context = chromium.new_context(viewport={"width": 380, "height": 700}, color_scheme="dark")
    try:
        page = context.new_page()
        project = unique_project()
        kref = f"kref://{project}/a/" + "hero" * 40 + ".model"
        devserver.publish("item.model.created", kref, {"kind": "model " * 30})
        page.goto(gateway.url + f"/?from=beginning&kref=kref://{project}/**")
        row = f"{FIRST} tbody tr.event"
        page.wait_for_selector(row)
        background = page.evaluate("getComputedStyle(document.body).backgroundColor")
        assert background == "rgb(20, 22, 26)"  # the dark theme
        no_sideways_scroll = "document.documentElement.scrollWidth <= 380"
        assert page.evaluate(no_sideways_scroll)
        # '/' focuses the filters; keys typed there are text, not commands.
        page.keyboard.press("/")
        assert page.evaluate("document.activeElement.name") == "routing_key"
        page.keyboard.press("p")
        assert page.get_attribute("#pause", "aria-pressed") == "false"
        # Tab reaches the rows; the focused one is outlined; Enter opens it.
        for _ in range(40):
            page.keyboard.press("Tab")
            if page.evaluate("document.activeElement.matches('tr.event')"):
                break
        assert page.evaluate("document.activeElement.matches('tr.event:focus-visible')")
        assert page.evaluate("getComputedStyle(document.activeElement).outlineStyle") == "solid"
        page.keyboard.press("Enter")
        page.wait_for_selector(f"{FIRST} tbody tr.detail pre")
        assert page.evaluate(no_sideways_scroll)  # the open event wraps
        page.keyboard.press("p")
        assert page.get_attribute("#pause", "aria-pressed") == "true"
        page.keyboard.press("p")
        assert page.get_attribute("#pause", "aria-pressed") == "false"
        page.click("#add-panel")
        assert page.evaluate(no_sideways_scroll)
        page.evaluate("document.activeElement.blur()")
        page.keyboard.press("c")
        assert page.locator(f"{FIRST} tbody tr").count() == 0
        assert page.locator(f"{FIRST} .empty").is_visible()
        page.click("#theme")
        assert page.evaluate("document.documentElement.dataset.theme") == "light"
        assert page.evaluate("getComputedStyle(document.body).backgroundColor") != background
    finally:
        context.close()


def test_page_reconnects_after_a_gateway_restart_without_gap_or_duplicate(
    page: Any, make_devserver: Callable[..., DevServer], make_gateway: Callable[..., Gateway]
) -> None:
    devserver = make_devserver()
    gateway = make_gateway(devserver.address, *FAST, *QUICK_RETRY)
    project = unique_project()
    kref = f"kref://{project}/shots/sq010.comp"
    page.goto(gateway.url + f"/?from=beginning&kref=kref://{project}/**")
    _wait_live(page)
    first = devserver.publish("revision.created", kref, count=5)
    wait_until(lambda: len(_row_cursors(page)) == 5, 10, "five rows")
    gateway.stop(signal.SIGKILL)
    page.wait_for_function(
        "document.querySelector('#state').dataset.state === 'reconnecting'", timeout=10_000
    )
    second = devserver.publish("revision.created", kref, count=5)  # while the gateway is down
    gateway.start()
    third = devserver.publish("revision.created", kref, count=2)
    wait_until(lambda: len(_row_cursors(page)) >= 12, 20, "the page to catch up by itself")
    assert _row_cursors(page) == first + second + third
    assert page.locator("#reconnects").inner_text() == "1"
    assert page.locator("#state").inner_text() == "live"


def test_the_badge_is_never_live_while_the_upstream_is_down(
    page: Any, make_gateway: Callable[..., Gateway], tmp_path: Path
) -> None:
    port = free_port()
    gateway = make_gateway(f"127.0.0.1:{port}", *FAST)
    # Every state the badge takes, from the first paint on.
    page.add_init_script(
        """document.addEventListener('DOMContentLoaded', () => {
            window.badgeStates = [];
            const badge = document.querySelector('#state');
            new MutationObserver(() => window.badgeStates.push(badge.dataset.state))
                .observe(badge, {attributes: true, attributeFilter: ['data-state']});
        });"""
    )
    page.goto(gateway.url + "/")
    page.wait_for_function(
        "document.querySelector('#state').dataset.state === 'upstream-down'", timeout=10_000
    )
    assert "upstream unavailable (UNAVAILABLE)" in page.locator("#upstream").inner_text()
    devserver = DevServer(tmp_path / "late.sqlite3", port=port).start()
    try:
        _wait_live(page)
        assert page.evaluate("window.badgeStates") == ["upstream-down", "live"]
        assert page.locator("#upstream").inner_text() == ""
    finally:
        devserver.stop(signal.SIGKILL)


def test_screenshots_wide_narrow_and_dark(
    chromium: Any, make_devserver: Callable[..., DevServer], make_gateway: Callable[..., Gateway]
) -> None:
    devserver = make_devserver("--activity", "12")
    gateway = make_gateway(devserver.address, *FAST)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    enough = f"document.querySelectorAll('{FIRST} tbody tr.event').length >= 25"
    wide = chromium.new_context(viewport=WIDE, color_scheme="light")
    narrow = chromium.new_context(viewport={"width": 380, "height": 700}, color_scheme="light")
    try:
        page = wide.new_page()
        page.goto(gateway.url + "/")  # live activity only: a chart of several seconds
        _wait_live(page)
        page.wait_for_function(enough, timeout=15_000)
        page.wait_for_function(
            f"document.querySelector('{FIRST} canvas').dataset.seconds >= 4", timeout=15_000
        )
        page.wait_for_function(
            f"document.querySelectorAll('{FIRST} .key-count').length >= 5", timeout=10_000
        )
        page.screenshot(path=str(SCREENSHOTS / "dashboard.png"))
        page.click("#theme")
        page.click(f"{FIRST} tbody tr.event >> nth=2")  # one event open
        assert page.evaluate("getComputedStyle(document.body).backgroundColor") == (
            "rgb(20, 22, 26)"
        )
        page.screenshot(path=str(SCREENSHOTS / "dashboard-dark.png"))
        small = narrow.new_page()
        small.goto(gateway.url + "/?from=beginning")
        small.wait_for_function(enough, timeout=10_000)
        assert small.evaluate("document.documentElement.scrollWidth") <= 380
        small.screenshot(path=str(SCREENSHOTS / "dashboard-narrow.png"))
        for name in ("dashboard.png", "dashboard-dark.png", "dashboard-narrow.png"):
            assert (SCREENSHOTS / name).stat().st_size > 10_000, name
    finally:
        wide.close()
        narrow.close()


def test_dashboard_tabs_share_one_connection_and_say_which_tab_holds_it(
    chromium: Any, make_devserver: Callable[..., DevServer], make_gateway: Callable[..., Gateway]
) -> None:
    devserver = make_devserver()
    gateway = make_gateway(devserver.address, *FAST)
    project = unique_project()
    context = chromium.new_context(viewport=WIDE)
    try:
        tabs = [context.new_page() for _ in range(3)]
        for tab, key in zip(tabs, ("revision.*", "item.*.created", ""), strict=True):
            tab.goto(gateway.url + f"/?routing_key={key}&kref=kref://{project}/**")
            _wait_live(tab)
        holders = [tab.locator("#connection").inner_text() for tab in tabs]
        assert (
            holders == ["connection held by this tab"] + ["connection shared from another tab"] * 2
        )
        clients = '{client="127.0.0.1"}'
        assert gateway.metric("kumiho_gateway_client_streams_open", clients) == 1
        tabs[0].close()  # the holder goes: the next tab takes the connection over
        wait_until(
            lambda: tabs[1].locator("#connection").inner_text() == "connection held by this tab",
            10,
            "the second tab to hold the connection",
        )
        kref = f"kref://{project}/hero.model"
        [created] = devserver.publish("item.model.created", kref)
        [tagged] = devserver.publish("revision.tagged", kref, {"tag": "approved"})
        wait_until(lambda: _row_cursors(tabs[1]) == [created], 10, "the second tab's event")
        wait_until(lambda: _row_cursors(tabs[2]) == [created, tagged], 10, "the third tab's")
        _wait_live(tabs[1])
        assert gateway.metric("kumiho_gateway_client_streams_open", clients) == 1
        # Each tab keeps its own panels and rows: a reload brings back its own, not the
        # last writer's, and misses nothing published meanwhile.
        for tab in tabs[1:]:
            tab.reload()
        [later] = devserver.publish("item.anim.created", kref)
        wait_until(lambda: _row_cursors(tabs[1]) == [created, later], 10, "the second tab's")
        wait_until(lambda: _row_cursors(tabs[2]) == [created, tagged, later], 10, "the third's")
        assert tabs[1].input_value(f"{FIRST} input[name=routing_key]") == "item.*.created"
        assert tabs[2].input_value(f"{FIRST} input[name=routing_key]") == ""
    finally:
        context.close()


def test_a_tab_opened_without_a_filter_shows_every_event_beside_tabs_with_filters(
    chromium: Any, make_devserver: Callable[..., DevServer], make_gateway: Callable[..., Gateway]
) -> None:
    devserver = make_devserver()  # its own: every event on it is this test's
    gateway = make_gateway(devserver.address, *FAST)
    project = unique_project()
    kinds = ["revision.created", "revision.tagged", "item.model.created", "bundle.created"]
    context = chromium.new_context(viewport=WIDE)
    try:
        tabs = []
        for key in (*kinds, "edge.*"):  # five tabs with a filter each
            tab = context.new_page()
            tab.goto(gateway.url + f"/?routing_key={key}")
            _wait_live(tab)
            tabs.append(tab)
        bare = context.new_page()
        bare.goto(gateway.url + "/")
        _wait_live(bare)
        # What the person opened, not another tab's panels.
        assert bare.evaluate("location.search") == ""
        assert bare.locator("#panels > .panel").count() == 1
        assert bare.input_value(f"{FIRST} input[name=routing_key]") == ""
        assert bare.locator(f"{FIRST} .panel-title").inner_text() == "all events"
        published = [
            cursor
            for n in range(6)
            for key in (*kinds, "project.created")
            for cursor in devserver.publish(key, f"kref://{project}/k{n}.model")
        ]
        wait_until(lambda: len(_row_cursors(bare)) >= len(published), 20, "every event")
        assert _row_cursors(bare) == published
        wait_until(lambda: len(_row_cursors(tabs[0])) == 6, 20, "the first tab's own")
        # A reload keeps it so.
        bare.reload()
        _wait_live(bare)
        assert bare.evaluate("location.search") == ""
        assert _row_cursors(bare) == published
    finally:
        context.close()
