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

Compressed streams and any server other than the gateway's own (the
in-process test client) keep the ASGI path whole.
"""

from __future__ import annotations

from typing import Protocol

from starlette.types import Scope

EXTENSION = "gateway.connection"


class Owner(Protocol):
    """What owns a connection's body: told of the client's leaving and of room to write."""

    def lost(self) -> None:
        """The client has gone: nothing more can be written."""

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

    def blocked(self) -> bool:
        """The client takes no more for now: the transport holds what it could not send."""
        ...

    def finish(self) -> None:
        """End the body and give the connection back to the server (or close it)."""

    def abort(self) -> None:
        """Close the connection without ending the body (a client that stopped reading)."""


def of(scope: Scope) -> Connection | None:
    """The request's connection, if the server offers it."""
    extensions = scope.get("extensions")
    return extensions.get(EXTENSION) if extensions else None
