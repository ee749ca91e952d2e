"""The error envelope: one shape for every refusal, before or during a stream."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from starlette.responses import JSONResponse

from gateway import correlation


class GatewayError(Exception):
    """A refusal with an HTTP status, a machine-readable code and a sentence for people."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        retryable: bool = False,
        retry_after_ms: int | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.retryable = retryable
        self.retry_after_ms = retry_after_ms

    def envelope(self) -> dict[str, Any]:
        """``{"error": {"code", "message", "retryable"}}`` as CONTRACT.md specifies.

        ``retry_after_ms`` joins them when a retry time is known, and
        ``correlation_id`` when a request is being served (the hosted API's shape).
        """
        error: dict[str, Any] = {
            "code": self.code,
            "message": self.message,
            "retryable": self.retryable,
        }
        if self.retry_after_ms is not None:
            error["retry_after_ms"] = self.retry_after_ms
        cid = correlation.current()
        if cid is not None:
            error["correlation_id"] = cid
        return {"error": error}


def error_response(error: GatewayError, headers: Mapping[str, str] | None = None) -> JSONResponse:
    """The HTTP answer of a refusal: its status, the envelope, never cached."""
    response = JSONResponse(error.envelope(), status_code=error.status, headers=headers)
    response.headers["Cache-Control"] = "no-store"
    if error.status == 401:
        response.headers["WWW-Authenticate"] = "Bearer"  # RFC 9110: a 401 names its scheme
    return response


def invalid_parameter(name: str, problem: str) -> GatewayError:
    return GatewayError(400, "invalid_parameter", f"{name}: {problem}")
