"""``--compression gzip``: who gets gzip, and every client sees every event as it is published.

First the pure parts (``gateway/compression.py``): the Accept-Encoding rules
and the per-connection compressor. Then real clients against a real gateway
over the reference upstream: plain sockets reading the bytes on the wire,
httpx-sse, a real curl process, nginx with the shipped ``sse.conf``, and
headless Chromium (``EventSource`` and the browser helper). "As it is
published" is checked the strict way: the next event is published only once
the client has shown the one before, so an event held in a compressor (or a
proxy) would stall the test at once, not at the stream's end.
"""

from __future__ import annotations

import gzip
import json
import random
import re
import secrets
import signal
import socket
import subprocess
import threading
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
from httpx_sse import connect_sse
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway import ndjson, sse
from gateway._proto import kumiho_pb2
from gateway.compression import (
    IDENTITY,
    MAX_ACCEPT_ENCODING,
    Encoding,
    GzipStream,
    accepts_gzip,
    negotiate,
)
from gateway.errors import GatewayError
from tests.conftest import (
    FAST,
    STATUS,
    DevServer,
    Gateway,
    raw_request,
    unique_project,
    wait_until,
)
from tests.test_chaos import nginx  # noqa: F401  (the fixture: a real nginx with sse.conf)

GZIP = ("--compression", "gzip")
PAGE_ORIGIN = "http://page.example"  # a --cors-origins entry: its Vary joins ours
STREAMS = ("/events", "/api/v1/events/stream")
POLLS = ("/events/poll", "/api/v1/events/poll")


# -- the Accept-Encoding rules ------------------------------------------------


@pytest.mark.parametrize(
    ("header", "gzip"),
    [
        (None, False),  # no header: identity (RFC 9110 allows any coding; none is safer)
        ("", False),  # an empty list asks for no coding
        ("gzip", True),
        ("GZip", True),
        ("x-gzip", True),
        ("gzip, deflate, br, zstd", True),  # Chromium's
        ("deflate, gzip, br, zstd", True),  # curl --compressed's
        ("deflate, br", False),
        ("gzip;q=0", False),
        ("gzip; q=0.000, deflate", False),
        ("gzip ;Q=0.5", True),
        ("  gzip\t;\tq=0.001  ", True),
        ("*", True),
        ("*;q=0", False),
        ("*;q=0, gzip", True),  # the named coding wins over *
        ("gzip;q=0, *", False),
        ("identity;q=1, gzip;q=0.5", False),  # the client prefers it as it is
        ("identity;q=0.5, gzip;q=0.5", True),  # a tie: the smaller answer
        ("identity;q=0", False),  # refuses identity, offers nothing else: still identity
        ("gzip;q=0, gzip", False),  # named twice: the lowest weight counts
        ("x-gzip;q=0, gzip;q=1", False),
        ("gzip;q=abc", False),  # a weight that is no plain decimal: not acceptable
        ("gzip;q=.5", False),
        ("gzip;q=1e0", False),
        ("gzip;q=7", True),  # above 1: 1
        (",,gzip,,", True),
        ("gzip;level=9", True),  # parameters other than q are ignored
        ("gzipper, gzip-x, agzip", False),
    ],
)
def test_accept_encoding_rules(header: str | None, gzip: bool) -> None:
    assert accepts_gzip(header) is gzip


@pytest.mark.parametrize(
    ("header", "says"),
    [
        ("gzip, " + "x" * MAX_ACCEPT_ENCODING, f"the limit is {MAX_ACCEPT_ENCODING}"),
        ("gzip\x00", "contains the character U+0000"),
        ("gzip\r\n", "contains the character U+000D"),
        ("gzip, d\u00e9flate", "contains the character U+00E9"),
    ],
)
def test_an_accept_encoding_past_its_limits_is_a_400_saying_why(header: str, says: str) -> None:
    with pytest.raises(GatewayError) as refused:
        accepts_gzip(header)
    assert refused.value.status == 400 and refused.value.code == "invalid_parameter"
    assert refused.value.message.startswith("Accept-Encoding: ") and says in refused.value.message


