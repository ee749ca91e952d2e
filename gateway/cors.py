"""Cross-origin access (``--cors-origins``): Starlette's CORS layer, refusing in the envelope.

Starlette decides what a preflight may ask for; only the refusal's form is
the gateway's own: a 400 with the error envelope (code ``cors_refused``), as
every other error answer, instead of Starlette's plain text.
"""

from __future__ import annotations

from starlette.datastructures import Headers
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import Response

from gateway.errors import GatewayError, error_response

# How Starlette's plain-text refusal begins; the refused parts follow it.
_REFUSAL = "Disallowed CORS "
# Headers of a refusal that describe its plain-text body, not the preflight.
_BODY_HEADERS = frozenset({"content-type", "content-length"})


class Cors(CORSMiddleware):
    """Starlette's ``CORSMiddleware`` whose refused preflights answer in the envelope."""

    def preflight_response(self, request_headers: Headers) -> Response:
        answer = super().preflight_response(request_headers)
        if answer.status_code < 400:
            return answer
        text = bytes(answer.body).decode("utf-8", "replace")
        refused = text.removeprefix(_REFUSAL).split(", ") if text.startswith(_REFUSAL) else [text]
        error = GatewayError(
            answer.status_code,
            "cors_refused",
            "cross-origin preflight refused: " + "; ".join(self._why(part) for part in refused),
        )
        kept = {k: v for k, v in answer.headers.items() if k not in _BODY_HEADERS}
        return error_response(error, kept)

    def _why(self, part: str) -> str:
        if part == "origin":
            return "the origin is not one of --cors-origins"
        if part == "method":
            return f"the method is not {' or '.join(self.allow_methods)}"
        if part == "headers":
            return "the requested headers are not all among " + ", ".join(self.allow_headers)
        if part == "private-network":
            return "private network access is not offered"
        return part
