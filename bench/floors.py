"""The floors the gateway's fan-out is measured against (``fanout.py --floors``).

Each reads the upstream once per process and writes every event, encoded
once, to every open connection: no framework, no filter, no policy (no slow
consumer cut, no heartbeat, no metrics). What the gateway costs beyond that
is what it spends on being a product.

    python bench/floors.py raw|uvicorn serve --upstream HOST:PORT --port P [--workers N]

- ``raw``: asyncio transports (uvloop), the pre-encoded HTTP chunk written
  straight to each one: the cost of a socket write and nothing else.
- ``uvicorn``: a bare ASGI app on uvicorn (httptools, uvloop), each stream
  awaiting the next shared frame and sending it: uvicorn's own send path.

``--workers N`` forks N processes that share one listening socket, each with
its own upstream stream, as ``serve --workers`` does. The command line takes
the gateway's form (``serve``, unknown flags ignored), so ``stack.py`` starts a
floor where it starts a gateway. ``GET /healthz`` answers 200.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import uvicorn
import uvloop

from gateway._proto import kumiho_pb2, kumiho_pb2_grpc
from gateway.sse import event_frame

HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\n"
    b"cache-control: no-store\r\ntransfer-encoding: chunked\r\n\r\n"
)
HEALTHY = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok"


async def read_upstream(address: str, deliver: Callable[[bytes], None]) -> None:
    """One EventStream from latest (waiting for the upstream to listen); each event encoded
    once and handed to ``deliver``."""
    async with grpc.aio.insecure_channel(address) as channel:
        stub = kumiho_pb2_grpc.KumihoServiceStub(channel)
        request = kumiho_pb2.EventStreamRequest(from_latest=True)
        async for event in stub.EventStream(request, wait_for_ready=True):
            deliver(event_frame(event, named=False, event_id=event.cursor or None))


# -- raw transports ------------------------------------------------------------------


OPEN: set[asyncio.WriteTransport] = set()


class RawStream(asyncio.Protocol):
    """One connection: its request head read, then only written to."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.WriteTransport = transport  # type: ignore[assignment]
        self.head = b""

    def data_received(self, data: bytes) -> None:
        if self.transport in OPEN:
            return
        self.head += data
        if b"\r\n\r\n" not in self.head:
            return
        if self.head.startswith(b"GET /healthz"):
            self.transport.write(HEALTHY)
            self.transport.close()
        else:
            self.transport.write(HEAD)
            OPEN.add(self.transport)

    def connection_lost(self, exc: Exception | None) -> None:
        OPEN.discard(self.transport)


def chunk(frame: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(frame), frame)


async def serve_raw(sock: socket.socket, upstream: str) -> None:
    def deliver(frame: bytes) -> None:
        data = chunk(frame)
        for transport in OPEN:
            transport.write(data)

    server = await asyncio.get_running_loop().create_server(RawStream, sock=sock)
    async with server:
        await read_upstream(upstream, deliver)


# -- bare uvicorn -------------------------------------------------------------------

Send = Callable[[dict[str, Any]], Awaitable[None]]
Receive = Callable[[], Awaitable[dict[str, Any]]]


class Frames:
    """The frames as a chain of futures, so a stream that fell behind misses none."""

    def __init__(self) -> None:
        self.next: asyncio.Future[tuple[bytes, Any]] = asyncio.Future()

    def deliver(self, frame: bytes) -> None:
        last, self.next = self.next, asyncio.Future()
        last.set_result((frame, self.next))


def bare_app(upstream: str) -> Callable[[dict[str, Any], Receive, Send], Awaitable[None]]:
    frames: Frames | None = None

    async def app(scope: dict[str, Any], receive: Receive, send: Send) -> None:
        nonlocal frames
        if scope["type"] == "lifespan":
            await receive()
            frames = Frames()
            reader = asyncio.create_task(read_upstream(upstream, frames.deliver))
            await send({"type": "lifespan.startup.complete"})
            await receive()
            reader.cancel()
            await send({"type": "lifespan.shutdown.complete"})
            return
        if scope["path"] == "/healthz":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"ok"})
            return
        assert frames is not None
        headers = [(b"content-type", b"text/event-stream; charset=utf-8")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        node = frames.next
        while True:
            frame, node = await node
            await send({"type": "http.response.body", "body": frame, "more_body": True})

    return app


def serve_uvicorn(sock: socket.socket, upstream: str) -> None:
    config = uvicorn.Config(
        bare_app(upstream), loop="uvloop", http="httptools", log_level="warning"
    )
    uvicorn.Server(config).run(sockets=[sock])


# -- processes ----------------------------------------------------------------------


def run(kind: str, sock: socket.socket, upstream: str) -> None:
    if kind == "raw":
        uvloop.run(serve_raw(sock, upstream))
    else:
        serve_uvicorn(sock, upstream)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("kind", choices=("raw", "uvicorn"))
    parser.add_argument("command", choices=("serve",))
    parser.add_argument("--upstream", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workers", type=int, default=1)
    args, _ = parser.parse_known_args()
    sock = socket.create_server(("127.0.0.1", args.port), backlog=4096)
    children = []
    for _ in range(args.workers):
        pid = os.fork()
        if pid == 0:
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            run(args.kind, sock, args.upstream)
            os._exit(0)
        children.append(pid)

    def stop(*_: object) -> None:
        for pid in children:
            os.kill(pid, signal.SIGKILL)
        sys.exit(0)

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    for pid in children:
        os.waitpid(pid, 0)


if __name__ == "__main__":
    main()
