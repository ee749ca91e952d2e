"""What the routes share, as FastAPI dependencies: app state, credential, Subscription.

A request resolves them one way: its query, then its credential, then its
Subscription (so a missing credential is a 401 before any other parameter is
judged), then the encoding of its answer. FastAPI resolves each at most once
per request, and each is an ``async def`` so it runs on the event loop:
FastAPI runs a plain ``def`` dependency in its thread pool, a thread hop per
request for no work.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, cast

from fastapi import Depends, Request

from gateway.admission import ClientLimits
from gateway.auth import Credential, authenticate
from gateway.compression import Encoding, negotiate
from gateway.hub import Hub
from gateway.items import Source
from gateway.lifecycle import Lifecycle
from gateway.metrics import Metrics
from gateway.settings import Settings
from gateway.source import UpstreamSource
from gateway.subscription import Subscription, access_token_param, parse_subscription
from gateway.ticker import Ticker
from gateway.upstream import Upstream


@dataclass(frozen=True)
class GatewayState:
    """What every route of one app shares; the factory keeps it on ``app.state.gateway``."""

    settings: Settings
    upstream: Upstream
    metrics: Metrics
    lifecycle: Lifecycle
    ticker: Ticker
    hub: Hub | None  # None with --no-hub
    limits: ClientLimits

    def source(self, subscription: Subscription) -> Source:
        """The subscription's source, shared (the hub) or its own, not opened yet."""
        if self.hub is not None:
            return self.hub.source(subscription)
        return UpstreamSource(self.upstream, subscription, self.settings, self.metrics)


async def app_state(request: Request) -> GatewayState:
    """The state of the app serving this request."""
    return cast(GatewayState, request.app.state.gateway)


async def query(request: Request) -> dict[str, list[str]]:
    """Every query parameter with all its values, as the parsers take them."""
    return {key: request.query_params.getlist(key) for key in request.query_params}


StateDep = Annotated[GatewayState, Depends(app_state)]
QueryDep = Annotated[dict[str, list[str]], Depends(query)]


async def credential(request: Request, state: StateDep, params: QueryDep) -> Credential:
    """Who the request is, by ``--auth`` (a 401, or a 400 for a malformed credential)."""
    return authenticate(
        state.settings.auth,
        headers=request.headers,
        cookies=request.cookies,
        access_token=access_token_param(params),
        service_token=state.upstream.service_token.current(),
        api_keys=state.settings.api_keys,
    )


CredentialDep = Annotated[Credential, Depends(credential)]


async def subscription(request: Request, params: QueryDep, who: CredentialDep) -> Subscription:
    """The request validated into a Subscription (a 400 names what is wrong)."""
    return parse_subscription(
        params, request.headers.get("last-event-id"), who, request.headers.get("accept")
    )


SubscriptionDep = Annotated[Subscription, Depends(subscription)]


async def encoding(request: Request, state: StateDep) -> Encoding:
    """How the answer's body goes out, by ``--compression`` and ``Accept-Encoding``."""
    # Several Accept-Encoding lines are one list (RFC 9110, 5.3).
    lines = request.headers.getlist("accept-encoding")
    return negotiate(state.settings.compression, ", ".join(lines) if lines else None)


EncodingDep = Annotated[Encoding, Depends(encoding)]

# The refusals a request can meet before its answer starts, for the OpenAPI
# page of every route that takes a Subscription.
REFUSALS: dict[int | str, dict[str, str]] = {
    400: {"description": "a parameter breaks the limits or is malformed"},
    401: {"description": "a credential is required, or the upstream refused it"},
    403: {"description": "the upstream denied access"},
}
