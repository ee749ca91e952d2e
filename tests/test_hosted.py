"""The hosted API's dialect: /api/v1/events/stream read as Kumiho's own clients read it.

Those clients take every ``data:`` line for an event, send ``X-Kumiho-Token``,
``x-tenant-id`` and ``x-correlation-id``, put comma-separated lists in
``routing_key_filter``, take ``cursor`` from the JSON and reconnect with
``?cursor=``.
"""

from __future__ import annotations

import json
import queue
import re
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx

from tests.conftest import FAST, DevServer, Gateway, unique_project, wait_until

JS = Path(__file__).resolve().parent / "js"
STREAM = "/api/v1/events/stream"
TOKENS = ("--token", "tok-a=studio-a", "--token", "tok-b=studio-b")


def _lines(process: subprocess.Popen[str]) -> queue.Queue[str | None]:
    """A process's stdout, line by line, read in the background (None at its end)."""
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.put(line.rstrip("\n"))
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    return lines


def _next(lines: queue.Queue[str | None], timeout: float = 20) -> str:
    line = lines.get(timeout=timeout)
    assert line is not None, "the client ended early"
    return line


def test_a_hosted_client_reads_only_events_and_resumes_by_the_cursor_in_the_json(
    make_devserver: Callable[..., DevServer], make_gateway: Callable[..., Gateway]
) -> None:
    devserver = make_devserver(*TOKENS)
    # Every stream ends after about two seconds: the client must reconnect by itself.
    gateway = make_gateway(
        devserver.address, *FAST, "--auth", "passthrough", "--max-stream-lifetime", "2"
    )
    kref = f"kref://{unique_project()}/assets/hero.model"
    wanted: list[str] = []
    node = subprocess.Popen(
        [
            "node",
            str(JS / "hosted-fetch.mjs"),
            f"{gateway.url}{STREAM}?routing_key_filter=item.deleted,item.deprecated",
            "6",
            "X-Kumiho-Token=tok-a",
            "x-tenant-id=studio-a",
        ],
        stdout=subprocess.PIPE,
        text=True,
        cwd=JS,
    )
    try:
        lines = _lines(node)
        events: list[dict[str, str]] = []
        connects = 0
        while len(events) < 6:
            message = json.loads(_next(lines))
            if "connect" in message:
                connects += 1
                assert message["status"] == 200
                if connects <= 3:  # a batch for each of the first three connections
                    for key in ("item.deleted", "revision.created", "item.deprecated"):
                        cursors = devserver.publish(key, kref, tenant="studio-a")
                        if key.startswith("item."):
                            wanted += cursors
                    devserver.publish("item.deleted", kref, tenant="studio-b")  # not theirs
                continue
            events.append(message)
        assert node.wait(timeout=20) == 0
    finally:
        node.kill()
    assert [e["cursor"] for e in events] == wanted  # each once, in order, across reconnects
    assert {e["routing_key"] for e in events} == {"item.deleted", "item.deprecated"}
    assert connects >= 3


def _raw_lines(response: httpx.Response) -> Iterator[str]:
    yield from response.iter_lines()


