"""Encoding one event frame: sse-starlette's ServerSentEvent against a bare f-string.

The gateway builds every frame with ``ServerSentEvent`` (``gateway/sse.py``).
This measures what that costs per frame against writing the same bytes by
hand, for the README's trade-off; both must produce identical bytes.

    python bench/encode.py [--frames 100000] [--repeat 7]
"""

from __future__ import annotations

import argparse
import timeit

from gateway import sse
from gateway._proto import kumiho_pb2

EVENT = kumiho_pb2.Event(
    routing_key="revision.tagged",
    kref=kumiho_pb2.Kref(uri="kref://film/chars/hero.model?r=3"),
    timestamp="2026-11-28T15:00:00.000Z",
    author="u-42",
    username="mina",
    details={"tag": "approved", "note": "ok"},
    cursor="1795879714483-0",
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    frame = sse.event_frame(EVENT, named=False)
    payload = frame.split(b"\ndata: ", 1)[1].rstrip(b"\n").decode()  # the JSON, built once

    def framed_by_starlette() -> bytes:
        return sse.ServerSentEvent(payload, id=EVENT.cursor, sep="\n").encode()

    def framed_by_hand() -> bytes:
        return f"id: {EVENT.cursor}\ndata: {payload}\n\n".encode()

    assert framed_by_starlette() == framed_by_hand() == frame  # the same bytes
    rows = []
    for name, func in (
        ("whole frame, ServerSentEvent (product)", lambda: sse.event_frame(EVENT, named=False)),
        ("framing only, ServerSentEvent", framed_by_starlette),
        ("framing only, f-string", framed_by_hand),
    ):
        best = min(timeit.repeat(func, number=args.frames, repeat=args.repeat))
        rows.append((name, best / args.frames * 1e6))
    print(f"{'encoding one event frame':42} | µs per frame (best of {args.repeat})")
    print("-" * 70)
    for name, us in rows:
        print(f"{name:42} | {us:8.2f}")
    print(f"ServerSentEvent framing / f-string framing: {rows[1][1] / rows[2][1]:.1f}x")


if __name__ == "__main__":
    main()
