"""Fan-out: M clients on one filter, R events/s for D seconds, through one gateway.

For each M it reports deliveries/s, the gateway's CPU per delivery, p50/p99
latency from publish to receipt, the upstream streams open (as the devserver
counts them) and the gateway's RSS per open stream (RSS with the clients
connected minus RSS before, over M).

    python bench/fanout.py [--clients 1,100,1000] [--rate 20] [--seconds 10]
                           [--no-hub | --compare]

Everything runs on 127.0.0.1; each round is bounded by its duration plus a deadline.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import threading
import time
from collections.abc import Callable

import psutil
from stack import raise_fd_limit, start_stack, stop_stack

from gateway.devserver.control import DevServerClient

SENT = b'"sent":"'


class Client:
    """A lean SSE reader on a raw socket: counts events and their latency."""

    def __init__(self) -> None:
        self.received = 0
        self.latencies: list[float] = []
        self.connected = asyncio.Event()

    async def run(self, port: int, stop: asyncio.Event) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 20)
        writer.write(b"GET /events HTTP/1.1\r\nHost: bench\r\nAccept: text/event-stream\r\n\r\n")
        await writer.drain()
        await reader.readuntil(b"\r\n\r\n")
        self.connected.set()
        buf = b""
        try:
            while not stop.is_set():
                chunk = await reader.read(65536)
                if not chunk:
                    return
                now = time.time()
                buf += chunk
                while (i := buf.find(SENT)) >= 0:
                    end = buf.find(b'"', i + len(SENT))
                    if end < 0:
                        break
                    self.latencies.append(now - float(buf[i + len(SENT) : end]))
                    self.received += 1
                    buf = buf[end:]
                buf = buf[-64:]
        finally:
            writer.close()


def publish(address: str, rate: float, seconds: float, stop: threading.Event) -> int:
    sent = 0
    start = time.monotonic()
    with DevServerClient(address) as control:
        while not stop.is_set() and time.monotonic() - start < seconds:
            control.publish(
                "revision.created",
                "kref://bench/shots/sq010/sh0420.comp?r=7",
                {"tag": "approved", "sent": f"{time.time():.6f}"},
            )
            sent += 1
            delay = start + sent / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)  # pacing the publisher
    return sent


async def round_(
    m: int, args: argparse.Namespace, gw_port: int, dev_addr: str, gw: psutil.Process
) -> dict[str, float]:
    rss0 = gw.memory_info().rss
    stop = asyncio.Event()
    clients = [Client() for _ in range(m)]
    tasks = [asyncio.create_task(c.run(gw_port, stop)) for c in clients]
    await asyncio.wait_for(asyncio.gather(*(c.connected.wait() for c in clients)), 60)
    await asyncio.sleep(1)  # let the gateway settle before measuring (not a synchronisation)
    rss1 = gw.memory_info().rss
    with DevServerClient(dev_addr) as control:
        upstream = control.stats().open_streams
    cpu0 = sum(gw.cpu_times()[:2])
    t0 = time.monotonic()
    halt = threading.Event()
    sent = await asyncio.to_thread(publish, dev_addr, args.rate, args.seconds, halt)
    end = time.monotonic() + 10
    while sum(c.received for c in clients) < sent * m and time.monotonic() < end:  # noqa: ASYNC110
        await asyncio.sleep(0.05)  # polling the clients' counters, with a deadline
    elapsed = time.monotonic() - t0
    cpu = sum(gw.cpu_times()[:2]) - cpu0
    stop.set()
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    delivered = sum(c.received for c in clients)
    latencies = sorted(x for c in clients for x in c.latencies)
    q = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else [0.0] * 99
    return {
        "clients": m, "sent": sent, "delivered": delivered, "expected": sent * m,
        "deliveries/s": delivered / elapsed, "cpu_us": cpu / max(delivered, 1) * 1e6,
        "p50_ms": q[49] * 1000, "p99_ms": q[98] * 1000, "upstream": upstream,
        "rss_kib": (rss1 - rss0) / m / 1024,
    }  # fmt: skip


def client_loop() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop for the clients when installed: the lighter they read, the less they
    compete with the gateway for the machine's cores (and the less their own
    queueing adds to the latency measured)."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def print_table(rows: list[dict[str, float]], args: argparse.Namespace, no_hub: bool) -> None:
    print(
        f"fanout: {args.rate:g} events/s for {args.seconds:g}s, hub {'off' if no_hub else 'on'}, "
        f"{os.cpu_count()} CPUs, Python {sys.version.split()[0]}"
    )
    header = ("clients", "delivered/expected", "deliveries/s", "CPU us/delivery",
              "p50 ms", "p99 ms", "upstream streams", "RSS KiB/stream")  # fmt: skip
    print(" | ".join(header))
    print("-" * 118)
    for r in rows:
        cells = (
            f"{r['clients']:.0f}", f"{r['delivered']:.0f}/{r['expected']:.0f}",
            f"{r['deliveries/s']:.0f}", f"{r['cpu_us']:.1f}", f"{r['p50_ms']:.1f}",
            f"{r['p99_ms']:.1f}", f"{r['upstream']:.0f}", f"{r['rss_kib']:.1f}",
        )  # fmt: skip
        print(" | ".join(c.rjust(len(h)) for c, h in zip(cells, header, strict=True)))


def print_ratios(hub: list[dict[str, float]], no_hub: list[dict[str, float]]) -> None:
    print("hub / no-hub, same run")
    header = ("clients", "upstream streams", "CPU us/delivery", "p99 ms", "RSS KiB/stream")
    print(" | ".join(header))

    def ratio(a: float, b: float) -> str:
        return f"{a / b:.2f}" if b else "-"

    for h, n in zip(hub, no_hub, strict=True):
        cells = (
            f"{h['clients']:.0f}", f"{h['upstream']:.0f}/{n['upstream']:.0f}",
            ratio(h["cpu_us"], n["cpu_us"]), ratio(h["p99_ms"], n["p99_ms"]),
            ratio(h["rss_kib"], n["rss_kib"]),
        )  # fmt: skip
        print(" | ".join(c.rjust(len(x)) for c, x in zip(cells, header, strict=True)))


def run_rounds(args: argparse.Namespace, no_hub: bool) -> list[dict[str, float]]:
    stack = start_stack(no_hub)
    try:
        rows = []
        for m in (int(x) for x in args.clients.split(",")):
            with asyncio.Runner(loop_factory=client_loop()) as runner:
                rows.append(runner.run(round_(m, args, stack.gw_port, stack.dev_addr, stack.gw)))
            time.sleep(1)  # let the previous round's connections close (not a synchronisation)
    finally:
        stop_stack(stack)
    print_table(rows, args, no_hub)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", default="1,100,1000")
    parser.add_argument("--rate", type=float, default=20.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--no-hub", action="store_true", help="one upstream stream per request")
    parser.add_argument(
        "--compare", action="store_true", help="hub, then --no-hub, in one run, and the ratios"
    )
    args = parser.parse_args()
    raise_fd_limit()
    if args.compare:
        print_ratios(run_rounds(args, False), run_rounds(args, True))
    else:
        run_rounds(args, args.no_hub)


if __name__ == "__main__":
    main()