def test_signals_are_comments_and_every_data_line_is_an_event(
    make_devserver: Callable[..., DevServer], make_gateway: Callable[..., Gateway]
) -> None:
    devserver = make_devserver()
    gateway = make_gateway(devserver.address, *FAST)
    kref = f"kref://{unique_project()}/shots/sq010.comp"
    before = devserver.publish("revision.created", kref)[0]
    published = devserver.publish("revision.tagged", kref, count=3)
    comments: list[str] = []
    data: list[dict[str, str]] = []
    with httpx.stream(
        "GET", f"{gateway.url}{STREAM}", params={"cursor": before}, timeout=20
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
        for line in _raw_lines(response):
            assert not line.startswith("event:"), line  # no named events on this route
            if line.startswith("data:"):
                data.append(json.loads(line[5:]))
                if len(data) == 3:
                    devserver.stop()  # the upstream goes away: told as a comment
            elif line.startswith(": gateway.status "):
                comments.append(line)
                if '"upstream":"unavailable"' in line:
                    break
    assert [d["cursor"] for d in data] == published
    assert all({"routing_key", "kref", "timestamp", "details", "cursor"} <= set(d) for d in data)
    status = json.loads(comments[-1].removeprefix(": gateway.status "))
    assert status["upstream"] == "unavailable" and status["code"] == "UNAVAILABLE"
    assert '"upstream":"live"' in comments[0]  # every stream starts with its state


def test_correlation_ids_are_echoed_forwarded_logged_and_in_errors(
    make_devserver: Callable[..., DevServer], make_gateway: Callable[..., Gateway]
) -> None:
    devserver = make_devserver(*TOKENS)
    gateway = make_gateway(devserver.address, *FAST, "--auth", "passthrough", "--no-hub")
    cid = "n8n-7f3a9c21"
    with httpx.stream(
        "GET",
        f"{gateway.url}{STREAM}",
        headers={"X-Kumiho-Token": "tok-a", "x-correlation-id": cid},
        timeout=20,
    ) as response:
        assert response.status_code == 200 and response.headers["x-correlation-id"] == cid
        wait_until(
            lambda: cid in devserver.client().stats().recent_correlation_ids, 10, "forwarded"
        )
    wait_until(lambda: cid in gateway.log(), 10, "the id in the gateway's log")
    # Made up when absent, and in every error envelope.
    refused = httpx.get(f"{gateway.url}{STREAM}", timeout=10)
    made_up = refused.headers["x-correlation-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", made_up)
    assert refused.status_code == 401
    assert refused.json()["error"]["correlation_id"] == made_up
    denied = httpx.get(
        f"{gateway.url}{STREAM}",
        headers={"X-Kumiho-Token": "tok-a", "x-tenant-id": "studio-b", "x-correlation-id": cid},
        timeout=10,
    )
    assert denied.status_code == 403 and denied.json()["error"]["correlation_id"] == cid
    # An id that could forge a log line or a header is refused, in the envelope.
    for bad in ("a b", "x" * 129, "ok\u00e9"):
        r = httpx.get(
            f"{gateway.url}{STREAM}", headers={"x-correlation-id": bad.encode()}, timeout=10
        )
        assert r.status_code == 400, bad
        error = r.json()["error"]
        assert error["code"] == "invalid_parameter" and "x-correlation-id" in error["message"]
        assert error["correlation_id"] == r.headers["x-correlation-id"] != bad


def test_x_tenant_id_is_forwarded_and_tenants_never_share_a_stream(
    make_devserver: Callable[..., DevServer], make_gateway: Callable[..., Gateway]
) -> None:
    devserver = make_devserver()  # an open server: x-tenant-id picks the tenant
    gateway = make_gateway(devserver.address, *FAST)
    kref = f"kref://{unique_project()}/assets/hero.model"
    cursors = {t: devserver.publish("item.model.created", kref, tenant=t) for t in ("a", "b")}
    for tenant in ("a", "b"):
        with httpx.stream(
            "GET",
            f"{gateway.url}{STREAM}",
            params={"from": "beginning", "kref_filter": kref},
            headers={"x-tenant-id": tenant},
            timeout=20,
        ) as response:
            data = next(line for line in response.iter_lines() if line.startswith("data:"))
        assert json.loads(data[5:])["cursor"] == cursors[tenant][0]
    assert set(devserver.client().stats().recent_tenants) >= {"a", "b"}
    bad = httpx.get(f"{gateway.url}{STREAM}", headers={"x-tenant-id": "a b"}, timeout=10)
    assert bad.status_code == 400 and "x-tenant-id" in bad.json()["error"]["message"]


def test_curl_reads_the_hosted_stream_with_a_list(
    make_devserver: Callable[..., DevServer], make_gateway: Callable[..., Gateway]
) -> None:
    devserver = make_devserver(*TOKENS)
    gateway = make_gateway(devserver.address, *FAST, "--auth", "passthrough")
    kref = f"kref://{unique_project()}/assets/hero.model"
    start = devserver.publish("space.created", kref, tenant="studio-a")[0]
    wanted = []
    for key in ("revision.tagged", "item.model.created", "revision.metadata.updated") * 2:
        cursor = devserver.publish(key, kref, tenant="studio-a")[0]
        if key.startswith("revision."):
            wanted.append(cursor)
    curl = subprocess.Popen(
        [
            "curl",
            "-sN",
            "--max-time",
            "20",
            "-H",
            "X-Kumiho-Token: tok-a",
            f"{gateway.url}{STREAM}?routing_key_filter=revision.*.updated,revision.tagged"
            f"&cursor={start}",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        lines = _lines(curl)
        got: list[str] = []
        while len(got) < len(wanted):
            line = _next(lines)
            if line.startswith("data:"):
                got.append(json.loads(line[5:])["cursor"])
    finally:
        curl.kill()
        curl.wait()
    assert got == wanted
