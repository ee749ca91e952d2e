"""Traces (``tracing.py``, ``spans.py``): on only when ``OTEL_*`` asks, and what spans carry.

In process: the app the server runs (``create_app``, tracing on) behind a real
uvicorn in a thread, its spans in the SDK's in-memory exporter, in front of a
real devserver process, read with httpx. End to end: ``python -m gateway
serve`` with ``OTEL_TRACES_EXPORTER=console``, its spans parsed from its
output, and the devserver telling which ``traceparent`` each EventStream call
brought. Both say the same: one SERVER span per stream open or poll, ended
when the stream's headers are out; a CLIENT span per upstream call, child of
it; the client's trace id all the way upstream; the correlation id on each;
no credential anywhere, however an operator sets the instrumentations.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import grpc
import httpx
import pytest
import uvicorn
from httpx_sse import ServerSentEvent, connect_sse
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, Status, StatusCode

from gateway import correlation, tracing
from gateway.app import build_app, create_app
from gateway.settings import TRACING_VARIABLES, Settings, trace_exporters
from gateway.spans import CORRELATION_ID, GatewaySpans
from tests.conftest import DevServer, Gateway, free_port, wait_until

ROOT = Path(__file__).resolve().parent.parent
EVENT_STREAM = "/kumiho.KumihoService/EventStream"
CAPABILITIES = "/kumiho.KumihoService/GetEventCapabilities"
DEADLINE = 20.0
MODES = pytest.mark.parametrize("hub", [True, False], ids=["hub", "no-hub"])


def new_traceparent() -> tuple[int, int, str]:
    """A client's trace id, its span id, and the W3C header carrying them."""
    trace_id, span_id = random.getrandbits(128) | 1, random.getrandbits(64) | 1
    return trace_id, span_id, f"00-{trace_id:032x}-{span_id:016x}-01"


class InProcess:
    """``create_app`` with tracing on, behind a real uvicorn in a thread, spans in memory."""

    def __init__(self, settings: Settings) -> None:
        self.exporter = InMemorySpanExporter()
        self.tracing = tracing.Tracing([SimpleSpanProcessor(self.exporter)])
        self.port = free_port()
        config = uvicorn.Config(
            create_app(settings, tracing=self.tracing),
            host="127.0.0.1",
            port=self.port,
            log_config=None,
            log_level="warning",
            loop="asyncio",
            timeout_graceful_shutdown=2,
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        wait_until(lambda: self.server.started, DEADLINE, "uvicorn to serve")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(DEADLINE)
        self.tracing.provider.shutdown()

    def spans(self) -> tuple[ReadableSpan, ...]:
        return self.exporter.get_finished_spans()

    def wait_span(self, wanted: Callable[[ReadableSpan], bool], what: str) -> ReadableSpan:
        """The first ended span ``wanted`` picks, once there is one."""
        wait_until(lambda: any(map(wanted, self.spans())), DEADLINE, what)
        return next(span for span in self.spans() if wanted(span))


@pytest.fixture
def in_process(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., InProcess]]:
    for name in ("OTEL_SERVICE_NAME", "OTEL_RESOURCE_ATTRIBUTES"):
        monkeypatch.delenv(name, raising=False)  # the resource's defaults, whatever the shell's
    started: list[InProcess] = []

    def make(upstream: str, **fields: Any) -> InProcess:
        fields = {"heartbeat": 0.5, "hub_linger": 0.2, "backoff_initial": 0.05, **fields}
        started.append(InProcess(Settings(upstream=upstream, **fields)))
        return started[-1]

    yield make
    for gateway in started:
        gateway.stop()


@dataclass
class Opened:
    """A stream read up to its first frame (the retry: line, written once it is open)."""

    correlation_id: str  # as the answer's header echoes it
    frames: Iterator[ServerSentEvent]  # the rest of the stream


