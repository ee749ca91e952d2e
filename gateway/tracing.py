"""OpenTelemetry traces: on only when the standard ``OTEL_*`` variables ask for them.

Off (none of them set, ``OTEL_SDK_DISABLED=true``, ``OTEL_TRACES_EXPORTER=none``)
the gateway imports nothing of OpenTelemetry: no middleware, no interceptor.
Asked for without the ``otel`` extra installed, it stays off, and the command
says so in one warning. On, ``Tracing`` wires the standard instrumentations
into one app:

- FastAPI's (``FastAPIInstrumentor.instrument_app``), inside FastAPI's own
  stack: a SERVER span per request, from routing to its answer's headers. A
  stream's body is written by ``StreamHandoff`` outside that stack
  (``response.py``), so the span of a stream covers its opening (credential,
  upstream call, headers), not its hours of events, and no event write passes
  a tracing wrapper.
- the grpc instrumentation's aio client interceptor for unary calls
  (GetEventCapabilities) and ``spans.StreamCallSpans`` for EventStream: a
  CLIENT span per upstream call, whose trace context goes in the call's
  metadata, so a client's ``traceparent`` continues upstream.

Every span passes ``spans.GatewaySpans`` on its way out (correlation id in,
credentials out). The SDK reads every other ``OTEL_*`` variable itself:
resource, sampler, batching, the OTLP endpoint, protocol and headers.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any

from gateway import __version__
from gateway.settings import trace_exporters

if TYPE_CHECKING:
    from fastapi import FastAPI
    from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter

log = logging.getLogger("gateway.tracing")

SERVICE_NAME = "kumiho-sse-gateway"  # unless OTEL_SERVICE_NAME (or the resource) names one
_EXPORTERS = "opentelemetry_traces_exporter"  # the SDK's entry-point group for exporters
SHUTDOWN_TIMEOUT = 1.0  # seconds to send the last spans at exit


class TracingError(Exception):
    """The ``OTEL_*`` variables ask for something that cannot be: one line says what."""


class Tracing:
    """One process's tracing: its provider, and the instrumentation of an app and its upstream."""

    def __init__(self, processors: Sequence[SpanProcessor]) -> None:
        from opentelemetry.sdk.trace import TracerProvider

        from gateway.spans import GatewaySpans

        # Not the global provider, and shut down by the server, not atexit
        # (a pool's workers exit without running atexit).
        self.provider: TracerProvider = TracerProvider(resource=_resource(), shutdown_on_exit=False)
        self.provider.add_span_processor(GatewaySpans(processors))

    @classmethod
    def exporting(cls, exporters: Sequence[SpanExporter]) -> Tracing:
        """Spans batched to each exporter (OTEL_BSP_* set the batches)."""
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        return cls([BatchSpanProcessor(exporter) for exporter in exporters])

    def instrument(self, app: FastAPI) -> None:
        """A SERVER span for each request ``app`` routes (never one per written event)."""
        from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
        from opentelemetry.metrics import NoOpMeterProvider

        from gateway.spans import scrub_url

        FastAPIInstrumentor.instrument_app(
            app,
            tracer_provider=self.provider,
            meter_provider=NoOpMeterProvider(),  # traces only: /metrics has the numbers
            exclude_spans=["receive", "send"],  # a span per request, not per message
            server_request_hook=scrub_url,
        )

    def interceptors(self) -> list[Any]:
        """The upstream channel's interceptors: a CLIENT span for each call."""
        import grpc
        from opentelemetry.instrumentation.grpc import aio_client_interceptors

        from gateway.spans import StreamCallSpans

        library = aio_client_interceptors(tracer_provider=self.provider)  # type: ignore[no-untyped-call]
        own = StreamCallSpans(self.provider.get_tracer("gateway.spans", __version__))
        # The library's for every kind of call but server streaming (see spans.py).
        return [
            *(i for i in library if not isinstance(i, grpc.aio.UnaryStreamClientInterceptor)),
            own,
        ]

    def shutdown(self, timeout: float = SHUTDOWN_TIMEOUT) -> None:
        """Send the spans still queued, waiting at most ``timeout`` seconds."""
        # A collector that does not answer must not hold the exit for the
        # exporter's own timeout (10 s for OTLP): the thread is left behind.
        sender = threading.Thread(target=self.provider.shutdown, name="otel-shutdown", daemon=True)
        sender.start()
        sender.join(timeout)


def from_environment() -> Tracing | None:
    """The process's tracing, as the ``OTEL_*`` variables ask; None when off.

    None too when the ``otel`` extra is missing (``check`` warns about it).
    TracingError when they name an exporter or protocol that is not there.
    """
    names = _exporter_names()
    if not names or not _installed():
        return None
    return Tracing.exporting([exporter() for exporter in _exporter_classes(names)])


def check() -> None:
    """Once, as a command starts: warn if traces are asked for without the extra;
    TracingError if they cannot be sent as asked. Builds nothing."""
    names = _exporter_names()
    if not names:
        return
    if not _installed():
        log.warning(
            "the OTEL_* environment asks for traces, but OpenTelemetry is not installed: "
            "tracing is off (pip install 'kumiho-sse-gateway[otel]')"
        )
        return
    _exporter_classes(names)


def _exporter_names() -> list[str]:
    try:
        return trace_exporters()
    except ValueError as exc:
        raise TracingError(str(exc)) from None


def _installed() -> bool:
    try:
        import opentelemetry.instrumentation.fastapi
        import opentelemetry.instrumentation.grpc
        import opentelemetry.sdk.trace  # noqa: F401
    except ImportError:
        return False
    return True


def _exporter_classes(names: Sequence[str]) -> list[type[SpanExporter]]:
    """The exporter classes the SDK's entry points name (``console``, ``otlp_proto_grpc``...)."""
    from opentelemetry.sdk.trace.export import SpanExporter

    classes = []
    for name in names:
        found = entry_points(group=_EXPORTERS, name=name)
        loaded = next(iter(found)).load() if found else None
        if not (isinstance(loaded, type) and issubclass(loaded, SpanExporter)):
            known = ", ".join(sorted({e.name for e in entry_points(group=_EXPORTERS)}))
            raise TracingError(
                f"OTEL_TRACES_EXPORTER: no trace exporter named {name!r} is installed "
                f"(installed: {known})"
            )
        classes.append(loaded)
    return classes


def _resource() -> Any:
    """The SDK's resource (OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES), named by default."""
    from opentelemetry.sdk.resources import SERVICE_NAME as NAME
    from opentelemetry.sdk.resources import SERVICE_VERSION, Resource

    attributes = dict(Resource.create().attributes)
    if str(attributes.get(NAME, "")).startswith("unknown_service"):
        attributes[NAME] = SERVICE_NAME
    attributes.setdefault(SERVICE_VERSION, __version__)
    return Resource(attributes)
