"""Throughput: the gateway's read rate and CPU per event against a raw grpc.aio reader.

Preloads N events into a devserver, then reads them all from the beginning,
in alternating rounds within one run:

  raw      a plain grpc.aio client reading EventStream (the upstream's raw read
           rate: the ceiling for any Python reader)
  gateway  an SSE client reading GET /events?from=beginning through the gateway

and prints both rates, the CPU time per event of the raw reader's process and
of the gateway's process, and the ratios (medians over the rounds).

Both readers are separate processes measured the same way (psutil CPU time
around each round) and, on a machine with two or more CPUs, pinned to the
same CPU, while the devserver and the SSE client share another: the two
readers then compete with nothing but themselves, which keeps rounds
comparable on a small, noisy machine.

    python bench/throughput.py [--events 20000] [--rounds 5] [--otel]

``--otel`` adds a second gateway with tracing on (OTEL_TRACES_EXPORTER=console,
its spans written to /dev/null), read in each round after the plain one and
measured the same way: what tracing costs per event (README "Tracing").

Everything runs on 127.0.0.1; every loop is bounded by a count and a deadline.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

import httpx
import psutil
from stack import add_gateway, start_stack, stop_stack

from gateway.devserver.control import DevServerClient

DEADLINE = 120.0  # seconds for any single read


RAW_READER = f"""
import asyncio, sys, time
import grpc
from gateway._proto import kumiho_pb2, kumiho_pb2_grpc

async def read(address, n):
    async with grpc.aio.insecure_channel(address) as channel:
        stub = kumiho_pb2_grpc.KumihoServiceStub(channel)
        call = stub.EventStream(kumiho_pb2.EventStreamRequest(from_beginning=True))
        count, end = 0, time.monotonic() + {DEADLINE}
        async for _ in call:
            count += 1
            if count == n or time.monotonic() > end:
                break
        call.cancel()
    return count

async def main():
    address = sys.argv[1]
    for line in sys.stdin:  # one round per line: the number of events to read
        print(await read(address, int(line)), flush=True)

