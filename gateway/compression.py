"""Compressed answers (``--compression gzip``): who gets gzip, and a gzip stream flushed per write.

A stream is one gzip member per connection. Each chunk the pump hands over
(a batch of frames, a heartbeat, the first ``retry:`` line) is compressed and
then sync-flushed, so the bytes written decode to that whole chunk: no event
waits in the compressor for the next one. The stream's last, empty chunk
finishes the member (its trailer), so a client that reads to the end holds a
valid, complete gzip stream. The compressor cannot be shared the way the
hub shares an event's frame: its output depends on everything the
connection was sent before, so each compressed client costs one compress
call per write (BENCHMARKS.md, "Compression").

When ``--compression`` is on, every answer that could be compressed (a
stream, a poll, HEAD included) says ``Vary: Accept-Encoding``, compressed
or not, so caches and proxies keep the two apart. When it is off the
gateway reads no ``Accept-Encoding`` at all.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

from gateway.errors import invalid_parameter
from gateway.negotiation import weights
from gateway.settings import Compression

MAX_ACCEPT_ENCODING = 256  # characters; browsers send about 25
_HEADER = "Accept-Encoding"
_GZIP = frozenset({"gzip", "x-gzip"})  # RFC 9110 8.4.1.3: x-gzip is gzip
_ALLOWED = frozenset(chr(c) for c in range(0x20, 0x7F)) | {"\t"}  # visible ASCII, SP, HTAB
# A gzip member (wbits 16 + 15) with a 32 KiB window: an event compresses
# against the hundred or so before it. A fan-out writes one event to many
# compressors in turn, each one's state cold in the CPU's cache, so what
# matters is the cost per write there: level 1 took about 9 us a write over
# 1,000 streams against level 6's 37, for 37 bytes per studio event instead
# of 26 (257 uncompressed). memLevel 4 instead of zlib's 8 keeps a
# connection's compressor at about 140 KiB instead of 260, for the same
# ratio: each write is small and flushed, so larger hash and block buffers
# buy nothing. (BENCHMARKS.md, "Compression".)
_WBITS = 31
_MEM_LEVEL = 4
_LEVEL = 1


def accepts_gzip(header: str | None) -> bool:
    """Whether an ``Accept-Encoding`` value accepts gzip for this answer (RFC 9110, 12.5.3).

    gzip (or ``x-gzip``), else ``*``, with a weight above 0, and not below
    the weight the client gives ``identity`` when it names it; a coding
    named twice counts at its lowest weight, so ``gzip;q=0`` anywhere
    refuses. No header, an empty one, or one without gzip or ``*``: no gzip.
    Raises a 400 for a value past the length or character limit.
    """
    if header is None:
        return False
    if len(header) > MAX_ACCEPT_ENCODING:
        raise invalid_parameter(
            _HEADER, f"is {len(header)} characters long; the limit is {MAX_ACCEPT_ENCODING}"
        )
    for char in header:
        if char not in _ALLOWED:
            raise invalid_parameter(
                _HEADER,
                f"contains the character U+{ord(char):04X}; a list of encodings holds "
                "only visible ASCII, spaces and tabs",
            )
    found: dict[str, float] = {}
    for coding, q in weights(header):
        coding = "gzip" if coding in _GZIP else coding
        found[coding] = min(q, found.get(coding, q))
    gzip = found.get("gzip", found.get("*", 0.0))
    return gzip > 0 and gzip >= found.get("identity", 0.0)


class GzipStream:
    """One connection's gzip member, written a chunk at a time."""

    __slots__ = ("_deflate",)

    def __init__(self) -> None:
        self._deflate = zlib.compressobj(_LEVEL, zlib.DEFLATED, _WBITS, _MEM_LEVEL)

    def write(self, chunk: bytes) -> bytes:
        """The bytes that carry ``chunk`` whole; ``b""`` ends the member (its trailer)."""
        if not chunk:
            return self._deflate.flush(zlib.Z_FINISH)
        return self._deflate.compress(chunk) + self._deflate.flush(zlib.Z_SYNC_FLUSH)


@dataclass(frozen=True)
class Encoding:
    """How one answer's body goes out: gzip or as it is, and whether it says it could vary."""

    gzip: bool
    vary: bool  # compression is on: the answer depends on Accept-Encoding

    @property
    def headers(self) -> dict[str, str]:
        """The answer's ``Content-Encoding`` and ``Vary``, when it has them."""
        headers = {"Vary": "Accept-Encoding"} if self.vary else {}
        if self.gzip:
            headers["Content-Encoding"] = "gzip"
        return headers

    def body(self, data: bytes) -> bytes:
        """A whole body (a poll's answer), encoded."""
        return zlib.compress(data, _LEVEL, wbits=_WBITS) if self.gzip else data

    def stream(self) -> GzipStream | None:
        """A stream's compressor, or None for a stream sent as it is."""
        return GzipStream() if self.gzip else None


IDENTITY = Encoding(gzip=False, vary=False)


def negotiate(setting: Compression, accept_encoding: str | None) -> Encoding:
    """The encoding of an answer that could be compressed, by the setting and the request."""
    if setting == "off":
        return IDENTITY  # the header is not even read: nothing to refuse
    return Encoding(gzip=accepts_gzip(accept_encoding), vary=True)
