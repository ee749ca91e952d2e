"""Fan-out: M clients on one filter, R events/s for D seconds, through one gateway.

For each M it reports deliveries/s, the gateway's CPU per delivery, p50/p99
latency from publish to receipt, the upstream streams open (as the devserver
counts them) and the gateway's RSS per open stream: RSS with the M clients
connected minus RSS before, over M. "Before" is after a warm-up: a few
streams per worker opened and closed, since a process's first streams open
its upstream stream, import and build what the route needs once and grow
its allocators, a one-time cost that is no stream's. That cost is the last
column, "set-up MiB".

    python bench/fanout.py [--clients 1,100,1000] [--rate 20] [--seconds 10]
                           [--no-hub | --compare]
                           [--response lean|sse-starlette|compare [--passes 2]]
                           [--floors [--passes N]]
                           [--filters N] [--workers N] [--pin]

``--response sse-starlette`` answers /events with sse-starlette's full
EventSourceResponse (``sse_starlette_gateway.py``) instead of the gateway's lean
response; ``compare`` alternates the two, ``--passes`` times each, in one run,
prints every row and the ratios, and fails unless every client got every event.

``--filters N`` runs the gateway in ``--auth service`` (one credential) twice
in one run: every client on one filter (``routing_key=revision.created``),
then the clients spread over N different filters (routing-key lists, kref
subtrees, detail filters: ``diverse_filter``, all matching every event), and
prints both tables and the ratios: the price of matching many filters on one
shared upstream stream.

``--workers N`` runs the gateway as N worker processes (``serve --workers``):
the CPU and RSS columns then add up the pool's processes, and the upstream
streams are at most one per worker and credential.

``--pin`` gives the gateway (or floor) as many CPUs as it has workers, to
itself, and puts the devserver, the publisher and the clients on the others. Unpinned, on a
small machine, the kernel may wake a client on the served process's own
CPU, and the two then take turns write by write: the same round of writes
takes longer in wall time, by up to a fifth, and how often that happens
depends on the served process (one whose loop wakes often when idle fell
into it more: BENCHMARKS.md, "Fifth turn"). Pinned, the latency measures
the served process, not where the kernel put its clients.

Everything runs on 127.0.0.1; each round is bounded by its duration plus a deadline.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import multiprocessing
import os
import socket
import statistics
import sys
import threading
import time
import zlib
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import psutil
from stack import raise_fd_limit, start_stack, stop_stack

from gateway.devserver.control import DevServerClient

SENT = b'"sent":"'
# How the gateway is started for each --response: the package, or the package
# with sse-starlette's EventSourceResponse patched in.
LAUNCHERS = {
    "lean": ("-m", "gateway"),
    "sse-starlette": (str(Path(__file__).with_name("sse_starlette_gateway.py")),),
}
# --floors: what the gateway is measured against (floors.py), in the same run.
FLOORS = {
    "bare uvicorn": (str(Path(__file__).with_name("floors.py")), "uvicorn"),
    "raw transports": (str(Path(__file__).with_name("floors.py")), "raw"),
}


KEY = "bench-key"  # the gateway key of --filters runs (--auth service)


class Client:
    """A lean SSE reader on a raw socket: counts events and their latency.

    With ``gzip`` it asks for a compressed stream (``--compression gzip``) and
    reads it as a browser would: the chunks taken apart, then decompressed.
    """

    def __init__(self, query: str = "", key: str | None = None, gzip: bool = False) -> None:
        auth = f"Authorization: Bearer {key}\r\n" if key else ""
        encoding = "Accept-Encoding: gzip\r\n" if gzip else ""
        self.request = (
            f"GET /events{query} HTTP/1.1\r\nHost: bench\r\nAccept: text/event-stream\r\n"
            f"{auth}{encoding}\r\n"
        ).encode()
        self.gzip = gzip
        self.received = 0
        self.latencies: list[float] = []
        self.connected = asyncio.Event()

    async def run(self, port: int, stop: asyncio.Event) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 20)
        writer.write(self.request)
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        if self.gzip and b"content-encoding: gzip" not in head.lower():
            raise SystemExit("asked for gzip, got a stream without it: is --compression on?")
        self.connected.set()
        chunks = Dechunk(zlib.decompressobj(31)) if self.gzip else None
        buf = b""
        try:
            while not stop.is_set():
                chunk = await reader.read(65536)
                if not chunk:
                    return
                now = time.time()
                buf += chunk if chunks is None else chunks.feed(chunk)
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


class Dechunk:
    """A chunked body taken apart as it arrives, each chunk decompressed."""

    def __init__(self, inflate: Any) -> None:
        self.inflate = inflate
        self.raw = b""
        self.ended = False  # the last chunk came

    def feed(self, data: bytes) -> bytes:
        """What the bytes received so far decode to, past what was returned before."""
        self.raw += data
        out = []
        while True:
            size_line, found, rest = self.raw.partition(b"\r\n")
            if not found:
                break
            size = int(size_line.split(b";")[0], 16)
            if len(rest) < size + 2:
                break
            out.append(self.inflate.decompress(rest[:size]))
            self.raw = rest[size + 2 :]
            if size == 0:
                self.ended = True
                break
        return b"".join(out)


CONNECT_BATCH = 500  # connections a client process opens at a time


async def read_clients(
    queries: list[tuple[str, str | None]], port: int, conn: Connection, gzip: bool = False
) -> None:
    """One client process: open every stream, then answer the parent's "count" and "stop"."""
    clients = [Client(query, key, gzip) for query, key in queries]
    stop = asyncio.Event()
    tasks = []
    for i in range(0, len(clients), CONNECT_BATCH):
        batch = clients[i : i + CONNECT_BATCH]
        tasks += [asyncio.create_task(c.run(port, stop)) for c in batch]
        await asyncio.wait_for(asyncio.gather(*(c.connected.wait() for c in batch)), 60)
    # The instrument must not add pauses of its own to the latency it measures:
    # a client process collects no garbage while it reads.
    gc.collect()
    gc.disable()
    conn.send("connected")
    loop = asyncio.get_running_loop()
    done = loop.create_future()

    def command() -> None:
        if conn.recv() == "count":
            conn.send(sum(c.received for c in clients))
        elif not done.done():
            done.set_result(None)

    loop.add_reader(conn.fileno(), command)
    await done
    loop.remove_reader(conn.fileno())
    os.set_blocking(conn.fileno(), True)  # the loop made it non-blocking; the answer is large
    stop.set()
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    conn.send((sum(c.received for c in clients), [x for c in clients for x in c.latencies]))