@contextlib.contextmanager
def opened(url: str, path: str, headers: dict[str, str]) -> Iterator[Opened]:
    """A stream, open inside."""
    with (
        httpx.Client(timeout=DEADLINE) as client,
        connect_sse(client, "GET", url + path, headers=headers) as source,
    ):
        assert source.response.status_code == 200, source.response.read()
        cid = source.response.headers[correlation.HEADER]
        assert cid == headers.get(correlation.HEADER, cid)
        frames = iter(source.iter_sse())
        next(frames)
        yield Opened(cid, frames)


def in_trace(trace_id: int, name: str) -> Callable[[ReadableSpan], bool]:
    return lambda span: span.name == name and span.context.trace_id == trace_id


# -- in process: the in-memory exporter ----------------------------------------


@MODES
def test_a_stream_open_is_a_server_span_and_its_trace_continues_upstream(
    make_devserver: Callable[..., DevServer], in_process: Callable[..., InProcess], hub: bool
) -> None:
    devserver = make_devserver()
    gateway = in_process(devserver.address, hub=hub)
    trace_id, parent, header = new_traceparent()
    cid = f"trace-{uuid.uuid4().hex}"
    with opened(gateway.url, "/events", {"traceparent": header, correlation.HEADER: cid}):
        # Ended while the stream is open: the span covers the opening, not the body.
        server = gateway.wait_span(in_trace(trace_id, "GET /events"), "the stream's span")
        assert server.kind == SpanKind.SERVER
        assert server.parent is not None and server.parent.span_id == parent
        assert server.attributes is not None
        assert server.attributes[CORRELATION_ID] == cid
        assert server.attributes["http.status_code"] == 200
        assert server.resource.attributes["service.name"] == "kumiho-sse-gateway"
        caps = gateway.wait_span(in_trace(trace_id, CAPABILITIES), "GetEventCapabilities")
        assert caps.kind == SpanKind.CLIENT and caps.parent is not None
        assert caps.parent.span_id == server.context.span_id
        assert caps.attributes is not None and caps.attributes[CORRELATION_ID] == cid
        assert not any(s.name == EVENT_STREAM for s in gateway.spans()), "ended too soon"
    # The upstream call ends when the client leaves (with the hub, after the linger).
    stream = gateway.wait_span(in_trace(trace_id, EVENT_STREAM), "the EventStream span")
    assert stream.kind == SpanKind.CLIENT and stream.parent is not None
    assert stream.parent.span_id == server.context.span_id
    assert stream.attributes is not None
    assert stream.attributes[CORRELATION_ID] == cid
    assert stream.attributes["rpc.grpc.status_code"] == grpc.StatusCode.CANCELLED.value[0]
    assert stream.status.status_code == StatusCode.UNSET  # the gateway hung up: no error
    # The upstream received the client's trace, under the call's own span.
    stats = devserver.client().stats()
    sent = f"00-{trace_id:032x}-{stream.context.span_id:016x}-01"
    assert sent in stats.recent_traceparents
    assert stats.recent_correlation_ids[list(stats.recent_traceparents).index(sent)] == cid


@pytest.mark.parametrize(
    "path",
    ["/api/v1/events/stream", "/events/poll?timeout=0", "/api/v1/events/poll?timeout=0"],
)
def test_the_hosted_stream_and_both_polls_have_their_span(
    make_devserver: Callable[..., DevServer], in_process: Callable[..., InProcess], path: str
) -> None:
    devserver = make_devserver()
    gateway = in_process(devserver.address)
    trace_id, parent, header = new_traceparent()
    headers = {"traceparent": header}
    if "poll" in path:
        answer = httpx.get(gateway.url + path, headers=headers, timeout=DEADLINE)
        assert answer.status_code == 200, answer.text
        cid = answer.headers[correlation.HEADER]
    else:
        with opened(gateway.url, path, headers) as stream:
            cid = stream.correlation_id
    name = "GET " + path.split("?")[0]
    server = gateway.wait_span(in_trace(trace_id, name), name)
    assert server.parent is not None and server.parent.span_id == parent
    assert server.attributes is not None and server.attributes["http.route"] == path.split("?")[0]
    assert server.attributes[CORRELATION_ID] == cid
    stream = gateway.wait_span(in_trace(trace_id, EVENT_STREAM), "the poll's upstream call")
    assert stream.parent is not None and stream.parent.span_id == server.context.span_id


