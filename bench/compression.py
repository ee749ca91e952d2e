"""Compression (``--compression gzip``): the bytes it saves and the CPU it costs, in one run.

1. Bytes on the wire over ``--wire-seconds`` (60) of the demo's studio activity
   (the devserver's ``--activity``, 2 events/s as ``demo`` runs it): two
   clients read one gateway at the same time, one asking for gzip and one
   not, counting the bytes of their answer's body as they arrive (chunk
   framing included). The gateway is then drained, so both bodies are
   complete (the gzip one with its trailer), and the gzip body must decode
   to the very frames of the other (its ``retry:`` value aside, jittered per
   connection).
2. CPU per delivery at ``--clients`` (1,000) clients, ``--rate`` events/s for
   ``--seconds``: one gateway, rounds alternating clients that ask for gzip
   and clients that do not (fanout.py's raw-socket readers; the gzip ones take
   the chunks apart and decompress, as a browser does), ``--passes`` times
   each, then the ratios. Each compressed client costs the gateway one
   compress call per write: the hub's one encoding of an event cannot be
   shared past the compressor, whose output depends on all the connection
   was sent before.
3. In this process, ``--clients`` compressors (``GzipStream``) written in
   turn with studio event frames, as a fan-out writes one event to every
   client: CPU per write with each one's state cold in the cache, and the
   memory one holds once its window has filled.

    python bench/compression.py [--activity 2] [--wire-seconds 60]
                                [--clients 1000] [--rate 20] [--seconds 8] [--passes 2]

Everything runs on 127.0.0.1; each part is bounded by its duration plus a deadline.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import signal
import statistics
import sys
import time
import zlib
from typing import Any

import psutil
from fanout import Dechunk, check_delivered, print_table, ratio, round_
from stack import raise_fd_limit, start_stack, stop_stack

from gateway import sse
from gateway._proto import kumiho_pb2
from gateway.compression import GzipStream
from gateway.devserver.activity import StudioActivity

GZIP = ("--compression", "gzip")


class WireReader:
    """One /events stream on a raw socket: the bytes of its body as they came, and its frames."""

    def __init__(self, port: int, gzip: bool) -> None:
        self.port, self.gzip = port, gzip
        self.wire = 0  # body bytes received, chunk framing included
        self.body = b""  # what the body decoded to
        self.inflate: Any = zlib.decompressobj(31) if gzip else None
        self.chunks = Dechunk(self.inflate if gzip else _Identity())

    async def run(self) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        encoding = "Accept-Encoding: gzip\r\n" if self.gzip else ""
        writer.write(f"GET /events HTTP/1.1\r\nHost: bench\r\n{encoding}\r\n".encode())
        head = await reader.readuntil(b"\r\n\r\n")
        if (b"content-encoding: gzip" in head.lower()) != self.gzip:
            raise SystemExit(f"asked for gzip={self.gzip}, got another answer:\n{head.decode()}")
        try:
            while not self.chunks.ended and (data := await reader.read(65536)):
                self.wire += len(data)
                self.body += self.chunks.feed(data)
        finally:
            writer.close()

    def frames(self) -> list[str]:
        text = re.sub(r"^retry: \d+$", "retry: N", self.body.decode(), flags=re.MULTILINE)
        return [f for f in text.split("\n\n") if f and f != ": heartbeat"]


class _Identity:
    """A decompressor that leaves bytes as they are (for the reader that asked for none)."""

    @staticmethod
    def decompress(data: bytes) -> bytes:
        return data


async def _read_pair(port: int, seconds: float, drain: Any) -> tuple[WireReader, WireReader]:
    zipped, plain = WireReader(port, gzip=True), WireReader(port, gzip=False)
    tasks = [asyncio.create_task(zipped.run()), asyncio.create_task(plain.run())]
    await asyncio.sleep(seconds)  # the measured minute of activity
    drain()  # SIGTERM: each stream gets its retry: line and ends, so both bodies are whole
    await asyncio.wait_for(asyncio.gather(*tasks), 30)
    return zipped, plain


def wire_bytes(args: argparse.Namespace) -> dict[str, float]:
    """Part 1: one client with gzip, one without, over the demo's activity; their bytes."""
    stack = start_stack(False, *GZIP, devserver_args=("--activity", str(args.activity)))
    try:
        zipped, plain = asyncio.run(
            _read_pair(
                stack.gw_port, args.wire_seconds, lambda: stack.gateway.send_signal(signal.SIGTERM)
            )
        )
        stack.gateway.wait(30)  # the drain ends the gateway too: no signal into its exit
    finally:
        stop_stack(stack)
    if not (zipped.chunks.ended and plain.chunks.ended):
        raise SystemExit("a stream did not end with its last chunk")
    if not (zipped.inflate.eof and zipped.inflate.unused_data == b""):
        raise SystemExit("the gzip body is not one complete gzip member")
    if zipped.frames() != plain.frames():
        raise SystemExit("the gzip body does not decode to the frames of the uncompressed one")
    events = sum(f.startswith("id: ") for f in plain.frames())
    print(
        f"compression: bytes on the wire over {args.wire_seconds:g} s of studio activity "
        f"(devserver --activity {args.activity:g}), one client each, same gateway, same time"
    )
    header = ("encoding", "events", "frames", "body bytes on the wire", "bytes/event", "ratio")
    print(" | ".join(header))
    print("-" * len(" | ".join(header)))
    for name, reader in (("identity", plain), ("gzip", zipped)):
        cells = (
            name, str(events), str(len(reader.frames())), f"{reader.wire:,}",
            f"{reader.wire / max(events, 1):.1f}", f"{plain.wire / reader.wire:.2f}x",
        )  # fmt: skip
        print(" | ".join(c.rjust(len(h)) for c, h in zip(cells, header, strict=True)))
    print("the gzip body decodes to the same frames, and ends with a complete gzip member")
    return {"identity": plain.wire, "gzip": zipped.wire, "events": events}


