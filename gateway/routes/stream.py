"""``GET /events`` and ``GET /api/v1/events/stream``: two names for one stream path.

The route is thin: the Subscription comes validated (``dependencies``), the
source is opened here (so refusals become 400/401/403 before any byte), and
the Pump is returned as an EventStreamResponse, which ``StreamHandoff``
writes outside the middleware stack (see ``response.py``). The hosted route
differs only in its format: gateway signals as comment lines.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from gateway.admission import client_address
from gateway.compression import Encoding
from gateway.errors import GatewayError
from gateway.formats import Format, format_for
from gateway.items import Source
from gateway.pump import Pump, jittered_retry_ms
from gateway.response import HEADERS, EventStreamResponse
from gateway.routes.dependencies import (
    REFUSALS,
    EncodingDep,
    GatewayState,
    StateDep,
    SubscriptionDep,
)
from gateway.subscription import Subscription, openapi_parameters

log = logging.getLogger("gateway.routes.stream")

router = APIRouter()


def retry_answer(
    state: GatewayState, fmt: Format, encoding: Encoding, error: GatewayError | None = None
) -> Response:
    """Come back later: a retry: line (and why), never a non-200 (EventSource would stop).

    The delay is the usual jittered ``retry:``, or the error's own
    ``retry_after_ms`` when that is longer (a rate limit knows when to come back).
    """
    retry_ms = jittered_retry_ms(state.settings.retry_ms)
    if error is not None and error.retry_after_ms is not None:
        retry_ms = max(retry_ms, error.retry_after_ms)
    body = fmt.retry(retry_ms)
    if error is not None:
        error.retry_after_ms = retry_ms
        body += fmt.control("gateway.error", error.envelope()["error"])
    headers = {**HEADERS, **encoding.headers}
    return Response(encoding.body(body), headers=headers, media_type=fmt.media_type)


async def opened(state: GatewayState, subscription: Subscription) -> Source:
    """The subscription's source, opened (refusals raise GatewayError before any byte)."""
    source = state.source(subscription)
    try:
        await source.open()
    except BaseException:
        source.close()
        raise
    return source


async def stream(
    request: Request,
    subscription: Subscription,
    state: GatewayState,
    encoding: Encoding,
    *,
    hosted: bool,
) -> Response:
    """Every streaming surface: open the subscription's source and pump it to the client."""
    fmt = format_for(subscription.format, subscription.named, hosted)
    lifecycle = state.lifecycle
    if lifecycle.draining:
        return retry_answer(state, fmt, encoding)
    if request.method == "HEAD":
        # What a GET would answer, without opening an upstream stream for it.
        head = Response(headers={**HEADERS, **encoding.headers}, media_type=fmt.media_type)
        del head.headers["content-length"]
        return head
    client = client_address(request)
    try:
        place = state.limits.admit(client)
    except GatewayError as exc:  # this client's limits (logged and counted there)
        return retry_answer(state, fmt, encoding, exc)
    try:
        source = await opened(state, subscription)
    except GatewayError as exc:
        place.release()
        if exc.retryable:  # at a cap: a retry: line and why, then the client comes back
            log.info("stream refused for now: %s", exc.message)
            return retry_answer(state, fmt, encoding, exc)
        raise
    except BaseException:
        place.release()
        raise
    if lifecycle.draining:  # the drain began while the upstream answered
        source.close()
        place.release()
        return retry_answer(state, fmt, encoding)
    pump = Pump(
        source,
        fmt=fmt,
        settings=state.settings,
        metrics=state.metrics,
        lifecycle=lifecycle,
        ticker=state.ticker,
        client=client,
        place=place,
        expires_at=subscription.credential.expires_at,
    )
    return EventStreamResponse(pump, encoding)


_RESPONSES: dict[int | str, dict[str, Any]] = {200: {"description": "the event stream"}, **REFUSALS}


@router.get(
    "/events",
    summary="Stream Kumiho events as Server-Sent Events",
    response_class=EventStreamResponse,
    status_code=200,
    openapi_extra={"parameters": openapi_parameters()},
    responses=_RESPONSES,
)
async def events(
    request: Request, subscription: SubscriptionDep, state: StateDep, encoding: EncodingDep
) -> Response:
    return await stream(request, subscription, state, encoding, hosted=False)


@router.get(
    "/api/v1/events/stream",
    summary="The same stream under Kumiho's hosted API path: every data: line is an event",
    description="Gateway signals (status, reset, error) come as SSE comment lines here.",
    response_class=EventStreamResponse,
    status_code=200,
    openapi_extra={"parameters": openapi_parameters()},
    responses=_RESPONSES,
)
async def hosted_stream(
    request: Request, subscription: SubscriptionDep, state: StateDep, encoding: EncodingDep
) -> Response:
    return await stream(request, subscription, state, encoding, hosted=True)
