"""A stream's connection: the body of a stream's response, owned by its pump.

One event fanned out to thousands of streams is thousands of writes, and a
stream lives for hours. Through ASGI each write wakes the stream's task,
which climbs its chain of coroutines to reach the server's ``send``, and
every stream keeps that task and chain alive; that was most of the
gateway's cost per delivery and per stream (BENCHMARKS.md, "Against the
floors"). The gateway's own server protocol (``server.py``) therefore offers
each request's connection in the scope, under ``scope["extensions"][EXTENSION]``.
Once the head is sent through ASGI (and its middleware), the response hands
the body over (``take``) and its task returns: the pump writes frames to
the transport itself, from the hub's delivery, its timers and the
transport's own "writable again" signal, and the server tells it when the
client leaves. At the end it writes the last chunk and gives the connection
back (``finish``), which serves the next request on it as uvicorn would.
A hub group's lane (``lane.py``) writes shared frames straight to the
transport of each steady stream, framed as chunks here (``chunk``), while
its owner lets it.

Compressed streams and any server other than the gateway's own (the
in-process test client) keep the ASGI path whole.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

from starlette.types import Scope

EXTENSION = "gateway.connection"


class Owner(Protocol):
    """What owns a connection's body: told of the client's leaving and of room to write."""

    def lost(self) -> None:
        """The client has gone: nothing more can be written."""

    def paused(self) -> None:
        """The transport holds more than it should: nothing more is written until
        ``writable``."""

    def writable(self) -> None:
        """The transport took what it held: writes may go on."""


class Connection(Protocol):
    """One request's HTTP/1.1 connection, as its streaming response sees it."""

    def streaming(self) -> bool:
        """The head is sent, the body is chunked and not ended, the client is there:
        the body may be taken."""
        ...

    def take(self, owner: Owner) -> None:
        """The body is ``owner``'s from now: the server's ASGI cycle counts as done."""

    def write(self, data: bytes) -> bool:
        """``data`` as the body's next chunk, straight to the transport; False (and
        nothing written) when the client has gone or the transport is paused."""
        ...

    @property
    def transport(self) -> asyncio.WriteTransport:
        """The socket's transport, for writing whole chunks (``chunk``) straight to it
        while the owner lets a lane do so (no pause, nothing of its own waiting)."""
        ...

    def blocked(self) -> bool:
        """The client takes no more for now: the transport holds what it could not send."""
        ...

    def finish(self) -> None:
        """End the body and give the connection back to the server (or close it)."""

    def abort(self) -> None:
        """Close the connection without ending the body (a client that stopped reading)."""


# The frame last framed as a chunk: one event written to every stream is framed once.
_framed: tuple[bytes, bytes] = (b"", b"")


def chunk(data: bytes) -> bytes:
    """``data`` as one HTTP/1.1 chunk (as uvicorn's send frames it)."""
    global _framed
    if _framed[0] is not data:
        _framed = (data, b"%x\r\n%b\r\n" % (len(data), data))
    return _framed[1]


def of(scope: Scope) -> Connection | None:
    """The request's connection, if the server offers it."""
    extensions = scope.get("extensions")
    return extensions.get(EXTENSION) if extensions else None
