"""Chaos: nothing lost, nothing twice, order kept, whatever breaks.

A numbered sequence of events is published at a steady rate into the
reference upstream while a client reads it through a real nginx (with the
shipped deploy/nginx/sse.conf) in front of two gateway replicas, and, like a
browser's EventSource, reconnects with its Last-Event-ID after the server's
retry: delay whenever its connection ends. Meanwhile, at seeded random
moments, every fault this stack can suffer is injected: the client's TCP
connection cut; the upstream stream broken; the upstream process killed and
restarted; one gateway sent SIGTERM and another SIGKILLed, then restarted.

KUMIHO_CHAOS_EVENTS (default 5000) and KUMIHO_CHAOS_SEED (default 20261127)
make longer or different runs.
"""

from __future__ import annotations

import http.client
import json
import os
import random
import signal
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable

import grpc
import httpx
import pytest

from tests.conftest import SSE_CONF, DevServer, Gateway, wait_until

EVENTS = int(os.environ.get("KUMIHO_CHAOS_EVENTS", "5000"))
SEED = int(os.environ.get("KUMIHO_CHAOS_SEED", "20261127"))
RATE = 250.0  # events per second
KINDS = ("client_cut", "upstream_break", "upstream_restart", "gateway_term", "gateway_kill")
GATEWAY_ARGS = (
    "--retry-ms", "100", "--heartbeat", "1", "--backoff-initial", "0.05",
    "--backoff-max", "0.5", "--shutdown-grace", "3", "--log-level", "warning",
)  # fmt: skip

# The http block of the chaos test's nginx: two replicas, /events as shipped.
NGINX_HTTP = """
    upstream kumiho_gateway {{
        server 127.0.0.1:{a} max_fails=0;  # as deploy/nginx/nginx.conf
        server 127.0.0.1:{b} max_fails=0;
    }}
    server {{
        listen 127.0.0.1:{port};
        location = /events {{
            include {sse_conf};
            proxy_pass http://kumiho_gateway;
        }}
    }}
"""


@pytest.fixture
def nginx(make_nginx: Callable[[Callable[[int], str]], int]) -> Callable[[int, int], int]:
    def start(a: int, b: int) -> int:
        return make_nginx(lambda port: NGINX_HTTP.format(a=a, b=b, port=port, sse_conf=SSE_CONF))

    return start


def _streams_open(gateway: Gateway) -> float:
    try:
        return gateway.metric("kumiho_gateway_streams_open")
    except httpx.HTTPError:
        return 0.0  # restarting


class Browser(threading.Thread):
    """An EventSource, as the HTML standard defines it, on a plain socket."""

    def __init__(self, port: int, expected: int) -> None:
        super().__init__(daemon=True)
        self.port, self.expected = port, expected
        self.received: list[tuple[str, int, float]] = []  # (id, n, monotonic time)
        self.last_id = ""
        self.retry_ms = 1000
        self.reconnects = 0
        self.non_200: list[int] = []
        self.stop = threading.Event()
        self._conn: http.client.HTTPConnection | None = None

    def cut(self) -> None:
        conn = self._conn
        if conn is not None and conn.sock is not None:
            conn.sock.shutdown(socket.SHUT_RDWR)

    def run(self) -> None:
        while not self.stop.is_set() and len(self.received) < self.expected:
            self._connect_once()
            if len(self.received) < self.expected:
                self.reconnects += 1
                time.sleep(self.retry_ms / 1000)

    def _connect_once(self) -> None:
        headers = {"Accept": "text/event-stream"}
        if self.last_id:
            headers["Last-Event-ID"] = self.last_id
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        self._conn = conn
        try:
            conn.request("GET", "/events?from=beginning", headers=headers)
            response = conn.getresponse()
            if response.status != 200:
                self.non_200.append(response.status)
                return
            self._read(response)
        except (OSError, http.client.HTTPException):
            pass  # connection cut or ended: reconnect like a browser
        finally:
            self._conn = None
            conn.close()

    def _read(self, response: http.client.HTTPResponse) -> None:
        data: list[str] = []
        event_id: str | None = None
        event = ""
        while not self.stop.is_set():
            raw = response.readline()
            if not raw:
                return
            line = raw.decode().rstrip("\r\n")
            if not line:  # dispatch
                if event_id is not None:
                    self.last_id = event_id
                if data and event in ("", "message"):  # as onmessage: no control events
                    n = int(json.loads("\n".join(data))["details"]["n"])
                    self.received.append((self.last_id, n, time.monotonic()))
                    if len(self.received) >= self.expected:
                        return
                data, event_id, event = [], None, ""
            elif line.startswith(":"):
                continue
            else:
                name, _, value = line.partition(":")
                value = value.removeprefix(" ")
                if name == "data":
                    data.append(value)
                elif name == "id":
                    event_id = value
                elif name == "event":
                    event = value
                elif name == "retry" and value.isdigit():
                    self.retry_ms = int(value)


