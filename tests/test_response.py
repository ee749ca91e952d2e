"""The stream's response (``response.py``) driven by plain ASGI calls, without a server.

A scripted source feeds a real Pump; what is checked is where the bytes go:
the headers through the app, the body through ``StreamHandoff`` once the app
has returned, and a stream cut short when a middleware completed it first.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway._proto import kumiho_pb2
from gateway.items import Sink
from gateway.response import EventStreamResponse, StreamHandoff, disconnected
from tests.conftest import make_pump

DEADLINE = 10.0
SCOPE: Scope = {
    "type": "http",
    "asgi": {"version": "3.0"},
    "http_version": "1.1",
    "method": "GET",
    "scheme": "http",
    "path": "/events",
    "raw_path": b"/events",
    "root_path": "",
    "query_string": b"",
    "headers": [],
    "client": ("127.0.0.1", 50000),
    "server": ("127.0.0.1", 8000),
}


class _Script:
    """A source that pushes its events, then ends, or with ``stay`` waits to be closed."""

    def __init__(self, count: int, stay: bool = False) -> None:
        self.events = [
            kumiho_pb2.Event(routing_key="revision.created", cursor=f"1-{n}") for n in range(count)
        ]
        self.stay = stay
        self.closed = False
        self._closing: asyncio.Future[None] | None = None

    async def open(self) -> None:
        pass

    async def run(self, sink: Sink) -> None:
        for event in self.events:
            sink.put(event)
        if self.stay:
            self._closing = asyncio.get_running_loop().create_future()
            await self._closing

    def close(self) -> None:
        self.closed = True
        if self._closing is not None and not self._closing.done():
            self._closing.set_result(None)


def _never_leaves() -> Receive:
    async def receive() -> Message:
        await asyncio.get_running_loop().create_future()  # the watcher is cancelled at the end
        raise AssertionError("unreachable")

    return receive


def _run(scenario: Any) -> None:
    asyncio.run(asyncio.wait_for(scenario, DEADLINE))


def test_a_response_not_behind_the_handoff_streams_the_pump_itself() -> None:
    source = _Script(2)
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    _run(EventStreamResponse(make_pump(source))(SCOPE, _never_leaves(), send))
    start, *bodies = sent
    assert start["type"] == "http.response.start" and start["status"] == 200
    headers = dict(start["headers"])
    assert headers[b"content-type"] == b"text/event-stream; charset=utf-8"
    assert headers[b"cache-control"] == b"no-store"
    assert headers[b"x-accel-buffering"] == b"no"
    assert b"content-length" not in headers  # so the server sends it chunked
    body = b"".join(m["body"] for m in bodies)
    assert body.startswith(b"retry: ")
    assert b"id: 1-0\n" in body and b"id: 1-1\n" in body
    assert bodies[-1] == {"type": "http.response.body", "body": b"", "more_body": False}
    assert all(m["more_body"] for m in bodies[:-1])
    assert source.closed


def test_the_handoff_writes_the_body_after_routing_and_middleware_have_returned() -> None:
    source = _Script(3)
    returned = False
    through_app: list[str] = []
    outside: list[tuple[str, bool]] = []  # each message, and whether the app had returned

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        nonlocal returned

        async def middleware_send(message: Message) -> None:  # what a middleware would see
            through_app.append(message["type"])
            await send(message)

        await EventStreamResponse(make_pump(source))(scope, receive, middleware_send)
        returned = True

    async def send(message: Message) -> None:
        outside.append((message["type"], returned))

    _run(StreamHandoff(app)(SCOPE, _never_leaves(), send))
    assert through_app == ["http.response.start"]
    assert outside[0] == ("http.response.start", False)
    bodies = outside[1:]
    assert bodies and all(kind == "http.response.body" and after for kind, after in bodies)


def test_a_stream_that_an_http_middleware_completed_is_abandoned_and_says_why(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """BaseHTTPMiddleware ends the response when the endpoint returns: no stream then."""
    source = _Script(1, stay=True)

    async def endpoint(_: Request) -> Response:
        return EventStreamResponse(make_pump(source))

    async def passthrough(request: Request, call_next: RequestResponseEndpoint) -> Response:
        return await call_next(request)

    app: ASGIApp = Starlette(
        routes=[Route("/events", endpoint)],
        middleware=[Middleware(BaseHTTPMiddleware, dispatch=passthrough)],
    )
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    with caplog.at_level(logging.ERROR, logger="gateway.response"):
        _run(StreamHandoff(app)(SCOPE, receive, send))
    assert "only pure ASGI middleware may wrap the gateway" in caplog.text
    assert source.closed  # its upstream stream is not left running
    assert b"".join(m.get("body", b"") for m in sent) == b""


def test_the_client_leaving_ends_the_stream_and_closes_its_source() -> None:
    source = _Script(1, stay=True)
    sent: list[Message] = []
    leave: asyncio.Future[None] | None = None

    async def receive() -> Message:
        nonlocal leave
        leave = asyncio.get_running_loop().create_future()
        await leave
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(message)
        if b"id: 1-0" in message.get("body", b"") and leave is not None:
            leave.set_result(None)  # the client hangs up once it has the event

    _run(EventStreamResponse(make_pump(source))(SCOPE, receive, send))
    assert source.closed
    assert sent[-1] == {"type": "http.response.body", "body": b"", "more_body": False}


def test_disconnected_returns_only_when_the_client_has_gone() -> None:
    messages = [
        {"type": "http.request", "body": b"", "more_body": True},
        {"type": "http.request", "body": b"", "more_body": False},
        {"type": "http.disconnect"},
    ]
    taken: list[str] = []

    async def receive() -> Message:
        message = messages.pop(0)
        taken.append(message["type"])
        return message

    _run(disconnected(receive))
    assert taken == ["http.request", "http.request", "http.disconnect"]


def test_the_handoff_passes_other_scopes_through() -> None:
    seen: list[str] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(scope["type"])
        assert "gateway.handoff" not in scope

    async def receive() -> Message:
        return {"type": "lifespan.startup"}

    async def send(_: Message) -> None:
        pass

    _run(StreamHandoff(app)({"type": "lifespan"}, receive, send))
    assert seen == ["lifespan"]
