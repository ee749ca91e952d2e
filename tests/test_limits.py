"""Bounds an operator relies on: caps on upstream streams, slow or huge headers, bad configs."""

from __future__ import annotations

import contextlib
import json
import select
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import FAST, DevServer, Gateway, wait_until

TOKENS = ("--token", "tok-a=studio-a", "--token", "tok-b=studio-b")
REFUSALS = "kumiho_gateway_upstream_stream_limit_refusals_total"


def _refusal(
    gateway: Gateway, params: dict[str, str], headers: dict[str, str]
) -> dict[str, object]:
    """Open /events and expect the come-back-later answer; its gateway.error data."""
    r = httpx.get(gateway.url + "/events", params=params, headers=headers, timeout=10)
    assert r.status_code == 200  # retryable: never a status that would stop EventSource
    lines = r.text.split("\n")
    assert lines[0].startswith("retry: ")
    assert "event: gateway.error" in lines
    error: dict[str, object] = json.loads(
        lines[lines.index("event: gateway.error") + 1].removeprefix("data: ")
    )
    assert error["code"] == "too_many_streams" and error["retryable"] is True
    assert error["retry_after_ms"] == int(lines[0].removeprefix("retry: "))
    return error


@contextlib.contextmanager
def _held(gateway: Gateway, params: dict[str, str], headers: dict[str, str]) -> Iterator[None]:
    """An /events stream that really started (not a refusal), open for the with-block."""
    with httpx.stream(
        "GET", gateway.url + "/events", params=params, headers=headers, timeout=10
    ) as r:
        assert r.status_code == 200
        lines = (line for line in r.iter_lines() if line)
        assert next(lines).startswith("retry: ")
        assert next(lines) == "event: gateway.status"
        yield


@pytest.mark.parametrize("hub", [True, False], ids=["hub", "no-hub"])
def test_the_total_cap_on_upstream_streams(
    make_devserver: Callable[..., DevServer], make_gateway: Callable[..., Gateway], hub: bool
) -> None:
    devserver = make_devserver()
    mode = [] if hub else ["--no-hub"]
    gateway = make_gateway(devserver.address, *FAST, *mode, "--max-upstream-streams", "1")
    with contextlib.ExitStack() as streams:
        streams.enter_context(_held(gateway, {"routing_key": "a.*"}, {}))
        if hub:  # shared: no new place taken, whatever the filter
            streams.enter_context(_held(gateway, {"routing_key": "b.*"}, {}))
        # A stream of its own (a catch-up, in the hub) needs a place of its own.
        error = _refusal(gateway, {"routing_key": "b.*", "from": "beginning"}, {})
        assert "limit of 1 upstream streams in all" in str(error["message"])
        assert gateway.metric(REFUSALS, '{scope="total"}') == 1
        assert devserver.open_streams() == 1
    # The place comes back once the stream closes (after the hub's linger).
    wait_until(lambda: devserver.open_streams() == 0, 15, "the upstream stream to close")
    with _held(gateway, {"routing_key": "b.*"}, {}):
        pass


def test_the_cap_per_credential_leaves_other_tenants_alone(
    make_devserver: Callable[..., DevServer], make_gateway: Callable[..., Gateway]
) -> None:
    devserver = make_devserver(*TOKENS)
    gateway = make_gateway(
        devserver.address,
        *FAST,
        "--auth",
        "passthrough",
        "--no-hub",
        "--max-upstream-streams-per-credential",
        "2",
    )
    a = {"Authorization": "Bearer tok-a"}
    with contextlib.ExitStack() as streams:
        for _ in range(2):
            streams.enter_context(_held(gateway, {}, a))
        error = _refusal(gateway, {}, a)
        assert "for this credential" in str(error["message"])
        with _held(gateway, {}, {"Authorization": "Bearer tok-b"}):  # another tenant gets in
            pass
        assert gateway.metric(REFUSALS, '{scope="credential"}') == 1


def test_without_client_credentials_only_the_total_cap_applies(
    make_devserver: Callable[..., DevServer], make_gateway: Callable[..., Gateway]
) -> None:
    # --auth none: every client is "anonymous"; a per-credential cap would be a
    # second, smaller total. It counts only where clients bring their own tokens.
    gateway = make_gateway(
        make_devserver().address, *FAST, "--no-hub", "--max-upstream-streams-per-credential", "1"
    )
    with _held(gateway, {}, {}), _held(gateway, {}, {}):
        assert gateway.metric(REFUSALS, '{scope="credential"}') == 0


def test_a_connection_that_sends_its_headers_slowly_is_closed(
    make_devserver: Callable[..., DevServer], make_gateway: Callable[..., Gateway]
) -> None:
    gateway = make_gateway(make_devserver().address, *FAST, "--header-timeout", "1")
    host, port = gateway.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        started = time.monotonic()
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # and never the blank line
        answer = b""
        while chunk := sock.recv(4096):  # to the end: the connection closes
            answer += chunk
        assert answer.startswith(b"HTTP/1.1 408 ")
        head, _, body = answer.partition(b"\r\n\r\n")
        assert b"content-type: application/json" in head
        assert json.loads(body)["error"]["code"] == "request_timeout"
        assert 0.9 <= time.monotonic() - started < 5
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        # A kept-alive connection: the deadline starts again with the next request.
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        first = b""
        while not first.endswith(b"}"):  # the whole answer: head and JSON body
            first += sock.recv(4096)
        assert first.startswith(b"HTTP/1.1 200 ")
        started = time.monotonic()
        sock.sendall(b"GET /healthz HTTP/1.1\r\n")
        assert sock.recv(1024).startswith(b"HTTP/1.1 408 ")
        assert 0.9 <= time.monotonic() - started < 5