def test_compression_off_reads_no_accept_encoding() -> None:
    assert negotiate("off", "gzip") is IDENTITY
    assert negotiate("off", "\x00" * 1000) is IDENTITY  # not even judged
    assert IDENTITY.headers == {}
    assert negotiate("gzip", "br").headers == {"Vary": "Accept-Encoding"}
    on = negotiate("gzip", "gzip")
    assert on.headers == {"Vary": "Accept-Encoding", "Content-Encoding": "gzip"}


_CODINGS = ["gzip", "x-gzip", "identity", "*", "deflate", "br", "zstd", "compress"]
_WEIGHTS = [None, "0", "0.0", "0.000", "0.001", "0.5", "1", "1.0", "1.000", "2", "abc", "", ".5"]
_ZERO = {"0", "0.0", "0.000", "abc", "", ".5"}  # what reads as q=0
_ENTRIES = st.lists(
    st.tuples(st.sampled_from(_CODINGS), st.sampled_from(_WEIGHTS)), min_size=0, max_size=8
)


def _render(entries: Sequence[tuple[str, str | None]], rnd: random.Random) -> str:
    """One spelling of a list: random case, spaces and tabs where the grammar allows them."""

    def ows() -> str:
        return "".join(rnd.choice(" \t") for _ in range(rnd.randrange(3)))

    def case(text: str) -> str:
        return "".join(c.upper() if rnd.random() < 0.5 else c for c in text)

    parts = []
    for coding, weight in entries:
        q = "" if weight is None else f"{ows()};{ows()}{case('q')}={weight}"
        parts.append(f"{ows()}{case(coding)}{q}{ows()}")
    return ",".join(parts)


@settings(max_examples=300, deadline=None)
@given(entries=_ENTRIES, seeds=st.tuples(st.integers(), st.integers()))
def test_accept_encoding_reads_a_list_whatever_its_spelling_and_order(
    entries: list[tuple[str, str | None]], seeds: tuple[int, int]
) -> None:
    a, b = random.Random(seeds[0]), random.Random(seeds[1])
    shuffled = entries[:]
    b.shuffle(shuffled)
    spelled, respelled = _render(entries, a), _render(shuffled, b)
    if max(len(spelled), len(respelled)) > MAX_ACCEPT_ENCODING:
        return  # past the limit: a 400 (the next test)
    got = accepts_gzip(spelled)
    assert got == accepts_gzip(respelled)  # case, whitespace and order say nothing
    gzip_weights = [w for c, w in entries if c in ("gzip", "x-gzip")]
    star = [w for c, w in entries if c == "*"]
    named = gzip_weights or star  # gzip's own entries, else *'s
    if not named or any(w in _ZERO for w in named):
        assert got is False  # not offered, or refused somewhere
    elif all(w is None or w.startswith(("1", "2")) for w in named) and not any(
        c == "identity" for c, _ in entries
    ):
        assert got is True  # offered at full weight, identity not preferred


@settings(max_examples=300, deadline=None)
@given(header=st.text(max_size=2 * MAX_ACCEPT_ENCODING))
def test_any_accept_encoding_is_an_answer_or_a_400(header: str) -> None:
    bad = len(header) > MAX_ACCEPT_ENCODING or any(
        not (" " <= c <= "~" or c == "\t") for c in header
    )
    try:
        answer = accepts_gzip(header)
    except GatewayError as exc:
        assert bad and exc.status == 400 and exc.code == "invalid_parameter"
    else:
        assert isinstance(answer, bool) and not bad


# -- the compressor -----------------------------------------------------------


_TEXT = st.text(max_size=60)
_EVENTS = st.builds(
    lambda key, kref, cursor, details: kumiho_pb2.Event(
        routing_key=key, kref=kumiho_pb2.Kref(uri=kref), cursor=cursor, details=details
    ),
    _TEXT,
    _TEXT,
    st.text(max_size=20),
    st.dictionaries(st.text(max_size=10), _TEXT, max_size=3),
)
_FRAMES = st.one_of(
    st.builds(sse.event_frame, _EVENTS, named=st.booleans()),
    st.builds(ndjson.event_line, _EVENTS),
    st.builds(sse.control_frame, st.just(STATUS), st.dictionaries(_TEXT, _TEXT, max_size=3)),
    st.builds(sse.retry_frame, st.integers(100, 900_000)),
    st.just(sse.HEARTBEAT),
    st.just(ndjson.HEARTBEAT),
    st.binary(min_size=1, max_size=3000),  # anything at all, incompressible too
)
# A stream's writes: each a batch of frames, as the pump hands them over.
_WRITES = st.lists(st.lists(_FRAMES, min_size=1, max_size=6).map(b"".join), max_size=25)