def test_a_resubscribe_outside_any_request_has_a_span_and_id_of_its_own(
    make_devserver: Callable[..., DevServer], in_process: Callable[..., InProcess]
) -> None:
    devserver = make_devserver()
    gateway = in_process(devserver.address, hub=True)
    trace_id, _, header = new_traceparent()
    cid = f"first-{uuid.uuid4().hex}"
    with (
        opened(gateway.url, "/events", {"traceparent": header, correlation.HEADER: cid}),
        devserver.client() as control,
    ):
        control.set_faults(break_after=1)
        control.publish("item.model.created", "kref://trace/a.model", count=2)
        # The shared stream broke at the second: the hub calls again, for everyone.
        broken = gateway.wait_span(in_trace(trace_id, EVENT_STREAM), "the broken call")
        assert broken.status.status_code == StatusCode.ERROR
        assert broken.status.description == "UNAVAILABLE"
        wait_until(lambda: control.stats().streams_started >= 2, DEADLINE, "a resubscribe")
        control.set_faults()
        ids = list(control.stats().recent_correlation_ids)
    again = gateway.wait_span(
        lambda s: s.name == EVENT_STREAM and s.context.trace_id != trace_id, "its span"
    )
    # The request's trace has the one call it started.
    assert [s.name for s in gateway.spans() if s.context.trace_id == trace_id].count(
        EVENT_STREAM
    ) == 1, [s.to_json() for s in gateway.spans()]
    assert again.parent is None  # no request's trace: it serves every client of the stream
    assert again.attributes is not None
    assert again.attributes[CORRELATION_ID] == ids[-1] != cid


# Credentials, each in pieces joined by characters a query or header may carry.
GOOD = "CANARY-good-a1b2.SIG-good-c3d4"
UNKNOWN = "CANARY-unknown-5e6f;TAIL-unknown-7a8b"
AMPERSAND = "CANARY-amp-9c0d&TAIL-amp-1e2f"  # sent escaped: %26 inside the value
SECRETS = (GOOD, UNKNOWN, AMPERSAND)


def pieces(secret: str) -> list[str]:
    """Every form of a secret that must not appear: its parts, whole, and escaped."""
    parts = [p for p in secret.replace(";", " ").replace("&", " ").split() if len(p) > 6]
    return [*parts, secret, quote(secret, safe="")]


def texts(span: ReadableSpan) -> list[str]:
    """Every string a span carries to an exporter."""
    out = [span.name, span.status.description or "", json.dumps(dict(span.resource.attributes))]
    for attributes in [span.attributes or {}, *(event.attributes or {} for event in span.events)]:
        for key, value in attributes.items():
            out += [key, *(map(str, value) if isinstance(value, tuple) else [str(value)])]
    out += [event.name for event in span.events]
    return out


