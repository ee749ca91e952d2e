"""Shutdown drains, stream lifetimes, slow consumers, and resource hygiene."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import uvicorn

from gateway.lifecycle import Lifecycle
from gateway.server import GatewayServer
from gateway.settings import Settings
from tests.conftest import (
    BOTH_MODES,
    FAST,
    DevServer,
    Gateway,
    Publisher,
    Reader,
    read_events,
    unique_project,
    wait_until,
)


def last_field(text_or_lines: str | list[str]) -> str:
    """The last non-comment line of a stream (heartbeats may follow anything)."""
    lines = text_or_lines.splitlines() if isinstance(text_or_lines, str) else text_or_lines
    return [ln for ln in (x.strip("\r") for x in lines) if ln and not ln.startswith(":")][-1]


async def _hold_stream(url: str, lines: list[str], opened: asyncio.Event) -> str:
    """Read one stream to its end; returns how it ended."""
    async with httpx.AsyncClient(timeout=30) as client, client.stream("GET", url + "/events") as r:
        assert r.status_code == 200
        try:
            async for line in r.aiter_lines():
                lines.append(line)
                opened.set()
        except httpx.HTTPError as exc:
            return f"broken: {exc!r}"
    return "clean"


def test_sigterm_drains_fifty_streams(
    make_devserver: Callable[..., DevServer], make_gateway: Callable[..., Gateway]
) -> None:
    devserver = make_devserver()
    gateway = make_gateway(
        devserver.address, *FAST, "--shutdown-grace", "4", "--drain-delay", "0.5"
    )

    async def scenario() -> tuple[list[str], list[list[str]], float, list[int]]:
        streams = [[] for _ in range(50)]
        opened = [asyncio.Event() for _ in streams]
        tasks = [
            asyncio.create_task(_hold_stream(gateway.url, s, o))
            for s, o in zip(streams, opened, strict=True)
        ]
        await asyncio.wait_for(asyncio.gather(*(o.wait() for o in opened)), 30)
        await asyncio.to_thread(
            wait_until,
            lambda: gateway.metric("kumiho_gateway_streams_open") == 50,
            20,
            "50 open streams",
        )
        assert devserver.open_streams() == 1  # the hub shares one upstream stream
        await asyncio.to_thread(
            devserver.publish, "revision.created", "kref://p/a.model", None, count=3
        )
        await asyncio.to_thread(
            wait_until,
            lambda: all(sum(ln.startswith("id: ") for ln in s) == 3 for s in streams),
            20,
            "events on every stream",
        )
        assert gateway.proc is not None
        gateway.proc.send_signal(signal.SIGTERM)
        sent = time.monotonic()
        ready_codes = []
        async with httpx.AsyncClient(timeout=5) as client:
            while time.monotonic() - sent < 0.3:  # within the drain delay
                ready_codes.append((await client.get(gateway.url + "/readyz")).status_code)
                await asyncio.sleep(0.05)
        endings = await asyncio.wait_for(asyncio.gather(*tasks), 15)
        exit_code = await asyncio.to_thread(gateway.proc.wait, 15)
        return endings, streams, time.monotonic() - sent, [exit_code, *ready_codes]

    # A thread of its own: Playwright's sync API may own this thread's event loop.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        endings, streams, elapsed, codes = pool.submit(asyncio.run, scenario()).result()
    exit_code, ready_codes = codes[0], codes[1:]
    assert ready_codes and set(ready_codes) == {503}  # not ready first, streams still open
    assert endings == ["clean"] * 50
    for lines in streams:
        assert sum(ln.startswith("id: ") for ln in lines) == 3
        assert last_field(lines).startswith("retry: ")  # the last thing each client hears
        assert 2000 <= int(last_field(lines).split()[1]) <= 3000
    assert exit_code == 0
    assert elapsed < 4 + 1  # within the grace period (and a moment for the process to exit)
    assert "drained 50 streams" in gateway.log()  # by the drain, not by uvicorn's timeout


@BOTH_MODES
def test_streams_that_finish_opening_during_a_drain_end_with_a_retry_line(
    make_devserver: Callable[..., DevServer], make_gateway: Callable[..., Gateway]
) -> None:
    # Late headers: each open waits a moment for a refusal, so many are in flight.
    devserver = make_devserver("--late-headers")
    # A stream per filter (in the hub too), so that many opens are in flight.
    gateway = make_gateway(
        devserver.address, *FAST, "--shutdown-grace", "6", "--hub-filtering", "upstream"
    )
    assert gateway.proc is not None

    def fetch(i: int) -> tuple[int, str]:
        try:
            with httpx.stream(
                "GET", gateway.url + "/events", params={"routing_key": f"k{i}.*"}, timeout=15
            ) as r:
                try:
                    return r.status_code, r.read().decode()
                except httpx.TransportError as exc:
                    return r.status_code, f"<broken: {exc!r}>"
        except httpx.TransportError:
            return 0, "<refused>"  # after the listener closed: the client goes elsewhere

    with concurrent.futures.ThreadPoolExecutor(40) as pool:
        futures = [pool.submit(fetch, i) for i in range(40)]
        wait_until(lambda: devserver.open_streams() >= 10, 10, "opens in flight")
        gateway.proc.send_signal(signal.SIGTERM)
        results = [f.result(timeout=30) for f in futures]
    answered = [body for status, body in results if status == 200]
    assert answered and all(status in (0, 200) for status, _ in results), results
    for body in answered:
        assert last_field(body).startswith("retry: "), body  # every 200 ends with one
    assert gateway.proc.wait(10) == 0


@BOTH_MODES
def test_polls_open_at_sigterm_answer_at_once_and_lose_nothing(
    make_devserver: Callable[..., DevServer], make_gateway: Callable[..., Gateway]
) -> None:
    devserver = make_devserver()
    # uvicorn's own graceful timeout is then 5 s: an answer well before it is the drain's.
    leaving = make_gateway(devserver.address, *FAST, "--shutdown-grace", "20")
    staying = make_gateway(devserver.address, *FAST)
    assert leaving.proc is not None
    project = unique_project()
    busy = {"kref_filter": f"kref://{project}/busy/**", "max_events": 1000, "timeout": 30}
    idle = {"kref_filter": f"kref://{project}/idle/**", "timeout": 30}
    answers: dict[str, tuple[httpx.Response, float]] = {}

    def poll(name: str, params: dict[str, Any]) -> None:
        response = httpx.get(leaving.url + "/events/poll", params=params, timeout=60)
        answers[name] = response, time.monotonic()

    polls = [
        threading.Thread(target=poll, args=(name, params), daemon=True)
        for name, params in (("busy", busy), ("idle", idle))
    ]
    for thread in polls:
        thread.start()

    def both_waiting() -> bool:
        if leaving.hub:
            return leaving.metric("kumiho_gateway_hub_subscribers") == 2
        return devserver.open_streams() == 2

    wait_until(both_waiting, 15, "both polls to wait for events")
    # A steady trickle: the busy poll keeps gathering (1,000 events would take 20 s).
    publisher = Publisher(devserver, f"kref://{project}/busy/shots/a.comp", rate=50)
    publisher.start()
    try:
        wait_until(lambda: len(publisher.cursors) >= 10, 15, "events for the busy poll")
        leaving.proc.send_signal(signal.SIGTERM)
        sent = time.monotonic()
        for thread in polls:
            thread.join(30)
        assert leaving.proc.wait(15) == 0
    finally:
        published = publisher.stop()
    answered = {name: at - sent for name, (_, at) in answers.items()}
    assert set(answered) == {"busy", "idle"}
    for response, _ in answers.values():
        assert response.headers["content-type"] == "application/json", response.text
    # At once: well before the polls' 30 s, and before uvicorn's cut.
    assert max(answered.values()) < 3, answered

    # What it gathered so far, in the normal body, with the cursor to go on from.
    response = answers["busy"][0]
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    got = [e["cursor"] for e in body["events"]]
    assert got and body["cursor"] == got[-1] and body["reset"] is None
    # Nothing safe to answer: come back (elsewhere), the envelope says when.
    response = answers["idle"][0]
    assert response.status_code == 503, response.text
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert error["code"] == "draining" and error["retryable"] is True
    assert 2000 <= error["retry_after_ms"] <= 3000

    # Polling on from that cursor on another gateway: every event once, in order.
    cursor = body["cursor"]
    for _ in range(10):  # bounded: fewer than 1,000 events are left
        if len(got) >= len(published):
            break
        params = {**busy, "cursor": cursor, "timeout": 5}
        rest = httpx.get(staying.url + "/events/poll", params=params, timeout=60)
        assert rest.status_code == 200, rest.text
        got += [e["cursor"] for e in rest.json()["events"]]
        cursor = rest.json()["cursor"]
    assert got == published
    log = leaving.log()
    assert "Traceback" not in log and "ERROR" not in log


class _SilentUpstream(threading.Thread):
    """A host that accepts connections and never answers: an upstream hung mid-handshake."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self.listener.getsockname()[1]}"
        self.connections: list[socket.socket] = []

    def run(self) -> None:
        with contextlib.suppress(OSError):  # closed by close()
            while len(self.connections) < 100:  # bounded: a gateway makes one or two
                self.connections.append(self.listener.accept()[0])

    def close(self) -> None:
        self.listener.close()
        for connection in self.connections:
            connection.close()


