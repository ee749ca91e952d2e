"""The app factory (``app.py``) in process: what it wires, answered through FastAPI's TestClient.

The end-to-end tests run the same app behind uvicorn; these build it in the
test's own process, wrapped as the server wraps it (``outermost``), so a
check needs no process of its own. The upstream is a port nobody listens on.
"""

from __future__ import annotations

import warnings
from typing import Any

from fastapi import FastAPI

from gateway.app import build_app, outermost
from gateway.hub import Hub
from gateway.lifecycle import Lifecycle
from gateway.metrics import Metrics
from gateway.routes import ops, poll, stream
from gateway.routes.dependencies import GatewayState
from gateway.settings import Settings
from gateway.subscription import POLL_PARAMS, openapi_parameters

with warnings.catch_warnings():
    # Starlette asks for httpx2 behind its TestClient; the httpx installed still drives it.
    # (A UserWarning subclass, StarletteDeprecationWarning, on the Starlette that says so.)
    warnings.filterwarnings("ignore", message=".*install `httpx2`")
    from starlette.testclient import TestClient

NOWHERE = "127.0.0.1:1"  # connections refused at once: no upstream
STREAMS = ("/events", "/api/v1/events/stream")
POLLS = ("/events/poll", "/api/v1/events/poll")
ROUTES = (*STREAMS, *POLLS, "/capabilities", "/healthz", "/readyz", "/metrics")


def settings(upstream: str = NOWHERE, **fields: Any) -> Settings:
    """Settings as a test states them (nothing read from the environment matters here)."""
    return Settings(upstream=upstream, **fields)


def served(app: FastAPI) -> TestClient:
    """A client of ``app`` wrapped as the server runs it; ``with`` it to run the lifespan."""
    return TestClient(outermost(app))


def test_the_openapi_document_lists_each_route_with_the_parameter_tables() -> None:
    with served(build_app(settings())) as client:
        spec = client.get("/openapi.json").json()
    assert tuple(spec["paths"]) == ROUTES
    for path in STREAMS:
        assert spec["paths"][path]["get"]["parameters"] == openapi_parameters(), path
    for path in POLLS:
        assert spec["paths"][path]["get"]["parameters"] == openapi_parameters(POLL_PARAMS), path
    # HEAD is answered (below) but kept out of the document.
    assert all(set(operations) == {"get"} for operations in spec["paths"].values())
    ids = [spec["paths"][path]["get"]["operationId"] for path in ROUTES]
    assert len(set(ids)) == len(ids)  # the poll, mounted twice, under two names


def test_every_get_route_answers_head_as_get_without_a_body() -> None:
    with served(build_app(settings())) as client:
        for path in (*ROUTES, "/", "/kumiho-events.js", "/docs", "/redoc", "/openapi.json"):
            head = client.head(path)
            assert head.content == b"", path
            if path in STREAMS or path in POLLS:
                # Validated, then answered without an upstream call.
                assert head.status_code == 200, path
                continue
            get = client.get(path)
            assert head.status_code == get.status_code, path
            assert head.headers["content-type"] == get.headers["content-type"], path


def test_building_more_apps_adds_no_route_twice() -> None:
    def counts() -> list[int]:
        return [len(router.routes) for router in (stream.router, poll.router, ops.router)]

    build_app(settings())
    before = counts()
    build_app(settings(hub=False))
    assert counts() == before == [4, 2, 8]  # each GET route and its HEAD twin


def test_another_method_is_a_405_on_a_route_and_a_404_where_nothing_is() -> None:
    with served(build_app(settings())) as client:
        for path in (*ROUTES, "/index.html"):
            answer = client.post(path)
            assert answer.status_code == 405, path
            assert answer.json()["error"]["code"] == "method_not_allowed", path
        for method in ("GET", "POST"):
            answer = client.request(method, "/nothing-here")
            assert answer.status_code == 404, method
            assert answer.json()["error"]["code"] == "not_found", method


def test_the_dashboard_is_served_under_the_routes() -> None:
    with served(build_app(settings())) as client:
        page = client.get("/")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert "EventSource" in client.get("/kumiho-events.js").text


def test_the_app_state_holds_what_the_routes_share() -> None:
    lifecycle, metrics = Lifecycle(), Metrics()
    own = build_app(settings(hub=False), lifecycle, metrics).state.gateway
    assert isinstance(own, GatewayState)
    assert own.lifecycle is lifecycle and own.metrics is metrics  # the server's, to drain
    assert own.hub is None  # --no-hub: every subscription its own upstream stream
    shared = build_app(settings()).state.gateway
    assert isinstance(shared.hub, Hub) and shared.lifecycle is not lifecycle


def test_every_answer_carries_the_request_s_correlation_id() -> None:
    headers = {"x-correlation-id": "run-42"}
    with served(build_app(settings())) as client:
        assert client.get("/healthz", headers=headers).headers["x-correlation-id"] == "run-42"
        refused = client.get("/events", params={"named": "maybe"}, headers=headers)
        assert refused.headers["x-correlation-id"] == "run-42"
        assert refused.json()["error"]["correlation_id"] == "run-42"
        made_up = client.get("/healthz").headers["x-correlation-id"]
        assert made_up and made_up != "run-42"


def test_cross_origin_preflights_are_answered_only_for_listed_origins() -> None:
    preflight = {
        "Origin": "http://app.example",
        "Access-Control-Request-Method": "GET",
        "Access-Control-Request-Headers": "last-event-id, authorization",
    }
    with served(build_app(settings(cors_origins=["http://app.example"]))) as client:
        answer = client.options("/events", headers=preflight)
        assert answer.status_code == 200
        assert answer.headers["access-control-allow-origin"] == "http://app.example"
        assert answer.headers["access-control-allow-credentials"] == "true"
        allowed = answer.headers["access-control-allow-headers"].lower()
        assert "last-event-id" in allowed and "authorization" in allowed
    with served(build_app(settings())) as client:
        answer = client.options("/events", headers=preflight)
        assert "access-control-allow-origin" not in answer.headers
