"""``GET /events/poll`` and ``GET /api/v1/events/poll``: the bounded read, as JSON.

One router, included by the app under both prefixes (``/events`` and
``/api/v1/events``). It takes the stream's Subscription, gathers one answer
through a ``Batch`` (``gateway/poll.py``) from the same source a stream
would read, and answers it whole.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from gateway.admission import client_address
from gateway.errors import GatewayError
from gateway.poll import Batch, collect
from gateway.pump import jittered_retry_ms
from gateway.response import HEADERS, disconnected
from gateway.routes.dependencies import (
    REFUSALS,
    EncodingDep,
    QueryDep,
    StateDep,
    SubscriptionDep,
)
from gateway.subscription import POLL_PARAMS, openapi_parameters, parse_poll

router = APIRouter()
PREFIXES = ("/events", "/api/v1/events")  # the gateway's own name, and the hosted API's


def draining(retry_ms: int) -> GatewayError:
    """A poll's answer while the gateway shuts down: retry (another replica answers)."""
    return GatewayError(
        503,
        "draining",
        "the gateway is shutting down; poll again (another replica answers)",
        retryable=True,
        retry_after_ms=jittered_retry_ms(retry_ms),
    )


_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "{events, cursor, more, reset}: see the README"},
    **REFUSALS,
    429: {"description": "this client's address is past a per-client limit (retryable)"},
    503: {"description": "at a cap on upstream streams, or shutting down (retryable)"},
}


@router.get(
    "/poll",
    summary="A bounded read: up to max_events events after cursor, as JSON",
    openapi_extra={"parameters": openapi_parameters(POLL_PARAMS)},
    responses=_RESPONSES,
)
async def poll(
    request: Request,
    subscription: SubscriptionDep,
    params: QueryDep,
    state: StateDep,
    encoding: EncodingDep,
) -> Response:
    max_events, timeout = parse_poll(params)
    if subscription.consumer_group:
        # A group hands each event to one live member: events that arrive
        # between two polls would be handed to nobody.
        raise GatewayError(
            400,
            "invalid_parameter",
            "consumer_group: a poll cannot be a consumer group's member (events "
            "between polls would be lost to the group); stream /events instead",
        )
    lifecycle = state.lifecycle
    if lifecycle.draining:
        raise draining(state.settings.retry_ms)
    headers = {**HEADERS, **encoding.headers}
    if request.method == "HEAD":  # validated; no upstream call for it
        head = Response(headers=headers, media_type="application/json")
        del head.headers["content-length"]  # a GET's length is known only once it has polled
        return head
    # A waiting poll holds a place like a stream; refused, it is a 429 with
    # Retry-After (only /events itself must never answer non-200: CONTRACT.md).
    place = state.limits.admit(client_address(request))
    batch = Batch(max_events, subscription.cursor)
    # Drained like a stream: at SIGTERM the poll answers at once, while it
    # opens as while it waits (one that starts during the drain, at once).
    lifecycle.add(batch)
    try:
        await collect(state.source(subscription), batch, timeout, disconnected(request.receive))
    finally:
        lifecycle.discard(batch)
        place.release()
    if batch.failure is not None and not batch.events:
        raise batch.failure  # with events, the next poll meets it
    if batch.drained and not batch.events:
        # An empty 200 would say "nothing new": the client would take it as
        # caught up. It polls again instead, with the same cursor, elsewhere.
        raise draining(state.settings.retry_ms)
    return Response(encoding.body(batch.answer()), headers=headers, media_type="application/json")