@BOTH_MODES
def test_a_poll_still_opening_at_sigterm_gets_a_503_at_once(
    make_gateway: Callable[..., Gateway],
) -> None:
    upstream = _SilentUpstream()
    upstream.start()
    try:
        # The poll would wait 30 s for the upstream's first word; uvicorn's own
        # graceful timeout is 5 s.
        gateway = make_gateway(
            upstream.address, *FAST, "--open-timeout", "30", "--shutdown-grace", "20"
        )
        assert gateway.proc is not None
        answers: list[httpx.Response] = []
        params = {"timeout": 30}
        polling = threading.Thread(
            target=lambda: answers.append(
                httpx.get(gateway.url + "/events/poll", params=params, timeout=60)
            ),
            daemon=True,
        )
        polling.start()
        wait_until(lambda: bool(upstream.connections), 15, "the poll to call the upstream")
        gateway.proc.send_signal(signal.SIGTERM)
        sent = time.monotonic()
        polling.join(30)
        elapsed = time.monotonic() - sent
        assert gateway.proc.wait(15) == 0
    finally:
        upstream.close()
    [response] = answers
    assert elapsed < 3, elapsed  # at once, not after uvicorn's cut
    assert response.status_code == 503, response.text
    error = response.json()["error"]
    assert error["code"] == "draining" and error["retryable"] is True
    assert error["retry_after_ms"] >= 2000


