"""The stream's connection (connection.py, server.py).

Every stream test on a real gateway writes through the pump's own path (it
is the default on the gateway's own server). The first tests here hold the
pieces it rests on to what uvicorn and asyncio would do; the rest attack
what owning the connection changed: the connection after the stream ends,
requests pipelined behind it, the request's task.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import socket
import time
from typing import Any

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway import connection, server
from tests.conftest import FAST, Gateway, wait_until


@given(st.binary(min_size=1, max_size=5000))
def test_a_chunk_is_framed_as_uvicorn_frames_it(data: bytes) -> None:
    size, _, rest = connection.chunk(data).partition(b"\r\n")
    assert int(size, 16) == len(data) and rest == data + b"\r\n"


def test_one_frame_is_framed_once_for_every_stream() -> None:
    frame = b"data: {}\n\n"
    assert connection.chunk(frame) is connection.chunk(frame)
    other = b"data: []\n\n"
    assert connection.chunk(other) == b"a\r\ndata: []\n\n\r\n"  # a new frame is framed anew
    assert connection.chunk(frame) == b"a\r\ndata: {}\n\n\r\n"


def test_a_lean_event_wakes_every_waiter_and_keeps_none() -> None:
    async def scenario() -> None:
        event = server.lean(asyncio.Event())
        assert isinstance(event._waiters, list)  # type: ignore[attr-defined]
        waiters = [asyncio.ensure_future(event.wait()) for _ in range(3)]
        await asyncio.sleep(0)
        cancelled = waiters.pop()
        cancelled.cancel()  # a waiter that gives up is removed
        await asyncio.sleep(0)
        event.set()
        assert await asyncio.gather(*waiters) == [True, True]
        assert event._waiters == []  # type: ignore[attr-defined]
        event.clear()
        assert not event.is_set()

    asyncio.run(asyncio.wait_for(scenario(), 5))


def test_an_event_with_waiters_is_left_as_it_is() -> None:
    async def scenario() -> None:
        event = asyncio.Event()
        waiter = asyncio.ensure_future(event.wait())
        await asyncio.sleep(0)
        server.lean(event)
        assert isinstance(event._waiters, collections.deque)  # type: ignore[attr-defined]
        event.set()
        await waiter

    asyncio.run(asyncio.wait_for(scenario(), 5))


@given(st.lists(st.integers(), max_size=20), st.integers(min_value=0, max_value=20))
def test_the_pipeline_queue_is_first_in_first_out_as_uvicorn_expects(
    items: list[int], pops: int
) -> None:
    ours, theirs = server._Pipeline(), collections.deque()  # type: ignore[var-annotated]
    for item in items:
        ours.appendleft(item)  # type: ignore[arg-type]
        theirs.appendleft(item)
    for _ in range(min(pops, len(items))):
        assert ours.pop() == theirs.pop()
    assert bool(ours) == bool(theirs)


# -- end to end: the pump owns the connection, then gives it back ----------------------

LAST_CHUNK = b"\r\n0\r\n\r\n"


def _read_until(
    sock: socket.socket, marker: bytes, got: bytes = b"", deadline: float = 15
) -> bytes:
    """Read until ``marker`` is in what was read (or fail at the deadline or the end)."""
    end = time.monotonic() + deadline
    while marker not in got:
        sock.settimeout(max(0.01, end - time.monotonic()))
        chunk = sock.recv(65536)
        assert chunk, f"the connection closed before {marker!r}: {got[-300:]!r}"
        got += chunk
    return got


def _stream_request(path: bytes = b"/events", extra: bytes = b"") -> bytes:
    return b"GET " + path + b" HTTP/1.1\r\nHost: t\r\n" + extra + b"\r\n"


@pytest.fixture
def short_lived(make_devserver: Any, make_gateway: Any) -> Gateway:
    """A gateway whose streams end after about a second (a retry: line, the last chunk)."""
    devserver = make_devserver()
    return make_gateway(devserver.address, *FAST, "--max-stream-lifetime", "1")


def test_the_connection_serves_the_next_request_once_a_stream_ends(short_lived: Gateway) -> None:
    with socket.create_connection(("127.0.0.1", short_lived.port), timeout=15) as sock:
        sock.sendall(_stream_request())
        body = _read_until(sock, LAST_CHUNK)
        head, _, rest = body.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200") and b"transfer-encoding: chunked" in head
        assert rest.count(b"retry: ") == 2  # the opening one, and the one that ends it
        assert rest.endswith(LAST_CHUNK)  # nothing after the end of the body
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        assert _read_until(sock, b"\r\n\r\n").startswith(b"HTTP/1.1 200")
    wait_until(lambda: short_lived.metric("kumiho_gateway_streams_open") == 0, 10, "closed")


def test_a_request_pipelined_behind_a_stream_is_answered_after_it(short_lived: Gateway) -> None:
    with socket.create_connection(("127.0.0.1", short_lived.port), timeout=15) as sock:
        sock.sendall(_stream_request() + b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        # The next answer starts where the stream's body ended, and not before.
        got = _read_until(sock, LAST_CHUNK + b"HTTP/1.1 200")
        stream = got.partition(LAST_CHUNK)[0]
        assert b"retry: " in stream and stream.count(b"HTTP/1.1 ") == 1  # its own head only


@pytest.mark.parametrize(
    "request_",
    [
        _stream_request(extra=b"Connection: close\r\n"),
        b"GET /events HTTP/1.0\r\n\r\n",  # no keep-alive unless asked
    ],
    ids=["connection-close", "http-1.0"],
)
def test_a_stream_whose_client_wants_no_keep_alive_closes_at_its_end(
    short_lived: Gateway, request_: bytes
) -> None:
    with socket.create_connection(("127.0.0.1", short_lived.port), timeout=15) as sock:
        sock.sendall(request_)
        got = _read_until(sock, LAST_CHUNK)
        assert b"connection: close" in got.partition(b"\r\n\r\n")[0].lower()
        sock.settimeout(10)
        assert sock.recv(65536) == b"", got[-200:]  # closed by the gateway, nothing more


def test_a_client_sending_more_than_a_head_behind_a_stream_is_disconnected(
    make_devserver: Any, make_gateway: Any
) -> None:
    gateway = make_gateway(make_devserver().address, *FAST, "--max-header-bytes", "4096")
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=15) as sock:
        sock.sendall(_stream_request())
        _read_until(sock, b"retry: ")
        wait_until(lambda: gateway.metric("kumiho_gateway_streams_open") == 1, 10, "open")
        with contextlib.suppress(OSError):  # the gateway may close while this still sends
            sock.sendall(b"GET /healthz HTTP/1.1\r\nX-Pad: " + b"a" * 8192 + b"\r\n\r\n")
        end = time.monotonic() + 10
        with contextlib.suppress(ConnectionResetError):
            while time.monotonic() < end:
                sock.settimeout(max(0.01, end - time.monotonic()))
                if not sock.recv(65536):
                    break
            else:
                raise AssertionError("the connection stayed open")
    wait_until(lambda: gateway.metric("kumiho_gateway_streams_open") == 0, 10, "closed")
    assert httpx.get(gateway.url + "/healthz", timeout=5).status_code == 200


def test_an_open_stream_keeps_no_task_of_its_request(
    make_devserver: Any, make_gateway: Any
) -> None:
    gateway = make_gateway(make_devserver().address, *FAST)
    before = gateway.metric("kumiho_gateway_asyncio_tasks")
    streams = [socket.create_connection(("127.0.0.1", gateway.port), timeout=15) for _ in range(40)]
    try:
        for sock in streams:
            sock.sendall(_stream_request())
        for sock in streams:
            _read_until(sock, b"retry: ")
        wait_until(lambda: gateway.metric("kumiho_gateway_streams_open") == 40, 10, "open")
        # Each stream keeps its source's reader; its request's task has returned.
        assert gateway.metric("kumiho_gateway_asyncio_tasks") - before <= 40 + 3
        for sock in streams:  # and every one is still written to
            _read_until(sock, b": heartbeat\n", deadline=5)  # FAST: every 0.5 s
    finally:
        for sock in streams:
            sock.close()
    wait_until(lambda: gateway.metric("kumiho_gateway_streams_open") == 0, 10, "closed")


class _Body:
    """A stream's chunked body read off a raw socket, chunk by chunk, with when each came."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._got = _read_until(sock, b"\r\n\r\n").partition(b"\r\n\r\n")[2]

    def chunks(self, events: int, deadline: float = 60) -> list[tuple[float, bytes]]:
        """The chunks that bring the next ``events`` events (frames with an id)."""
        end = time.monotonic() + deadline
        chunks: list[tuple[float, bytes]] = []
        seen = 0
        while seen < events:
            size, sep, rest = self._got.partition(b"\r\n")
            length = int(size, 16) if sep else -1
            if length >= 0 and len(rest) >= length + 2:
                chunk, self._got = rest[:length], rest[length + 2 :]
                chunks.append((time.monotonic(), chunk))
                seen += chunk.count(b"\nid: ") + chunk.startswith(b"id: ")
                continue
            assert time.monotonic() < end, f"{seen} of {events} events by the deadline"
            self.sock.settimeout(max(0.01, end - time.monotonic()))
            more = self.sock.recv(65536)
            assert more, f"the connection closed after {seen} of {events} events"
            self._got += more
        return chunks