@settings(max_examples=200, deadline=None)
@given(writes=_WRITES)
def test_every_write_decompresses_whole_at_once_and_the_end_is_a_gzip_trailer(
    writes: list[bytes],
) -> None:
    stream, inflate = GzipStream(), zlib.decompressobj(31)
    wire = []
    for chunk in writes:
        wire.append(stream.write(chunk))
        # Nothing stays in the compressor: the client decodes the whole write now.
        assert inflate.decompress(wire[-1]) == chunk
    wire.append(stream.write(b""))  # the stream's end
    assert inflate.decompress(wire[-1]) == b""
    assert inflate.eof and inflate.unused_data == b""  # a complete gzip member
    assert gzip.decompress(b"".join(wire)) == b"".join(writes)


@settings(max_examples=100, deadline=None)
@given(body=st.binary(max_size=5000))
def test_a_whole_body_is_one_gzip_member_or_itself(body: bytes) -> None:
    assert gzip.decompress(Encoding(gzip=True, vary=True).body(body)) == body
    assert Encoding(gzip=False, vary=True).body(body) is body
    assert Encoding(gzip=False, vary=True).stream() is None


# -- real clients, a real gateway ---------------------------------------------


class RawStream:
    """One request on a plain socket: its head, then its body de-chunked and, for gzip,
    decompressed as each chunk arrives (``pieces``: what each chunk decoded to)."""

    def __init__(
        self, url: str, target: str, headers: Sequence[tuple[str, str]] = (), rcvbuf: int = 0
    ) -> None:
        host, port = url.removeprefix("http://").split(":")
        self.sock = socket.socket()
        if rcvbuf:  # a small window: the client stops reading, the server's writes block
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.connect((host, int(port)))
        lines = [f"GET {target} HTTP/1.1", f"Host: {host}", *(f"{k}: {v}" for k, v in headers)]
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        self.status = 0
        self.headers: dict[str, str] = {}
        self.wire: list[bytes] = []  # each chunk's bytes, as sent
        self.pieces: list[bytes] = []  # what each chunk decoded to
        self.ended = False  # the last chunk came
        self.inflate: Any = None
        self._raw = b""

    @property
    def decoded(self) -> bytes:
        return b"".join(self.pieces)

    def head(self, deadline: float = 15) -> dict[str, str]:
        end = time.monotonic() + deadline
        while b"\r\n\r\n" not in self._raw:
            self._recv(end)
        head, _, self._raw = self._raw.partition(b"\r\n\r\n")
        status, *fields = head.decode("latin-1").split("\r\n")
        self.status = int(status.split()[1])
        self.headers = {
            k.strip().lower(): v.strip() for k, _, v in (f.partition(":") for f in fields)
        }
        if self.headers.get("content-encoding") == "gzip":
            self.inflate = zlib.decompressobj(31)
        self._chunks()
        return self.headers

    def read_until(self, predicate: Callable[[bytes], bool], deadline: float = 15) -> bytes:
        end = time.monotonic() + deadline
        while not predicate(self.decoded):
            assert not self.ended, f"the stream ended first: {self.decoded[-500:]!r}"
            self._recv(end)
            self._chunks()
        return self.decoded

    def read_to_end(self, deadline: float = 30) -> bytes:
        end = time.monotonic() + deadline
        while not self.ended:
            self._recv(end)
            self._chunks()
        return self.decoded

    def close(self) -> None:
        self.sock.close()

    def _recv(self, end: float) -> None:
        left = end - time.monotonic()
        if left <= 0:
            raise AssertionError(f"timed out; decoded so far: {self.decoded[-500:]!r}")
        self.sock.settimeout(left)
        try:
            data = self.sock.recv(65536)
        except TimeoutError:
            raise AssertionError(f"timed out; decoded so far: {self.decoded[-500:]!r}") from None
        assert data, f"the connection closed without the last chunk: {self.decoded[-500:]!r}"
        self._raw += data

    def _chunks(self) -> None:
        while not self.ended:
            size_line, found, rest = self._raw.partition(b"\r\n")
            if not found:
                return
            size = int(size_line.split(b";")[0], 16)
            if len(rest) < size + 2:
                return
            payload, self._raw = rest[:size], rest[size + 2 :]
            if size == 0:
                self.ended = True
                return
            self.wire.append(payload)
            self.pieces.append(self.inflate.decompress(payload) if self.inflate else payload)


