"""One hard sequence, six SSE clients, one answer.

Every client must see the identical sequence of (id, parsed data). The id
compared is the one the SSE standard defines for each event: its ``id:``
field, or, when the frame has none (an event without a cursor), the last id
seen before it, which is what a browser reports as ``lastEventId`` and sends
back as ``Last-Event-ID``. Clients that expose only the frame's own id field
(fetch-event-source, sseclient-py, and npm eventsource, whose MessageEvent
says "" there while it resends the retained id on reconnect) get that
bookkeeping in their adapter.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import sseclient
from httpx_sse import connect_sse

from tests.conftest import FAST, DevServer, Gateway, PageServer, unique_project

ROOT = Path(__file__).resolve().parent.parent
JS = ROOT / "tests" / "js"

HARD: list[dict[str, str]] = [
    {"text": "line one\nline two\nline three"},
    {"cr": "carriage\rreturn", "crlf": "windows\r\nline"},
    {"ls": "line\u2028separator", "ps": "para\u2029graph"},
    {"nel": "next\u0085line"},
    {"emoji": "🦊 🎬 kitsune", "quote": 'say "hi" \\ ok'},
    {},
    {"big": ("0123456789abcdef" * 4096)},  # a 64 KiB value
    {"sse": "\n\ndata: forged\nid: 0-0\nevent: x\n\n"},
    {"after": "an event without a cursor comes next"},
    {"no_cursor": "true"},  # published without a cursor
    {"last": "done"},
]
NO_CURSOR_INDEX = 9

Record = list[tuple[str, Any]]


def spec_parse(text: str) -> Record:
    """The HTML standard's event-stream interpretation, for raw bytes (curl's output)."""
    events: Record = []
    last_id, data, has_data, event = "", [], False, ""
    for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n"):
        if line == "":
            if has_data and event in ("", "message"):  # what onmessage would see
                events.append((last_id, json.loads("\n".join(data))))
            data, has_data, event = [], False, ""
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            data.append(value)
            has_data = True
        elif name == "id" and "\0" not in value:
            last_id = value
        elif name == "event":
            event = value
    return events


def _with_retained_ids(pairs: list[tuple[str | None, str]]) -> Record:
    out: Record = []
    last = ""
    for frame_id, data in pairs:
        if frame_id:
            last = frame_id
        out.append((last, json.loads(data)))
    return out


def read_httpx_sse(url: str, n: int) -> Record:
    out: Record = []
    with httpx.Client(timeout=30) as client, connect_sse(client, "GET", url) as source:
        for sse in source.iter_sse():
            if sse.data and sse.event == "message":  # named control events are not messages
                out.append((sse.id, json.loads(sse.data)))
                if len(out) == n:
                    break
    return out


def read_sseclient(url: str, n: int) -> Record:
    pairs: list[tuple[str | None, str]] = []
    with httpx.stream("GET", url, timeout=30) as response:
        for event in sseclient.SSEClient(response.iter_bytes()).events():
            if event.data and event.event == "message":
                pairs.append((event.id, event.data))
                if len(pairs) == n:
                    break
    return _with_retained_ids(pairs)


def read_curl(url: str, n: int) -> Record:
    proc = subprocess.Popen(["curl", "-sN", "--max-time", "30", url], stdout=subprocess.PIPE)
    assert proc.stdout is not None
    raw = b""
    try:
        while len(spec_parse(raw.decode(errors="replace"))) < n:
            chunk = proc.stdout.read1(65536)  # type: ignore[attr-defined]
            if not chunk:
                break
            raw += chunk
    finally:
        proc.kill()
        proc.wait()
    return spec_parse(raw.decode())[:n]


def read_node_eventsource(url: str, n: int) -> Record:
    script = JS / "read-eventsource.mjs"
    out = subprocess.run(
        ["node", str(script), url, str(n)], capture_output=True, text=True, timeout=60, cwd=JS
    )
    assert out.returncode == 0, out.stderr
    # It reports `event.id || ""` as lastEventId (but resends the retained id on
    # reconnect): the adapter keeps the retained id, as for the libraries below.
    return _with_retained_ids([(i, d) for i, d in json.loads(out.stdout)])


CHROMIUM_READER = """async ([url, n]) => new Promise((resolve, reject) => {
    const out = [];
    const es = new EventSource(url);
    es.onmessage = (m) => {
        out.push([m.lastEventId, m.data]);
        if (out.length === n) { es.close(); resolve(out); }
    };
    es.onerror = () => { if (es.readyState === EventSource.CLOSED) reject(new Error('closed')); };
})"""

# kumiho-events.js, asked for what the URL asks (it reads the past with /events/poll
# and goes on with the stream shared by the browser's tabs).
LIBRARY_READER = """async ([url, n]) => {
    const { subscribe } = await import('/kumiho-events.js');
    const params = new URL(url).searchParams;
    const details = {};
    for (const [name, value] of params) {
        if (name.startsWith('details.')) details[name.slice('details.'.length)] = value;
    }
    return new Promise((resolve) => {
        const out = [];
        const feed = subscribe({
            from: params.get('from'), kref: params.get('kref'), details, storageKey: null,
            routingKey: params.get('routing_key') || [],
            onEvent: (e) => {
                out.push([e.cursor, JSON.stringify(e)]);
                if (out.length === n) { feed.close(); resolve(out); }
            },
        });
    });
}"""

# The package's ESM build imports './fetch' and './parse' the Node way, without
# extensions: an import map points the browser at the files.
FETCH_READER_PAGE = """<!doctype html><meta charset="utf-8">
<script type="importmap">{"imports": {
    "./fetch-event-source/fetch": "./fetch-event-source/fetch.js",
    "./fetch-event-source/parse": "./fetch-event-source/parse.js"
}}</script>
<script type="module">
import { fetchEventSource } from './fetch-event-source/index.js';
window.read = (url, n) => new Promise((resolve, reject) => {
    const out = [];
    const ctrl = new AbortController();
    fetchEventSource(url, {
        signal: ctrl.signal,
        openWhenHidden: true,
        onmessage(msg) {
            if (!msg.data || (msg.event && msg.event !== 'message')) return;
            out.push([msg.id, msg.data]);
            if (out.length === n) { ctrl.abort(); resolve(out); }
        },
        onerror(err) { reject(err); throw err; },
    });
});
window.ready = true;
</script>"""


@pytest.fixture
def fetch_event_source_page(page_server: Callable[[dict[str, str]], PageServer]) -> PageServer:
    lib = JS / "node_modules" / "@microsoft" / "fetch-event-source" / "lib" / "esm"
    if not lib.exists():
        pytest.fail("run `npm ci --prefix tests/js` first (.ci/run does)")
    server = page_server({"index.html": FETCH_READER_PAGE})
    shutil.copytree(lib, server.root / "fetch-event-source")
    return server


# The same sequence through a list and a detail filter: before each event come two the
# filter drops (a routing key not in the list, a detail that does not match).
FILTER = "routing_key=item.model.created,revision.tagged&details.lane=a"


@pytest.mark.parametrize("filtered", [False, True], ids=["everything", "lists-and-details"])
def test_every_client_sees_the_same_sequence(
    chromium: Any,
    make_devserver: Callable[..., DevServer],
    make_gateway: Callable[..., Gateway],
    fetch_event_source_page: PageServer,
    filtered: bool,
) -> None:
    devserver = make_devserver()
    gateway = make_gateway(
        devserver.address, *FAST, "--cors-origins", fetch_event_source_page.origin
    )
    project = unique_project()
    cursors: list[str] = []
    expected_details = []
    for i, hard in enumerate(HARD):
        kref = f"kref://{project}/狐/{i}.model"
        details = {**hard, "lane": "a"} if filtered else hard
        if filtered:
            devserver.publish("revision.deleted", kref, details)
            devserver.publish("item.model.created", kref, {**hard, "lane": "b"})
        key = "revision.tagged" if filtered and i % 2 else "item.model.created"
        cursors += devserver.publish(key, kref, details, without_cursor=i == NO_CURSOR_INDEX)
        expected_details.append(details)
    assert cursors[NO_CURSOR_INDEX] == ""
    expected_ids = [
        c or cursors[i - 1] for i, c in enumerate(cursors)
    ]  # retained, as the spec says
    n = len(HARD)
    url = f"{gateway.url}/events?from=beginning&kref=kref://{project}/**"
    if filtered:
        url += f"&{FILTER}"

    context = chromium.new_context()
    try:
        page = context.new_page()
        page.goto(gateway.url + "/healthz")
        chromium_pairs = page.evaluate(CHROMIUM_READER, [url, n])
        library_pairs = page.evaluate(LIBRARY_READER, [url, n])
        page.goto(fetch_event_source_page.origin + "/index.html")
        page.wait_for_function("window.ready === true")
        fetch_pairs = page.evaluate("([url, n]) => window.read(url, n)", [url, n])
    finally:
        context.close()

    results: dict[str, Record] = {
        "Chromium EventSource": [(i, json.loads(d)) for i, d in chromium_pairs],
        "kumiho-events.js (in Chromium)": _with_retained_ids(list(map(tuple, library_pairs))),
        "@microsoft/fetch-event-source (in Chromium)": _with_retained_ids(
            [(i, d) for i, d in fetch_pairs]
        ),
        "eventsource (npm, Node)": read_node_eventsource(url, n),
        "httpx-sse": read_httpx_sse(url, n),
        "sseclient-py": read_sseclient(url, n),
        "curl -N": read_curl(url, n),
    }
    reference = results["httpx-sse"]
    assert [i for i, _ in reference] == expected_ids
    assert [d["details"] for _, d in reference] == expected_details
    assert [d["cursor"] for _, d in reference] == cursors
    for client, record in results.items():
        assert record == reference, f"{client} saw a different sequence"
