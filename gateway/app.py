"""The app factory: wires state, lifespan, middleware, error answers and the routers.

It holds no route: each HTTP surface is a module of ``gateway/routes``
(``stream``, ``poll``, ``ops``, ``docs``), and what they share is a ``GatewayState``
on ``app.state.gateway``, handed to them by ``routes/dependencies.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from fastapi_offline import FastAPIOffline
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp

from gateway import __version__, correlation
from gateway.admission import ClientLimits
from gateway.cors import Cors
from gateway.errors import GatewayError, error_response
from gateway.hub import Hub
from gateway.lifecycle import Lifecycle
from gateway.looplag import LoopLag
from gateway.metrics import Metrics
from gateway.response import StreamHandoff
from gateway.routes import docs, ops, poll, stream
from gateway.routes.dependencies import GatewayState
from gateway.settings import Settings
from gateway.ticker import Ticker
from gateway.upstream import Upstream

if TYPE_CHECKING:
    from gateway.tracing import Tracing

# Starlette's own refusals (no route, wrong method) in the gateway's envelope.
_HTTP_ERRORS = {
    404: ("not_found", "there is nothing at {path}"),
    405: ("method_not_allowed", "{path} does not answer {method}"),
}


async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    code, message = _HTTP_ERRORS.get(exc.status_code, ("http_error", "{detail}"))
    text = message.format(path=request.url.path, method=request.method, detail=exc.detail)
    return error_response(GatewayError(exc.status_code, code, text), exc.headers)


async def _gateway_error(_: Request, exc: GatewayError) -> JSONResponse:
    return error_response(exc)


# Each HTTP surface's router, and the prefix it answers under: the poll under two.
_ROUTERS: tuple[tuple[APIRouter, str], ...] = (
    (stream.router, ""),
    *((poll.router, prefix) for prefix in poll.PREFIXES),
    (ops.router, ""),
    (docs.router, ""),
)


def create_app(
    settings: Settings,
    lifecycle: Lifecycle | None = None,
    metrics: Metrics | None = None,
    tracing: Tracing | None = None,
) -> ASGIApp:
    """The gateway as the server runs it: ``build_app`` inside its two outermost layers."""
    return outermost(build_app(settings, lifecycle, metrics, tracing))


def outermost(app: ASGIApp) -> ASGIApp:
    """``StreamHandoff`` to write streams below every layer (``response.py``), then
    correlation ids: pure ASGI layers, outside FastAPI's own stack."""
    return StreamHandoff(correlation.Correlation(app))


def build_app(
    settings: Settings,
    lifecycle: Lifecycle | None = None,
    metrics: Metrics | None = None,
    tracing: Tracing | None = None,
) -> FastAPI:
    """The FastAPI app; the upstream channel opens in its lifespan.

    ``lifecycle`` is shared with the server that drains it on SIGTERM;
    ``metrics`` is a worker's (see ``metrics.py``), a process's own by default;
    ``tracing`` instruments the app and its upstream calls (None: no tracing at all).
    """
    upstream = Upstream(settings, tracing.interceptors() if tracing else ())
    metrics = metrics if metrics is not None else Metrics()
    state = GatewayState(
        settings=settings,
        upstream=upstream,
        metrics=metrics,
        lifecycle=lifecycle or Lifecycle(),
        # Four visits per heartbeat (or per send timeout, if shorter) keep both on time.
        ticker=Ticker(min(settings.heartbeat, settings.send_timeout) / 4),
        hub=Hub(upstream, settings, metrics) if settings.hub else None,
        limits=ClientLimits(
            settings.max_streams_per_client,
            settings.max_opens_per_client_per_second,
            metrics,
            settings.retry_ms,
        ),
    )

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
            if state.hub is not None:
                state.hub.close()
            await upstream.close()

    app = FastAPIOffline(
        title="kumiho-sse-gateway",
        version=__version__,
        summary="Kumiho's gRPC EventStream as Server-Sent Events",
        lifespan=lifespan,
        redoc_url=None,  # routes/docs.py serves it, without the logo from a CDN
    )
    app.state.gateway = state
    if settings.cors_origins:
        _add_cors(app, settings.cors_origins)
    app.exception_handler(GatewayError)(_gateway_error)
    app.exception_handler(StarletteHTTPException)(_http_error)

    for router, prefix in _ROUTERS:
        _answer_head(router)
        app.include_router(router, prefix=prefix)
    _answer_head(app.router)  # the docs' pages
    # Last: the dashboard's files under every path no route took.
    app.mount("/", ops.Dashboard(_api_paths(app)), name="dashboard")
    if tracing is not None:
        tracing.instrument(app)  # inside FastAPI's stack: StreamHandoff stays outside it
    return app


def _add_cors(app: FastAPI, origins: list[str]) -> None:
    any_origin = "*" in origins
    app.add_middleware(
        Cors,
        allow_origins=["*"] if any_origin else origins,
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


def _answer_head(router: APIRouter) -> None:
    """HEAD answers as GET does, without the body (RFC 9110); kept out of the OpenAPI.

    Each GET route of ``router`` gets a HEAD twin, once: the routers are the
    route modules' own, shared by every app built in a process.
    """
    heads = {r.path for r in router.routes if isinstance(r, APIRoute) and r.methods == {"HEAD"}}
    for route in list(router.routes):
        if isinstance(route, APIRoute) and route.methods == {"GET"} and route.path not in heads:
            router.add_api_route(
                route.path, route.endpoint, methods=["HEAD"], include_in_schema=False
            )


def _api_paths(app: FastAPI) -> set[str]:
    """Every path a route of ``app`` answers (the app's own and its routers', prefixed).

    Read from the routers themselves: FastAPI versions differ in whether an
    included router's routes appear in ``app.routes``.
    """
    paths = {route.path for route in app.routes if isinstance(route, APIRoute)}
    for router, prefix in _ROUTERS:
        paths |= {prefix + route.path for route in router.routes if isinstance(route, APIRoute)}
    return paths
