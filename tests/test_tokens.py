"""tokens.expiry: a JWT's exp, read (never verified) from any string a client can send."""

from __future__ import annotations

import base64
import math
import time
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway import tokens
from gateway.auth import MAX_TOKEN_LENGTH, authenticate
from gateway.errors import GatewayError
from tests.conftest import jwt


def segment(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


# -- what counts as an expiry ------------------------------------------------------------


@pytest.mark.parametrize(
    ("exp", "expected"),
    [
        (1_700_000_000, 1_700_000_000.0),
        (1_700_000_000.25, 1_700_000_000.25),  # a NumericDate may have a fraction
        (0, 0.0),
        (-5, -5.0),  # before 1970: expired, not "no expiry"
        (tokens.LATEST_EXPIRY, tokens.LATEST_EXPIRY),
    ],
)
def test_a_numeric_exp_is_read(exp: float, expected: float) -> None:
    assert tokens.expiry(jwt({"sub": "u", "exp": exp})) == expected


@pytest.mark.parametrize(
    "payload",
    [
        '{"exp": "1700000000"}',  # a string
        '{"exp": true}',  # bool is an int to Python, not a number to JSON
        '{"exp": null}',
        '{"exp": [1700000000]}',
        '{"exp": {"at": 1700000000}}',
        '{"sub": "no exp at all"}',
        '{"exp": 1e400}',  # parses as infinity
        '{"exp": NaN}',
        '{"exp": Infinity}',
        '{"exp": -Infinity}',
        '{"exp": 253402300800}',  # past the year 9999: never, for any stream
        '{"exp": ' + "9" * 400 + "}",  # an integer too large for a float
        '{"exp": ' + "9" * 5000 + "}",  # more digits than Python converts
        "[1700000000]",  # not an object
        '"exp"',
        "1700000000",
        '{"exp": 1700000000',  # cut short
        "[" * 5000 + "]" * 5000,  # nesting deeper than the parser recurses
    ],
)
def test_anything_else_is_no_expiry(payload: str) -> None:
    assert tokens.expiry(jwt(payload)) is None


@pytest.mark.parametrize(
    "token",
    [
        "",
        "opaque-token",
        "a.b",  # two parts
        jwt({"exp": 1}) + ".more",  # four parts (a JWE has five)
        "..",
        jwt({"exp": 1}).replace(".", "..", 1),
        "e30.e30.",  # {}.{}: no exp
        "eyJ9.eyJleHAiOjF9.x",  # a header that is no JSON
        segment(b"[]") + "." + segment(b'{"exp":1}') + ".x",  # a header that is no object
        "e30.eyJleHAiOjF9a.x",  # one base64 character too many (length 4n+1)
        "e30.eyJle+AiOjF9.x",  # standard base64's alphabet, not URL-safe
        "e30.eyJleHAiOjF9==.x",  # padding
        "e30.eyJle HAiOjF9.x",
        "e30." + "A" * (20 * 1024) + ".x",  # a huge payload
    ],
)
def test_malformed_tokens_have_no_expiry(token: str) -> None:
    assert tokens.expiry(token) is None


def test_a_payload_that_is_not_utf8_is_no_json() -> None:
    token = "e30." + segment(b'{"exp":1,"x":"\xff\xfe"}') + ".x"
    assert tokens.expiry(token) is None


def test_an_unsigned_jwt_is_read_too() -> None:
    # "alg": "none" has an empty signature; the gateway never judges signatures.
    assert tokens.expiry(jwt({"exp": 42}, {"alg": "none"}, signature="")) == 42.0


# -- properties ----------------------------------------------------------------------------

_finite = st.floats(allow_nan=False, allow_infinity=False)
_json_scalars = st.none() | st.booleans() | st.integers() | _finite | st.text(max_size=20)
_json = st.recursive(
    _json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)


@settings(max_examples=400, deadline=None)
@given(st.text(max_size=300))
def test_any_text_is_read_without_raising(text: str) -> None:
    exp = tokens.expiry(text)
    assert exp is None or (math.isfinite(exp) and exp <= tokens.LATEST_EXPIRY)


@settings(max_examples=400, deadline=None)
@given(
    st.dictionaries(st.text(max_size=8), _json, max_size=5),
    _json | st.floats(),  # exp itself may be NaN or infinite (not JSON: no expiry)
    st.text(max_size=12),
)
def test_any_claims_give_their_exp_when_it_is_a_number(
    claims: dict[str, Any], exp: Any, signature: str
) -> None:
    claims = {**claims, "exp": exp}
    token = jwt(claims, signature=segment(signature.encode()))
    assert tokens.expiry(token) == _as_expiry(exp)


def _as_expiry(exp: Any) -> float | None:
    """What the claim means: a time when it is a JSON number a stream could live to see."""
    if isinstance(exp, bool) or not isinstance(exp, int | float):
        return None
    try:
        seconds = float(exp)
    except OverflowError:
        return None
    return seconds if math.isfinite(seconds) and seconds <= tokens.LATEST_EXPIRY else None


@settings(max_examples=400, deadline=None)
@given(st.integers(min_value=0, max_value=80), st.binary(max_size=60), st.integers(0, 2))
def test_a_jwt_with_bytes_spliced_in_never_raises(at: int, junk: bytes, part: int) -> None:
    parts = jwt({"sub": "u", "exp": 1_700_000_000}).split(".")
    text = parts[part]
    parts[part] = text[:at] + segment(junk) + text[at:]
    exp = tokens.expiry(".".join(parts))
    assert exp is None or math.isfinite(exp)


@settings(max_examples=200, deadline=None)
@given(st.floats(min_value=-1e12, max_value=tokens.LATEST_EXPIRY, allow_nan=False))
def test_at_open_a_token_is_refused_exactly_when_its_exp_has_passed(exp: float) -> None:
    token = jwt({"exp": exp})
    now = time.time()
    try:
        credential = authenticate(
            "passthrough",
            headers={"authorization": f"Bearer {token}"},
            cookies={},
            access_token=None,
        )
    except GatewayError as refusal:
        assert exp <= time.time()
        assert (refusal.status, refusal.code, refusal.retryable) == (401, "token_expired", False)
        assert token not in refusal.message
        return
    assert exp > now
    assert credential.expires_at == exp


def test_the_gateway_reads_no_token_longer_than_it_accepts() -> None:
    # The limit auth.py applies before any token is read: a huge payload never gets here.
    token = jwt({"exp": 1, "pad": "x" * MAX_TOKEN_LENGTH})
    with pytest.raises(GatewayError) as refused:
        authenticate(
            "passthrough",
            headers={"authorization": f"Bearer {token}"},
            cookies={},
            access_token=None,
        )
    assert refused.value.code == "unauthenticated"
