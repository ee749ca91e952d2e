"""Run the gateway under uvicorn, with a graceful drain on SIGTERM/SIGINT.

uvicorn alone would stop accepting and then wait for streams that never end
by themselves. Here the first signal drains instead (``Lifecycle.drain``:
/readyz turns 503, every stream gets a ``retry:`` line and closes) and only
then lets uvicorn exit; the whole takes at most ``shutdown_grace`` seconds.
A second signal exits at once.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import gc
import logging
import socket
from collections.abc import Callable
from types import FrameType
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from gateway import connection, logs, tracing
from gateway.app import create_app
from gateway.errors import GatewayError, raw_error_response
from gateway.lifecycle import Lifecycle, streams_phrase
from gateway.metrics import Metrics
from gateway.settings import Settings

log = logging.getLogger("gateway.server")

# Share of the grace period spent draining streams; uvicorn gets the rest to
# close connections and run the lifespan's shutdown.
_DRAIN_SHARE = 0.75


# After a 431 the connection reads and drops what the client still sends, for
# at most this long and this many bytes, before it closes: closing a socket
# with unread input makes the kernel answer with a reset, which may destroy
# the 431 before the client has read it (a client sends its whole request
# before it reads).
_LINGER_SECONDS = 2.0
_LINGER_BYTES = 4 * 1024 * 1024


def head_too_large(limit: int) -> bytes:
    """The whole 431 answer (a JSON envelope) for a request head over ``limit`` bytes."""
    return raw_error_response(
        GatewayError(
            431,
            "request_header_too_large",
            f"the request line and headers together may take at most {limit} bytes "
            "(--max-header-bytes)",
        )
    )


def head_too_slow(timeout: float) -> bytes:
    """The whole 408 answer for a request whose head took over ``timeout`` seconds."""
    return raw_error_response(
        GatewayError(
            408,
            "request_timeout",
            f"the request line and headers took over {timeout:g} s (--header-timeout)",
            retryable=True,
        )
    )


class StreamConnection:
    """``connection.Connection`` for one request: its chunked body written to the transport.

    Bound to the request's own cycle, not the protocol's current one, which a
    pipelined request behind the stream would replace.
    """

    __slots__ = ("_cycle", "_lost", "_owner", "_protocol", "_transport", "paused")

    def __init__(self, protocol: HeadLimitsProtocol, cycle: RequestResponseCycle) -> None:
        self._protocol = protocol
        self._cycle = cycle
        self._transport = cycle.transport
        self._owner: connection.Owner | None = None
        self._lost = False
        # The transport's flow control, as the protocol is told of it once the body is
        # taken (before, uvicorn's own): one object less to touch per write.
        self.paused = False

    def streaming(self) -> bool:
        cycle = self._cycle
        return (
            cycle.response_started
            and not cycle.response_complete
            and not cycle.disconnected
            and cycle.chunked_encoding is True
            and cycle.scope["method"] != "HEAD"
        )

    def take(self, owner: connection.Owner) -> None:
        # uvicorn's task may now return: to uvicorn the response is complete,
        # and the protocol holds anything the client sends until ``finish``.
        cycle = self._cycle
        cycle.response_complete = True
        self.paused = cycle.flow.write_paused
        self._owner = owner
        self._protocol.taken = self
        # What only the request needed goes now, not when the stream ends hours later.
        cycle.scope = self._protocol.scope = _NO_SCOPE
        self._protocol.headers = []

    def write(self, data: bytes) -> bool:
        if self._lost or self.paused:
            return False
        if data:  # an empty chunk would end the body
            self._transport.write(connection.chunk(data))
        return True

    @property
    def transport(self) -> asyncio.WriteTransport:
        return self._transport

    def blocked(self) -> bool:
        return self.paused

    def finish(self) -> None:
        self._owner = None
        if self._lost:
            return
        self._transport.write(b"0\r\n\r\n")
        if self._cycle.keep_alive:
            self._protocol.given_back()
        else:
            self._transport.close()

    def abort(self) -> None:
        self._owner = None
        if not self._lost:
            self._transport.close()

    def lost(self) -> None:
        """From the protocol: the client has gone."""
        self._lost = True
        owner, self._owner = self._owner, None
        if owner is not None:
            owner.lost()

    def pause(self) -> None:
        """From the protocol: the transport holds more than it should."""
        self.paused = True
        if self._owner is not None:
            self._owner.paused()

    def writable(self) -> None:
        """From the protocol: the transport resumed writing."""
        self.paused = False
        if self._owner is not None:
            self._owner.writable()


# A taken stream's cycle and protocol drop their scope for this one (read by nobody).
_NO_SCOPE: Any = {}


class _Pipeline(list[tuple[RequestResponseCycle, object]]):
    """uvicorn's queue of pipelined requests, as a list: an empty deque holds a
    block of 64 slots (760 bytes), an empty list 56, and nearly every
    connection queues nothing. uvicorn calls only ``appendleft`` and ``pop``."""

    def appendleft(self, item: tuple[RequestResponseCycle, object]) -> None:
        self.insert(0, item)


def lean(event: asyncio.Event) -> asyncio.Event:
    """``event`` with its waiters in a list rather than a deque (760 bytes empty).

    uvicorn makes two Events per connection (its flow control's, and each
    request's); a stream's connection keeps both for hours, rarely with a
    waiter. asyncio only appends to, removes from and iterates the waiters.
    """
    waiters = getattr(event, "_waiters", None)
    if isinstance(waiters, collections.deque) and not waiters:
        event._waiters = []  # type: ignore[assignment]
    return event


class HeadLimitsProtocol(HttpToolsProtocol):
    """uvicorn's HTTP/1.1 protocol, with a deadline and a size cap for each request's head,
    and each request's connection offered to its streaming response (``connection.py``).

    uvicorn bounds the idle time between requests but not a request that
    arrives a byte at a time: a few hundred such connections (slowloris)
    would hold every socket. The deadline runs from the connection's start,
    or from the first byte of a later request, to the end of its headers.

    Nor does it bound the head's size: httptools gathers a header's name and
    value in memory until the line ends, so one endless header costs as much
    memory as the client sends. Here the bytes of a head are counted before
    the parser sees them, and the parser is never fed more than
    ``max_header_bytes`` of one head: the next byte gets a 431.
    """

    header_timeout = 10.0  # both set per server by protocol_for()
    max_header_bytes = 32 * 1024
    too_large = head_too_large(max_header_bytes)
    too_slow = head_too_slow(header_timeout)
    _header_deadline: asyncio.TimerHandle | None = None
    _in_head = True  # the bytes arriving now belong to a request's head
    _head_bytes = 0  # of the current head, fed to the parser so far
    _dropped = -1  # bytes dropped since a 431 (-1: none sent)
    _linger: asyncio.TimerHandle | None = None
    taken: StreamConnection | None = None  # the stream that owns the connection's body
    _held = b""  # what the client sent while a stream owned the connection

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.pipeline = _Pipeline()  # type: ignore[assignment]
        lean(self.flow._is_writable_event)
        self._start_header_deadline()

    def data_received(self, data: bytes) -> None:
        if self.taken is not None:
            # A pipelined request behind a stream: served once the stream ends.
            self._held += data
            if len(self._held) > self.max_header_bytes:
                self.transport.close()
            return
        if self._dropped >= 0:  # after a 431: read and drop, up to a bound
            self._dropped += len(data)
            if self._dropped > _LINGER_BYTES:
                self.transport.close()
            return
        while data:
            if not self._in_head:  # a body: uvicorn's flow control bounds it
                super().data_received(data)
                return
            room = self.max_header_bytes - self._head_bytes
            if room <= 0:
                self._head_too_large()
                return
            # What follows a head within this piece (a body, a pipelined
            # request) escapes the count: slack of at most one cap.
            piece, data = data[:room], data[room:]
            self._head_bytes += len(piece)
            super().data_received(piece)
            if self.parser is None or self.transport.is_closing():
                return

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._start_header_deadline()

    def on_headers_complete(self) -> None:
        self._stop_header_deadline()
        self._in_head, self._head_bytes = False, 0
        super().on_headers_complete()
        cycle = self.cycle
        if cycle is not None and cycle.scope is self.scope:  # not an upgrade
            lean(cycle.message_event)
            # The cycle's task has not run yet: the app finds it in the scope.
            # An object where the ASGI spec has a dict of an extension's details:
            # one allocation less per request; only the gateway's response reads it.
            extensions = self.scope.setdefault("extensions", {})
            extensions[connection.EXTENSION] = StreamConnection(self, cycle)  # type: ignore[assignment]

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._in_head = True  # what comes next is the next request's head

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_header_deadline()
        if self._linger is not None:
            self._linger.cancel()
            self._linger = None
        super().connection_lost(exc)
        stream, self.taken = self.taken, None
        if stream is not None:
            stream.lost()

    def pause_writing(self) -> None:
        super().pause_writing()
        if self.taken is not None:
            self.taken.pause()

    def resume_writing(self) -> None:
        super().resume_writing()
        if self.taken is not None:
            self.taken.writable()

    def given_back(self) -> None:
        """A stream ended its body: the connection serves its next request."""
        self.taken = None
        self.on_response_complete()
        held, self._held = self._held, b""
        if held:
            self.data_received(held)

    def _start_header_deadline(self) -> None:
        if self._header_deadline is None:
            self._header_deadline = self.loop.call_later(self.header_timeout, self._too_slow)

    def _stop_header_deadline(self) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None

    def send_400_response(self, msg: str) -> None:
        """The parser's refusal (a control character in a header, a space in the path, ...).

        uvicorn answers it in plain text; the gateway answers every error in its envelope.
        """
        reason = msg.rstrip(".").lower()
        error = GatewayError(
            400, "malformed_request", f"the request is not well-formed HTTP/1.1 ({reason})"
        )
        self.transport.write(raw_error_response(error, self.server_state.default_headers))
        self.transport.close()

    def _too_slow(self) -> None:
        self._header_deadline = None
        log.info("closing a connection whose headers took over %.0fs", self.header_timeout)
        if self.cycle is None or self.cycle.response_complete:  # no response under way
            self.transport.write(self.too_slow)
        self.transport.close()

    def _head_too_large(self) -> None:
        self._stop_header_deadline()
        log.info("refusing a request whose head passed %d bytes", self.max_header_bytes)
        if self.cycle is not None and not self.cycle.response_complete:
            self.transport.close()  # a response under way: a 431 cannot be put in it
            return
        self.transport.write(self.too_large)
        self._dropped = 0
        if self.transport.can_write_eof():
            self.transport.write_eof()  # the client reads the 431, then the end
        self._linger = self.loop.call_later(_LINGER_SECONDS, self.transport.close)


def protocol_for(settings: Settings) -> type[HeadLimitsProtocol]:
    """The protocol class uvicorn should use, with this server's bounds on request heads."""
    return type(
        "HeadLimitsProtocol",
        (HeadLimitsProtocol,),
        {
            "header_timeout": settings.header_timeout,
            "max_header_bytes": settings.max_header_bytes,
            "too_large": head_too_large(settings.max_header_bytes),
            "too_slow": head_too_slow(settings.header_timeout),
        },
    )


class GatewayServer(uvicorn.Server):
    """uvicorn.Server whose first exit signal drains the streams before stopping."""

    def __init__(
        self,
        config: uvicorn.Config,
        lifecycle: Lifecycle,
        settings: Settings,
        started: Callable[[], None] | None = None,
    ) -> None:
        super().__init__(config)
        self._lifecycle = lifecycle
        self._on_started = started
        self._grace = settings.shutdown_grace
        self._delay = min(settings.drain_delay, settings.shutdown_grace / 2)
        self._signalled = False
        self._drain_task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._exiting = asyncio.Event()  # set with should_exit, which only this class sets

    async def serve(self, sockets: list[object] | None = None) -> None:  # type: ignore[override]
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)  # type: ignore[arg-type]

    async def main_loop(self) -> None:
        """uvicorn's, woken once a second (for its Date header) or when told to exit,
        not ten times a second to look.

        An idle process should not wake: on a small busy machine, one that woke
        often was measured losing more of each round of writes to the readers
        of those writes (BENCHMARKS.md, "Fifth turn").
        """
        # 0: every pass is uvicorn's once-a-second tick (its work at counter % 10 == 0).
        while not await self.on_tick(0):
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    await self._exiting.wait()

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started and self._on_started is not None:
            self._on_started()

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._signalled or self._loop is None:
            # A second signal (or one before serving began): stop now, without
            # waiting for connections. uvicorn alone forces only on a second SIGINT.
            log.info("signal %d again: exiting now", sig)
            self.should_exit = self.force_exit = True
            if self._loop is not None:
                self._loop.call_soon_threadsafe(self._exiting.set)
            return
        self._signalled = True
        log.info("signal %d: draining %s", sig, streams_phrase(self._lifecycle.open_streams))
        self._loop.call_soon_threadsafe(self._start_drain)

    def _start_drain(self) -> None:
        self._drain_task = asyncio.ensure_future(self._drain())

    async def _drain(self) -> None:
        await self._lifecycle.drain(self._grace * _DRAIN_SHARE - self._delay, self._delay)
        self.should_exit = True
        self._exiting.set()