@MODES
def test_no_span_carries_a_credential_however_the_instrumentations_are_set(
    make_devserver: Callable[..., DevServer],
    in_process: Callable[..., InProcess],
    monkeypatch: pytest.MonkeyPatch,
    hub: bool,
) -> None:
    # The unlucky operator: capture every request and response header.
    monkeypatch.setenv("OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_REQUEST", ".*")
    monkeypatch.setenv("OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_RESPONSE", ".*")
    devserver = make_devserver("--token", f"{GOOD}=studio-a")
    gateway = in_process(devserver.address, hub=hub, auth="passthrough")
    url = gateway.url
    for way in (
        {"params": {"access_token": GOOD}},
        {"headers": {"Authorization": f"Bearer {GOOD}"}},
        {"headers": {"X-Kumiho-Token": GOOD}},
        {"cookies": {"kumiho_token": GOOD}},
    ):
        with (
            httpx.Client(timeout=DEADLINE, cookies=way.get("cookies")) as client,
            connect_sse(
                client,
                "GET",
                url + "/events",
                params=way.get("params"),
                headers=way.get("headers", {}),
            ) as source,
        ):
            assert source.response.status_code == 200
            next(iter(source.iter_sse()))
    # Refused: the devserver quotes the token in its details, as careless servers do.
    refused = [
        httpx.get(f"{url}/events/poll?timeout=0&access_token={quote(UNKNOWN, safe=';')}"),
        httpx.get(f"{url}/events?access_token={quote(AMPERSAND, safe='')}", timeout=DEADLINE),
        httpx.get(f"{url}/capabilities", headers={"Authorization": f"Bearer {UNKNOWN}"}),
    ]
    assert [answer.status_code for answer in refused] == [401, 401, 401]
    wait_until(
        lambda: sum(s.kind == SpanKind.SERVER for s in gateway.spans()) == 7,
        DEADLINE,
        "a server span for each request",
    )
    if not hub:  # each stream's own upstream call ends as its client leaves
        wait_until(
            lambda: sum(s.name == EVENT_STREAM for s in gateway.spans()) >= 4,
            DEADLINE,
            "the streams' upstream spans",
        )
    spans = gateway.spans()
    for span in spans:
        for text in texts(span):
            for secret in SECRETS:
                for piece in pieces(secret):
                    assert piece not in text, f"{span.name} carries {piece!r}: {text!r}"
    # Masked, not missing: the headers were captured, their credentials replaced.
    captured = {key: value for s in spans for key, value in (s.attributes or {}).items()}
    for header in ("authorization", "x_kumiho_token", "cookie"):
        assert captured[f"http.request.header.{header}"] == ("***",), header
    assert any("access_token=***" in t for s in spans for t in texts(s))
    denied = [
        s for s in spans if s.name == CAPABILITIES and s.status.status_code == StatusCode.ERROR
    ]
    assert denied and all(s.status.description == "UNAUTHENTICATED" for s in denied)


ALPHABET = "".join(c for c in map(chr, range(33, 127)) if c not in "&\"'\\")


@settings(max_examples=60, deadline=None)
@given(secret=st.text(alphabet=ALPHABET, min_size=12, max_size=80).map(lambda s: "K9" + s))
def test_a_credential_leaves_no_span_wherever_an_instrumentation_put_it(secret: str) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(GatewaySpans([SimpleSpanProcessor(exporter)]))
    tracer = provider.get_tracer("test")
    with tracer.start_as_current_span("GET /events", kind=SpanKind.SERVER) as server:
        server.set_attribute("http.url", f"http://h/events?a=1&access_token={secret}&b=2")
        server.set_attribute("url.query", f"access_token={quote(secret)}")
        server.set_attribute("http.request.header.authorization", (f"Bearer {secret}",))
        server.set_attribute("http.request.header.x_kumiho_token", (secret,))
        server.set_attribute("http.request.header.cookie", (f"kumiho_token={secret}",))
        server.set_attribute("http.user_agent", f"curl Bearer {secret}")
        server.record_exception(ValueError(f"the token {secret} was refused"))
        server.set_status(Status(StatusCode.ERROR, f"ValueError: the token {secret}"))
        with tracer.start_as_current_span(EVENT_STREAM, kind=SpanKind.CLIENT) as call:
            call.set_attributes({"rpc.system": "grpc", "rpc.grpc.status_code": 16})
            call.record_exception(RuntimeError(f"details = invalid or revoked token {secret}"))
            call.set_status(Status(StatusCode.ERROR, f"invalid or revoked token {secret}"))
    spans = exporter.get_finished_spans()
    assert len(spans) == 2
    for span in spans:
        assert not any(secret in text for text in texts(span)), span.to_json()
    client, server_span = spans
    assert client.status.description == "UNAUTHENTICATED"
    assert server_span.status.description == "ValueError"
    assert [e.attributes for e in client.events] == [
        {"exception.type": "RuntimeError", "exception.escaped": "False"}
    ]
    assert server_span.attributes is not None
    assert server_span.attributes["http.url"] == "http://h/events?a=1&access_token=***&b=2"


