"""A stream's connection: what the pump may write to it without going through ASGI.

One event fanned out to thousands of streams is thousands of writes. Through
ASGI each one wakes the stream's task, which climbs its chain of coroutines
to reach the server's ``send``; that was most of the gateway's cost per
delivery (BENCHMARKS.md, "Against the floors"). The gateway's own server
protocol (``server.py``) therefore offers each request's connection in the
scope, under ``scope["extensions"][EXTENSION]``: while the response streams,
the pump writes a frame straight to the transport when nothing is queued
ahead of it and the transport is not paused, and the client's leaving is
told by a callback, without a task waiting on ``receive()``.

Everything else keeps the ASGI path: the head (through the middleware), a
client that is behind (its frames gather in the pump and go out through
``send``, which waits for the transport to drain), the end of the body, and
any server other than the gateway's own (the in-process test client).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from starlette.types import Scope

EXTENSION = "gateway.connection"


class Connection(Protocol):
    """One request's HTTP/1.1 connection, as its streaming response sees it."""

    def streaming(self) -> bool:
        """The head is sent, the body is chunked and not ended, the client is there:
        ``write`` may add to the body, and ``on_lost`` will be told when the client goes."""
        ...

    def write(self, data: bytes) -> bool:
        """``data`` as the body's next chunk, straight to the transport; False (and
        nothing written) when the client has gone or the transport is paused."""
        ...

    def blocked(self) -> bool:
        """The client takes no more for now: the transport holds what it could not send."""
        ...

    def on_lost(self, callback: Callable[[], None] | None) -> None:
        """Call ``callback`` once when the connection is lost (None: stop)."""
        ...


def of(scope: Scope) -> Connection | None:
    """The request's connection, if the server offers it."""
    extensions = scope.get("extensions")
    return extensions.get(EXTENSION) if extensions else None
