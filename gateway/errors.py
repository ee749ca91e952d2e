"""The error envelope: one shape for every refusal, before or during a stream."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
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
    if error.retryable and error.retry_after_ms is not None:
        # RFC 9110's header, in whole seconds, for clients that read no envelope.
        response.headers["Retry-After"] = str(math.ceil(error.retry_after_ms / 1000))
    if error.status == 401:
        response.headers["WWW-Authenticate"] = "Bearer"  # RFC 9110: a 401 names its scheme
    return response


_REASONS = {400: b"Bad Request", 408: b"Request Timeout", 431: b"Request Header Fields Too Large"}


def raw_error_response(error: GatewayError, headers: Sequence[tuple[bytes, bytes]] = ()) -> bytes:
    """The whole HTTP/1.1 answer of a refusal made below the app (by the connection itself:
    a head too slow, too large or not HTTP), the envelope in it, and the connection closed."""
    body = json.dumps(error.envelope(), separators=(",", ":")).encode()
    head = [b"HTTP/1.1 %d %s" % (error.status, _REASONS[error.status]), *map(b": ".join, headers)]
    head += [
        b"content-type: application/json",
        b"content-length: %d" % len(body),
        b"cache-control: no-store",
        b"connection: close",
    ]
    return b"\r\n".join(head) + b"\r\n\r\n" + body


def invalid_parameter(name: str, problem: str) -> GatewayError:
    return GatewayError(400, "invalid_parameter", f"{name}: {problem}")
