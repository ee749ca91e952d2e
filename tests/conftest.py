"""Real servers for the tests: a devserver process and gateway processes on 127.0.0.1."""

from __future__ import annotations

import base64
import functools
import http.server
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from httpx_sse import ServerSentEvent, connect_sse

from gateway.devserver.control import DevServerClient
from gateway.formats import ServerSentEvents
from gateway.items import Source
from gateway.lifecycle import Lifecycle
from gateway.metrics import Metrics
from gateway.pump import Pump
from gateway.settings import Settings
from gateway.ticker import Ticker

STARTUP_DEADLINE = 30.0
STATUS = "gateway.status"  # the upstream-state events, kept apart from the events tests count


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(
    predicate: Callable[[], bool], deadline: float = 10.0, what: str = "condition"
) -> None:
    """Poll ``predicate`` until it holds or ``deadline`` seconds pass."""
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out after {deadline}s waiting for {what}")


@dataclass
class DevServer:
    """A ``kumiho-sse-gateway devserver`` process."""

    db: Path
    args: list[str] = field(default_factory=list)
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[str] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> DevServer:
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gateway",
                "devserver",
                "--port",
                str(self.port),
                "--db",
                str(self.db),
                *self.args,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()  # the devserver prints one line once it listens
        assert "listening" in line, f"devserver did not start: {line!r}"
        return self

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=10)
        self.proc = None

    def client(self) -> DevServerClient:
        return DevServerClient(self.address)

    def publish(
        self, routing_key: str, kref: str, details: dict[str, str] | None = None, **kw: Any
    ) -> list[str]:
        with self.client() as c:
            return c.publish(routing_key, kref, details, **kw)

    def open_streams(self) -> int:
        with self.client() as c:
            return c.stats().open_streams


def metric_value(text: str, name: str, labels: str = "") -> float | None:
    """One sample of Prometheus text (``labels`` as written, ``{code="OK"}``), or None."""
    found = re.search(rf"^{re.escape(name)}{re.escape(labels)} ([0-9.e+-]+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else None


# Every test client comes from 127.0.0.1, and some open hundreds of streams or
# polls a second: the per-client limits are off unless a test sets them (a
# flag, or its env=, wins over these). tests/test_client_limits.py tests them.
UNLIMITED = {
    "KUMIHO_GATEWAY_MAX_STREAMS_PER_CLIENT": "0",
    "KUMIHO_GATEWAY_MAX_OPENS_PER_CLIENT_PER_SECOND": "0",
}


@dataclass
class Gateway:
    """A ``kumiho-sse-gateway serve`` process, its log captured to a file."""

    upstream: str
    log_path: Path
    args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def hub(self) -> bool:
        return "--no-hub" not in self.args

    def start(self) -> Gateway:
        # Only what the test says: no KUMIHO_* (or tracing's OTEL_*) of the shell's.
        env = {k: v for k, v in os.environ.items() if not k.startswith(("KUMIHO_", "OTEL_"))}
        env.update(UNLIMITED)
        env.update(self.env)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "gateway",
                    "serve",
                    "--upstream",
                    self.upstream,
                    "--port",
                    str(self.port),
                    *self.args,
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )

        def healthy() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"gateway exited:\n{self.log_path.read_text()}")
            try:
                return httpx.get(self.url + "/healthz", timeout=1).status_code == 200
            except httpx.TransportError:
                return False

        wait_until(healthy, STARTUP_DEADLINE, "the gateway to answer /healthz")
        return self

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def metric(self, name: str, labels: str = "") -> float:
        """One sample from /metrics (0 when absent)."""
        text = httpx.get(self.url + "/metrics", timeout=10).text
        return metric_value(text, name, labels) or 0.0


@pytest.fixture
def make_devserver(tmp_path: Path) -> Iterator[Callable[..., DevServer]]:
    started: list[DevServer] = []

    def make(*args: str, db: Path | None = None) -> DevServer:
        server = DevServer(db or tmp_path / f"devserver-{len(started)}.sqlite3", list(args))
        started.append(server)  # first: one that fails to start is stopped all the same
        return server.start()

    yield make
    for server in started:
        server.stop(signal.SIGKILL)


