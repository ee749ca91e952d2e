"""Idle streams: N SSE streams held open by one gateway process, no events.

Reports the gateway's RSS per open stream, the CPU it spends per minute
on heartbeats (measured over --seconds, scaled to a minute) and how often
its event loop woke a second (its thread's voluntary context switches:
each a sleep in the loop's wait for work, then a wake).

    python bench/idle.py [--streams 10000] [--seconds 30] [--heartbeat 15]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time

from stack import raise_fd_limit, start_stack, stop_stack

BATCH = 500  # connections opened at a time


async def hold(port: int, opened: asyncio.Event, stop: asyncio.Event) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /events HTTP/1.1\r\nHost: bench\r\n\r\n")
    await writer.drain()
    await reader.readuntil(b"\r\n\r\n")
    opened.set()
    try:
        while not stop.is_set() and await reader.read(4096):
            pass  # heartbeats
    finally:
        writer.close()


def loop_wakeups(pid: int) -> int:
    """How many times the process's main thread (its event loop) has slept and woken."""
    with open(f"/proc/{pid}/task/{pid}/status") as status:
        for line in status:
            if line.startswith("voluntary_ctxt_switches:"):
                return int(line.split()[1])
    raise SystemExit("no voluntary_ctxt_switches in /proc: idle.py runs on Linux")


async def measure(n: int, seconds: float, port: int, gw) -> dict[str, float]:  # type: ignore[no-untyped-def]
    rss0 = gw.memory_info().rss
    stop = asyncio.Event()
    tasks = []
    for start in range(0, n, BATCH):
        opened = [asyncio.Event() for _ in range(min(BATCH, n - start))]
        tasks += [asyncio.create_task(hold(port, o, stop)) for o in opened]
        await asyncio.wait_for(asyncio.gather(*(o.wait() for o in opened)), 120)
    await asyncio.sleep(2)  # let the gateway settle before measuring (not a synchronisation)
    rss1 = gw.memory_info().rss
    cpu0, woke0, t0 = sum(gw.cpu_times()[:2]), loop_wakeups(gw.pid), time.monotonic()
    await asyncio.sleep(seconds)  # the measurement window
    cpu = sum(gw.cpu_times()[:2]) - cpu0
    woke = loop_wakeups(gw.pid) - woke0
    elapsed = time.monotonic() - t0
    stop.set()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return {
        "rss_kib": (rss1 - rss0) / n / 1024,
        "cpu_s_per_min": cpu / elapsed * 60,
        "wakeups_per_s": woke / elapsed,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, default=10_000)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--heartbeat", type=float, default=15.0)
    args = parser.parse_args()
    raise_fd_limit()
    stack = start_stack(False, "--heartbeat", str(args.heartbeat))
    try:
        result = asyncio.run(measure(args.streams, args.seconds, stack.gw_port, stack.gw))
    finally:
        stop_stack(stack)
    print(
        f"idle: {args.streams} streams, heartbeat every {args.heartbeat:g}s, measured over "
        f"{args.seconds:g}s, {os.cpu_count()} CPUs, Python {sys.version.split()[0]}"
    )
    print("streams | RSS KiB per stream | gateway CPU s per minute | event-loop wakeups/s")
    print(
        f"{args.streams:>7} | {result['rss_kib']:>18.1f} | {result['cpu_s_per_min']:>24.2f} | "
        f"{result['wakeups_per_s']:>20.1f}"
    )


if __name__ == "__main__":
    main()