GC_THRESHOLDS = (50_000, 50, 100)  # CPython's defaults: (700, 10, 10)


async def serve(
    settings: Settings,
    announce: str = "",
    sockets: list[socket.socket] | None = None,
    metrics: Metrics | None = None,
    lifecycle: Lifecycle | None = None,
    started: Callable[[], None] | None = None,
) -> None:
    """Serve the gateway until a signal drains and stops it.

    On ``sockets`` when given (a worker's share of the pool's), with
    ``metrics`` and ``lifecycle`` when given (a worker's, see ``metrics.py``
    and ``supervisor.py``); ``started`` is called once uvicorn serves.
    """
    lifecycle = lifecycle or Lifecycle()
    sockets = sockets or [listening_socket(settings)]
    traces = tracing.from_environment()
    config = uvicorn.Config(
        create_app(settings, lifecycle, metrics, traces),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        loop="none",
        timeout_graceful_shutdown=max(1, round(settings.shutdown_grace * (1 - _DRAIN_SHARE))),
        server_header=False,
        # X-Forwarded-For names the client only from these peers (gateway/admission.py).
        proxy_headers=True,
        forwarded_allow_ips=settings.forwarded_allow_ips,
        http=protocol_for(settings),
        log_config=logs.uvicorn_config(),
    )
    logs.install(settings.log_level)
    # Everything built so far (modules, the app) lives as long as the process;
    # frozen, full collections stop walking it: they took 70-90 ms each at
    # 1,000 open streams, the whole p99 of bench/fanout.py.
    gc.freeze()
    # What streams allocate as they run is nearly all short-lived: a young
    # collection every 50,000 allocations rather than every 700 makes the full
    # ones (25-45 ms each at 1,000 streams) rarer and costs less CPU per
    # delivery (BENCHMARKS.md, "Garbage collection").
    gc.set_threshold(*GC_THRESHOLDS)
    if announce:
        print(announce, flush=True)
    try:
        await GatewayServer(config, lifecycle, settings, started).serve(sockets)  # type: ignore[arg-type]
    finally:
        if traces is not None:
            traces.shutdown()  # the last spans (the streams' upstream calls end at shutdown)


def listening_socket(settings: Settings) -> socket.socket:
    """The listening socket, bound as uvicorn binds it (IPv6, SO_REUSEADDR).

    On Linux every accepted connection inherits a TCP user timeout of twice
    ``send_timeout``: the kernel aborts a connection whose data has not moved
    for that long. The pump already ends the stream of a client whose write
    blocks for ``send_timeout``, but the server can then only close() the
    connection, which waits for the client to read what is queued; this frees
    the socket and its buffers when the client never does.
    """
    config = uvicorn.Config(
        app="gateway.app:create_app",
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,  # bind_socket logs "Uvicorn running on ..."
    )
    try:
        sock = config.bind_socket()
    except SystemExit:  # uvicorn logged the OS error without the address: name it
        raise SystemExit(
            f"kumiho-sse-gateway: cannot listen on {settings.host}:{settings.port} "
            "(address already in use, or not available)"
        ) from None
    if hasattr(socket, "TCP_USER_TIMEOUT"):
        timeout_ms = int(settings.send_timeout * 2 * 1000)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, timeout_ms)
    return sock
