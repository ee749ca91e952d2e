"""The upstream endpoint as the Kumiho SDK spells it: host[:port], https://host, grpcs://host.

Pure parsing, shared by the settings (which refuse a bad endpoint before
anything starts) and the upstream client (which dials the result).
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlparse

_TLS_SCHEMES = {"https", "grpcs"}
_PLAIN_SCHEMES = {"http", "grpc"}


@dataclass(frozen=True)
class Target:
    """Where and how to dial the upstream."""

    address: str
    authority: str
    use_tls: bool


def _port(text: str, endpoint: str) -> int:
    if not (text.isascii() and text.isdigit()) or not 0 < int(text) <= 65535:
        raise ValueError(f"{endpoint!r} has the port {text!r}; a port is a number from 1 to 65535")
    return int(text)


def resolve_target(
    endpoint: str, *, use_tls: bool | None = None, authority: str | None = None
) -> Target:
    """Apply the SDK's endpoint conventions; ValueError naming what is wrong.

    A bare host means plaintext on port 8080; https://, grpcs:// or port 443 mean TLS.
    """
    raw = endpoint.strip()
    if not raw:
        raise ValueError("the upstream endpoint is empty")
    scheme = ""
    port: int | None = None
    if "://" in raw:
        try:
            parsed = urlparse(raw)
            netloc = parsed.netloc
            host = parsed.hostname or ""
        except ValueError as exc:  # urllib's own words: "Invalid IPv6 URL"
            raise ValueError(f"{endpoint!r} is not a valid URL ({exc})") from None
        scheme = parsed.scheme.lower()
        if scheme not in _TLS_SCHEMES | _PLAIN_SCHEMES:
            raise ValueError(
                f"{endpoint!r} has the scheme {scheme!r}; use host[:port], https://, grpcs://, "
                "http:// or grpc://"
            )
        hostport = netloc.rpartition("@")[2]
        if hostport.startswith("["):
            hostport = hostport.partition("]")[2]
        _, colon, port_text = hostport.partition(":")
        port = _port(port_text, endpoint) if colon else None
    else:
        hostport = raw.split("/", 1)[0]
        if hostport.startswith("["):  # [::1]:8080
            host, bracket, rest = hostport[1:].partition("]")
            if not bracket or (rest and not rest.startswith(":")):
                raise ValueError(f"{endpoint!r} is not [IPv6 address]:port")
            port_text = rest[1:]
            has_port = bool(rest)
        else:
            host, colon, port_text = hostport.partition(":")
            has_port = bool(colon)
        if has_port:
            port = _port(port_text, endpoint)
    if not host or any(c.isspace() for c in host):
        raise ValueError(f"{endpoint!r} names no host")
    if port is None:
        port = 443 if scheme in _TLS_SCHEMES else 8080
    tls = scheme in _TLS_SCHEMES or port == 443
    if use_tls is not None:
        tls = use_tls
    shown_host = f"[{host}]" if ":" in host else host
    return Target(f"{shown_host}:{port}", authority or host, tls)