# The two ways a gateway gets its events: a module whose behaviour must be the
# same in both opts in with ``pytestmark = BOTH_MODES`` (make_gateway then adds
# the mode's flags to every gateway it starts).
MODES = {"hub": (), "no-hub": ("--no-hub",)}
BOTH_MODES = pytest.mark.parametrize("make_gateway", list(MODES), indirect=True)


@pytest.fixture
def make_gateway(
    tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Callable[..., Gateway]]:
    started: list[Gateway] = []
    mode = MODES[getattr(request, "param", "hub")]

    def make(upstream: str, *args: str, env: dict[str, str] | None = None) -> Gateway:
        gateway = Gateway(
            upstream,
            tmp_path / f"gateway-{len(started)}.log",
            [*args, *mode],
            dict(env or {}),
        )
        started.append(gateway)  # first: one that fails to start is stopped all the same
        return gateway.start()

    yield make
    for gateway in started:
        # A pool gets the signal that stops it cleanly: killed while none of its
        # workers lives (one waiting to restart), nobody would remove its metrics.
        gateway.stop(signal.SIGTERM if "--workers" in gateway.args else signal.SIGKILL)


# Fast heartbeats and backoff so the resilience tests finish quickly.
FAST = ("--heartbeat", "0.5", "--backoff-initial", "0.05", "--backoff-max", "0.5")