def _ids(chunks: list[tuple[float, bytes]]) -> list[str]:
    body = b"".join(chunk for _, chunk in chunks)
    return [line[4:].decode() for line in body.split(b"\n") if line.startswith(b"id: ")]


def test_a_backlog_goes_out_in_few_large_writes_complete_and_in_order(
    make_devserver: Any, make_gateway: Any
) -> None:
    devserver = make_devserver()
    cursors = devserver.publish("revision.created", "kref://p/a.b?r=1", count=3000)
    flush = 0.002
    gateway = make_gateway(devserver.address, *FAST, "--flush-interval", str(flush))
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=15) as sock:
        sock.sendall(_stream_request(b"/events?from=beginning"))
        chunks = [(at, c) for at, c in _Body(sock).chunks(len(cursors)) if b"id: " in c]
    assert _ids(chunks) == cursors  # every event once, in order
    # Writes every flush interval would be a chunk every ~2 ms while the backlog
    # lasts; a burst that goes on gathers longer each write (up to 16 intervals).
    span = chunks[-1][0] - chunks[0][0]
    assert len(chunks) <= span / (4 * flush) + 10, (len(chunks), span)


def test_a_burst_to_steady_streams_is_gathered_complete_and_in_order(
    make_devserver: Any, make_gateway: Any
) -> None:
    devserver = make_devserver()
    gateway = make_gateway(devserver.address, *FAST)  # bursts gather for 2 ms and more
    socks = [socket.create_connection(("127.0.0.1", gateway.port), timeout=15) for _ in range(3)]
    try:
        for sock in socks:
            sock.sendall(_stream_request(b"/events?routing_key=revision.*"))
        bodies = [_Body(sock) for sock in socks]
        wait_until(lambda: gateway.metric("kumiho_gateway_streams_open") == 3, 10, "open")
        # Lone events, each written at once: the first takes every stream into its
        # group's lane, which writes the next ones to all three in one loop.
        for _ in range(3):
            lone = devserver.publish("revision.created", "kref://p/a.b?r=1")
            for body in bodies:
                assert _ids(body.chunks(1))[-1:] == lone
        # A burst: each stream falls back to its pump, which gathers it.
        burst = devserver.publish("revision.created", "kref://p/a.b?r=1", count=300)
        for body in bodies:
            chunks = body.chunks(300)
            assert _ids(chunks) == burst  # every event once, in order
            assert len(chunks) <= 300 / 5, len(chunks)
    finally:
        for sock in socks:
            sock.close()