# -- off: nothing of it ---------------------------------------------------------


def test_without_otel_variables_nothing_of_tracing_is_loaded_or_wired() -> None:
    code = """
import sys
from gateway import tracing
from gateway.app import build_app
from gateway.settings import Settings
assert tracing.from_environment() is None
tracing.check()
app = build_app(Settings(upstream="127.0.0.1:1"))
stack, seen = app.build_middleware_stack(), []
while stack is not None:
    seen.append(type(stack).__name__)
    stack = getattr(stack, "app", None)
assert "OpenTelemetryMiddleware" not in seen, seen
assert app.state.gateway.upstream._interceptors is None
heavy = ("opentelemetry.sdk", "opentelemetry.instrumentation", "opentelemetry.exporter")
loaded = [m for m in sys.modules if m.startswith((*heavy, "gateway.spans"))]
assert not loaded, loaded
print("off")
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    for extra in ({}, {"OTEL_SERVICE_NAME": "x", "OTEL_SDK_DISABLED": "true"}):
        done = subprocess.run(
            [sys.executable, "-c", code],
            env={**env, **extra},
            capture_output=True,
            text=True,
            timeout=60,
            cwd=ROOT,
        )
        assert done.stdout.strip() == "off", done.stderr


def test_with_tracing_the_app_and_its_channel_are_instrumented() -> None:
    traces = tracing.Tracing([SimpleSpanProcessor(InMemorySpanExporter())])
    app = build_app(Settings(upstream="127.0.0.1:1"), tracing=traces)
    stack, seen = app.build_middleware_stack(), []
    while stack is not None:
        seen.append(type(stack).__name__)
        stack = getattr(stack, "app", None)
    assert "OpenTelemetryMiddleware" in seen
    kinds = {type(i).__name__ for i in app.state.gateway.upstream._interceptors}
    assert {"UnaryUnaryAioClientInterceptor", "StreamCallSpans"} <= kinds
    assert "UnaryStreamAioClientInterceptor" not in kinds  # ours, for the stream (spans.py)


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, []),
        ({"OTEL_RESOURCE_ATTRIBUTES": "a=b", "OTEL_TRACES_SAMPLER": "always_on"}, []),
        ({"OTEL_SERVICE_NAME": "gw"}, ["otlp_proto_grpc"]),
        ({"OTEL_SERVICE_NAME": ""}, []),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317"}, ["otlp_proto_grpc"]),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/v1/traces"}, ["otlp_proto_grpc"]),
        ({"OTEL_TRACES_EXPORTER": "console"}, ["console"]),
        ({"OTEL_TRACES_EXPORTER": "console,otlp"}, ["console", "otlp_proto_grpc"]),
        (
            {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"},
            ["otlp_proto_http"],
        ),
        (
            {
                "OTEL_SERVICE_NAME": "gw",
                "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
                "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "grpc",
            },
            ["otlp_proto_grpc"],
        ),
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_SERVICE_NAME": "gw"}, []),
        ({"OTEL_TRACES_EXPORTER": "console", "OTEL_SDK_DISABLED": "TRUE"}, []),
        ({"OTEL_TRACES_EXPORTER": "console", "OTEL_SDK_DISABLED": "false"}, ["console"]),
    ],
)
def test_which_variables_turn_tracing_on_and_where_it_goes(
    environ: dict[str, str], expected: list[str]
) -> None:
    assert trace_exporters(environ) == expected


def test_a_protocol_otlp_does_not_speak_is_refused() -> None:
    with pytest.raises(ValueError, match="OTEL_EXPORTER_OTLP_PROTOCOL"):
        trace_exporters({"OTEL_SERVICE_NAME": "gw", "OTEL_EXPORTER_OTLP_PROTOCOL": "smoke"})


@settings(max_examples=150, deadline=None)
@given(
    exporters=st.lists(
        st.sampled_from(["otlp", "console", "otlp_proto_grpc", "otlp_proto_http", " otlp "]),
        min_size=1,
        max_size=3,
    ),
    protocol=st.sampled_from([None, "grpc", "http/protobuf"]),
    traces_protocol=st.sampled_from([None, "grpc", "http/protobuf"]),
)
def test_exporter_names_follow_the_sdk_s_own_rule(
    exporters: list[str], protocol: str | None, traces_protocol: str | None
) -> None:
    from opentelemetry.sdk._configuration import _get_exporter_names

    environ = {"OTEL_TRACES_EXPORTER": ",".join(exporters)}
    if protocol:
        environ["OTEL_EXPORTER_OTLP_PROTOCOL"] = protocol
    if traces_protocol:
        environ["OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"] = traces_protocol
    with pytest.MonkeyPatch.context() as patch:
        for name in ("OTEL_EXPORTER_OTLP_PROTOCOL", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"):
            patch.delenv(name, raising=False)
        for name, value in environ.items():
            patch.setenv(name, value)
        assert trace_exporters(environ) == _get_exporter_names("traces")


class Unanswered(SpanExporter):
    """A collector that never answers: each export waits until the test lets it go."""

    def __init__(self) -> None:
        self.release = threading.Event()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.release.wait(60)
        return SpanExportResult.SUCCESS


def test_a_collector_that_does_not_answer_holds_the_exit_at_most_a_second() -> None:
    exporter = Unanswered()
    traces = tracing.Tracing.exporting([exporter])
    traces.provider.get_tracer("test").start_span("last").end()
    began = time.monotonic()
    traces.shutdown()
    took = time.monotonic() - began
    exporter.release.set()
    assert tracing.SHUTDOWN_TIMEOUT <= took < tracing.SHUTDOWN_TIMEOUT + 2


def test_correlation_ids_of_calls_inside_a_request_are_the_request_s() -> None:
    token = correlation._current.set("the-request")
    try:
        with correlation.for_call() as cid:
            assert cid == "the-request"
    finally:
        correlation._current.reset(token)
    with correlation.for_call() as cid:
        assert correlation.current() == cid and len(cid) == 32
    assert correlation.current() is None


# -- real processes -------------------------------------------------------------


def console_spans(output: str) -> list[dict[str, Any]]:
    """The spans ConsoleSpanExporter wrote (indented JSON objects) among the log lines."""
    spans, block = [], None
    for line in output.splitlines():
        if line == "{":
            block = [line]
        elif block is not None:
            block.append(line)
            if line == "}":
                spans.append(json.loads("\n".join(block)))
                block = None
    return spans


def moment(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


@pytest.mark.parametrize("workers", [(), ("--workers", "2")], ids=["process", "workers"])
def test_console_traces_of_a_real_gateway_reach_the_upstream(
    make_devserver: Callable[..., DevServer],
    make_gateway: Callable[..., Gateway],
    workers: tuple[str, ...],
) -> None:
    devserver = make_devserver()
    env = {
        "OTEL_TRACES_EXPORTER": "console",
        "OTEL_BSP_SCHEDULE_DELAY": "50",
        "OTEL_SERVICE_NAME": "gateway-under-test",
        "OTEL_PYTHON_FASTAPI_EXCLUDED_URLS": "healthz,readyz,metrics",
    }
    gateway = make_gateway(devserver.address, "--hub-linger", "0.2", *workers, env=env)
    trace_id, parent, header = new_traceparent()
    cid = f"e2e-{uuid.uuid4().hex}"
    with opened(gateway.url, "/events", {"traceparent": header, correlation.HEADER: cid}) as s:
        published_at = time.time()
        [cursor] = devserver.publish("item.model.created", "kref://e2e/a.model")
        assert any(sse.id == cursor for sse in s.frames)  # through the body, after its span
    poll_trace, _, poll_header = new_traceparent()
    assert httpx.get(
        gateway.url + "/events/poll?timeout=0", headers={"traceparent": poll_header}
    ).is_success
    gateway.stop()  # SIGTERM: the last spans are sent as it exits (a worker's too)
    spans = console_spans(gateway.log())
    assert spans, gateway.log()
    trace = f"0x{trace_id:032x}"
    traced = [s for s in spans if s["context"]["trace_id"] == trace]
    [server] = [s for s in traced if s["name"] == "GET /events"]
    assert server["parent_id"] == f"0x{parent:016x}" and server["kind"] == "SpanKind.SERVER"
    assert server["attributes"][CORRELATION_ID] == cid
    assert server["resource"]["attributes"]["service.name"] == "gateway-under-test"
    # It ended before the event it streamed was even published: it covers the opening.
    assert moment(server["end_time"]) < published_at
    [stream] = [s for s in traced if s["name"] == EVENT_STREAM]
    assert stream["parent_id"] == server["context"]["span_id"]
    assert stream["attributes"][CORRELATION_ID] == cid
    sent = f"00-{trace_id:032x}-{stream['context']['span_id'][2:]}-01"
    assert sent in devserver.client().stats().recent_traceparents
    # The poll's span (it may have read the shared stream, with no call of its own).
    polled = [s for s in spans if s["context"]["trace_id"] == f"0x{poll_trace:032x}"]
    assert "GET /events/poll" in {s["name"] for s in polled}
    # The probes the start waited on (/healthz) were left out, as asked.
    assert not [s for s in spans if s["name"] == "GET /healthz"]


def missing_extra(tmp_path: Path) -> str:
    """A PYTHONPATH on which the SDK and the instrumentations cannot be imported.

    The API stays, as on a machine without the extra (FastAPI brings it).
    """
    for package in ("sdk", "instrumentation", "exporter"):
        stub = tmp_path / "no-otel" / "opentelemetry" / package
        stub.mkdir(parents=True)
        (stub / "__init__.py").write_text("raise ImportError('the otel extra is not installed')\n")
    return str(tmp_path / "no-otel")


@pytest.mark.parametrize("workers", [(), ("--workers", "2")], ids=["process", "workers"])
def test_otel_variables_without_the_extra_are_one_warning_not_a_crash(
    make_devserver: Callable[..., DevServer],
    make_gateway: Callable[..., Gateway],
    tmp_path: Path,
    workers: tuple[str, ...],
) -> None:
    devserver = make_devserver()
    env = {"OTEL_SERVICE_NAME": "gw", "PYTHONPATH": missing_extra(tmp_path)}
    gateway = make_gateway(devserver.address, *workers, env=env)
    with opened(gateway.url, "/events", {}):
        pass
    gateway.stop()
    lines = [line for line in gateway.log().splitlines() if "OTEL" in line]
    assert len(lines) == 1, gateway.log()
    assert lines[0].startswith("WARNING:") and "tracing is off" in lines[0]
    assert "[otel]" in lines[0]
    assert not console_spans(gateway.log())


@pytest.mark.parametrize(
    ("environ", "named"),
    [
        ({"OTEL_TRACES_EXPORTER": "consol"}, "OTEL_TRACES_EXPORTER"),
        ({"OTEL_SERVICE_NAME": "gw", "OTEL_EXPORTER_OTLP_PROTOCOL": "tcp"}, "PROTOCOL"),
    ],
)
def test_otel_variables_that_cannot_be_followed_stop_the_start_in_one_line(
    environ: dict[str, str], named: str
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "KUMIHO_"))}
    done = subprocess.run(
        [sys.executable, "-m", "gateway", "serve", "--port", str(free_port())],
        env={**env, **environ},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    [line] = done.stderr.strip().splitlines()
    assert line.startswith("kumiho-sse-gateway serve: ") and named in line


def test_the_docs_say_what_turns_tracing_on_and_what_spans_carry() -> None:
    page = (ROOT / "docs" / "operating.md").read_text()
    section = page[page.index("## Tracing") :][:6000]
    for name in (*TRACING_VARIABLES, "OTEL_SDK_DISABLED", CORRELATION_ID, "traceparent"):
        assert name in section, name
    assert "pip install 'kumiho-sse-gateway[otel]'" in section