def client_process(
    queries: list[tuple[str, str | None]], port: int, conn: Connection, gzip: bool = False
) -> None:
    raise_fd_limit()
    with asyncio.Runner(loop_factory=client_loop()) as runner:
        runner.run(read_clients(queries, port, conn, gzip))


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


def diverse_filter(j: int) -> str:
    """The j-th of many different filters, every one matching every published event."""
    kind = j % 3
    if kind == 0:
        return f"?routing_key=revision.created,bench.f{j}"  # a list of routing keys
    if kind == 1:
        return f"?kref=kref://bench/shots/**,kref://f{j}/**"  # kref subtrees
    return f"?details.tag=approved,f{j}&routing_key=revision.*"  # a detail filter


def pool(gw: psutil.Process) -> list[psutil.Process]:
    """The gateway's process and its workers (with --workers)."""
    return [gw, *gw.children(recursive=True)]


def cpu_seconds(gw: psutil.Process) -> float:
    return sum(sum(p.cpu_times()[:2]) for p in pool(gw))


def rss_bytes(gw: psutil.Process) -> int:
    return sum(p.memory_info().rss for p in pool(gw))


def queries(m: int, args: argparse.Namespace) -> list[tuple[str, str | None]]:
    """Each client's query and key."""
    if args.filters is None:
        return [("", None)] * m
    if args.diverse:
        filters = [diverse_filter(j) for j in range(args.filters)]
        return [(filters[i % args.filters], KEY) for i in range(m)]
    return [("?routing_key=revision.created", KEY)] * m


