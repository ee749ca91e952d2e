"""The ReDoc reference page (``/redoc``), with nothing loaded from another host.

fastapi-offline serves Swagger UI's and ReDoc's files from the package
(``/docs`` is its own), but ReDoc's bundle draws a "by Redocly" logo from
``cdn.redoc.ly`` in its sidebar, whatever it is told: a request to a third
party from every reader of the page, and a broken image where the network is
closed. So the page loads the bundle from here, with that one address emptied
(an image without a source is never fetched; ReDoc then hides it).
"""

from __future__ import annotations

import functools
from pathlib import Path

import fastapi_offline
from fastapi import APIRouter, Request
from fastapi.openapi.docs import get_redoc_html
from fastapi.responses import HTMLResponse, Response

router = APIRouter()

# Where fastapi-offline keeps its copies (and mounts them for the other page).
_ASSETS = Path(fastapi_offline.__file__).parent / "static"
_ASSETS_URL = "/static-offline-docs"
# The one outside address ReDoc's bundle loads by itself.
_LOGO = b"https://cdn.redoc.ly/redoc/logo-mini.svg"


@functools.cache
def _bundle() -> bytes:
    return (_ASSETS / "redoc.standalone.js").read_bytes().replace(_LOGO, b"")


@router.get("/redoc", include_in_schema=False)
async def redoc(request: Request) -> HTMLResponse:
    root = request.scope.get("root_path", "")
    return get_redoc_html(
        openapi_url=f"{root}{request.app.openapi_url}",
        title=f"{request.app.title} - ReDoc",
        redoc_js_url=f"{root}/redoc.js",
        redoc_favicon_url=f"{root}{_ASSETS_URL}/favicon.png",
        with_google_fonts=False,
    )


@router.get("/redoc.js", include_in_schema=False)
async def redoc_bundle() -> Response:
    return Response(_bundle(), media_type="text/javascript")
