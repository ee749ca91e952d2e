"""Talk gRPC to the Kumiho server: one grpc.aio channel, metadata, capabilities.

The channel is created inside the running event loop (grpc.aio objects
belong to the loop that made them) and shared by every request, as the
Community Edition accepts a single client connection. Endpoint, TLS and
keepalive follow the official SDK's conventions.

Also what the upstream's statuses mean (``TERMINAL``, ``CURSOR_REJECTED``,
``UNREACHABLE``, ``CREDENTIAL_REFUSED``): one table for the routes and the
sources alike.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from pathlib import Path

import grpc

from gateway import correlation
from gateway._proto import kumiho_pb2, kumiho_pb2_grpc
from gateway.auth import Credential, ServiceToken
from gateway.endpoint import resolve_target
from gateway.errors import GatewayError
from gateway.items import Status, UpstreamState
from gateway.logs import scrub
from gateway.quota import StreamQuota
from gateway.settings import Settings

# The SDK's channel options: ping every 30 s, 10 s to answer, even when idle.
KEEPALIVE_OPTIONS: list[tuple[str, int | bool]] = [
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", True),
    ("grpc.http2.min_time_between_pings_ms", 10_000),
    ("grpc.http2.max_pings_without_data", 3),
]
_CAPABILITIES_DEADLINE = 5.0

EventCall = grpc.aio.UnaryStreamCall[kumiho_pb2.EventStreamRequest, kumiho_pb2.Event]


class Rejected(Exception):
    """A call the upstream refused or broke: its status and details, credentials scrubbed.

    Made only by ``Upstream.rejected``, the one door through which what an
    upstream says about a failed call enters the gateway; whatever logs,
    counts or answers it sees this. Trailing metadata never passes.
    """

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details


# How much of an upstream's free text the gateway repeats (logs, envelopes).
MAX_DETAILS = 500

# -- What the upstream's statuses mean, for the routes and the sources alike --

# Statuses retrying cannot fix: (HTTP status, code, what to tell the client).
TERMINAL = {
    grpc.StatusCode.UNAUTHENTICATED: (401, "unauthenticated", "rejected the credential"),
    grpc.StatusCode.PERMISSION_DENIED: (403, "permission_denied", "denied access to events"),
    grpc.StatusCode.INVALID_ARGUMENT: (400, "invalid_parameter", "rejected the request"),
    grpc.StatusCode.UNIMPLEMENTED: (502, "upstream_unsupported", "does not serve EventStream"),
}
# The credential was refused: a 401/403 before the stream, never a retry.
CREDENTIAL_REFUSED = frozenset({grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED})
# Transient statuses that mean "not reachable"; any other is the upstream failing.
UNREACHABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})
# Statuses that mean "this resume point cannot be resumed" (KUMIHO.md): the reset's reason.
CURSOR_REJECTED = {
    grpc.StatusCode.OUT_OF_RANGE: "cursor_expired",
    grpc.StatusCode.NOT_FOUND: "cursor_unknown",
    grpc.StatusCode.INVALID_ARGUMENT: "cursor_invalid",
}


def terminal_error(rejected: Rejected) -> GatewayError | None:
    """The GatewayError for a status retrying cannot fix, or None for a transient one."""
    if rejected.code not in TERMINAL:
        return None
    status, error_code, what = TERMINAL[rejected.code]
    return GatewayError(status, error_code, f"the upstream {what}: {rejected.details}")


def down(code: grpc.StatusCode, retry_in: float) -> Status:
    """The ``Status`` after a call failed in a way retrying may fix: unreachable, or failing."""
    state: UpstreamState = "unavailable" if code in UNREACHABLE else "failing"
    return Status.now(state, code.name, retry_in)


def _one_line(text: str) -> str:
    """The upstream's words as one bounded line: a CR or LF in them cannot forge a log
    line, nor megabytes of them flood the log. Scrubbed first, so no cut leaves a
    secret's head behind."""
    shown = "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)
    return shown if len(shown) <= MAX_DETAILS else shown[:MAX_DETAILS] + "..."