def round_(
    m: int, args: argparse.Namespace, gw_port: int, dev_addr: str, gw: psutil.Process
) -> dict[str, float]:
    mine = queries(m, args)
    before = rss_bytes(gw)
    warm_up(gw, gw_port, Client(*mine[0]).request)
    time.sleep(1)  # let the gateway settle before measuring (not a synchronisation)
    rss0 = rss_bytes(gw)
    # The clients spread over processes, so no one reader's queue is the latency measured.
    procs = min(args.client_procs, m)
    fork = multiprocessing.get_context("fork")
    readers = []
    for k in range(procs):
        parent, child = fork.Pipe()
        gzip = getattr(args, "gzip", False)  # compressed streams (bench/compression.py)
        proc = fork.Process(target=client_process, args=(mine[k::procs], gw_port, child, gzip))
        proc.start()
        readers.append((proc, parent))
    try:
        for _, conn in readers:
            if not conn.poll(120):
                raise SystemExit(f"{m} clients did not connect within 120 s")
            conn.recv()
        time.sleep(1)  # let the gateway settle before measuring (not a synchronisation)
        rss1 = rss_bytes(gw)
        with DevServerClient(dev_addr) as control:
            upstream = control.stats().open_streams
        cpu0 = cpu_seconds(gw)
        t0 = time.monotonic()
        sent = publish(dev_addr, args.rate, args.seconds, threading.Event())

        def received() -> int:
            for _, conn in readers:
                conn.send("count")
            return sum(conn.recv() for _, conn in readers)

        end = time.monotonic() + 10
        while received() < sent * m and time.monotonic() < end:
            time.sleep(0.05)  # polling the clients' counters, with a deadline
        elapsed = time.monotonic() - t0
        cpu = cpu_seconds(gw) - cpu0
        delivered, latencies = 0, []
        for _, conn in readers:
            conn.send("stop")
            got, seen = conn.recv()
            delivered += got
            latencies += seen
    finally:
        for proc, _ in readers:
            proc.join(30)
            if proc.is_alive():
                proc.kill()
    latencies.sort()
    q = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else [0.0] * 99
    return {
        "clients": m, "sent": sent, "delivered": delivered, "expected": sent * m,
        "deliveries/s": delivered / elapsed, "cpu_us": cpu / max(delivered, 1) * 1e6,
        "p50_ms": q[49] * 1000, "p99_ms": q[98] * 1000, "upstream": upstream,
        "rss_kib": (rss1 - rss0) / m / 1024, "setup_mib": (rss0 - before) / 2**20,
    }  # fmt: skip


def warm_up(gw: psutil.Process, port: int, request: bytes, each: int = 10) -> None:
    """Open streams with a client's ``request`` until every serving process has ``each``
    (bounded), read their heads, close them."""

    def fewest() -> int:
        held = {p: [c for c in p.net_connections("tcp") if c.laddr.port == port] for p in pool(gw)}
        listening = [p for p, conns in held.items() if any(not c.raddr for c in conns)]
        serving = [p for p in listening if p != gw] or [gw]  # a pool's parent accepts nothing
        return min(sum(bool(c.raddr) for c in held[p]) for p in serving)

    # In batches opened at once: one at a time, every stream would go to the
    # same process (the one awake in accept).
    streams: list[socket.socket] = []
    try:
        while len(streams) < 100 * each and (not streams or fewest() < each):
            batch = [socket.create_connection(("127.0.0.1", port), timeout=30) for _ in range(each)]
            streams += batch
            for sock in batch:
                sock.sendall(request)
            for sock in batch:
                head = b""
                while b"\r\n\r\n" not in head:
                    data = sock.recv(4096)
                    if not data:
                        raise SystemExit("a warm-up stream was closed before its head")
                    head += data
    finally:
        for sock in streams:
            sock.close()


