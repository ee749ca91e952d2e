"""The error envelope: one shape for every refusal, before or during a stream."""

from __future__ import annotations

from typing import Any


class GatewayError(Exception):
    """A refusal with an HTTP status, a machine-readable code and a sentence for people."""

    def __init__(self, status: int, code: str, message: str, *, retryable: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.retryable = retryable

    def envelope(self) -> dict[str, Any]:
        """``{"error": {"code", "message", "retryable"}}`` as CONTRACT.md specifies."""
        return {"error": {"code": self.code, "message": self.message, "retryable": self.retryable}}


def invalid_parameter(name: str, problem: str) -> GatewayError:
    return GatewayError(400, "invalid_parameter", f"{name}: {problem}")
