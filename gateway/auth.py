"""Who a request is, and which credential goes upstream for it (``--auth``)."""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

from pydantic import SecretStr

from gateway import tokens
from gateway.errors import GatewayError
from gateway.settings import AuthMode

log = logging.getLogger("gateway.auth")

MAX_TOKEN_LENGTH = 8192
MAX_TENANT_LENGTH = 128
COOKIE_NAME = "kumiho_token"
# Kumiho's hosted API takes its token in this header (KUMIHO.md).
TOKEN_HEADER = "x-kumiho-token"
# The error code of a token past its JWT exp, before a stream and at its end.
TOKEN_EXPIRED = "token_expired"


@dataclass(frozen=True)
class Credential:
    """The token sent upstream (None for none) and a stable, non-secret identity."""

    upstream_token: str | None = field(repr=False)
    identity: str  # a hash of the token, never the token: safe for logs, keys and metrics
    tenant: str | None = None  # the client's x-tenant-id, sent upstream with the token
    # When the presented token says it expires (a JWT's exp, seconds since the
    # epoch): its stream ends then, with gateway.error token_expired.
    expires_at: float | None = None


ANONYMOUS = Credential(None, "anonymous")
SERVICE = "service"  # the identity of every request in --auth service


class ServiceToken:
    """The gateway's own upstream token: a fixed value, or a file read again on demand.

    A file (``KUMIHO_AUTH_TOKEN_FILE``, as the SDK names it) lets an operator
    rotate the token without a restart: when the upstream refuses the token,
    ``reload()`` reads the file again.
    """

    def __init__(self, value: str | None = None, path: str | None = None) -> None:
        self._path = path
        self._value = tokens.read_token_file(path) if path else value

    def current(self) -> str | None:
        return self._value

    def reload(self) -> bool:
        """Read the file again; True when it now holds another token."""
        if self._path is None:
            return False
        try:
            token = tokens.read_token_file(self._path)
        except ValueError as exc:
            log.warning("%s; keeping the token read before", exc)
            return False
        changed, self._value = token != self._value, token
        return changed

    def newer_than(self, used: str | None) -> str | None:
        """After the upstream refused ``used``: the token to use now, or None if that is it.

        Another stream may have read the file first, so this compares with the
        token the caller used, not with what the file held before.
        """
        self.reload()
        return self._value if self._value != used else None


def identity_of(token: str) -> str:
    return "sha256:" + hashlib.sha256(token.encode()).hexdigest()[:32]


def _presented_token(
    headers: Mapping[str, str], cookies: Mapping[str, str], access_token: str | None
) -> str | None:
    """The client's token: X-Kumiho-Token, Authorization, cookie, access_token parameter.

    X-Kumiho-Token comes first: a hosted API client may send a user's own
    token in Authorization beside it, which is not the Kumiho credential.
    An empty or blank value, whichever way it comes, is no token: passing it
    on would call the upstream with no credential at all.
    """
    kumiho = headers.get(TOKEN_HEADER, "").strip()
    if kumiho:
        return _checked(kumiho)
    header = headers.get("authorization", "").strip()
    if header:
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise GatewayError(
                401, "unauthenticated", "the Authorization header must be 'Bearer <token>'"
            )
        return _checked(token.strip())
    for candidate in (cookies.get(COOKIE_NAME), access_token):
        if candidate and not candidate.isspace():
            return _checked(candidate)
    return None


def _checked(token: str) -> str:
    if len(token) > MAX_TOKEN_LENGTH or not all("!" <= c <= "~" for c in token):
        raise GatewayError(
            401,
            "unauthenticated",
            f"the credential is malformed: at most {MAX_TOKEN_LENGTH} visible ASCII characters",
        )
    return token


def _tenant(headers: Mapping[str, str]) -> str | None:
    tenant = headers.get("x-tenant-id")
    if tenant is None:
        return None
    if not 0 < len(tenant) <= MAX_TENANT_LENGTH or not all("!" <= c <= "~" for c in tenant):
        raise GatewayError(
            400,
            "invalid_parameter",
            f"x-tenant-id: must be 1 to {MAX_TENANT_LENGTH} visible ASCII characters",
        )
    return tenant


def authenticate(
    mode: AuthMode,
    *,
    headers: Mapping[str, str],
    cookies: Mapping[str, str],
    access_token: str | None,
    service_token: str | None = None,
    api_keys: Sequence[SecretStr] = (),
) -> Credential:
    """The credential for one request, or a 401 GatewayError (400 for a bad x-tenant-id)."""
    tenant = _tenant(headers)
    credential = _credential(mode, headers, cookies, access_token, service_token, api_keys)
    return credential if tenant is None else replace(credential, tenant=tenant)


def _credential(
    mode: AuthMode,
    headers: Mapping[str, str],
    cookies: Mapping[str, str],
    access_token: str | None,
    service_token: str | None,
    api_keys: Sequence[SecretStr],
) -> Credential:
    if mode == "none":
        return ANONYMOUS
    token = _presented_token(headers, cookies, access_token)
    if token is None:
        what = "a Kumiho token" if mode == "passthrough" else "a gateway key"
        raise GatewayError(
            401,
            "unauthenticated",
            f"{what} is required: send 'Authorization: Bearer <token>', X-Kumiho-Token, "
            f"a {COOKIE_NAME} cookie or the access_token parameter",
        )
    if mode == "passthrough":
        return Credential(token, identity_of(token), expires_at=_unexpired(token))
    # service: compare against every key so timing does not reveal which matched.
    matched = False
    for key in api_keys:
        matched |= hmac.compare_digest(key.get_secret_value().encode(), token.encode())
    if not matched:
        raise GatewayError(401, "unauthenticated", "the gateway key is not valid")
    return Credential(service_token, SERVICE, expires_at=_unexpired(token))


def _unexpired(token: str, now: float | None = None) -> float | None:
    """The token's expiry (see tokens.expiry), or a 401 ``token_expired`` if it has passed.

    The gateway refuses what it knows has expired rather than ask the upstream:
    a stream opened with it would end at once with token_expired and its client
    would come back with the same token, again and again. The refusal is a 401,
    which ends an EventSource for good, as it must: only a fresh token helps.
    """
    expires_at = tokens.expiry(token)
    if expires_at is not None and expires_at <= (time.time() if now is None else now):
        raise token_expired(expires_at, retryable=False)
    return expires_at


def token_expired(expires_at: float, *, retryable: bool) -> GatewayError:
    """The refusal of a token whose ``exp`` has passed: a 401 before a stream (not
    retryable: the same request fails again), or the end of one (retryable: the
    client resumes with a fresh token and its last event id)."""
    # A negative exp (before 1970) is a time too, which datetime cannot always name.
    when = (
        datetime.fromtimestamp(expires_at, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
        if expires_at >= 0
        else f"{expires_at:g} seconds after 1970"
    )
    again = "resume with a fresh token" if retryable else "connect again with a fresh token"
    return GatewayError(
        401, TOKEN_EXPIRED, f"the token expired at {when}: {again}", retryable=retryable
    )