def client_loop() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop for the clients when installed: the lighter they read, the less they
    compete with the gateway for the machine's cores (and the less their own
    queueing adds to the latency measured)."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def print_table(
    rows: list[dict[str, float]],
    args: argparse.Namespace,
    no_hub: bool,
    labels: Sequence[str] = (),
) -> None:
    """One line per row; ``labels`` (one per row) add a first column, the response."""
    print(
        f"fanout: {args.rate:g} events/s for {args.seconds:g}s, hub {'off' if no_hub else 'on'}, "
        f"{os.cpu_count()} CPUs, Python {sys.version.split()[0]}"
        + (f", {args.workers} gateway workers" if args.workers > 1 else "")
        + (", served processes pinned apart from the clients" if args.pin else "")
    )
    width = max((len(x) for x in labels), default=0)
    first = ("response".ljust(width),) if labels else ()
    header = (*first, "clients", "delivered/expected", "deliveries/s", "CPU us/delivery",
              "p50 ms", "p99 ms", "upstream streams", "RSS KiB/stream", "set-up MiB")  # fmt: skip
    print(" | ".join(header))
    print("-" * len(" | ".join(header)))
    for i, r in enumerate(rows):
        cells = (
            f"{r['clients']:.0f}", f"{r['delivered']:.0f}/{r['expected']:.0f}",
            f"{r['deliveries/s']:.0f}", f"{r['cpu_us']:.1f}", f"{r['p50_ms']:.1f}",
            f"{r['p99_ms']:.1f}", f"{r['upstream']:.0f}", f"{r['rss_kib']:.1f}",
            f"{r['setup_mib']:.1f}",
        )  # fmt: skip
        line = [c.rjust(len(h)) for c, h in zip(cells, header[len(first) :], strict=True)]
        if labels:
            line.insert(0, labels[i].ljust(width))
        print(" | ".join(line))


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}" if b else "-"


def print_ratios(hub: list[dict[str, float]], no_hub: list[dict[str, float]]) -> None:
    print("hub / no-hub, same run")
    header = ("clients", "upstream streams", "CPU us/delivery", "p99 ms", "RSS KiB/stream")
    print(" | ".join(header))

    for h, n in zip(hub, no_hub, strict=True):
        cells = (
            f"{h['clients']:.0f}", f"{h['upstream']:.0f}/{n['upstream']:.0f}",
            ratio(h["cpu_us"], n["cpu_us"]), ratio(h["p99_ms"], n["p99_ms"]),
            ratio(h["rss_kib"], n["rss_kib"]),
        )  # fmt: skip
        print(" | ".join(c.rjust(len(x)) for c, x in zip(cells, header, strict=True)))


def print_response_ratios(
    lean: list[list[dict[str, float]]], full: list[list[dict[str, float]]]
) -> None:
    """sse-starlette / lean for each pass (each pair ran back to back), then of the medians."""
    print("sse-starlette / lean, same run")
    header = ("  pass", "clients", "CPU us/delivery", "p50 ms", "p99 ms", "RSS KiB/stream")
    print(" | ".join(header))
    keys = ("cpu_us", "p50_ms", "p99_ms", "rss_kib")

    def line(name: str, clients: float, a: dict[str, float], b: dict[str, float]) -> None:
        cells = (name, f"{clients:.0f}", *(ratio(b[k], a[k]) for k in keys))
        print(" | ".join(c.rjust(len(h)) for c, h in zip(cells, header, strict=True)))

    for n, (lean_rows, full_rows) in enumerate(zip(lean, full, strict=True), 1):
        for a, b in zip(lean_rows, full_rows, strict=True):
            line(str(n), a["clients"], a, b)
    if len(lean) > 1:
        for a, b in zip(medians(lean), medians(full), strict=True):
            line("median", a["clients"], a, b)


def medians(passes: list[list[dict[str, float]]]) -> list[dict[str, float]]:
    """Row by row, each column's median over the passes (one list of rows a pass)."""
    return [
        {key: statistics.median(rows[j][key] for rows in passes) for key in row}
        for j, row in enumerate(passes[0])
    ]


def compare_responses(args: argparse.Namespace) -> None:
    """lean, sse-starlette, lean, sse-starlette, ...: one table, the ratios, a delivery check."""
    runs: dict[str, list[list[dict[str, float]]]] = {"lean": [], "sse-starlette": []}
    rows: list[dict[str, float]] = []
    labels: list[str] = []
    for n in range(1, (args.passes or 2) + 1):
        for response, passes in runs.items():
            passes.append(run_rounds(args, args.no_hub, response, show=False))
            rows += passes[-1]
            labels += [f"{response} #{n}"] * len(passes[-1])
    print_table(rows, args, args.no_hub, labels)
    print()
    print_response_ratios(runs["lean"], runs["sse-starlette"])
    check_delivered(rows, labels)


