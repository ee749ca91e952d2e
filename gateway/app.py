"""The FastAPI application: routes, error answers and the upstream's lifespan.

The route is thin: authenticate, validate into a Subscription, open a Source
(so refusals become 400/401/403 before any byte), then return the Pump as an
EventStreamResponse, which ``StreamHandoff`` writes outside the middleware
stack (see ``response.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.resources
import logging
import os
from collections.abc import AsyncIterator
from typing import Any

import grpc
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Scope

from gateway import __version__, correlation
from gateway.auth import SERVICE, Credential, authenticate
from gateway.cors import Cors
from gateway.errors import GatewayError, error_response
from gateway.formats import Format, format_for
from gateway.hub import Hub
from gateway.lifecycle import Lifecycle
from gateway.looplag import LoopLag
from gateway.metrics import CONTENT_TYPE, Metrics
from gateway.poll import Batch, collect
from gateway.pump import Pump, jittered_retry_ms
from gateway.response import HEADERS, EventStreamResponse, StreamHandoff, disconnected
from gateway.settings import Settings
from gateway.source import Source, UpstreamSource, terminal_error
from gateway.subscription import (
    POLL_PARAMS,
    Subscription,
    access_token_param,
    openapi_parameters,
    parse_poll,
    parse_subscription,
)
from gateway.ticker import Ticker
from gateway.upstream import Upstream

log = logging.getLogger("gateway.app")


# Starlette's own refusals (no route, wrong method) in the gateway's envelope.
_HTTP_ERRORS = {
    404: ("not_found", "there is nothing at {path}"),
    405: ("method_not_allowed", "{path} does not answer {method}"),
}


def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    code, message = _HTTP_ERRORS.get(exc.status_code, ("http_error", "{detail}"))
    text = message.format(path=request.url.path, method=request.method, detail=exc.detail)
    return error_response(GatewayError(exc.status_code, code, text), exc.headers)


class _Dashboard(StaticFiles):
    """The dashboard's files, mounted under every route.

    Another method than GET on a path with neither a file nor a route is a
    404 (there is nothing there), not StaticFiles' 405 for every path.
    """

    api_paths: frozenset[str] = frozenset()

    async def get_response(self, path: str, scope: Scope) -> Response:
        if (
            scope["method"] not in ("GET", "HEAD")
            and f"/{path}" not in self.api_paths
            and not self._has_file(path)
        ):
            raise StarletteHTTPException(404)
        return await super().get_response(path, scope)

    def _has_file(self, path: str) -> bool:
        try:
            return self.lookup_path(path)[1] is not None
        except (OSError, ValueError):  # a NUL or an over-long name, as StaticFiles' GET says
            return False


def _query(request: Request) -> dict[str, list[str]]:
    return {key: request.query_params.getlist(key) for key in request.query_params}


def create_app(
    settings: Settings, lifecycle: Lifecycle | None = None, metrics: Metrics | None = None
) -> ASGIApp:
    """The gateway as an ASGI app; the upstream channel opens in its lifespan.

    ``lifecycle`` is shared with the server that drains it on SIGTERM;
    ``metrics`` is a worker's (see ``metrics.py``), a process's own by default.
    """
    upstream = Upstream(settings)
    metrics = metrics if metrics is not None else Metrics()
    lifecycle = lifecycle or Lifecycle()
    # Four visits per heartbeat (or per send timeout, if shorter) keep both on time.
    ticker = Ticker(min(settings.heartbeat, settings.send_timeout) / 4)
    hub = Hub(upstream, settings, metrics) if settings.hub else None

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await upstream.start()
        lag = LoopLag(metrics.loop_lag)
        lag.start()
        # A worker of a pool writes its process metrics for the others' scrapes.
        sampler = asyncio.ensure_future(metrics.sample_forever()) if metrics.directory else None
        try:
            yield
        finally:
            lag.stop()
            if sampler is not None:
                sampler.cancel()
                metrics.sample()  # what the last streams counted
            if hub is not None:
                hub.close()
            await upstream.close()

    app = FastAPIOffline(
        title="kumiho-sse-gateway",
        version=__version__,
        summary="Kumiho's gRPC EventStream as Server-Sent Events",
        lifespan=lifespan,
    )
    if settings.cors_origins:
        any_origin = "*" in settings.cors_origins
        app.add_middleware(
            Cors,
            allow_origins=["*"] if any_origin else settings.cors_origins,
            # Credentials (cookies, Authorization) only ever for listed origins.
            allow_credentials=not any_origin,
            allow_methods=["GET"],
            allow_headers=[
                "Authorization",
                "Last-Event-ID",
                "Cache-Control",
                "X-Kumiho-Token",
                "X-Tenant-Id",
                correlation.HEADER,
            ],
            expose_headers=[correlation.HEADER],
            max_age=600,
        )

    def _retry_answer(fmt: Format, error: GatewayError | None = None) -> Response:
        """Come back later: a retry: line (and why), never a non-200 (EventSource would stop)."""
        retry_ms = jittered_retry_ms(settings.retry_ms)
        body = fmt.retry(retry_ms)
        if error is not None:
            error.retry_after_ms = retry_ms
            body += fmt.control("gateway.error", error.envelope()["error"])
        return Response(body, headers=HEADERS, media_type=fmt.media_type)

    def credential(request: Request, query: dict[str, list[str]]) -> Credential:
        return authenticate(
            settings.auth,
            headers=request.headers,
            cookies=request.cookies,
            access_token=access_token_param(query),
            service_token=upstream.service_token.current(),
            api_keys=settings.api_keys,
        )

    @app.exception_handler(GatewayError)
    async def _gateway_error(_: Request, exc: GatewayError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(StarletteHTTPException)
    async def _starlette_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _http_error(request, exc)

    def subscribe(request: Request, query: dict[str, list[str]]) -> Subscription:
        return parse_subscription(
            query,
            request.headers.get("last-event-id"),
            credential(request, query),
            request.headers.get("accept"),
        )

    def source_for(subscription: Subscription) -> Source:
        """The subscription's source, shared (the hub) or its own, not opened yet."""
        if hub is not None:
            return hub.source(subscription)
        return UpstreamSource(upstream, subscription, settings, metrics)

    async def opened(subscription: Subscription) -> Source:
        """The subscription's source, opened (refusals raise GatewayError before any byte)."""
        source = source_for(subscription)
        try:
            await source.open()
        except BaseException:
            source.close()
            raise
        return source

    async def stream(request: Request, hosted: bool) -> Response:
        """Every streaming surface: authenticate, validate, open the source, pump it."""
        subscription = subscribe(request, _query(request))
        fmt = format_for(subscription.format, subscription.named, hosted)
        if lifecycle.draining:
            return _retry_answer(fmt)
        if request.method == "HEAD":
            # What a GET would answer, without opening an upstream stream for it.
            head = Response(headers=HEADERS, media_type=fmt.media_type)
            del head.headers["content-length"]
            return head
        try:
            source = await opened(subscription)
        except GatewayError as exc:
            if exc.retryable:  # at a cap: a retry: line and why, then the client comes back
                log.info("stream refused for now: %s", exc.message)
                return _retry_answer(fmt, exc)
            raise
        if lifecycle.draining:  # the drain began while the upstream answered
            source.close()
            return _retry_answer(fmt)
        pump = Pump(
            source,
            fmt=fmt,
            settings=settings,
            metrics=metrics,
            lifecycle=lifecycle,
            ticker=ticker,
            client=request.client.host if request.client else "",
        )
        return EventStreamResponse(pump)

    stream_responses: dict[int | str, dict[str, Any]] = {
        200: {"description": "the event stream"},
        400: {"description": "a parameter breaks the limits or is malformed"},
        401: {"description": "a credential is required, or the upstream refused it"},
        403: {"description": "the upstream denied access"},
    }

    @app.get(
        "/events",
        summary="Stream Kumiho events as Server-Sent Events",
        response_class=EventStreamResponse,
        status_code=200,
        openapi_extra={"parameters": openapi_parameters()},
        responses=stream_responses,
    )
    async def events(request: Request) -> Response:
        return await stream(request, hosted=False)

    @app.get(
        "/api/v1/events/stream",
        summary="The same stream under Kumiho's hosted API path: every data: line is an event",
        description="Gateway signals (status, reset, error) come as SSE comment lines here.",
        response_class=EventStreamResponse,
        status_code=200,
        openapi_extra={"parameters": openapi_parameters()},
        responses=stream_responses,
    )
    async def hosted_stream(request: Request) -> Response:
        return await stream(request, hosted=True)

    def draining() -> GatewayError:
        """A poll's answer while the gateway shuts down: retry (another replica answers)."""
        return GatewayError(
            503,
            "draining",
            "the gateway is shutting down; poll again (another replica answers)",
            retryable=True,
            retry_after_ms=jittered_retry_ms(settings.retry_ms),
        )

    async def poll(request: Request) -> Response:
        query = _query(request)
        subscription = subscribe(request, query)
        max_events, timeout = parse_poll(query)
        if subscription.consumer_group:
            # A group hands each event to one live member: events that arrive
            # between two polls would be handed to nobody.
            raise GatewayError(
                400,
                "invalid_parameter",
                "consumer_group: a poll cannot be a consumer group's member (events "
                "between polls would be lost to the group); stream /events instead",
            )
        if lifecycle.draining:
            raise draining()
        if request.method == "HEAD":  # validated; no upstream call for it
            return Response(headers=HEADERS, media_type="application/json")
        batch = Batch(max_events, subscription.cursor)
        # Drained like a stream: at SIGTERM the poll answers at once, while it
        # opens as while it waits (one that starts during the drain, at once).
        lifecycle.add(batch)
        try:
            await collect(source_for(subscription), batch, timeout, disconnected(request.receive))
        finally:
            lifecycle.discard(batch)
        if batch.failure is not None and not batch.events:
            raise batch.failure  # with events, the next poll meets it
        if batch.drained and not batch.events:
            # An empty 200 would say "nothing new": the client would take it as
            # caught up. It polls again instead, with the same cursor, elsewhere.
            raise draining()
        return Response(batch.answer(), headers=HEADERS, media_type="application/json")

    poll_responses: dict[int | str, dict[str, Any]] = {
        200: {"description": "{events, cursor, more, reset}: see the README"},
        **{k: v for k, v in stream_responses.items() if k != 200},
        503: {"description": "at a cap on upstream streams, or shutting down (retryable)"},
    }
    for path in ("/events/poll", "/api/v1/events/poll"):
        app.add_api_route(
            path,
            poll,
            methods=["GET"],
            summary="A bounded read: up to max_events events after cursor, as JSON",
            openapi_extra={"parameters": openapi_parameters(POLL_PARAMS)},
            responses=poll_responses,
        )

    @app.get(
        "/capabilities",
        summary="The upstream's EventCapabilities",
        responses={
            401: {"description": "a credential is required, or the upstream refused it"},
            403: {"description": "the upstream denied access"},
            503: {"description": "the upstream did not answer (upstream_unavailable)"},
        },
    )
    async def capabilities(request: Request) -> dict[str, Any]:
        who = credential(request, _query(request))
        try:
            caps = await upstream.capabilities(who)
        except grpc.aio.AioRpcError as exc:
            if (
                exc.code() == grpc.StatusCode.UNAUTHENTICATED
                and who.identity == SERVICE
                and upstream.service_token.newer_than(who.upstream_token) is not None
            ):
                return await capabilities(request)  # once more, with the rotated token
            rejected = upstream.rejected(exc.code(), exc.details(), who)
            error = terminal_error(rejected) or GatewayError(
                503,
                "upstream_unavailable",
                f"the upstream did not answer: {exc.code().name}",
                retryable=True,
            )
            raise error from None
        return {field.name: getattr(caps, field.name) for field in caps.DESCRIPTOR.fields}

    @app.get("/healthz", summary="200 while the process runs")
    async def healthz() -> dict[str, str | int]:
        return {"status": "ok", "pid": os.getpid()}

    @app.get(
        "/readyz",
        summary="200 when the upstream is reachable, 503 otherwise",
        responses={
            503: {
                "description": "the upstream is unreachable, the gateway drains, or "
                "a worker of its pool fails to start"
            }
        },
    )
    async def readyz() -> JSONResponse:
        if lifecycle.draining:
            return JSONResponse({"status": "draining"}, status_code=503)
        if lifecycle.pool_failing():
            return JSONResponse({"status": "pool_failing"}, status_code=503)
        if await upstream.ready():
            return JSONResponse({"status": "ready", "upstream": upstream.target.address})
        return JSONResponse(
            {"status": "unavailable", "upstream": upstream.target.address}, status_code=503
        )

    @app.get("/metrics", summary="Prometheus metrics", response_class=Response)
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    # HEAD answers as GET does, without the body (RFC 9110); kept out of the OpenAPI.
    for route in list(app.routes):
        if isinstance(route, APIRoute) and route.methods == {"GET"}:
            app.add_api_route(route.path, route.endpoint, methods=["HEAD"], include_in_schema=False)
    static = importlib.resources.files("gateway.static")
    dashboard = _Dashboard(directory=str(static), html=True)
    dashboard.api_paths = frozenset(r.path for r in app.routes if isinstance(r, APIRoute))
    app.mount("/", dashboard, name="dashboard")
    return correlation.Correlation(StreamHandoff(app))
