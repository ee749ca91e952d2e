"""What operators and people use: capabilities, health, readiness, metrics, the dashboard."""

from __future__ import annotations

import importlib.resources
import os
from collections.abc import Iterable
from dataclasses import replace
from typing import Any

import grpc
from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Scope

from gateway.auth import SERVICE
from gateway.errors import GatewayError
from gateway.metrics import CONTENT_TYPE
from gateway.routes.dependencies import CredentialDep, StateDep
from gateway.upstream import terminal_error

router = APIRouter()


@router.get(
    "/capabilities",
    summary="The upstream's EventCapabilities",
    responses={
        401: {"description": "a credential is required, or the upstream refused it"},
        403: {"description": "the upstream denied access"},
        503: {"description": "the upstream did not answer (upstream_unavailable)"},
    },
)
async def capabilities(state: StateDep, who: CredentialDep) -> dict[str, Any]:
    upstream = state.upstream
    while True:
        try:
            caps = await upstream.capabilities(who)
            break
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.UNAUTHENTICATED and who.identity == SERVICE:
                rotated = upstream.service_token.newer_than(who.upstream_token)
                if rotated is not None:  # once more, with the token the file holds now
                    who = replace(who, upstream_token=rotated)
                    continue
            rejected = upstream.rejected(exc.code(), exc.details(), who)
            error = terminal_error(rejected) or GatewayError(
                503,
                "upstream_unavailable",
                f"the upstream did not answer: {exc.code().name}",
                retryable=True,
            )
            raise error from None
    return {field.name: getattr(caps, field.name) for field in caps.DESCRIPTOR.fields}


@router.get("/healthz", summary="200 while the process runs")
async def healthz() -> dict[str, str | int]:
    return {"status": "ok", "pid": os.getpid()}


@router.get(
    "/readyz",
    summary="200 when the upstream is reachable, 503 otherwise",
    responses={
        503: {
            "description": "the upstream is unreachable, the gateway drains, or "
            "a worker of its pool fails to start"
        }
    },
)
async def readyz(state: StateDep) -> JSONResponse:
    if state.lifecycle.draining:
        return JSONResponse({"status": "draining"}, status_code=503)
    if state.lifecycle.pool_failing():
        return JSONResponse({"status": "pool_failing"}, status_code=503)
    address = state.upstream.target.address
    if await state.upstream.ready():
        return JSONResponse({"status": "ready", "upstream": address})
    return JSONResponse({"status": "unavailable", "upstream": address}, status_code=503)


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def prometheus(state: StateDep) -> Response:
    return Response(state.metrics.render(), media_type=CONTENT_TYPE)


class Dashboard(StaticFiles):
    """The dashboard's files (``static/``), mounted at ``/`` beneath every route.

    Another method than GET on a path with neither a file nor a route is a
    404 (there is nothing there), not StaticFiles' 405 for every path.
    """

    def __init__(self, api_paths: Iterable[str]) -> None:
        super().__init__(directory=str(importlib.resources.files("gateway.static")), html=True)
        self.api_paths = frozenset(api_paths)

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