def check_delivered(rows: list[dict[str, float]], labels: Sequence[str]) -> None:
    """Exit 1 unless every client received every event (a variant must be correct)."""
    short = [f"{name} at {r['clients']:.0f} clients: {r['delivered']:.0f}/{r['expected']:.0f}"
             for name, r in zip(labels, rows, strict=True)
             if r["delivered"] != r["expected"]]  # fmt: skip
    if short:
        raise SystemExit("not every event was delivered: " + "; ".join(short))
    print("every client received every event, in every round")


def compare_filters(args: argparse.Namespace) -> None:
    """One filter, then ``--filters`` different lists, on one credential: tables and ratios."""
    results = []
    for diverse in (False, True):
        args.diverse = diverse
        results.append(run_rounds(args, args.no_hub, show=False))
    labels = [f"{name} filter{'s' if name != '1' else ''}" for name in ("1", str(args.filters))]
    rows = [*results[0], *results[1]]
    print_table(
        rows, args, args.no_hub, [labels[0]] * len(results[0]) + [labels[1]] * len(results[1])
    )
    print()
    print(f"{args.filters} filters / 1 filter, same run, --auth service")
    header = ("clients", "upstream streams", "CPU us/delivery", "p99 ms")
    print(" | ".join(header))
    for one, many in zip(*results, strict=True):
        cells = (
            f"{one['clients']:.0f}", f"{many['upstream']:.0f}/{one['upstream']:.0f}",
            ratio(many["cpu_us"], one["cpu_us"]), ratio(many["p99_ms"], one["p99_ms"]),
        )  # fmt: skip
        print(" | ".join(c.rjust(len(h)) for c, h in zip(cells, header, strict=True)))
    check_delivered(rows, [labels[0]] * len(results[0]) + [labels[1]] * len(results[1]))


def cpu_split(args: argparse.Namespace) -> tuple[set[int] | None, set[int] | None]:
    """With ``--pin``: the CPUs of the served processes (one per worker) and the others'."""
    if not args.pin:
        return None, None
    cpus = sorted(args.cpus)
    return set(cpus[: args.workers]), set(cpus[args.workers :])


def run_rounds(
    args: argparse.Namespace, no_hub: bool, response: str = "lean", show: bool = True
) -> list[dict[str, float]]:
    service = ("--auth", "service", "--api-keys", KEY) if args.filters is not None else ()
    workers = ("--workers", str(args.workers)) if args.workers > 1 else ()
    served, rest = cpu_split(args)
    if rest:
        os.sched_setaffinity(0, rest)  # the publisher, and the clients forked from here
    stack = start_stack(
        no_hub, *service, *workers, launcher={**LAUNCHERS, **FLOORS}[response],
        gateway_cpus=served, devserver_cpus=rest,
    )  # fmt: skip
    try:
        rows = []
        for m in (int(x) for x in args.clients.split(",")):
            rows.append(round_(m, args, stack.gw_port, stack.dev_addr, stack.gw))
            time.sleep(1)  # let the previous round's connections close (not a synchronisation)
    finally:
        stop_stack(stack)
    if show:
        print_table(rows, args, no_hub)
    return rows


