"""The gateway with sse-starlette's full EventSourceResponse answering /events.

Why this exists: the gateway uses sse-starlette only to encode frames
(``gateway/sse.py``) and streams them with its own lean response
(``gateway/response.py``). ``bench/fanout.py --response`` measures what that
choice saves by running this variant side by side with the product; the
product code stays as it ships, this module patches it at start-up.

    python bench/sse_starlette_gateway.py serve [the flags of `python -m gateway serve`]

The body is the same ``Pump.frames()``; EventSourceResponse adds what it always
adds (a task group per stream with its ping, shutdown and disconnect tasks,
and a timeout scope around every send) and, being a plain Starlette response,
streams from inside the middleware stack rather than through ``StreamHandoff``.
Configured as the lean response behaves: the same headers, pings every
``heartbeat``, sends bounded by ``send_timeout``, ``\\n`` line ends. The pump's
own heartbeat stays too (a quiet stream gets both; the benchmark never idles).
Single process only: ``--workers`` spawns fresh interpreters without the patch.
"""

from __future__ import annotations

import sys
from typing import Any

from sse_starlette import EventSourceResponse
from starlette.types import ASGIApp

import gateway.routes.stream
import gateway.server
from gateway.app import create_app as _create_app
from gateway.cli import main
from gateway.compression import IDENTITY, Encoding
from gateway.pump import Pump
from gateway.response import HEADERS
from gateway.settings import Settings


def create_app(settings: Settings, *args: Any, **kwargs: Any) -> ASGIApp:
    """``gateway.app.create_app`` whose /events answers an EventSourceResponse.

    The rest of what ``server.serve`` passes goes through as it is, so a new
    argument of the product's factory cannot break this variant's start again.
    """

    def event_source_response(pump: Pump, encoding: Encoding = IDENTITY) -> EventSourceResponse:
        if encoding.gzip:  # EventSourceResponse has no compressor to flush after each frame
            raise RuntimeError("the sse-starlette variant runs without --compression")
        return EventSourceResponse(
            pump.frames(),
            headers=HEADERS,
            media_type="text/event-stream",  # Starlette appends "; charset=utf-8"
            ping=settings.heartbeat,
            sep="\n",
            send_timeout=settings.send_timeout,
        )

    # The route looks EventStreamResponse up in its module when it answers.
    gateway.routes.stream.EventStreamResponse = event_source_response  # type: ignore[attr-defined,assignment]
    return _create_app(settings, *args, **kwargs)


if __name__ == "__main__":
    # What server.serve builds its app with (under its own name, so patched there).
    gateway.server.create_app = create_app  # type: ignore[attr-defined]
    sys.exit(main())
