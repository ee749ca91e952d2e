"""What the gateway's trace spans carry, and what they never carry.

Imported only when tracing is on (``tracing.py``): it needs the ``otel`` extra.

- ``GatewaySpans``, the one door between every span and the exporters: each
  span starts with the request's correlation id (``correlation.py``), and
  leaves without a credential. Whatever an instrumentation recorded, each
  string is scrubbed as log lines are (``access_token=***``, ``Bearer ***``:
  ``logs.redact``), a captured credential header (``Authorization``,
  ``Cookie``, ``X-Kumiho-Token``) becomes ``***``, and nothing the upstream
  said about a failed call passes: a gRPC span's error is its status name,
  and every exception event keeps its type only (the scrubbed log line, under
  the same correlation id, has the rest). The upstream's details may quote
  the token sent with the call, and no pattern finds a bare token.
- ``StreamCallSpans``, the span of each server-streaming upstream call (the
  EventStream), ended when the call ends, however it ends. The grpc
  instrumentation's own interceptor ends a stream's span only when its reader
  runs to the end of a generator wrapped around the call, so the span of a
  stream refused at its opening (judged by its status, never read) or closed
  before its first event would never end, and every event would pass one
  more async generator (README "Tracing").
- ``scrub_url``: the URL a server span names, rebuilt from the raw query, as
  the app and the log read it (the instrumentation decodes it first, after
  which an escaped ``&`` inside a token would end the token early).
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import grpc
from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.propagators.textmap import Setter
from opentelemetry.sdk.trace import Event, ReadableSpan, Span, SpanProcessor
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.util.types import AttributeValue

from gateway import correlation
from gateway.auth import TOKEN_HEADER
from gateway.logs import redact

# The attribute every span of a request carries: its x-correlation-id.
CORRELATION_ID = "kumiho.correlation_id"
# Captured request headers that hold credentials (OTEL_INSTRUMENTATION_HTTP_
# CAPTURE_HEADERS_SERVER_REQUEST may name them), as the ASGI instrumentation
# names their attributes.
_CREDENTIAL_HEADERS = frozenset(
    "http.request.header." + name.replace("-", "_")
    for name in ("authorization", "proxy-authorization", "cookie", TOKEN_HEADER)
)
_MASK = "***"
# Attributes of a span that name the URL with its query (old and new conventions).
_URL_ATTRIBUTES = ("http.url", "url.full")
_RPC_STATUS = "rpc.grpc.status_code"  # the grpc instrumentation's names, kept for ours
_RPC_ATTRIBUTES = {"rpc.system": "grpc"}


class GatewaySpans(SpanProcessor):
    """In front of the exporters' processors: correlation ids in, credentials out."""

    def __init__(self, exporting: Sequence[SpanProcessor]) -> None:
        self._exporting = list(exporting)

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        cid = correlation.current()
        if cid is not None:
            span.set_attribute(CORRELATION_ID, cid)
        for processor in self._exporting:
            processor.on_start(span, parent_context)

    def on_end(self, span: ReadableSpan) -> None:
        clean = scrubbed(span)
        for processor in self._exporting:
            processor.on_end(clean)

    def shutdown(self) -> None:
        for processor in self._exporting:
            processor.shutdown()

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return all([p.force_flush(timeout_millis) for p in self._exporting])


def scrubbed(span: ReadableSpan) -> ReadableSpan:
    """``span`` as it may leave the gateway (see the module's docstring)."""
    attributes = span.attributes or {}
    rpc = attributes.get("rpc.system") == "grpc"
    status, description = span.status, span.status.description
    if description:
        if rpc:  # the upstream's details: its status name instead
            code = attributes.get(_RPC_STATUS)
            name = _CODE_NAMES.get(code, "error") if isinstance(code, int) else "error"
            status = Status(status.status_code, name)
        else:  # "Type: message": the exception's type
            status = Status(status.status_code, redact(description.split(":", 1)[0]))
    return ReadableSpan(
        name=redact(span.name),
        context=span.context,
        parent=span.parent,
        resource=span.resource,
        attributes={key: _attribute(key, value) for key, value in attributes.items()},
        events=[_event(event) for event in span.events],
        links=span.links,
        kind=span.kind,
        status=status,
        start_time=span.start_time,
        end_time=span.end_time,
        instrumentation_scope=span.instrumentation_scope,
    )