def test_service_mode_without_api_keys_refuses_to_start() -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "gateway",
            "serve",
            "--upstream",
            "127.0.0.1:1",
            "--auth",
            "service",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        env={"PATH": "/usr/bin:/bin", "KUMIHO_AUTH_TOKEN": "svc"},
    )
    assert proc.returncode != 0
    assert "--auth service needs --api-keys" in proc.stderr


# The default cap on a request's head (request line and headers), --max-header-bytes.
HEAD_CAP = 32 * 1024


def _too_large(response: httpx.Response) -> None:
    assert response.status_code == 431, (response.status_code, response.text[:300])
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert error["code"] == "request_header_too_large"
    assert error["retryable"] is False
    assert str(HEAD_CAP) in error["message"]


@pytest.mark.parametrize("workers", ["1", "2"])
def test_an_oversized_request_head_gets_431_with_the_envelope(
    make_devserver: Callable[..., DevServer], make_gateway: Callable[..., Gateway], workers: str
) -> None:
    gateway = make_gateway(make_devserver().address, *FAST, "--workers", workers)
    with httpx.Client(timeout=20) as client:
        for _ in range(4):  # new connections each time: with two workers, either may answer
            _too_large(client.get(gateway.url + "/healthz", headers={"X-Big": "a" * 200_000}))
            cookie = f"kumiho_token=x; junk={'b' * 1_000_000}"
            _too_large(client.get(gateway.url + "/events", headers={"Cookie": cookie}))
            _too_large(client.get(gateway.url + "/healthz?pad=" + "c" * 60_000))
        # Just under the cap (httpx adds under 200 bytes of its own headers): served.
        near = client.get(gateway.url + "/healthz", headers={"X-Pad": "d" * (HEAD_CAP - 1024)})
        assert near.status_code == 200, near.text[:300]
    # The cap is per request: two pipelined heads of 3/4 of it each, in one write, pass.
    host, port = gateway.url.removeprefix("http://").split(":")
    head = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"e" * (HEAD_CAP * 3 // 4) + b"\r\n\r\n"
    with socket.create_connection((host, int(port)), timeout=20) as sock:
        sock.sendall(head + head)
        answers = b""
        deadline = time.monotonic() + 20
        while answers.count(b"HTTP/1.1 200 ") < 2 and time.monotonic() < deadline:
            more = sock.recv(65536)
            assert more, f"closed after {answers!r}"
            answers += more
        assert answers.count(b"HTTP/1.1 200 ") == 2, answers
    assert gateway.proc is not None and gateway.proc.poll() is None


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_an_endless_header_is_cut_near_the_cap_and_memory_stays_bounded(
    make_devserver: Callable[..., DevServer], make_gateway: Callable[..., Gateway]
) -> None:
    # A long header deadline: only the size cap may end these connections.
    gateway = make_gateway(make_devserver().address, *FAST, "--header-timeout", "120")
    assert gateway.proc is not None
    host, port = gateway.url.removeprefix("http://").split(":")
    assert httpx.get(gateway.url + "/healthz", timeout=10).status_code == 200
    before = _rss_kib(gateway.proc.pid)
    chunk, most = b"a" * 65536, 8 * 1024 * 1024
    outcomes: list[tuple[int, bytes]] = []
    measured = threading.Event()  # connections stay open until RSS is read

    def stream_one() -> None:
        """Send one header that never ends, a chunk at a time, until the gateway answers."""
        sent, answer = 0, b"(nothing)"
        with socket.create_connection((host, int(port)), timeout=30) as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Endless: ")
            try:
                while sent < most:
                    sock.sendall(chunk)
                    sent += len(chunk)
                    readable, _, _ = select.select([sock], [], [], 0.05)
                    if readable:
                        answer = sock.recv(65536)  # the 431, or b"" when closed
                        break
            except (ConnectionResetError, BrokenPipeError):
                answer = b"(reset)"
            outcomes.append((sent, answer))
            measured.wait(60)

    threads = [threading.Thread(target=stream_one, daemon=True) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        wait_until(lambda: len(outcomes) == 4, 120, "four endless headers to end")
        during = _rss_kib(gateway.proc.pid)
    finally:
        measured.set()
    for t in threads:
        t.join(60)
    for sent, answer in outcomes:
        # Cut once the cap is passed: what the kernel buffers meanwhile is the only slack.
        assert sent < 2 * 1024 * 1024, f"{sent} bytes of one header accepted; then {answer[:80]!r}"
        assert answer.startswith(b"HTTP/1.1 431 ") or answer in (b"", b"(reset)"), answer[:200]
    assert during - before < 16 * 1024, f"RSS grew by {during - before} KiB"
    assert httpx.get(gateway.url + "/healthz", timeout=10).status_code == 200