def test_a_second_sigterm_exits_at_once(
    make_devserver: Callable[..., DevServer], make_gateway: Callable[..., Gateway]
) -> None:
    devserver = make_devserver()
    gateway = make_gateway(
        devserver.address, *FAST, "--drain-delay", "10", "--shutdown-grace", "30"
    )
    reader = Reader(gateway.url)
    reader.start()
    assert reader.connected.wait(10) and reader.status == 200
    assert gateway.proc is not None
    gateway.proc.send_signal(signal.SIGTERM)
    wait_until(lambda: httpx.get(gateway.url + "/readyz").status_code == 503, 5, "draining")
    second = time.monotonic()
    gateway.proc.send_signal(signal.SIGTERM)
    gateway.proc.wait(15)
    # The drain delay alone is 10 s, and uvicorn would wait 8 s for the open stream.
    assert time.monotonic() - second < 3
    reader.stop.set()


def test_the_server_stops_as_its_drain_ends_not_at_its_next_tick() -> None:
    # Its loop wakes once a second (the Date header); the end of a drain must wake it.
    async def never_called(scope: Any, receive: Any, send: Any) -> None:
        raise AssertionError("no request is made")

    async def scenario() -> float:
        config = uvicorn.Config(never_called, log_config=None, lifespan="off")
        server = GatewayServer(config, Lifecycle(), Settings(drain_delay=0))
        with socket.create_server(("127.0.0.1", 0)) as sock:
            serving = asyncio.create_task(server.serve([sock]))
            await asyncio.to_thread(wait_until, lambda: server.started, 10, "uvicorn to serve")
            # Just after a tick (each one sets new default headers): the next is a second away.
            headers = server.server_state.default_headers

            def ticked() -> bool:
                return server.server_state.default_headers is not headers

            await asyncio.to_thread(wait_until, ticked, 10, "a tick")
            loop = asyncio.get_running_loop()
            asked = loop.time()
            server.handle_exit(signal.SIGTERM, None)  # no stream open: the drain ends at once
            await asyncio.wait_for(serving, 10)
            return loop.time() - asked

    assert asyncio.run(scenario()) < 0.5


