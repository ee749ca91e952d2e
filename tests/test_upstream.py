"""What a careless upstream says never carries a credential further.

A real grpc.aio Kumiho server, started in the test, fails on demand under
every gRPC status code: at GetEventCapabilities, when an EventStream opens,
and in the middle of a stream after an event. Each time its status details
and trailing metadata quote the ``authorization`` it received (``Bearer
<token>``) and the bare token, as careless servers do, plus what the test
adds. Gateways at ``--log-level debug``, in each ``--auth`` mode, with and
without the hub, serve /events, /capabilities and polls against it; no form
of any secret may appear in a log line, in /metrics, or in any answer.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, Literal

import grpc
import httpx
import pytest

from gateway._proto import kumiho_pb2, kumiho_pb2_grpc
from tests.conftest import BOTH_MODES, FAST, Gateway, wait_until
from tests.test_redaction import assert_hidden

pytestmark = BOTH_MODES

PASSTHROUGH_TOKEN = "CANARY-careless-pass-4f1c.SIG-careless-8b2e"
SERVICE_TOKEN = "svc-CANARY-careless-7d3a.SVCTAIL-careless-2c9f"
KEY = "gwkey-CANARY-careless-5e6b.KEYTAIL-careless-1a0d"
NONE_TOKEN = "CANARY-careless-none-9c4e.SIG-careless-3f7b"
MARKER = "CARELESS-UPSTREAM"  # begins every details string: the log must show it, masked
FAILING = [code for code in grpc.StatusCode if code != grpc.StatusCode.OK]
Where = Literal["capabilities", "open", "midstream"]
Context = grpc.aio.ServicerContext[Any, Any]


class Careless(kumiho_pb2_grpc.KumihoServiceServicer):
    """A Kumiho server that fails on demand, quoting the credential it was called with."""

    def __init__(self) -> None:
        self.code: grpc.StatusCode | None = None
        self.where: Where = "open"
        self.quotes: list[str] = []  # more to quote: what the test hides from every reader
        self.address = ""
        self._cursors = itertools.count(1)

    async def _fail(self, context: Context) -> None:
        assert self.code is not None
        authorization = dict(context.invocation_metadata() or ()).get("authorization", "")
        token = str(authorization).partition(" ")[2]
        said = [f"authorization: {authorization}", f"token {token}", f"[{token}]", *self.quotes]
        context.set_trailing_metadata(
            (("x-echo-authorization", str(authorization)), ("x-echo-token", token))
        )
        await context.abort(self.code, f"{MARKER} refused " + "; ".join(said))

    async def GetEventCapabilities(
        self, request: kumiho_pb2.GetEventCapabilitiesRequest, context: Context
    ) -> kumiho_pb2.EventCapabilities:
        if self.where == "capabilities":
            await self._fail(context)
        return kumiho_pb2.EventCapabilities(
            supports_replay=True, supports_cursor=True, tier="careless"
        )

    async def EventStream(
        self, request: kumiho_pb2.EventStreamRequest, context: Context
    ) -> AsyncIterator[kumiho_pb2.Event]:
        if self.where == "open":
            await self._fail(context)
        await context.send_initial_metadata(())
        if self.where == "midstream":
            yield kumiho_pb2.Event(
                routing_key="revision.created",
                kref=kumiho_pb2.Kref(uri="kref://careless/a.model"),
                cursor=f"{int(time.time() * 1000)}-{next(self._cursors)}",
            )
            await self._fail(context)
        await asyncio.Event().wait()  # an idle, healthy stream


@pytest.fixture
def careless() -> Iterator[Careless]:
    """The careless server on 127.0.0.1, on an event loop of its own in a thread."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    servicer = Careless()

    async def start() -> grpc.aio.Server:
        server = grpc.aio.server()
        kumiho_pb2_grpc.add_KumihoServiceServicer_to_server(servicer, server)  # type: ignore[no-untyped-call]
        servicer.address = f"127.0.0.1:{server.add_insecure_port('127.0.0.1:0')}"
        await server.start()
        return server

    server = asyncio.run_coroutine_threadsafe(start(), loop).result(30)
    yield servicer
    asyncio.run_coroutine_threadsafe(server.stop(None), loop).result(30)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(30)