_CODE_NAMES = {code.value[0]: code.name for code in grpc.StatusCode}


def _attribute(key: str, value: AttributeValue) -> AttributeValue:
    if key in _CREDENTIAL_HEADERS:
        return (_MASK,)
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, tuple) and all(isinstance(v, str) for v in value):
        return tuple(redact(v) for v in value)
    return value


def _event(event: Event) -> Event:
    attributes = dict(event.attributes or {})
    if event.name == "exception":
        attributes.pop("exception.message", None)
        attributes.pop("exception.stacktrace", None)
    return Event(
        redact(event.name),
        {key: _attribute(key, value) for key, value in attributes.items()},
        event.timestamp,
    )


def scrub_url(span: trace.Span, scope: Mapping[str, Any]) -> None:
    """A server span's URL with the query as sent (``GatewaySpans`` masks its credentials)."""
    if not isinstance(span, Span) or not span.is_recording():
        return
    query = scope.get("query_string", b"").decode("latin-1")
    for key in _URL_ATTRIBUTES:
        url = (span.attributes or {}).get(key)
        if isinstance(url, str):
            base = url.split("?", 1)[0]
            span.set_attribute(key, f"{base}?{query}" if query else base)


_StreamCall = grpc.aio.UnaryStreamCall[Any, Any]
_Continuation = Callable[[grpc.aio.ClientCallDetails, Any], Awaitable[_StreamCall]]


class StreamCallSpans(grpc.aio.UnaryStreamClientInterceptor):  # type: ignore[type-arg]
    """A CLIENT span for each server-streaming call, and its trace context in the metadata.

    Named and attributed as the grpc instrumentation names its own spans
    (the method, ``rpc.system``, ``rpc.service``, ``rpc.method``,
    ``rpc.grpc.status_code``); ended from the call's done callback. A call the
    gateway cancels (its client left) is CANCELLED, which is not an error.
    """

    def __init__(self, tracer: trace.Tracer) -> None:
        self._tracer = tracer

    async def intercept_unary_stream(  # type: ignore[override]
        self, continuation: _Continuation, details: grpc.aio.ClientCallDetails, request: Any
    ) -> _StreamCall:
        method = details.method.decode() if isinstance(details.method, bytes) else details.method
        service, _, name = method.lstrip("/").partition("/")
        span = self._tracer.start_span(
            method,
            kind=SpanKind.CLIENT,
            attributes={**_RPC_ATTRIBUTES, "rpc.service": service, "rpc.method": name},
        )
        metadata = grpc.aio.Metadata(*(details.metadata or ()))
        propagate.inject(metadata, context=trace.set_span_in_context(span), setter=_SETTER)
        details = grpc.aio.ClientCallDetails(
            details.method, details.timeout, metadata, details.credentials, details.wait_for_ready
        )
        try:
            call = await continuation(details, request)
        except BaseException:
            span.set_status(Status(StatusCode.ERROR, "error"))
            span.end()
            raise
        call.add_done_callback(functools.partial(_ended, span))
        return call


def _ended(span: trace.Span, call: grpc.aio.Call) -> None:
    # The status of a done call is there, but only to an await.
    task = asyncio.ensure_future(_end(span, call))
    _ending.add(task)
    task.add_done_callback(_ending.discard)


_ending: set[asyncio.Future[None]] = set()  # held until they run: the loop keeps weak references


async def _end(span: trace.Span, call: grpc.aio.Call) -> None:
    try:
        code = await call.code()
        span.set_attribute(_RPC_STATUS, code.value[0])
        if code not in (grpc.StatusCode.OK, grpc.StatusCode.CANCELLED):
            span.set_status(Status(StatusCode.ERROR, code.name))
    finally:
        span.end()


class _MetadataSetter(Setter[grpc.aio.Metadata]):
    """Writes the trace context (``traceparent``) into a call's metadata."""

    def set(self, carrier: grpc.aio.Metadata, key: str, value: str) -> None:
        carrier[key] = value


_SETTER = _MetadataSetter()