def test_new_streams_while_draining_get_a_retry_line(
    make_devserver: Callable[..., DevServer], make_gateway: Callable[..., Gateway]
) -> None:
    devserver = make_devserver()
    gateway = make_gateway(devserver.address, *FAST, "--drain-delay", "2", "--shutdown-grace", "6")
    assert gateway.proc is not None
    gateway.proc.send_signal(signal.SIGTERM)
    wait_until(lambda: httpx.get(gateway.url + "/readyz").status_code == 503, 5, "draining")
    r = httpx.get(gateway.url + "/events", timeout=5)
    assert r.status_code == 200  # never a status that would stop EventSource for good
    assert r.text.startswith("retry: ") and "data:" not in r.text
    assert gateway.proc.wait(10) == 0


def test_max_stream_lifetime_closes_between_frames(
    make_devserver: Callable[..., DevServer], make_gateway: Callable[..., Gateway]
) -> None:
    devserver = make_devserver("--activity", "50")
    gateway = make_gateway(devserver.address, *FAST, "--max-stream-lifetime", "1")
    started = time.monotonic()
    with httpx.stream("GET", gateway.url + "/events", timeout=10) as r:
        body = r.read().decode()  # the server ends it
    elapsed = time.monotonic() - started
    assert 0.85 <= elapsed < 3
    assert body.endswith("\n\n") and last_field(body).startswith("retry: ")
    frames = [f for f in body.split("\n\n") if f]
    # Whole frames only: the retry: line, the upstream's state, events, heartbeats.
    assert all(f.startswith(("retry: ", "event: gateway.status\n", "id: ", ":")) for f in frames)
    assert sum(f.startswith("id: ") for f in frames) > 5
    assert gateway.metric("kumiho_gateway_stream_closes_total", '{cause="lifetime"}') == 1