def read_stream(gateway: Gateway, path: str, headers: dict[str, str], until: bytes) -> str:
    """One request; a 200 stream is read until ``until`` (or its end), other answers whole."""
    with (
        httpx.Client(timeout=20) as client,
        client.stream("GET", gateway.url + path, headers=headers) as r,
    ):
        head = f"{r.status_code} " + "\n".join(f"{k}: {v}" for k, v in r.headers.multi_items())
        if r.status_code != 200 or "event-stream" not in r.headers.get("content-type", ""):
            return head + "\n" + r.read().decode("latin-1")
        body = b""
        deadline = time.monotonic() + 20
        for chunk in r.iter_raw():
            body += chunk
            found = body.find(until)
            if found >= 0 and b"\n\n" in body[found:]:  # the whole frame
                break
            assert time.monotonic() < deadline, f"{path}: no {until!r} in 20s: {body!r}"
        return head + "\n" + body.decode("latin-1")


# (flags, environment, the client's headers, what the server quotes besides
# what it receives, the secrets no reader may see)
MODES: dict[str, tuple[list[str], dict[str, str], dict[str, str], list[str], list[str]]] = {
    # The operator's environment holds the SDK's token though the gateway sends
    # none, and a client sends a token it does not need.
    "none": (
        [],
        {"KUMIHO_AUTH_TOKEN": SERVICE_TOKEN},
        {"Authorization": f"Bearer {NONE_TOKEN}"},
        [f"Bearer {NONE_TOKEN}", f"service token {SERVICE_TOKEN}"],
        [NONE_TOKEN, SERVICE_TOKEN],
    ),
    "passthrough": (
        ["--auth", "passthrough"],
        {},
        {"Authorization": f"Bearer {PASSTHROUGH_TOKEN}"},
        [],
        [PASSTHROUGH_TOKEN],
    ),
    # The upstream never receives the client's key; quoted all the same.
    "service": (
        ["--auth", "service", "--api-keys", KEY],
        {"KUMIHO_AUTH_TOKEN": SERVICE_TOKEN},
        {"X-Kumiho-Token": KEY},
        [f"key {KEY}"],
        [KEY, SERVICE_TOKEN],
    ),
}


@pytest.mark.parametrize("auth", list(MODES))
def test_no_upstream_status_carries_a_credential_anywhere(
    careless: Careless, make_gateway: Callable[..., Gateway], auth: str
) -> None:
    flags, env, headers, quotes, secrets = MODES[auth]
    careless.quotes = quotes
    gateway = make_gateway(
        careless.address,
        *flags,
        *FAST,
        "--log-level",
        "debug",
        "--capabilities-ttl",
        "0",
        "--hub-linger",
        "0",
        env=env,
    )
    places: dict[str, str] = {}
    tenants = (f"tenant-{n}" for n in itertools.count())

    def ask(what: str, path: str, until: bytes = b"\n\n") -> str:
        # A tenant of its own per request: a fresh hub channel, never one left over.
        try:
            answer = read_stream(gateway, path, {**headers, "x-tenant-id": next(tenants)}, until)
        except httpx.TimeoutException as exc:
            raise AssertionError(f"{what}: no answer ({exc!r})\n{gateway.log()[-6000:]}") from None
        places[what] = answer
        return answer

    status_or_end = b"event: gateway."
    for code in FAILING:
        careless.code = code
        careless.where = "capabilities"
        ask(f"{code.name} /capabilities", "/capabilities")
        ask(f"{code.name} /events, capabilities failing", "/events?from=beginning")
        careless.where = "open"
        ask(f"{code.name} /events at open", "/events?from=beginning", status_or_end)
        ask(f"{code.name} poll at open", "/events/poll?timeout=0")
        ask(f"{code.name} hosted poll at open", "/api/v1/events/poll?timeout=0")
        careless.where = "midstream"
        ask(f"{code.name} /events mid-stream", "/events?from=beginning", b"event: gateway.")
    careless.where = "midstream"
    careless.code = grpc.StatusCode.UNAVAILABLE
    # A stream that resubscribes again and again meanwhile (the log line of each):
    # it may be live for a moment first, so read on until it says unavailable.
    resubscribing = ask("resubscribing", "/events", b'"upstream":"unavailable"')
    assert "unavailable" in resubscribing

    def logged() -> bool:
        return gateway.log().count("resubscribing") >= 3

    wait_until(logged, 20, "resubscribes in the log")
    log = gateway.log()
    assert "DEBUG:" in log and MARKER in log  # the details were logged (masked)
    places["the gateway log"] = log
    metrics = httpx.get(gateway.url + "/metrics", timeout=10).text
    places["/metrics"] = metrics
    assert gateway.metric("kumiho_gateway_upstream_failures_total", '{code="UNAVAILABLE"}')
    assert any(MARKER in answer for answer in places.values() if answer.startswith("4"))
    assert_hidden(secrets, places)
