"""Pure functions of the request path: endpoint conventions, credentials, log redaction."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import SecretStr

from gateway import correlation
from gateway.auth import ANONYMOUS, ServiceToken, authenticate
from gateway.endpoint import Target, resolve_target
from gateway.errors import GatewayError
from gateway.logs import install, redact


@pytest.mark.parametrize(
    ("endpoint", "target"),
    [
        ("localhost", Target("localhost:8080", "localhost", False)),
        ("127.0.0.1:50051", Target("127.0.0.1:50051", "127.0.0.1", False)),
        ("kumiho.example:443", Target("kumiho.example:443", "kumiho.example", True)),
        (
            "https://us-central.kumiho.cloud",
            Target("us-central.kumiho.cloud:443", "us-central.kumiho.cloud", True),
        ),
        ("grpcs://k.example:8443", Target("k.example:8443", "k.example", True)),
        ("[::1]:9000", Target("[::1]:9000", "::1", False)),
    ],
)
def test_sdk_endpoint_conventions(endpoint: str, target: Target) -> None:
    assert resolve_target(endpoint) == target


def test_tls_and_authority_overrides() -> None:
    assert resolve_target("k.example:443", use_tls=False).use_tls is False
    assert resolve_target("k.example", use_tls=True, authority="edge.example") == Target(
        "k.example:8080", "edge.example", True
    )
    with pytest.raises(ValueError):
        resolve_target("  ")


@pytest.mark.parametrize(
    ("endpoint", "says"),
    [
        ("http://[bad", "is not a valid URL"),
        ("kumiho.example:99999", "a port is a number from 1 to 65535"),
        ("kumiho.example:abc", "a port is a number from 1 to 65535"),
        ("https://kumiho.example:", "a port is a number from 1 to 65535"),
        ("[::1", "is not [IPv6 address]:port"),
        ("ftp://kumiho.example", "has the scheme 'ftp'"),
        (":8080", "names no host"),
    ],
)
def test_a_bad_endpoint_is_refused_saying_why(endpoint: str, says: str) -> None:
    with pytest.raises(ValueError, match=re.escape(says)):
        resolve_target(endpoint)


def _auth(
    mode: str,
    headers: dict[str, str] | None = None,
    cookies: dict[str, str] | None = None,
    param: str | None = None,
    **kw,
):  # type: ignore[no-untyped-def]
    return authenticate(
        mode, headers=headers or {}, cookies=cookies or {}, access_token=param, **kw
    )  # type: ignore[arg-type]


def test_none_mode_ignores_credentials() -> None:
    assert _auth("none", {"authorization": "Bearer x"}) is ANONYMOUS


def test_passthrough_identity_is_a_hash_never_the_token() -> None:
    cred = _auth("passthrough", {"authorization": "Bearer s3cret"})
    assert cred.upstream_token == "s3cret"
    assert "s3cret" not in cred.identity and "s3cret" not in repr(cred)
    assert _auth("passthrough", cookies={"kumiho_token": "s3cret"}).identity == cred.identity
    assert _auth("passthrough", {"authorization": "Bearer other"}).identity != cred.identity


@pytest.mark.parametrize("header", ["Bearer", "Bearer ", "Token abc", "Bearer a b", "Bearer é"])
def test_malformed_authorization_is_401(header: str) -> None:
    with pytest.raises(GatewayError) as err:
        _auth("passthrough", {"authorization": header})
    assert err.value.status == 401


@pytest.mark.parametrize("mode", ["passthrough", "service"])
def test_a_blank_credential_counts_as_not_sent(mode: str) -> None:
    keys = [SecretStr("tok")]
    for blank in ("", "  ", "\t"):
        with pytest.raises(GatewayError) as err:
            _auth(mode, {"x-kumiho-token": blank}, {"kumiho_token": blank}, blank, api_keys=keys)
        assert err.value.status == 401 and "is required" in err.value.message
        # The next way a client sends one is read instead, as if the blank one were absent.
        sent = _auth(mode, {"x-kumiho-token": blank}, param="tok", api_keys=keys)
        assert sent.upstream_token == ("tok" if mode == "passthrough" else None)


def test_service_mode_keys() -> None:
    keys = [SecretStr("k1"), SecretStr("k2")]
    cred = _auth(
        "service", {"authorization": "Bearer k2"}, service_token="upstream-jwt", api_keys=keys
    )
    assert cred.upstream_token == "upstream-jwt" and cred.identity == "service"
    with pytest.raises(GatewayError):
        _auth("service", param="k3", service_token="upstream-jwt", api_keys=keys)


def test_redaction() -> None:
    assert (
        redact("GET /events?access_token=abc.def&named=true")
        == "GET /events?access_token=***&named=true"
    )
    assert redact("/events?kref=x&ACCESS_TOKEN=abc") == "/events?kref=x&ACCESS_TOKEN=***"
    # Every spelling the app decodes to access_token (and a proxy might decode again).
    for name in ("access%5Ftoken", "%61ccess_token", "ACCESS%5ftoken", "access%255Ftoken"):
        assert redact(f"GET /events?{name}=SECRET&x=1") == f"GET /events?{name}=***&x=1"
    assert redact("kref=kref://p/a=b&named=true") == "kref=kref://p/a=b&named=true"
    # The app ends a value only at "&": ";", '"', "#" and "=" are part of the token.
    assert (
        redact('GET /events?access_token=a;b"c#d=e/f&named=true')
        == "GET /events?access_token=***&named=true"
    )
    assert redact("/events?x=1;access_token=ab;c=d&k=v") == "/events?x=1;access_token=***&k=v"
    assert (
        redact('"GET /events?access_token=abc HTTP/1.1" 200')
        == '"GET /events?access_token=*** HTTP/1.1" 200'
    )


def test_an_upstream_status_is_scrubbed_of_every_credential_the_gateway_holds() -> None:
    import grpc

    from gateway.auth import Credential
    from gateway.settings import Settings
    from gateway.upstream import MAX_DETAILS, Upstream

    upstream = Upstream(
        Settings(
            auth_token=SecretStr("svc-tok"),
            api_keys=[SecretStr("key-1"), SecretStr("key-1-longer")],
        )
    )
    said = (
        "no: BEARER client-tok+x; token client-tok, svc-tok, key-1 and key-1-longer; "
        "authorization: bearer   other-tok; ?access_token=q1&z=2"
    )
    rejected = upstream.rejected(grpc.StatusCode.UNAVAILABLE, said, Credential("client-tok", "id"))
    assert rejected.code == grpc.StatusCode.UNAVAILABLE
    assert rejected.details == (
        "no: BEARER *** token ***, ***, *** and ***; "
        "authorization: bearer   *** ?access_token=***&z=2"
    )
    assert str(rejected) == f"UNAVAILABLE: {rejected.details}"
    assert upstream.rejected(grpc.StatusCode.INTERNAL, None, ANONYMOUS).details == ""
    # The upstream's text is one bounded line: it cannot forge a log line or flood the log.
    forged = upstream.rejected(
        grpc.StatusCode.INTERNAL, "oops\r\nINFO: forged\x00 line" + "x" * 10_000, ANONYMOUS
    ).details
    assert forged.startswith("oops\\r\\nINFO: forged\\x00 line") and forged.endswith("...")
    assert forged.isprintable() and len(forged) == MAX_DETAILS + 3


# A token as the app accepts it (visible ASCII), sent raw in a query: all but "&".
_RAW_TOKENS = st.text(
    st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters="&"), min_size=1
)


@given(
    token=_RAW_TOKENS, name=st.sampled_from(["access_token", "%61ccess%5ftoken", "ACCESS_TOKEN"])
)
def test_no_character_of_a_raw_token_survives_redaction(token: str, name: str) -> None:
    line = f"/events?from=beginning&{name}={token}&named=true"
    assert redact(line) == f"/events?from=beginning&{name}=***&named=true"


def test_every_logger_redacts_once_installed(caplog: pytest.LogCaptureFixture) -> None:
    install("info")
    with caplog.at_level(logging.DEBUG):
        logging.getLogger("gateway.pump").info("url %s", "/events?access_token=zzz")
        logging.getLogger("uvicorn.access").info("/events?%61ccess_token=yyy")
        logging.getLogger("some.library").warning("%(u)s", {"u": "?access_token=xxx"})
    text = caplog.text
    assert caplog.records and not any(s in text for s in ("zzz", "yyy", "xxx")), text


def test_upstream_metadata_has_a_fresh_correlation_id_and_the_bearer_token() -> None:
    from gateway.auth import Credential
    from gateway.settings import Settings
    from gateway.upstream import Upstream

    upstream = Upstream(Settings(upstream="127.0.0.1:1", tenant_id="studio-9"))
    # Outside a request (a hub stream's resubscribe), each call has an id of its own.
    with correlation.for_call() as cid:
        first = dict(upstream.metadata(Credential("jwt.a.b", "sha256:x"), cid))
    with correlation.for_call() as cid:
        second = dict(upstream.metadata(ANONYMOUS, cid))
    assert correlation.current() is None  # made current only while the call starts
    assert first["authorization"] == "Bearer jwt.a.b"
    assert first["x-tenant-id"] == "studio-9"
    assert "authorization" not in second
    assert (
        len(first["x-correlation-id"]) == 32
        and first["x-correlation-id"] != second["x-correlation-id"]
    )
    assert all(key == key.lower() for key in first)  # gRPC metadata keys are lower-case


def test_a_service_token_file_is_read_again_only_on_demand(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text(" first\n")
    token = ServiceToken(path=str(path))
    assert token.current() == "first"
    path.write_text("second\n")
    assert token.current() == "first"  # not before the upstream refuses it
    assert token.reload() is True and token.current() == "second"
    assert token.reload() is False  # unchanged
    path.write_text("")
    assert token.reload() is False and token.current() == "second"  # an empty file is ignored
    assert ServiceToken("fixed").reload() is False
