"""--cors-origins: what a preflight gets, allowed or refused, without a browser.

The browser's side (pages of listed and unlisted origins reading a stream) is
in test_browser.py.
"""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest

from tests.conftest import DevServer, Gateway

ALLOWED = "http://app.example"


@pytest.fixture
def gateway(
    make_devserver: Callable[..., DevServer], make_gateway: Callable[..., Gateway]
) -> Gateway:
    return make_gateway(make_devserver().address, "--cors-origins", ALLOWED)


def _preflight(
    gateway: Gateway, path: str, origin: str, method: str, headers: str
) -> httpx.Response:
    return httpx.options(
        gateway.url + path,
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": method,
            "Access-Control-Request-Headers": headers,
        },
        timeout=10,
    )


def test_an_allowed_preflight_lists_what_may_follow(gateway: Gateway) -> None:
    r = _preflight(gateway, "/events", ALLOWED, "GET", "last-event-id, authorization")
    assert r.status_code == 200
    assert r.headers["access-control-allow-origin"] == ALLOWED
    assert r.headers["access-control-allow-credentials"] == "true"
    allowed = r.headers["access-control-allow-headers"].lower()
    assert "last-event-id" in allowed and "authorization" in allowed


@pytest.mark.parametrize(
    ("origin", "method", "headers", "refused"),
    [
        ("http://evil.example", "GET", "last-event-id", ["origin"]),
        ("null", "GET", "", ["origin"]),  # a sandboxed page or a file:// URL
        (ALLOWED, "DELETE", "", ["method"]),
        (ALLOWED, "GET", "x-forged, authorization", ["headers"]),
        ("http://evil.example", "PUT", "x-forged", ["origin", "method", "headers"]),
    ],
)
def test_a_refused_preflight_answers_in_the_envelope(
    gateway: Gateway, origin: str, method: str, headers: str, refused: list[str]
) -> None:
    for path in ("/events", "/api/v1/events/poll", "/capabilities", "/no/such/page"):
        r = _preflight(gateway, path, origin, method, headers)
        assert r.status_code == 400, r.text
        assert r.headers["content-type"] == "application/json"
        assert r.headers["cache-control"] == "no-store"
        error = r.json()["error"]
        assert error["code"] == "cors_refused" and error["retryable"] is False
        assert error["correlation_id"] == r.headers["x-correlation-id"]
        for what in refused:
            assert what in error["message"], (what, error["message"])
        # Nothing that would let a browser go on with the request.
        assert "access-control-allow-origin" not in r.headers or origin == ALLOWED