def cpu_rounds(args: argparse.Namespace) -> None:
    """Part 2: identity and gzip clients in turn on one gateway; the table and the ratios."""
    stack = start_stack(False, *GZIP)
    runs: dict[str, list[dict[str, float]]] = {"identity": [], "gzip": []}
    rows: list[dict[str, float]] = []
    labels: list[str] = []
    try:
        for n in range(1, args.passes + 1):
            for name in runs:
                args.gzip = name == "gzip"
                row = round_(args.clients, args, stack.gw_port, stack.dev_addr, stack.gw)
                runs[name].append(row)
                rows.append(row)
                labels.append(f"{name} #{n}")
                time.sleep(1)  # let the round's connections close (not a synchronisation)
    finally:
        stop_stack(stack)
    print_table(rows, args, False, labels)
    print()
    print("gzip / identity, same run, same gateway")
    header = ("  pass", "clients", "CPU us/delivery", "p50 ms", "p99 ms")
    print(" | ".join(header))
    keys = ("cpu_us", "p50_ms", "p99_ms")
    pairs = [
        (str(n), a, b)
        for n, (a, b) in enumerate(zip(runs["identity"], runs["gzip"], strict=True), 1)
    ]
    if args.passes > 1:
        median = {
            name: {k: statistics.median(r[k] for r in got) for k in keys}
            for name, got in runs.items()
        }
        pairs.append(("median", median["identity"], median["gzip"]))
    for name, plain, zipped in pairs:
        cells = (name, str(args.clients), *(ratio(zipped[k], plain[k]) for k in keys))
        print(" | ".join(c.rjust(len(h)) for c, h in zip(cells, header, strict=True)))
    extra = statistics.median(r["cpu_us"] for r in runs["gzip"]) - statistics.median(
        r["cpu_us"] for r in runs["identity"]
    )
    print(f"compression adds {extra:.1f} us of gateway CPU per delivery (medians)")
    print(
        "(RSS KiB/stream is read once the clients connect, before their compressors fill, "
        "and a later round reuses memory an earlier one freed: part 3 has a compressor's size)"
    )
    check_delivered(rows, labels)


def compressors(args: argparse.Namespace) -> None:
    """Part 3: ``--clients`` GzipStreams written in turn, as a fan-out writes one event to
    every client: the CPU per write with each one's state cold, and the memory each holds."""
    activity = iter(StudioActivity(seed=7))
    frames = []
    for n in range(400):
        new = next(activity)
        event = kumiho_pb2.Event(
            routing_key=new.routing_key, kref=kumiho_pb2.Kref(uri=new.kref),
            timestamp="2026-11-28T15:00:00.000Z", author=new.author, username=new.username,
            details=dict(new.details), cursor=f"{1795879714483 + 500 * n}-0",
        )  # fmt: skip
        frames.append(sse.event_frame(event, named=False))
    me = psutil.Process()
    rss0 = me.memory_info().rss
    streams = [GzipStream() for _ in range(args.clients)]
    for frame in frames[:300]:  # 77 KB each: past the 32 KiB window, every page touched
        for stream in streams:
            stream.write(frame)
    rss1 = me.memory_info().rss
    timed, wire = frames[300:], 0
    cpu0 = time.process_time()
    for frame in timed:
        for stream in streams:
            wire += len(stream.write(frame))
    cpu = time.process_time() - cpu0
    writes = len(timed) * len(streams)
    raw = sum(map(len, timed)) * len(streams)
    print(
        f"{len(streams)} GzipStreams written in turn, {len(timed)} studio event frames each "
        f"(after {300} to fill their windows):"
    )
    print(
        f"  {cpu / writes * 1e6:.1f} us CPU per write (compress + sync flush); "
        f"{raw / writes:.0f} bytes in, {wire / writes:.1f} out ({raw / wire:.1f}x); "
        f"{(rss1 - rss0) / len(streams) / 1024:.0f} KiB RSS per compressor"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--activity", type=float, default=2.0, help="studio events/s (the demo's)")
    parser.add_argument("--wire-seconds", type=float, default=60.0)
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=20.0)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--passes", type=int, default=2, help="rounds of each (default: 2)")
    parser.add_argument("--client-procs", type=int, default=2)
    args = parser.parse_args()
    # What fanout's round_ and print_table read besides these: one filter, one worker, unpinned.
    args.filters, args.diverse, args.workers, args.pin = None, False, 1, False
    raise_fd_limit()
    print(
        f"{os.cpu_count()} CPUs, Python {sys.version.split()[0]}, zlib {zlib.ZLIB_RUNTIME_VERSION}"
    )
    print()
    wire_bytes(args)
    print()
    cpu_rounds(args)
    print()
    compressors(args)


if __name__ == "__main__":
    main()