def _stalled_client(url: str, params: str = "", headers: str = "") -> socket.socket:
    """A client that sends its request and then reads nothing (a tiny receive window)."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((host, int(port)))
    sock.sendall(f"GET /events{params} HTTP/1.1\r\nHost: {host}\r\n{headers}\r\n".encode())
    return sock


def _read_until_closed(sock: socket.socket, deadline: float = 30) -> bytes:
    sock.settimeout(deadline)
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def _dechunk(raw: bytes) -> str:
    head, _, body = raw.partition(b"\r\n\r\n")
    assert b"200 OK" in head.split(b"\r\n")[0]
    out = b""
    while body:
        size_line, _, rest = body.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            break
        out += rest[:size]
        body = rest[size + 2 :]
    return out.decode()


def test_a_slow_consumer_is_cut_off_and_resumes_without_loss(
    make_devserver: Callable[..., DevServer], make_gateway: Callable[..., Gateway]
) -> None:
    devserver = make_devserver()
    gateway = make_gateway(
        devserver.address,
        *FAST,
        "--buffer-events",
        "200",
        "--buffer-bytes",
        "65536",
        "--slow-consumer-grace",
        "0.5",
        "--hub-linger",
        "0.5",  # the shared stream closes soon after its only client is cut
    )
    rss_before = gateway.metric("process_resident_memory_bytes")
    sock = _stalled_client(gateway.url)
    wait_until(lambda: devserver.open_streams() == 1, 10, "the upstream stream")
    cursors: list[str] = []
    for _ in range(10):
        cursors += devserver.publish(
            "revision.created", "kref://p/slow.model", {"pad": "x" * 200}, count=1000
        )
    wait_until(
        lambda: gateway.metric("kumiho_gateway_slow_consumer_disconnects_total") == 1,
        20,
        "the slow-consumer cut",
    )
    wait_until(lambda: devserver.open_streams() == 0, 5, "the upstream call to end")
    rss_after = gateway.metric("process_resident_memory_bytes")
    assert rss_after - rss_before < 30 * 2**20  # the backlog never piled up in the gateway
    # The client wakes up: it gets whole frames, a retry: line, the end; then resumes.
    text = _dechunk(_read_until_closed(sock))
    sock.close()
    ids = [ln[4:] for ln in text.split("\n") if ln.startswith("id: ")]
    assert last_field(text).startswith("retry: ")
    assert 0 < len(ids) < len(cursors)
    rest = read_events(
        gateway.url, len(cursors) - len(ids), headers={"Last-Event-ID": ids[-1]}, timeout=60
    )
    assert ids + [e.id for e in rest] == cursors  # nothing lost, nothing twice


# A client whose write blocks for a second is dropped; the buffer policy stays
# out of the way (these are the stalled-write checks).
_STALL_ARGS = (
    *FAST,
    "--send-timeout",
    "1",
    "--slow-consumer-grace",
    "60",
    "--buffer-events",
    "100000",
    "--buffer-bytes",
    str(64 * 2**20),
)


def _flood_until_one_is_dropped(devserver: DevServer, gateway: Gateway) -> None:
    """~10 MB of events (more than the kernel's socket buffers, 4 MiB at most here,
    can take), until one stream has been dropped for a blocked write."""
    for _ in range(5):
        devserver.publish(
            "revision.created", "kref://p/stall.model", {"pad": "x" * 2000}, count=1000
        )
    wait_until(
        lambda: gateway.metric("kumiho_gateway_stream_closes_total", '{cause="send_timeout"}') == 1,
        20,
        "the stalled stream to end",
    )


def test_a_write_blocked_past_the_send_timeout_drops_the_connection(
    make_devserver: Callable[..., DevServer], make_gateway: Callable[..., Gateway]
) -> None:
    devserver = make_devserver()
    gateway = make_gateway(devserver.address, *_STALL_ARGS)
    # A first stream connects the upstream channel, so the fd count below is the baseline.
    devserver.publish("revision.created", "kref://p/stall.model", count=1)
    assert len(read_events(gateway.url, 1, params={"from": "beginning"})) == 1
    fds = gateway.metric("process_open_fds")
    sock = _stalled_client(gateway.url)
    wait_until(lambda: gateway.metric("kumiho_gateway_streams_open") == 1, 10, "the stream")
    _flood_until_one_is_dropped(devserver, gateway)
    assert gateway.metric("kumiho_gateway_streams_open") == 0
    assert gateway.metric("kumiho_gateway_hub_subscribers") == 0
    # The client still reads nothing; the connection itself goes too (the kernel
    # aborts it after twice the send timeout without progress), socket and buffers.
    wait_until(lambda: gateway.metric("process_open_fds") == fds, 20, "the socket to be freed")
    with contextlib.suppress(ConnectionResetError):
        _read_until_closed(sock, deadline=20)
    sock.close()
    log = gateway.log()
    assert "dropping a client whose write blocked" in log
    assert "Traceback" not in log


def test_a_dropped_client_is_logged_under_its_own_correlation_id(
    make_devserver: Callable[..., DevServer], make_gateway: Callable[..., Gateway]
) -> None:
    devserver = make_devserver()
    gateway = make_gateway(devserver.address, *_STALL_ARGS)
    # Another stream opens first (the shared ticker is armed while it does) and
    # stays open; it wants none of what follows, so it never stalls.
    headers = {"x-correlation-id": "healthy-first"}
    params = {"routing_key": "other.key"}
    with httpx.stream(
        "GET", gateway.url + "/events", params=params, headers=headers, timeout=30
    ) as healthy:
        assert healthy.status_code == 200
        wait_until(lambda: gateway.metric("kumiho_gateway_streams_open") == 1, 10, "the first")
        sock = _stalled_client(gateway.url, headers="x-correlation-id: stalled-second\r\n")
        wait_until(lambda: gateway.metric("kumiho_gateway_streams_open") == 2, 10, "the second")
        _flood_until_one_is_dropped(devserver, gateway)
        sock.close()
    lines = [line for line in gateway.log().splitlines() if "write blocked" in line]
    assert len(lines) == 1 and "[stalled-second]" in lines[0], lines


def test_a_steady_stream_that_stops_reading_falls_back_and_is_cut_while_the_others_read_on(
    make_devserver: Callable[..., DevServer], make_gateway: Callable[..., Gateway]
) -> None:
    devserver = make_devserver()
    # No gathering: every event is written at once, so steady streams are written by
    # their group's lane. A pump that has queued 50 events for a second cuts its client
    # (its retry: line then waits on the full transport until the send timeout).
    args = ("--flush-interval", "0", "--slow-consumer-grace", "1", "--send-timeout", "5")
    gateway = make_gateway(devserver.address, *FAST, *args, "--buffer-events", "50")
    healthy = Reader(gateway.url)
    healthy.start()
    assert healthy.connected.wait(10)
    sock = _stalled_client(gateway.url)
    wait_until(lambda: gateway.metric("kumiho_gateway_streams_open") == 2, 10, "both streams")
    cuts, kref = "kumiho_gateway_slow_consumer_disconnects_total", "kref://p/stall.model"
    cursors: list[str] = []
    try:
        # One event at a time, each once the healthy client has the last: lone events,
        # written by the lane until the stalled client's transport takes no more. Then
        # its pump must queue them, by its own bounds.
        for i in range(600):
            cursors += devserver.publish("revision.created", kref, {"pad": "x" * 30000})
            healthy.wait_for(len(cursors))
            if i % 20 == 0 and gateway.metric(cuts) == 1:
                break
        wait_until(lambda: gateway.metric(cuts) == 1, 20, "the slow consumer's cut")
        wait_until(lambda: gateway.metric("kumiho_gateway_streams_open") == 1, 20, "its end")
        cursors += devserver.publish("revision.created", kref, count=3)
        assert [event.id for event in healthy.wait_for(len(cursors))] == cursors
        assert gateway.metric("kumiho_gateway_stream_closes_total", '{cause="slow_consumer"}') == 1
    finally:
        healthy.stop.set()
        sock.close()


def test_a_steady_stream_that_pauses_in_its_lane_gets_every_event_once_when_it_reads_again(
    make_devserver: Callable[..., DevServer], make_gateway: Callable[..., Gateway]
) -> None:
    devserver = make_devserver()
    # Every event written at once (to a steady stream: by its lane), and room to wait.
    args = ("--flush-interval", "0", "--slow-consumer-grace", "60", "--send-timeout", "60")
    gateway = make_gateway(devserver.address, *FAST, *args, "--buffer-bytes", str(64 * 2**20))
    healthy = Reader(gateway.url)
    healthy.start()
    assert healthy.connected.wait(10)
    sock = _stalled_client(gateway.url)
    wait_until(lambda: gateway.metric("kumiho_gateway_streams_open") == 2, 10, "both streams")
    kref, cursors = "kref://p/pause.model", []
    try:
        # Lone events, until the stalled stream's pump holds some: its transport paused
        # as its lane wrote one (the frame that paused it is in the transport's buffer).
        for _ in range(600):
            cursors += devserver.publish("revision.created", kref, {"pad": "x" * 30000})
            healthy.wait_for(len(cursors))
            if gateway.metric("kumiho_gateway_events_delivered_total") < 2 * len(cursors):
                break
        assert gateway.metric("kumiho_gateway_events_delivered_total") < 2 * len(cursors)
        cursors += devserver.publish("revision.created", kref, count=3)
        healthy.wait_for(len(cursors))
        # The stalled client reads again: every event, once, in order.
        sock.settimeout(30)
        raw, last = b"", f"id: {cursors[-1]}\n".encode()
        while last not in raw:
            data = sock.recv(1 << 20)
            assert data, "the stream ended"
            raw += data
        ids = [line[4:] for line in _dechunk(raw).splitlines() if line.startswith("id: ")]
        assert ids == cursors
    finally:
        healthy.stop.set()
        sock.close()


def test_thousand_connects_and_disconnects_leak_nothing(
    make_devserver: Callable[..., DevServer], make_gateway: Callable[..., Gateway]
) -> None:
    devserver = make_devserver("--activity", "20")
    gateway = make_gateway(devserver.address, *FAST, "--hub-linger", "0.2")
    host, port = "127.0.0.1", gateway.port

    def cycle(i: int) -> None:
        with socket.create_connection((host, port), timeout=10) as s:
            s.sendall(b"GET /events?from=beginning HTTP/1.1\r\nHost: x\r\n\r\n")
            s.recv(200 + i % 400)  # leave mid-frame, at varying points

    for i in range(100):  # warm-up: allocator, caches, metric children
        cycle(i)
    wait_until(lambda: devserver.open_streams() == 0, 10, "warm-up streams to close")
    before = {
        n: gateway.metric(n)
        for n in (
            "process_open_fds",
            "process_resident_memory_bytes",
            "kumiho_gateway_asyncio_tasks",
        )
    }
    started = time.monotonic()
    for i in range(1000):
        cycle(i)
    wait_until(lambda: devserver.open_streams() == 0, 10, "every upstream call to end")
    wait_until(
        lambda: gateway.metric("kumiho_gateway_streams_open") == 0, 10, "every stream to close"
    )
    after = {n: gateway.metric(n) for n in before}
    assert gateway.metric("kumiho_gateway_upstream_streams_open") == 0
    assert after["process_open_fds"] - before["process_open_fds"] <= 5
    assert after["kumiho_gateway_asyncio_tasks"] - before["kumiho_gateway_asyncio_tasks"] <= 2
    assert (
        after["process_resident_memory_bytes"] - before["process_resident_memory_bytes"]
        < 20 * 2**20
    )
    print(
        f"1000 cycles in {time.monotonic() - started:.1f}s: "
        + ", ".join(f"{k} {before[k]:.0f} -> {after[k]:.0f}" for k in before)
    )


def test_unavailable_upstream_backs_off_and_recovers(
    make_gateway: Callable[..., Gateway], tmp_path
) -> None:  # type: ignore[no-untyped-def]
    from tests.conftest import free_port

    port = free_port()
    gateway = make_gateway(
        f"127.0.0.1:{port}", "--backoff-initial", "0.1", "--backoff-max", "1", "--heartbeat", "0.5"
    )
    clients = 10

    def attempts() -> float:
        return gateway.metric("kumiho_gateway_upstream_failures_total", '{code="UNAVAILABLE"}')

    procs = [
        subprocess.Popen(
            ["curl", "-sN", "--max-time", "30", gateway.url + "/events"],
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(clients)
    ]
    try:
        wait_until(
            lambda: gateway.metric("kumiho_gateway_streams_open") == clients,
            15,
            "all clients streaming",
        )
        first, t0 = attempts(), time.monotonic()
        time.sleep(3)  # measuring a rate over a window: the sleep is the measurement
        rate = (attempts() - first) / (time.monotonic() - t0)
        # One shared upstream stream retries for all ten clients, its backoff
        # capped at 1 s and jittered down to 0.5 s: at most two calls a second.
        assert rate <= 3, rate
        assert httpx.get(gateway.url + "/readyz").status_code == 503
        devserver = DevServer(tmp_path / "late.sqlite3", port=port).start()
        try:
            # One shared upstream stream serves all ten clients once it is back.
            wait_until(lambda: devserver.open_streams() == 1, 15, "the shared stream to reopen")
            cursors = devserver.publish("revision.created", "kref://p/back.model", count=2)
            for proc in procs:
                assert proc.stdout is not None
                ids: list[str] = []
                for line in proc.stdout:
                    if line.startswith("id: "):
                        ids.append(line.strip()[4:])
                        if len(ids) == 2:
                            break
                assert ids == cursors  # on the same connection, no reconnect
        finally:
            devserver.stop(signal.SIGKILL)
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


def test_metrics_move(
    make_devserver: Callable[..., DevServer], make_gateway: Callable[..., Gateway]
) -> None:
    devserver = make_devserver("--buffer-size", "5")
    gateway = make_gateway(devserver.address, *FAST)
    cursors = devserver.publish("revision.created", "kref://p/m.model", count=10)
    events = read_events(gateway.url, 6, headers={"Last-Event-ID": cursors[0]})
    assert events[0].event == "gateway.reset"
    wait_until(lambda: gateway.metric("kumiho_gateway_streams_open") == 0, 5, "the stream to close")
    text = httpx.get(gateway.url + "/metrics").text
    assert gateway.metric("kumiho_gateway_events_delivered_total") >= 5
    assert gateway.metric("kumiho_gateway_bytes_written_total") > 5 * 100
    assert gateway.metric("kumiho_gateway_resets_total", '{reason="cursor_expired"}') == 1
    assert gateway.metric("kumiho_gateway_upstream_failures_total", '{code="OUT_OF_RANGE"}') == 1
    assert gateway.metric("kumiho_gateway_upstream_connects_total") >= 1
    assert gateway.metric("kumiho_gateway_stream_duration_seconds_count") == 1
    assert gateway.metric("kumiho_gateway_stream_closes_total", '{cause="client"}') == 1
    assert "process_open_fds" in text
    assert json.loads(events[0].data)["reason"] == "cursor_expired"
