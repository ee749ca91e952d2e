"""Resume storm: M clients drop at once and reconnect with their Last-Event-ID.

Reports the time until every client has its next event, and how many
upstream calls the gateway made for the reconnects (target: none beyond the
shared stream, which the hub's ring makes possible).

    python bench/resume.py [--clients 1000] [--no-hub]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time

import psutil
from stack import raise_fd_limit, start_stack, stop_stack

from gateway.devserver.control import DevServerClient


async def read_next(port: int, last_id: str, ids: list[str], ready: asyncio.Event) -> str:
    """Connect (resuming after ``last_id``), return the id of the first event received."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 20)
    header = f"Last-Event-ID: {last_id}\r\n" if last_id else ""
    writer.write(f"GET /events HTTP/1.1\r\nHost: bench\r\n{header}\r\n".encode())
    await writer.drain()
    await reader.readuntil(b"\r\n\r\n")
    ready.set()
    try:
        while True:
            line = await reader.readline()
            if not line:
                return ""
            if line.startswith(b"id: "):
                ids.append(line[4:].strip().decode())
                return ids[-1]
    finally:
        writer.close()


async def storm(m: int, port: int, dev_addr: str, gw: psutil.Process) -> dict[str, float]:
    control = DevServerClient(dev_addr)
    # Everyone connects and gets one event: that is their Last-Event-ID.
    readies = [asyncio.Event() for _ in range(m)]
    firsts = [asyncio.create_task(read_next(port, "", [], r)) for r in readies]
    await asyncio.wait_for(asyncio.gather(*(r.wait() for r in readies)), 120)
    [cursor] = control.publish("revision.created", "kref://bench/a.model", {"phase": "before"})
    last_ids = await asyncio.wait_for(asyncio.gather(*firsts), 120)  # each client closes after it
    assert all(i == cursor for i in last_ids)
    # Events keep flowing while everybody is away.
    missed = control.publish("revision.created", "kref://bench/a.model", {"phase": "gap"})
    started_before = control.stats().streams_started
    cpu0 = sum(gw.cpu_times()[:2])
    t0 = time.monotonic()
    readies = [asyncio.Event() for _ in range(m)]
    results = await asyncio.wait_for(
        asyncio.gather(
            *(read_next(port, i, [], r) for i, r in zip(last_ids, readies, strict=True))
        ),
        120,
    )
    elapsed = time.monotonic() - t0
    cpu = sum(gw.cpu_times()[:2]) - cpu0
    upstream_calls = control.stats().streams_started - started_before
    control.close()
    assert all(r == missed[0] for r in results), "a client did not get the event it missed"
    return {
        "clients": m,
        "seconds": elapsed,
        "upstream_calls": upstream_calls,
        "cpu_ms": cpu * 1000,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--no-hub", action="store_true")
    args = parser.parse_args()
    raise_fd_limit()
    stack = start_stack(args.no_hub)
    try:
        result = asyncio.run(storm(args.clients, stack.gw_port, stack.dev_addr, stack.gw))
    finally:
        stop_stack(stack)
    hub = "off" if args.no_hub else "on"
    print(
        f"resume: {args.clients} clients reconnect at once with Last-Event-ID, hub {hub}, "
        f"{os.cpu_count()} CPUs, Python {sys.version.split()[0]}"
    )
    columns = ("clients", "all have their next event after", "upstream calls for the reconnects")
    print(" | ".join((*columns, "gateway CPU")))
    print(
        f"{result['clients']:>7} | {result['seconds']:>29.2f} s | {result['upstream_calls']:>33} | "
        f"{result['cpu_ms']:>8.0f} ms"
    )


if __name__ == "__main__":
    main()
