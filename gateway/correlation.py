"""Correlation ids: one per request, echoed, forwarded upstream, written in its log lines.

A client may send ``x-correlation-id`` (as Kumiho's hosted API clients do);
the gateway makes one up otherwise. ``Correlation`` is a pure ASGI layer: it
holds the id in a context variable for everything the request runs (the
route, its upstream calls, its stream) and adds it to the response headers.
Work that outlives a request and serves many (a hub channel's upstream
stream) runs in a fresh context, so it never carries one client's id.
"""

from __future__ import annotations

import contextlib
import contextvars
import uuid
from collections.abc import Iterator

from starlette.types import ASGIApp, Message, Receive, Scope, Send

HEADER = "x-correlation-id"
MAX_LENGTH = 128
_current: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "correlation_id", default=None
)


def current() -> str | None:
    """The id of the request being served, or None outside one."""
    return _current.get()


def adopt(cid: str | None) -> None:
    """Run the rest of this task as request ``cid``'s: a stream is written after
    ``Correlation`` has returned (``response.py``), in the request's own task."""
    _current.set(cid)


@contextlib.contextmanager
def as_request(cid: str | None) -> Iterator[None]:
    """Run a block as request ``cid``'s: shared work (the hub's feed, the ticker)
    acting for one stream, so its log lines name that stream and no other."""
    token = _current.set(cid)
    try:
        yield
    finally:
        _current.reset(token)


def new_id() -> str:
    return uuid.uuid4().hex


@contextlib.contextmanager
def for_call() -> Iterator[str]:
    """The id an upstream call carries: the request's, or a fresh one outside any request.

    A fresh one (a hub stream's resubscribe) is current while the call starts,
    so what the call starts with it (its trace span) names the same id.
    """
    cid = _current.get()
    if cid is not None:
        yield cid
        return
    cid = new_id()
    token = _current.set(cid)
    try:
        yield cid
    finally:
        _current.reset(token)


def problem(value: str) -> str | None:
    """Why a client's id cannot be used (it goes into headers and logs), or None."""
    if len(value) > MAX_LENGTH:
        return f"is {len(value)} characters long; the limit is {MAX_LENGTH}"
    if not value or not all("!" <= c <= "~" for c in value):
        return "must be visible ASCII characters (no spaces or control characters)"
    return None


class Correlation:
    """The outermost ASGI layer: sets the request's id and echoes it in the response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = next((v for k, v in scope["headers"] if k == HEADER.encode()), None)
        text = given.decode("latin-1") if given is not None else None
        wrong = problem(text) if text is not None else None
        cid = new_id() if text is None or wrong else text
        token = _current.set(cid)
        header = (HEADER.encode(), cid.encode())

        async def echoed(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), header]
            await send(message)

        try:
            if wrong:
                await _refuse(f"{HEADER}: {wrong}", scope, receive, echoed)
            else:
                await self.app(scope, receive, echoed)
        finally:
            _current.reset(token)


async def _refuse(message: str, scope: Scope, receive: Receive, send: Send) -> None:
    """A 400 in the gateway's envelope, before any route runs."""
    # errors.py reads current(): imported late
    from gateway.errors import GatewayError, error_response

    await error_response(GatewayError(400, "invalid_parameter", message))(scope, receive, send)