def test_chaos_nothing_lost_nothing_twice(
    make_devserver: Callable[..., DevServer],
    make_gateway: Callable[..., Gateway],
    nginx: Callable[[int, int], int],
    capsys: pytest.CaptureFixture[str],
) -> None:
    rng = random.Random(SEED)
    devserver = make_devserver()
    gateways = [make_gateway(devserver.address, *GATEWAY_ARGS) for _ in range(2)]
    proxy = nginx(gateways[0].port, gateways[1].port)
    browser = Browser(proxy, EVENTS)
    browser.start()
    wait_until(lambda: devserver.open_streams() >= 1, 15, "the first stream")

    published: list[str] = []
    lock = threading.Lock()  # a process is killed only between two publishes
    duration = EVENTS / RATE

    def publish() -> None:
        start = time.monotonic()
        for n in range(EVENTS):
            while True:
                with lock:
                    try:
                        published.extend(
                            devserver.publish(
                                "revision.created", "kref://chaos/s/e.model", {"n": str(n)}
                            )
                        )
                        break
                    except grpc.RpcError:
                        pass  # the upstream is restarting
                time.sleep(0.02)
            delay = start + (n + 1) / RATE - time.monotonic()
            if delay > 0:
                time.sleep(delay)  # pacing the publisher, not synchronising

    publisher = threading.Thread(target=publish, daemon=True)
    publisher.start()
    started = time.monotonic()

    # Every kind at least once, then more at random, at seeded moments.
    plan = list(KINDS) + [rng.choice(KINDS) for _ in range(max(5, EVENTS // 1000))]
    rng.shuffle(plan)
    moments = sorted(rng.uniform(0.5, duration * 0.85) for _ in plan)
    faults: list[tuple[str, float]] = []
    for kind, at in zip(plan, moments, strict=True):
        time.sleep(max(0.0, started + at - time.monotonic()))  # waiting for a scheduled moment
        faults.append((kind, time.monotonic()))
        if kind == "client_cut":
            browser.cut()
        elif kind == "upstream_break":
            with devserver.client() as c:
                c.set_faults(break_after=1)  # every open stream breaks at its next event
            time.sleep(0.3)
            with devserver.client() as c:
                c.set_faults()
        elif kind == "upstream_restart":
            with lock:
                devserver.stop(signal.SIGKILL)
                devserver.start()
        else:
            # Hit the replica that serves the client, so the fault is felt.
            serving = [g for g in gateways if _streams_open(g) > 0]
            victim = serving[0] if serving else rng.choice(gateways)
            victim.stop(signal.SIGTERM if kind == "gateway_term" else signal.SIGKILL)
            victim.start()

    publisher.join(duration + 120)
    browser.join(120)
    browser.stop.set()
    assert not publisher.is_alive() and not browser.is_alive(), "the run did not finish"

    numbers = [n for _, n, _ in browser.received]
    ids = [i for i, _, _ in browser.received]
    assert len(published) == EVENTS
    assert numbers == list(range(EVENTS)), "lost, repeated or reordered events"
    assert ids == published, "ids are not the published cursors"
    assert browser.non_200 == [], "a status that would stop EventSource for good"

    times = [t for _, _, t in browser.received]
    recoveries = []
    for kind, at in faults:
        after = next((t for t in times if t > at), None)
        if after is not None:
            recoveries.append((after - at, kind))
    worst, worst_kind = max(recoveries)
    counts = Counter(kind for kind, _ in faults)
    assert set(counts) == set(KINDS)
    with capsys.disabled():
        print(
            f"\nchaos: {EVENTS} events in {time.monotonic() - started:.1f}s, seed {SEED}, "
            f"faults {sum(counts.values())} ("
            + ", ".join(f"{k} {counts[k]}" for k in KINDS)
            + f"), reconnects {browser.reconnects}, "
            f"worst fault-to-next-event {worst:.2f}s ({worst_kind}): nothing lost, nothing twice"
        )