@pytest.fixture(scope="module", params=list(MODES))
def stack(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[tuple[DevServer, Gateway]]:
    """One devserver and one gateway shared by a module's read-only tests, in each mode."""
    tmp = tmp_path_factory.mktemp("stack")
    devserver = DevServer(tmp / "devserver.sqlite3").start()
    gateway = Gateway(
        devserver.address, tmp / "gateway.log", [*FAST, *MODES[request.param]]
    ).start()
    yield devserver, gateway
    gateway.stop(signal.SIGKILL)
    devserver.stop(signal.SIGKILL)


ROOT = Path(__file__).resolve().parent.parent
SSE_CONF = ROOT / "deploy" / "nginx" / "sse.conf"

# Debian's nginx, in the foreground, everything it writes under its own directory.
NGINX_MAIN = """
worker_processes 1;
daemon off;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log {tmp}/access.log;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
{http}
}}
"""


@pytest.fixture
def make_nginx(tmp_path: Path) -> Iterator[Callable[[Callable[[int], str]], int]]:
    """Starts nginx with an http block made for the port it is to listen on; returns the port."""
    binary = shutil.which("nginx") or "/usr/sbin/nginx"
    if not Path(binary).exists():
        pytest.fail("nginx is required (apt-get install nginx; .ci/run installs it)")
    procs: list[subprocess.Popen[bytes]] = []

    def start(http: Callable[[int], str]) -> int:
        port = free_port()
        tmp = tmp_path / f"nginx-{len(procs)}"
        tmp.mkdir(mode=0o777)
        conf = tmp / "nginx.conf"
        conf.write_text(NGINX_MAIN.format(tmp=tmp, http=http(port)))
        procs.append(
            subprocess.Popen(
                [binary, "-c", str(conf), "-p", str(tmp), "-e", str(tmp / "error.log")]
            )
        )
        wait_until(lambda: listening(port), 10, "nginx to listen")
        return port

    yield start
    for proc in procs:
        # SIGTERM: the master stops its workers before it exits. SIGKILL would
        # leave them running, orphaned, after the test.
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def jwt(payload: Any, header: Any = None, signature: str = "c2ln") -> str:
    """A compact JWT of these claims, unsigned in effect (the gateway reads, never verifies).

    ``payload`` as JSON text when it is a str, so a test can send what no encoder writes.
    """

    def segment(text: str) -> str:
        return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")

    head = json.dumps(header if header is not None else {"alg": "HS256", "typ": "JWT"})
    body = payload if isinstance(payload, str) else json.dumps(payload)
    return f"{segment(head)}.{segment(body)}.{signature}"


def unique_project() -> str:
    """A kref project of its own, so tests sharing a devserver never see each other's events."""
    return f"t-{uuid.uuid4().hex[:12]}"


def read_events(
    url: str,
    count: int,
    *,
    headers: dict[str, str] | None = None,
    params: dict[str, str] | list[tuple[str, str]] | None = None,
    timeout: float = 15.0,
    stop: Callable[[ServerSentEvent], bool] | None = None,
    statuses: list[dict[str, Any]] | None = None,
) -> list[ServerSentEvent]:
    """Connect to /events and collect ``count`` dispatched events.

    Control events are included, but ``gateway.status`` goes to ``statuses`` (if given).
    """
    events: list[ServerSentEvent] = []
    with (
        httpx.Client(timeout=httpx.Timeout(timeout)) as client,
        connect_sse(
            client, "GET", url + "/events", params=params, headers=dict(headers or {})
        ) as source,
    ):
        assert source.response.status_code == 200, source.response.read()
        deadline = time.monotonic() + timeout
        for sse in source.iter_sse():
            if not sse.data:
                continue  # a retry:-only block: browsers dispatch nothing for it
            if sse.event == STATUS:
                if statuses is not None:
                    statuses.append(json.loads(sse.data))
                continue
            events.append(sse)
            if len(events) >= count or (stop and stop(sse)) or time.monotonic() > deadline:
                break
    return events


class Reader(threading.Thread):
    """Reads one /events connection in the background, recording every event."""

    def __init__(
        self, url: str, params: dict[str, str] | None = None, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(daemon=True)
        self.url, self.params, self.headers = url, params, dict(headers or {})
        self.events: list[ServerSentEvent] = []
        self.statuses: list[dict[str, Any]] = []  # gateway.status data, apart from events
        self.connected = threading.Event()
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.status = 0

    def run(self) -> None:
        try:
            with (
                httpx.Client(timeout=httpx.Timeout(30)) as client,
                connect_sse(
                    client, "GET", self.url + "/events", params=self.params, headers=self.headers
                ) as source,
            ):
                self.status = source.response.status_code
                self.connected.set()
                for sse in source.iter_sse():
                    if sse.event == STATUS:
                        self.statuses.append(json.loads(sse.data))
                    elif sse.data:
                        self.events.append(sse)
                    if self.stop.is_set():
                        return
        except BaseException as exc:  # reported by wait_for; after stop() it is the end
            if not self.stop.is_set():
                self.error = exc
            self.connected.set()

    def wait_for(self, count: int, deadline: float = 20.0) -> list[ServerSentEvent]:
        wait_until(
            lambda: len(self.events) >= count or self.error is not None, deadline, f"{count} events"
        )
        assert self.error is None, self.error
        return self.events


class Publisher(threading.Thread):
    """Publishes one event every ``1 / rate`` seconds into a devserver, keeping their cursors.

    A steady trickle, as a busy studio makes: its events come closer together
    than a poll's quiet window. It stops at ``stop()``, or after ``limit`` seconds.
    """

    def __init__(
        self, devserver: DevServer, kref: str, rate: float = 50.0, limit: float = 120.0
    ) -> None:
        super().__init__(daemon=True)
        self.devserver, self.kref, self.rate, self.limit = devserver, kref, rate, limit
        self.cursors: list[str] = []
        self._halt = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        interval = 1.0 / self.rate
        try:
            with self.devserver.client() as client:
                start = next_at = time.monotonic()
                while not self._halt.is_set() and time.monotonic() - start < self.limit:
                    self.cursors += client.publish("revision.created", self.kref)
                    next_at += interval
                    # Pacing, not synchronisation: one event per interval.
                    self._halt.wait(max(0.0, next_at - time.monotonic()))
        except BaseException as exc:  # reported by stop()
            self.error = exc

    def stop(self) -> list[str]:
        """Stop publishing; every cursor published, in order."""
        self._halt.set()
        self.join(15)
        assert self.error is None, self.error
        return self.cursors


def data(events: list[ServerSentEvent]) -> list[dict[str, Any]]:
    return [json.loads(e.data) for e in events]


CHROMIUM = "/usr/bin/chromium"
# The flags this machine needs: no sandbox as root, and no background traffic
# to Google's hosts (the network is closed).
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    """Debian's headless Chromium, driven by Playwright."""
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail("Chromium is required: apt-get install chromium (.ci/run installs it)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        yield browser
        browser.close()


class PageServer:
    """Serves files from a folder on its own 127.0.0.1 port: another origin than the gateway."""

    def __init__(self, root: Path) -> None:
        self.root = root
        handler = functools.partial(_QuietHandler, directory=str(root))
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.origin = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def write(self, name: str, text: str) -> str:
        """Add a page; returns its URL."""
        (self.root / name).write_text(text)
        return f"{self.origin}/{name}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def page_server(tmp_path: Path) -> Iterator[Callable[[dict[str, str]], PageServer]]:
    servers: list[PageServer] = []

    def make(files: dict[str, str]) -> PageServer:
        root = tmp_path / f"pages-{len(servers)}"
        root.mkdir()
        for name, text in files.items():
            (root / name).write_text(text)
        servers.append(PageServer(root))
        return servers[-1]

    yield make
    for server in servers:
        server.close()


def make_pump(source: Source, **overrides: Any) -> Pump:
    """A Pump over ``source`` for tests without a server (no heartbeats, no batching)."""
    settings = Settings(**{"heartbeat": 60, "flush_interval": 0, **overrides})
    return Pump(
        source,
        fmt=ServerSentEvents(named=False),
        settings=settings,
        metrics=Metrics(),
        lifecycle=Lifecycle(),
        ticker=Ticker(15),
    )


@dataclass
class RawAnswer:
    """What a raw request got: status, headers (lower-case names) and body.

    A stream's body is never read (it would not end): ``body`` is then empty.
    """

    status: int
    headers: dict[str, str]
    body: bytes

    def envelope(self) -> dict[str, Any]:
        """The error envelope in the body, checked for its required fields."""
        assert self.headers.get("content-type") == "application/json", self
        error = json.loads(self.body)["error"]
        assert isinstance(error["code"], str) and error["code"], self
        assert isinstance(error["message"], str) and error["message"], self
        assert isinstance(error["retryable"], bool), self
        return dict(error)


STREAM_TYPES = ("text/event-stream", "application/x-ndjson")


def raw_request(
    url: str,
    target: bytes,
    headers: Sequence[tuple[bytes, bytes]] = (),
    *,
    method: bytes = b"GET",
    deadline: float = 15.0,
) -> RawAnswer | None:
    """Send one HTTP/1.1 request byte for byte, as an attacker's script would.

    httpx refuses header values it deems malformed (blank ones, bytes above
    0x7F, ...) before sending them; servers must still cope with them. Returns
    None when no answer's head came within ``deadline`` (a long poll waiting),
    closing the connection, as the client of a stream does once it has the head.
    """
    host, port = url.removeprefix("http://").split(":")
    head = [method + b" " + target + b" HTTP/1.1", b"Host: " + host.encode()]
    head += [b"Connection: close", *(name + b": " + value for name, value in headers)]
    end = time.monotonic() + deadline
    with socket.create_connection((host, int(port)), timeout=deadline) as sock:
        sock.sendall(b"\r\n".join(head) + b"\r\n\r\n")
        answer = b""
        while b"\r\n\r\n" not in answer:
            sock.settimeout(max(0.01, end - time.monotonic()))
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                return None
            assert chunk, f"the connection closed before an answer: {answer!r}"
            answer += chunk
        raw_head, _, body = answer.partition(b"\r\n\r\n")
        status_line, *lines = raw_head.decode("latin-1").split("\r\n")
        fields = {k.strip().lower(): v.strip() for k, _, v in (f.partition(":") for f in lines)}
        streaming = fields.get("content-type", "").startswith(STREAM_TYPES)
        if method == b"HEAD" or (streaming and int(status_line.split()[1]) == 200):
            return RawAnswer(int(status_line.split()[1]), fields, b"")
        sock.settimeout(max(0.01, end - time.monotonic()))
        while chunk := sock.recv(65536):  # Connection: close: the body ends with the connection
            body += chunk
    if fields.get("transfer-encoding") == "chunked":
        body = _unchunked(body)
    return RawAnswer(int(status_line.split()[1]), fields, body)


def _unchunked(body: bytes) -> bytes:
    data = b""
    while body:
        size, _, rest = body.partition(b"\r\n")
        length = int(size.split(b";")[0], 16)
        if length == 0:
            break
        data, body = data + rest[:length], rest[length + 2 :]
    return data
