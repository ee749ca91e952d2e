"""Bounds an operator relies on: caps on upstream streams, slow headers, refused configurations."""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator

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
        answer = sock.recv(1024)
        assert answer.startswith(b"HTTP/1.1 408 ")
        assert sock.recv(1024) == b""  # closed
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