class Upstream:
    """The gateway's connection to Kumiho; start() it inside the running loop.

    ``interceptors`` go on the channel: tracing's (``tracing.py``), none when it is off.
    """

    def __init__(
        self, settings: Settings, interceptors: Sequence[grpc.aio.ClientInterceptor] = ()
    ) -> None:
        self._interceptors = list(interceptors) or None
        self.target = resolve_target(
            settings.upstream, use_tls=settings.use_tls, authority=settings.authority
        )
        self._ca_file = settings.ca_file
        self._api_keys = [key.get_secret_value() for key in settings.api_keys]
        self._tenant_id = settings.tenant_id
        self._capabilities_ttl = settings.capabilities_ttl
        self._capabilities: dict[
            tuple[str, str | None], tuple[float, kumiho_pb2.EventCapabilities]
        ] = {}
        self._channel: grpc.aio.Channel | None = None
        self._stub: kumiho_pb2_grpc.KumihoServiceAsyncStub | None = None
        # The gateway's own token for --auth service (a file is read again on refusal).
        self.service_token = ServiceToken(
            settings.auth_token.get_secret_value() if settings.auth_token else None,
            settings.auth_token_file,
        )
        # Shared by every source of this process: the caps on streams held upstream.
        # Per credential only where clients bring their own (passthrough); in the
        # other modes every request has one identity and the total is the cap.
        per_credential = settings.max_upstream_streams_per_credential
        self.quota = StreamQuota(
            settings.max_upstream_streams, per_credential if settings.auth == "passthrough" else 0
        )

    async def start(self) -> None:
        root = await asyncio.to_thread(Path(self._ca_file).read_bytes) if self._ca_file else None
        options: list[tuple[str, str | int | bool]] = list(KEEPALIVE_OPTIONS)
        if self.target.use_tls:
            options.append(("grpc.default_authority", self.target.authority))
            options.append(("grpc.ssl_target_name_override", self.target.authority))
            self._channel = grpc.aio.secure_channel(
                self.target.address,
                grpc.ssl_channel_credentials(root),
                options=options,
                interceptors=self._interceptors,
            )
        else:
            self._channel = grpc.aio.insecure_channel(
                self.target.address, options=options, interceptors=self._interceptors
            )
        self._stub = kumiho_pb2_grpc.KumihoServiceStub(self._channel)

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close(grace=None)
            self._channel = None

    def metadata(self, credential: Credential, cid: str) -> tuple[tuple[str, str], ...]:
        """Call metadata: the correlation id ``cid``, the token, the tenant."""
        md: list[tuple[str, str]] = [(correlation.HEADER, cid)]
        if credential.upstream_token:
            md.append(("authorization", f"Bearer {credential.upstream_token}"))
        tenant = credential.tenant or self._tenant_id
        if tenant:
            md.append(("x-tenant-id", tenant))
        return tuple(md)

    def rejected(
        self, code: grpc.StatusCode, details: str | None, credential: Credential
    ) -> Rejected:
        """A failed call as the gateway may repeat it.

        Careless servers quote the credential in their details: the token
        sent with the call, the gateway's own token and its gateway keys (the
        credential a client presented in --auth service) become ``***``, as
        does any ``Bearer ...`` or ``access_token=...``.
        """
        secrets = [credential.upstream_token, self.service_token.current(), *self._api_keys]
        return Rejected(code, _one_line(scrub(details or "", secrets)))

    def event_stream(
        self, request: kumiho_pb2.EventStreamRequest, credential: Credential
    ) -> EventCall:
        """Start an EventStream call (no deadline, like the SDKs)."""
        assert self._stub is not None, "Upstream.start() was not awaited"
        with correlation.for_call() as cid:
            return self._stub.EventStream(request, metadata=self.metadata(credential, cid))

    async def capabilities(self, credential: Credential) -> kumiho_pb2.EventCapabilities:
        """GetEventCapabilities for this credential, reused for ``capabilities_ttl`` seconds."""
        assert self._stub is not None, "Upstream.start() was not awaited"
        key = (credential.identity, credential.tenant)
        cached = self._capabilities.get(key)
        now = time.monotonic()
        if cached and now - cached[0] < self._capabilities_ttl:
            return cached[1]
        with correlation.for_call() as cid:
            call = self._stub.GetEventCapabilities(
                kumiho_pb2.GetEventCapabilitiesRequest(),
                metadata=self.metadata(credential, cid),
                timeout=_CAPABILITIES_DEADLINE,
            )
        caps: kumiho_pb2.EventCapabilities = await call
        if len(self._capabilities) > 10_000:  # bound memory under many distinct tokens
            self._capabilities.clear()
        self._capabilities[key] = (now, caps)
        return caps

    def connected(self) -> bool:
        """Whether the channel is connected now (no wait, no new attempt)."""
        return (
            self._channel is not None
            and self._channel.get_state() == grpc.ChannelConnectivity.READY
        )

    async def ready(self, wait: float = 1.0) -> bool:
        """Whether the channel is (or becomes, within ``wait`` seconds) connected."""
        if self._channel is None:
            return False
        state = self._channel.get_state(try_to_connect=True)
        if state == grpc.ChannelConnectivity.READY:
            return True
        try:
            async with asyncio.timeout(wait):  # not wait_for: see source.py
                await self._channel.channel_ready()
        except TimeoutError:
            return False
        return True