def vary(headers: Any) -> set[str]:
    """The names a ``Vary`` header lists, lower-case (CORS adds ``Origin`` to ours)."""
    return {name.strip().lower() for name in headers.get("vary", "").split(",") if name.strip()}


def frames(body: bytes) -> list[str]:
    """An SSE body's frames, the ``retry:`` value masked (it is jittered per connection)
    and heartbeats left out (they come when each stream is quiet)."""
    text = re.sub(r"^retry: \d+$", "retry: N", body.decode(), flags=re.MULTILINE)
    return [f + "\n\n" for f in text.split("\n\n")[:-1] if f != ": heartbeat"]


def _status_seen(body: bytes) -> bool:
    return b"event: gateway.status\n" in body


@pytest.fixture(scope="module")
def gz(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[DevServer, Gateway]]:
    """One devserver and one gateway with --compression gzip, for the read-only tests."""
    tmp = tmp_path_factory.mktemp("gzip")
    devserver = DevServer(tmp / "devserver.sqlite3").start()
    gateway = Gateway(
        devserver.address, tmp / "gateway.log", [*FAST, *GZIP, "--cors-origins", PAGE_ORIGIN]
    ).start()
    yield devserver, gateway
    gateway.stop(signal.SIGKILL)
    devserver.stop(signal.SIGKILL)


def publish_one_by_one(
    devserver: DevServer, kref: str, seen: Callable[[str], bool], count: int = 3
) -> list[str]:
    """Publish ``count`` events, each only once ``seen`` shows the one before it arrived."""
    cursors = []
    for n in range(count):
        [cursor] = devserver.publish("revision.created", kref, {"n": str(n)})
        wait_until(lambda c=cursor: seen(c), 15, f"event {n} ({cursor}) to reach the client")
        cursors.append(cursor)
    return cursors


def test_the_bytes_on_the_wire_decompress_as_they_come_to_the_uncompressed_frames(
    make_devserver: Callable[..., DevServer], make_gateway: Callable[..., Gateway]
) -> None:
    """A gzip and an identity reader of one stream: the same frames, each write whole at once;
    the first frames before any event, heartbeats while quiet; a drain ends the gzip member."""
    devserver = make_devserver()
    gateway = make_gateway(devserver.address, *FAST, *GZIP, "--shutdown-grace", "5")
    kref = f"kref://{unique_project()}/wire.model"
    target = f"/events?kref={kref}"
    zipped = RawStream(gateway.url, target, [("Accept-Encoding", "gzip")])
    plain = RawStream(gateway.url, target)
    try:
        assert zipped.head()["content-encoding"] == "gzip"
        assert "content-encoding" not in plain.head()
        # The retry: line and the upstream's state come before any event, and a
        # heartbeat while nothing happens: none of them waits in the compressor.
        assert zipped.read_until(_status_seen).startswith(b"retry: ")
        zipped.read_until(lambda body: sse.HEARTBEAT in body)
        plain.read_until(_status_seen)
        cursors = publish_one_by_one(
            devserver,
            kref,
            lambda c: bool(zipped.read_until(lambda body: f"id: {c}\n".encode() in body)),
        )
        for cursor in cursors:
            plain.read_until(lambda body, c=cursor: f"id: {c}\n".encode() in body)
        # Every chunk on the wire decoded, at once, to whole frames.
        assert all(piece.endswith(b"\n\n") for piece in zipped.pieces)
        assert gateway.proc is not None
        gateway.proc.send_signal(signal.SIGTERM)  # the drain: a retry: line, then the end
        zipped.read_to_end()
        plain.read_to_end()
    finally:
        zipped.close()
        plain.close()
    assert zipped.inflate.eof and zipped.inflate.unused_data == b""  # the gzip trailer came
    assert gzip.decompress(b"".join(zipped.wire)) == zipped.decoded
    assert frames(zipped.decoded)[-1] == "retry: N\n\n"
    assert frames(zipped.decoded) == frames(plain.decoded)
    assert [f"id: {c}" in zipped.decoded.decode() for c in cursors] == [True] * 3
    assert sum(len(w) for w in zipped.wire) < len(plain.decoded)


