"""Bearer tokens as values: when one says it expires, and how a file holds one.

Pure helpers, no I/O but a file read, shared by the server and its clients
(``tail`` reads a token file the way the gateway does).

``expiry`` reads a JWT's ``exp`` claim without verifying the token: the
gateway never decides that a token is good (the upstream does, when the
stream opens); it only learns when the token stops being good, to end the
stream then. A forged ``exp`` can therefore cost its sender a stream, never
grant one. PyJWT would read the claim too, but every check that matters here
(which values count as a time, and what a hostile token must never do) would
still be ours, and the decoding is three standard-library calls.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from pathlib import Path
from typing import Any

# A JWT in its compact form (RFC 7519, 7515): header.payload.signature, each
# base64url without padding; the signature may be empty ("alg": "none").
_SEGMENT = re.compile(r"[A-Za-z0-9_-]+")
# Later than the last second of the year 9999: no stream lives to see it, and
# ``datetime`` cannot name it. Such a token is taken to have no expiry.
LATEST_EXPIRY = 253402300799.0
# A payload past this many bytes is not read. Tokens are already bounded by
# auth.MAX_TOKEN_LENGTH; this keeps the function safe for any caller.
_MAX_SEGMENT = 16 * 1024


def expiry(token: str) -> float | None:
    """The ``exp`` of a JWT (seconds since the epoch), or None when it has none.

    None for anything that is not a compact JWT whose header and payload are
    JSON objects, and for an ``exp`` that is not a JSON number (a string, a
    boolean, an object) or is beyond ``LATEST_EXPIRY``. A negative ``exp``
    is a time before 1970: the token has expired. Never raises.
    """
    parts = token.split(".")
    if len(parts) != 3 or len(parts[1]) > _MAX_SEGMENT:
        return None
    header, payload = _json_object(parts[0]), _json_object(parts[1])
    if header is None or payload is None:
        return None
    exp = payload.get("exp")
    # bool is an int to Python, not a number to JSON.
    if isinstance(exp, bool) or not isinstance(exp, int | float):
        return None
    try:
        seconds = float(exp)
    except OverflowError:  # an integer too large for a float
        return None
    if not math.isfinite(seconds) or seconds > LATEST_EXPIRY:
        return None
    return seconds


def _json_object(segment: str) -> dict[str, Any] | None:
    """A base64url segment's JSON object, or None for any other content."""
    if len(segment) > _MAX_SEGMENT or not _SEGMENT.fullmatch(segment):
        return None
    try:
        raw = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
        value = json.loads(raw, parse_constant=_no_constant)
    except (binascii.Error, ValueError, RecursionError):
        # ValueError covers bad UTF-8, bad JSON, NaN/Infinity and integers
        # with more digits than Python converts; RecursionError, deep nesting.
        return None
    return value if isinstance(value, dict) else None


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def read_token_file(path: str | Path) -> str:
    """The token a file holds (KUMIHO_AUTH_TOKEN_FILE); ValueError if unreadable or empty."""
    try:
        token = Path(path).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) else "it is not UTF-8 text"
        raise ValueError(f"cannot read the token file {str(path)!r}: {why}") from None
    if not token:
        raise ValueError(f"the token file {str(path)!r} is empty")
    return token