def compare_floors(args: argparse.Namespace) -> None:
    """For each worker count: the gateway and each floor on the same clients, ``--passes``
    times (each pass begins with the next of the three, so none always runs first); every
    run in one table, then the ratios of the medians over the passes."""
    rows: list[dict[str, float]] = []
    labels: list[str] = []
    ratios: list[tuple[str, dict[str, float], dict[str, float], dict[str, float]]] = []
    names = ("lean", *FLOORS)
    passes = args.passes or 1
    for workers in args.workers_list:
        args.workers = workers
        runs: dict[str, list[list[dict[str, float]]]] = {name: [] for name in names}
        for n in range(passes):
            for name in names[n % len(names) :] + names[: n % len(names)]:
                got = run_rounds(args, False, name, show=False)
                runs[name].append(got)
                rows += got
                label = f"{'gateway' if name == 'lean' else name}, {workers} proc"
                labels += [label + (f" #{n + 1}" if passes > 1 else "")] * len(got)
        gateway, uvicorn_, raw = (medians(runs[name]) for name in names)
        for g, u, r in zip(gateway, uvicorn_, raw, strict=True):
            ratios.append((f"{workers} proc", g, u, r))
    args.workers = max(args.workers_list)
    print_table(rows, args, False, labels)
    print()
    print("gateway / floor, same run" + (f", medians of {passes} passes" if passes > 1 else ""))
    header = ("processes", "clients", "CPU/raw", "CPU/uvicorn", "p99 - raw p99 ms",
              "p99/raw", "RSS/raw", "gateway RSS KiB/stream")  # fmt: skip
    print(" | ".join(header))
    for procs, g, u, r in ratios:
        cells = (
            procs, f"{g['clients']:.0f}", ratio(g["cpu_us"], r["cpu_us"]),
            ratio(g["cpu_us"], u["cpu_us"]), f"{g['p99_ms'] - r['p99_ms']:+.1f}",
            ratio(g["p99_ms"], r["p99_ms"]), ratio(g["rss_kib"], r["rss_kib"]),
            f"{g['rss_kib']:.1f}",
        )  # fmt: skip
        print(" | ".join(c.rjust(len(h)) for c, h in zip(cells, header, strict=True)))
    check_delivered(rows, labels)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", default="1,100,1000")
    parser.add_argument("--rate", type=float, default=20.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--no-hub", action="store_true", help="one upstream stream per request")
    parser.add_argument(
        "--compare", action="store_true", help="hub, then --no-hub, in one run, and the ratios"
    )
    parser.add_argument(
        "--response",
        choices=(*LAUNCHERS, "compare"),
        default="lean",
        help="what answers /events: the gateway's lean response, sse-starlette's "
        "EventSourceResponse, or both alternately in one run (default: %(default)s)",
    )
    parser.add_argument(
        "--passes",
        type=int,
        help="with --response compare: runs of each (default: 2); with --floors: runs of "
        "the gateway and each floor, in turn, and the ratios of their medians (default: 1)",
    )
    parser.add_argument(
        "--filters",
        type=int,
        metavar="N",
        help="in --auth service: one filter for every client, then N different lists, "
        "in one run, and the ratios",
    )
    parser.add_argument(
        "--workers",
        default="1",
        help="gateway worker processes (default: 1); with --floors a list, e.g. 1,2",
    )
    parser.add_argument(
        "--floors",
        action="store_true",
        help="the gateway, a bare uvicorn app and raw asyncio transports, each writing "
        "every event to every client, in one run (floors.py), and the ratios",
    )
    parser.add_argument(
        "--client-procs",
        type=int,
        default=2,
        help="processes the clients are spread over (default: %(default)s)",
    )
    parser.add_argument(
        "--pin",
        action="store_true",
        help="the gateway (or floor) alone on as many CPUs as it has workers; the devserver, "
        "the publisher and the clients on the others (needs more CPUs than --workers)",
    )
    args = parser.parse_args()
    args.workers_list = [int(x) for x in args.workers.split(",")]
    if len(args.workers_list) > 1 and not args.floors:
        parser.error("a list of --workers needs --floors")
    args.workers = args.workers_list[0]
    args.cpus = os.sched_getaffinity(0)  # before --pin narrows this process's own
    if args.pin and len(args.cpus) <= max(args.workers_list):
        parser.error(f"--pin needs more CPUs than --workers: this process may use {len(args.cpus)}")
    raise_fd_limit()
    if args.compare and args.response != "lean":
        parser.error("--compare (hub vs no-hub) runs the lean response only")
    if args.floors:
        compare_floors(args)
    elif args.filters is not None:
        compare_filters(args)
    elif args.compare:
        print_ratios(run_rounds(args, False), run_rounds(args, True))
    elif args.response == "compare":
        compare_responses(args)
    else:
        rows = run_rounds(args, args.no_hub, args.response)
        if args.response != "lean":
            check_delivered(rows, [args.response] * len(rows))


if __name__ == "__main__":
    main()