def test_a_slow_consumer_of_a_compressed_stream_gets_a_complete_gzip_member(
    make_devserver: Callable[..., DevServer], make_gateway: Callable[..., Gateway]
) -> None:
    devserver = make_devserver()
    gateway = make_gateway(
        devserver.address,
        *FAST,
        *GZIP,
        "--buffer-events", "200",
        "--buffer-bytes", "65536",
        "--slow-consumer-grace", "0.5",
    )  # fmt: skip
    kref = f"kref://{unique_project()}/slow.model"
    stalled = RawStream(gateway.url, f"/events?kref={kref}", [("Accept-Encoding", "gzip")], 4096)
    try:
        wait_until(lambda: gateway.metric("kumiho_gateway_streams_open") == 1, 10, "the stream")
        wait_until(lambda: devserver.open_streams() == 1, 10, "the upstream stream")
        # Each event 40 KB of random text, repeated further apart than gzip's
        # 32 KiB window: it stays large on the wire and fills the socket buffers.
        cursors: list[str] = []
        for _ in range(4):
            pad = secrets.token_urlsafe(30_000)
            cursors += devserver.publish("revision.created", kref, {"pad": pad}, count=100)
        wait_until(
            lambda: gateway.metric("kumiho_gateway_slow_consumer_disconnects_total") == 1,
            30,
            "the slow-consumer cut",
        )
        stalled.head()
        body = stalled.read_to_end(60)
    finally:
        stalled.close()
    assert stalled.inflate.eof and stalled.inflate.unused_data == b""
    ids = re.findall(rb"^id: (.+)$", body, re.MULTILINE)
    assert 0 < len(ids) < len(cursors) and [i.decode() for i in ids] == cursors[: len(ids)]
    assert frames(body)[-1] == "retry: N\n\n"  # whole frames, then the retry: line, then the end


@pytest.mark.parametrize("path", STREAMS)
def test_httpx_sse_sees_each_event_as_it_is_published(
    gz: tuple[DevServer, Gateway], path: str
) -> None:
    devserver, gateway = gz
    kref = f"kref://{unique_project()}/httpx.model"
    with (
        httpx.Client(timeout=httpx.Timeout(15)) as client,  # it sends Accept-Encoding: gzip
        connect_sse(client, "GET", gateway.url + path, params={"kref": kref}) as source,
    ):
        assert source.response.headers["content-encoding"] == "gzip"
        assert "accept-encoding" in vary(source.response.headers)
        events = (e for e in source.iter_sse() if e.data)
        if path == "/events":  # the hosted route sends the status as a comment
            assert next(events).event == STATUS  # before anything was published
        got: list[str] = []

        def seen(cursor: str) -> bool:
            # Blocks for the next event: one held back would time the read out.
            got.append(json.loads(next(events).data)["cursor"])
            return cursor in got

        assert publish_one_by_one(devserver, kref, seen) == got


