"""The /events response: headers through the app, the body straight to the server.

FastAPI routes the request, validates it and answers errors as usual; the
endpoint returns an ``EventStreamResponse``. Calling that response sends the
headers through the middleware (CORS adds its own there) and then hands the
body over to ``StreamHandoff``, the outermost ASGI layer, which writes it with
the server's own ``send`` once routing and middleware have returned.

Why: a stream lives for hours and every event is one write. Written from
inside the middleware stack, each write passes through every layer's ``send``
wrapper and each stream keeps every layer's frame alive; at a thousand
clients that was half the CPU per delivery and more than half the memory
per stream (BENCHMARKS.md). On the gateway's own server the body skips even
the server's ``send``: the pump takes the connection and writes to it, and
the request's task returns (``connection.py``); heartbeats and stalled
writes are watched by one shared timer (``ticker.py``).

The limit: only pure ASGI middleware (such as Starlette's CORSMiddleware) may
wrap the app. ``BaseHTTPMiddleware`` (and so ``@app.middleware("http")``)
completes the response itself once the endpoint returns, which would leave
/events an empty 200; ``StreamHandoff`` then refuses to stream and logs why.

A compressed stream (``compression.py``) goes the same way, each chunk
through its connection's compressor on the way to ``send``.
"""

from __future__ import annotations

import asyncio
import logging

from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway import connection, correlation, sse
from gateway.compression import IDENTITY, Encoding
from gateway.pump import Pump

log = logging.getLogger("gateway.response")

HEADERS = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
_HANDOFF = "gateway.handoff"  # the scope key StreamHandoff puts its list under
_RAW_HEADERS = [(name.lower().encode(), value.encode()) for name, value in HEADERS.items()]


class EventStreamResponse(Response):
    """A 200 stream (``text/event-stream``, or the pump's other format) of a pump's frames."""

    media_type = sse.MEDIA_TYPE  # for the OpenAPI page

    def __init__(self, pump: Pump, encoding: Encoding = IDENTITY) -> None:
        # No Response.__init__: without a body no Content-Length is set, so the
        # server sends the stream chunked.
        self.status_code = 200
        self.background = None
        self._pump = pump
        self._compressor = encoding.stream()
        self._connection: connection.Connection | None = None
        self._correlation_id: str | None = None
        # The tuples are shared, the list is not.
        self.raw_headers = [(b"content-type", pump.media_type.encode()), *_RAW_HEADERS]
        self.raw_headers += [(k.lower().encode(), v.encode()) for k, v in encoding.headers.items()]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
        self._connection = connection.of(scope)
        self._correlation_id = correlation.current()
        handoff = scope.get(_HANDOFF)
        if handoff is None:
            await self.stream(receive, send)  # not behind StreamHandoff: stream from here
        else:
            handoff.append(self)

    def abandon(self) -> None:
        """The body can never be written: stop the pump's source."""
        self._pump.close()

    async def stream(self, receive: Receive, send: Send) -> None:
        """Write the pump's frames until the stream ends or the client leaves.

        On the gateway's own server the pump takes the connection and this
        returns at once (``connection.py``); a compressed stream's bytes are
        its own, so it stays on ASGI's ``send``, as does any other server.
        """
        correlation.adopt(self._correlation_id)  # for its log lines and upstream calls
        pump, compressor, conn = self._pump, self._compressor, self._connection
        if compressor is None and conn is not None and conn.streaming():
            pump.start(conn)
            return
        watcher = asyncio.ensure_future(_until_disconnect(receive, pump))
        frames = pump.frames()
        try:
            async for chunk in frames:  # the last chunk, b"", ends the body
                body = chunk if compressor is None else compressor.write(chunk)
                await send({"type": "http.response.body", "body": body, "more_body": bool(chunk)})
        except asyncio.CancelledError:
            if not pump.stalled:
                raise
            # The pump dropped a client whose write blocked for send_timeout:
            # returning with the response incomplete makes the server close it
            # (and the kernel aborts it if it still does not read: server.py).
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
        finally:
            watcher.cancel()
            await frames.aclose()


async def disconnected(receive: Receive) -> None:
    """Returns when the client has gone."""
    while (await receive())["type"] != "http.disconnect":
        pass  # a GET's (empty) request body


async def _until_disconnect(receive: Receive, pump: Pump) -> None:
    await disconnected(receive)
    pump.close()


class StreamHandoff:
    """The outermost ASGI layer: runs the event stream an endpoint handed over."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        handoff: list[EventStreamResponse] = []
        completed = False

        async def watched(message: Message) -> None:
            nonlocal completed
            if message["type"] == "http.response.body" and not message.get("more_body"):
                completed = True
            await send(message)

        # The app gets a copy of the scope: what routing and middleware leave in
        # it (exit stacks, the route, ...) goes when they return, not hours later.
        await self.app({**scope, _HANDOFF: handoff}, receive, watched)
        del watched  # not kept for the hours a stream lasts
        if handoff and completed:
            log.error(
                "an HTTP middleware completed the /events response before its stream began: "
                "only pure ASGI middleware may wrap the gateway, not BaseHTTPMiddleware "
                "or @app.middleware('http') (see gateway/response.py)"
            )
            handoff[0].abandon()
        elif handoff:
            await handoff.pop().stream(receive, send)