asyncio.run(main())
"""


class RawReader:
    """A plain grpc.aio client in its own process, reading one round per request."""

    def __init__(self, address: str, cpus: set[int] | None) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", RAW_READER, address],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None,
        )
        self.ps = psutil.Process(self.proc.pid)

    def read(self, n: int) -> None:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(f"{n}\n")
        self.proc.stdin.flush()
        got = int(self.proc.stdout.readline())
        if got != n:
            raise SystemExit(f"raw reader got {got} of {n} events")


def read_sse(url: str, n: int) -> None:
    """A lean SSE reader: counts complete frames with a data line, nothing else."""
    count = 0
    tail = b""
    end = time.monotonic() + DEADLINE
    with httpx.stream("GET", url + "/events", params={"from": "beginning"}, timeout=30) as r:
        for chunk in r.iter_raw():
            buf = tail + chunk
            count += buf.count(b"\ndata: ") - tail.count(b"\ndata: ")
            tail = buf[-8:]
            if count >= n or time.monotonic() > end:
                break
    if count < n:
        raise SystemExit(f"SSE reader got {count} of {n} events")


def cpu_seconds(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return times.user + times.system


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--otel", action="store_true", help="also a gateway with tracing on")
    args = parser.parse_args()
    n = args.events

    # Readers on CPU 1; the devserver and this process (the SSE client) on CPU 0.
    pinned = (os.cpu_count() or 1) >= 2
    producer_cpus, reader_cpus = ({0}, {1}) if pinned else (None, None)
    if producer_cpus:
        os.sched_setaffinity(0, producer_cpus)
    # Tracing off unless asked, whatever this shell's OTEL_* say.
    plain_env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    stack = start_stack(
        False,
        devserver_args=("--tier", "enterprise"),
        devserver_cpus=producer_cpus,
        gateway_cpus=reader_cpus,
        gateway_env=plain_env,
    )
    raw: RawReader | None = None
    url = f"http://127.0.0.1:{stack.gw_port}"
    try:
        with DevServerClient(stack.dev_addr, timeout=120) as control:
            for start in range(0, n, 5000):
                control.publish(
                    "revision.created",
                    "kref://bench/shots/sq010/sh0420.comp?r=7",
                    {"tag": "approved", "note": "throughput bench"},
                    author="u-bench",
                    username="bench",
                    count=min(5000, n - start),
                )
        gw = stack.gw
        traced: psutil.Process | None = None
        traced_url = ""
        if args.otel:
            traced_port, traced = add_gateway(
                stack,
                cpus=reader_cpus,
                env={**plain_env, "OTEL_TRACES_EXPORTER": "console"},
                stdout=subprocess.DEVNULL,  # the console exporter's spans
            )
            traced_url = f"http://127.0.0.1:{traced_port}"
            read_sse(traced_url, min(n, 1000))
        raw = RawReader(stack.dev_addr, reader_cpus)
        read_sse(url, min(n, 1000))  # warm up both paths once
        raw.read(min(n, 1000))
        traced_rows: list[tuple[float, float, float, float]] = []

        rows: list[tuple[float, float, float, float]] = []
        for _ in range(args.rounds):
            r0, t0 = cpu_seconds(raw.ps), time.perf_counter()
            raw.read(n)
            raw_wall, raw_cpu = time.perf_counter() - t0, cpu_seconds(raw.ps) - r0

            g0, t0 = cpu_seconds(gw), time.perf_counter()
            read_sse(url, n)
            gw_wall, gw_cpu = time.perf_counter() - t0, cpu_seconds(gw) - g0
            rows.append((n / raw_wall, n / gw_wall, raw_cpu / n * 1e6, gw_cpu / n * 1e6))
            if traced is not None:
                t0_cpu, t0 = cpu_seconds(traced), time.perf_counter()
                read_sse(traced_url, n)
                tr_wall, tr_cpu = time.perf_counter() - t0, cpu_seconds(traced) - t0_cpu
                traced_rows.append((n / gw_wall, n / tr_wall, gw_cpu / n * 1e6, tr_cpu / n * 1e6))

        print(
            f"throughput: {n} events from the beginning, {args.rounds} alternating rounds, "
            f"{os.cpu_count()} CPUs, Python {sys.version.split()[0]}"
        )
        print_pairs("raw", "gateway", rows)
        print("targets: rate ratio >= 0.80, CPU ratio <= 1.30")
        if traced_rows:
            print_traced(traced_rows)
    finally:
        if raw is not None:
            raw.proc.kill()
            raw.proc.wait()
        stop_stack(stack)


def print_traced(rows: list[tuple[float, float, float, float]]) -> None:
    """The traced gateway against the plain one, read in the same rounds."""
    print()
    print("tracing on (OTEL_TRACES_EXPORTER=console) against off, the same rounds")
    print_pairs("off", "on", rows)


def print_pairs(first: str, second: str, rows: list[tuple[float, float, float, float]]) -> None:
    """Rounds of (first ev/s, second ev/s, first CPU us/ev, second CPU us/ev), their ratios
    (second over first) and the medians."""
    a, b = max(len(first) + 5, 9), max(len(second) + 5, 9)
    c, d = len(first) + 10, len(second) + 10
    print(
        f"{'round':>5} | {first + ' ev/s':>{a}} | {second + ' ev/s':>{b}} | {'rate ratio':>10} | "
        f"{first + ' CPU us/ev':>{c}} | {second + ' CPU us/ev':>{d}} | {'CPU ratio':>9}"
    )
    width = 5 + a + b + 10 + c + d + 9 + 18
    print("-" * width)
    for i, (rate1, rate2, us1, us2) in enumerate(rows, 1):
        print(
            f"{i:>5} | {rate1:>{a}.0f} | {rate2:>{b}.0f} | {rate2 / rate1:>10.2f} | "
            f"{us1:>{c}.1f} | {us2:>{d}.1f} | {us2 / us1:>9.2f}"
        )
    med = [statistics.median(col) for col in zip(*rows, strict=True)]
    print("-" * width)
    print(
        f"{'med':>5} | {med[0]:>{a}.0f} | {med[1]:>{b}.0f} | "
        f"{statistics.median(r[1] / r[0] for r in rows):>10.2f} | {med[2]:>{c}.1f} | "
        f"{med[3]:>{d}.1f} | {statistics.median(r[3] / r[2] for r in rows):>9.2f}"
    )


if __name__ == "__main__":
    main()