def test_ndjson_is_compressed_and_every_line_comes_as_it_is_published(
    gz: tuple[DevServer, Gateway],
) -> None:
    devserver, gateway = gz
    kref = f"kref://{unique_project()}/ndjson.model"
    params = {"kref": kref}
    with httpx.stream(
        "GET", gateway.url + "/events", params=params, headers={"Accept": ndjson.MEDIA_TYPE},
        timeout=15,
    ) as answer:  # fmt: skip
        assert answer.headers["content-type"] == ndjson.MEDIA_TYPE
        assert answer.headers["content-encoding"] == "gzip"
        lines = (json.loads(line) for line in answer.iter_lines() if line)
        assert next(lines)["gateway"] == "status"  # before anything was published
        got: list[str] = []

        def seen(cursor: str) -> bool:
            got.append(next(lines)["cursor"])
            return cursor in got

        assert publish_one_by_one(devserver, kref, seen) == got


def test_curl_compressed_sees_each_event_as_it_is_published(
    gz: tuple[DevServer, Gateway], tmp_path: Path
) -> None:
    devserver, gateway = gz
    kref = f"kref://{unique_project()}/curl.model"
    _curl_follows(devserver, f"{gateway.url}/events?kref={kref}", kref, tmp_path / "head.txt")


def _curl_follows(devserver: DevServer, url: str, kref: str, head: Path) -> str:
    """A real ``curl --compressed -N`` reads ``url`` while events are published one by one;
    returns the head it got."""
    curl = subprocess.Popen(
        ["curl", "-sS", "-N", "--compressed", "-D", str(head), url],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    out: list[bytes] = []
    reader = threading.Thread(target=lambda: out.extend(iter(curl.stdout.readline, b"")))  # type: ignore[union-attr]
    reader.start()
    try:
        wait_until(lambda: _status_seen(b"".join(out)), 15, "curl to show the status")
        cursors = publish_one_by_one(
            devserver, kref, lambda c: f"id: {c}\n".encode() in b"".join(out)
        )
    finally:
        curl.terminate()
        curl.wait(10)
        reader.join(10)
    text = b"".join(out).decode()  # text: curl decompressed it
    assert all(f"id: {c}\n" in text for c in cursors)
    fields = head.read_text().lower()
    assert "content-encoding: gzip" in fields, fields
    return fields


def test_through_nginx_the_stream_is_compressed_once_and_never_held(
    make_devserver: Callable[..., DevServer],
    make_gateway: Callable[..., Gateway],
    nginx: Callable[[int, int], int],  # noqa: F811
    tmp_path: Path,
) -> None:
    devserver = make_devserver()
    gateway = make_gateway(devserver.address, *FAST, *GZIP)
    port = nginx(gateway.port, gateway.port)
    kref = f"kref://{unique_project()}/proxied.model"
    url = f"http://127.0.0.1:{port}/events?kref={kref}"
    head = _curl_follows(devserver, url, kref, tmp_path / "head.txt")
    assert head.count("content-encoding") == 1 and "vary: accept-encoding" in head
    # The bytes nginx passes on are the gateway's one gzip member, not gzip of gzip.
    proxied = RawStream(
        f"http://127.0.0.1:{port}", f"/events?kref={kref}", [("Accept-Encoding", "gzip")]
    )
    try:
        proxied.head()
        assert proxied.read_until(_status_seen).startswith(b"retry: ")
    finally:
        proxied.close()


@pytest.mark.parametrize(
    ("accept_encoding", "compressed"),
    [
        (None, False),
        ("gzip;q=0", False),
        ("deflate, br", False),
        ("identity;q=1, gzip;q=0.5", False),
        ("GZIP ; Q=0.5", True),
        ("*", True),
        ("x-gzip", True),
    ],
)
def test_who_gets_gzip_on_every_route_and_head_says_the_same(
    gz: tuple[DevServer, Gateway], accept_encoding: str | None, compressed: bool
) -> None:
    _, gateway = gz
    asked = [] if accept_encoding is None else [(b"Accept-Encoding", accept_encoding.encode())]
    for path in (*STREAMS, *POLLS):
        target = f"{path}?timeout=0&from=beginning&max_events=5".encode()
        get = raw_request(gateway.url, target, asked)
        head = raw_request(gateway.url, target, asked, method=b"HEAD")
        assert get is not None and head is not None and get.status == head.status == 200, path
        # Compressed or not, the answer says it depends on Accept-Encoding.
        assert "accept-encoding" in vary(get.headers), path
        assert get.headers.get("content-encoding") == ("gzip" if compressed else None), path
        for name in ("content-type", "content-encoding", "vary", "cache-control"):
            assert head.headers.get(name) == get.headers.get(name), (path, name)
        assert "content-length" not in head.headers, path  # a GET's is known only once it ran
        if path in POLLS:
            body = gzip.decompress(get.body) if compressed else get.body
            assert set(json.loads(body)) == {"events", "cursor", "more", "reset"}


def test_vary_names_the_origin_too_for_a_cross_origin_page(gz: tuple[DevServer, Gateway]) -> None:
    _, gateway = gz
    headers = [(b"Origin", PAGE_ORIGIN.encode()), (b"Accept-Encoding", b"gzip")]
    for path in (*STREAMS, *POLLS):
        answer = raw_request(gateway.url, f"{path}?timeout=0".encode(), headers)
        assert answer is not None and answer.status == 200
        assert answer.headers["access-control-allow-origin"] == PAGE_ORIGIN
        assert vary(answer.headers) == {"accept-encoding", "origin"}, path


def test_a_bad_accept_encoding_is_a_400_before_any_byte(gz: tuple[DevServer, Gateway]) -> None:
    _, gateway = gz
    for value, says in [
        (b"gzip, " + b"y" * 300, "the limit is 256"),
        (b"gzip, d\xe9flate", "contains the character U+00E9"),
    ]:
        for path in (*STREAMS, *POLLS):
            answer = raw_request(gateway.url, path.encode(), [(b"Accept-Encoding", value)])
            assert answer is not None and answer.status == 400, (path, answer)
            error = answer.envelope()
            assert error["code"] == "invalid_parameter" and says in error["message"], error
            assert error["message"].startswith("Accept-Encoding: ")


def test_compression_off_ignores_accept_encoding_and_claims_nothing(
    make_devserver: Callable[..., DevServer], make_gateway: Callable[..., Gateway]
) -> None:
    devserver = make_devserver()
    gateway = make_gateway(devserver.address, *FAST)  # --compression off, the default
    kref = f"kref://{unique_project()}/off.model"
    [cursor] = devserver.publish("revision.created", kref)
    for value in (b"gzip", b"gzip, " + b"z" * 300, b"d\xe9flate"):
        for path in (*STREAMS, *POLLS):
            target = f"{path}?timeout=0&from=beginning&kref={kref}".encode()
            answer = raw_request(gateway.url, target, [(b"Accept-Encoding", value)])
            assert answer is not None and answer.status == 200, (path, answer)
            assert "content-encoding" not in answer.headers
            assert "accept-encoding" not in vary(answer.headers)
            if path in POLLS:
                assert json.loads(answer.body)["events"][0]["cursor"] == cursor
    plain = RawStream(
        gateway.url, f"/events?from=beginning&kref={kref}", [("Accept-Encoding", "gzip")]
    )
    try:
        plain.head()
        assert f"id: {cursor}\n".encode() in plain.read_until(lambda b: b"id: " in b)
    finally:
        plain.close()


def test_while_draining_the_retry_answer_is_compressed_and_the_poll_refusal_is_not(
    make_devserver: Callable[..., DevServer], make_gateway: Callable[..., Gateway]
) -> None:
    devserver = make_devserver()
    gateway = make_gateway(
        devserver.address, *FAST, *GZIP, "--drain-delay", "2", "--shutdown-grace", "6"
    )
    assert gateway.proc is not None
    gateway.proc.send_signal(signal.SIGTERM)
    wait_until(lambda: httpx.get(gateway.url + "/readyz").status_code == 503, 5, "draining")
    for path in STREAMS:
        answer = httpx.get(gateway.url + path, headers={"Accept-Encoding": "gzip"}, timeout=10)
        assert answer.status_code == 200
        assert answer.headers["content-encoding"] == "gzip"
        assert "accept-encoding" in vary(answer.headers)
        assert frames(answer.content) == ["retry: N\n\n"]  # httpx decoded it: whole, and only that
    refused = raw_request(gateway.url, POLLS[0].encode(), [(b"Accept-Encoding", b"gzip")])
    assert refused is not None and refused.status == 503
    assert "content-encoding" not in refused.headers and refused.envelope()["code"] == "draining"
    assert gateway.proc.wait(10) == 0


# -- in Chromium --------------------------------------------------------------


@pytest.fixture
def page(chromium: Any) -> Iterator[Any]:
    context = chromium.new_context()
    page = context.new_page()
    yield page
    context.close()


def _encodings(page: Any) -> dict[str, set[str]]:
    """The Content-Encoding of every answer the page got, by path (filled as they come)."""
    seen: dict[str, set[str]] = {}

    def record(response: Any) -> None:
        path = response.url.split("?")[0].split("127.0.0.1:")[-1].partition("/")[2]
        seen.setdefault("/" + path, set()).add(response.headers.get("content-encoding", ""))

    page.on("response", record)
    return seen


def test_chromium_eventsource_sees_each_event_as_it_is_published(
    page: Any, gz: tuple[DevServer, Gateway]
) -> None:
    devserver, gateway = gz
    encodings = _encodings(page)
    kref = f"kref://{unique_project()}/browser.model"
    page.goto(gateway.url + "/")
    page.evaluate(
        """(kref) => {
            window.got = []; window.statuses = 0;
            const es = new EventSource(`/events?kref=${encodeURIComponent(kref)}`);
            es.addEventListener("gateway.status", () => { window.statuses += 1; });
            es.onmessage = (m) => window.got.push(m.lastEventId);
        }""",
        kref,
    )
    page.wait_for_function("window.statuses >= 1", timeout=15_000)
    cursors = publish_one_by_one(devserver, kref, lambda c: c in page.evaluate("window.got"))
    assert page.evaluate("window.got") == cursors
    assert encodings["/events"] == {"gzip"}


def test_the_browser_helper_polls_and_streams_compressed(
    page: Any, gz: tuple[DevServer, Gateway]
) -> None:
    devserver, gateway = gz
    encodings = _encodings(page)
    kref = f"kref://{unique_project()}/helper.model"
    past = [devserver.publish("revision.created", kref, {"n": f"past {n}"})[0] for n in range(2)]
    page.goto(gateway.url + "/")
    page.evaluate(
        """async (kref) => {
            const { subscribe } = await import("/kumiho-events.js");
            window.got = []; window.state = "";
            subscribe({
                from: "beginning", storageKey: null, kref,
                onEvent: (e) => window.got.push(e.cursor),
                onStateChange: (state) => { window.state = state; },
            });
        }""",
        kref,
    )
    # The past comes by the poll (fetch), then the helper goes live on the stream.
    page.wait_for_function("window.state === 'live'", timeout=20_000)
    assert page.evaluate("window.got") == past
    live = publish_one_by_one(devserver, kref, lambda c: c in page.evaluate("window.got"))
    assert page.evaluate("window.got") == past + live
    assert encodings["/events/poll"] == {"gzip"} and encodings["/events"] == {"gzip"}


# -- a running gateway, any header --------------------------------------------


@settings(max_examples=60, deadline=None)
@given(entries=_ENTRIES, seed=st.integers(), junk=st.binary(max_size=12))
def test_any_accept_encoding_at_a_running_gateway_gets_what_the_rules_say(
    gz: tuple[DevServer, Gateway], entries: list[tuple[str, str | None]], seed: int, junk: bytes
) -> None:
    _, gateway = gz
    # A list as a client spells it, then any bytes (a line break would end the header).
    junk = junk.replace(b"\r", b"").replace(b"\n", b"")
    value = (_render(entries, random.Random(seed)).encode() + junk).strip(b" \t")
    answer = raw_request(
        gateway.url, b"/events?named=true", [(b"Accept-Encoding", value)], method=b"HEAD"
    )
    assert answer is not None
    try:
        expected = accepts_gzip(value.decode("latin-1"))  # as ASGI hands the header over
    except GatewayError:
        assert answer.status == 400, answer  # ours, or the HTTP parser's (a NUL, ...)
        return
    assert answer.status == 200, answer
    assert answer.headers.get("content-encoding") == ("gzip" if expected else None)
