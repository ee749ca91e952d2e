"""The benchmarks as a user runs them: each cleans up what it made, however it ends.

Every run gets a ``TMPDIR`` of its own, so what a benchmark leaves behind is
counted exactly, whatever else runs on the machine.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from tests.conftest import wait_until

BENCH = Path(__file__).resolve().parent.parent / "bench"
# A benchmark started as from a terminal: SIGINT at its default whatever the suite
# inherited (an ignored SIGINT survives exec; the default lets Python raise
# KeyboardInterrupt), in a session of its own so Ctrl-C can reach its whole group.
AS_FROM_A_TERMINAL = [
    sys.executable,
    "-c",
    "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
    "os.execv(sys.executable, [sys.executable, *sys.argv[1:]])",
]


def bench_env(tmp: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KUMIHO_")}
    return {**env, "TMPDIR": str(tmp)}


def run_bench(tmp: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """A benchmark run to its end; its output captured (so a process left holding
    the pipe would make this time out)."""
    return subprocess.run(
        [sys.executable, *args],
        cwd=BENCH,
        env=bench_env(tmp),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def bench_processes(tmp: Path) -> list[psutil.Process]:
    """The processes a benchmark run with ``TMPDIR=tmp`` started (they inherit it)."""
    found = []
    for process in psutil.process_iter(["environ", "status"]):
        ours = (process.info["environ"] or {}).get("TMPDIR") == str(tmp)
        if ours and process.info["status"] != psutil.STATUS_ZOMBIE:
            found.append(process)
    return found


def leftovers(tmp: Path) -> list[str]:
    """The benchmark directories in ``tmp``, and the processes still running from there."""
    left = [p.name for p in tmp.glob("kumiho-bench-*")]
    return left + [f"pid {p.pid}: {p.cmdline()}" for p in bench_processes(tmp)]


@pytest.fixture
def tmp_path(tmp_path: Path) -> Iterator[Path]:
    """pytest's, and afterwards no process of the benchmark left running, whatever failed."""
    yield tmp_path
    for process in bench_processes(tmp_path):
        with contextlib.suppress(psutil.Error):
            process.kill()


# Each benchmark, small, and a line of what it prints at the end.
RUNS = {
    "idle": ("idle.py --streams 5 --seconds 1 --heartbeat 0.5", "event-loop wakeups/s"),
    "resume": ("resume.py --clients 5", "upstream calls"),
    "throughput": ("throughput.py --events 300 --rounds 1 --otel", "tracing on"),
    "compression": (
        "compression.py --activity 10 --wire-seconds 1 --clients 2 --rate 5 --seconds 1 "
        "--passes 1 --client-procs 1",
        "gzip / identity",
    ),
}


@pytest.mark.parametrize(("command", "table"), list(RUNS.values()), ids=list(RUNS))
def test_a_benchmark_run_leaves_nothing_behind(tmp_path: Path, command: str, table: str) -> None:
    result = run_bench(tmp_path, *command.split())
    assert result.returncode == 0, result.stderr
    assert table in result.stdout
    assert leftovers(tmp_path) == []


def test_fanout_compares_the_lean_response_with_sse_starlette(tmp_path: Path) -> None:
    # The README's command, small: both responses start, serve, and are compared.
    result = run_bench(
        tmp_path, "fanout.py", "--clients", "2", "--rate", "5", "--seconds", "1",
        "--response", "compare", "--passes", "1", "--client-procs", "1",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "sse-starlette" in result.stdout
    assert leftovers(tmp_path) == []


def test_fanout_runs_the_gateway_and_both_floors_in_turn_and_compares_their_medians(
    tmp_path: Path,
) -> None:
    result = run_bench(
        tmp_path, "fanout.py", "--clients", "2", "--rate", "5", "--seconds", "1",
        "--floors", "--workers", "1", "--passes", "2", "--client-procs", "1",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    runs = [line.split("|")[0].strip() for line in result.stdout.splitlines() if " proc #" in line]
    # Each pass begins with the next of the three: none always runs first.
    assert runs == [
        "gateway, 1 proc #1", "bare uvicorn, 1 proc #1", "raw transports, 1 proc #1",
        "bare uvicorn, 1 proc #2", "raw transports, 1 proc #2", "gateway, 1 proc #2",
    ]  # fmt: skip
    assert "gateway / floor, same run, medians of 2 passes" in result.stdout
    assert "every client received every event" in result.stdout
    assert leftovers(tmp_path) == []


def test_fanout_pinned_keeps_every_client_off_the_gateways_cpu(tmp_path: Path) -> None:
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("--pin needs two CPUs")
    bench = subprocess.Popen(
        [sys.executable, "fanout.py", "--clients", "4", "--rate", "5", "--seconds", "6",
         "--pin", "--client-procs", "2"],
        cwd=BENCH, env=bench_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        found: list[psutil.Process] = []

        def reading() -> bool:
            assert bench.poll() is None, bench.communicate()
            found[:] = psutil.Process(bench.pid).children()
            return sum("fanout.py" in " ".join(c.cmdline()) for c in found) == 2

        wait_until(reading, 60, "the benchmark's two client processes")
        gateway = [c for c in found if "serve" in c.cmdline()]
        others = [psutil.Process(bench.pid), *(c for c in found if c not in gateway)]
        assert len(gateway) == 1 and len(others) == 4, found  # the bench, devserver, 2 readers
        served = set(gateway[0].cpu_affinity())
        assert len(served) == 1
        for process in others:
            assert not served & set(process.cpu_affinity()), process.cmdline()
        out, err = bench.communicate(timeout=120)
        assert bench.returncode == 0, err
        assert "served processes pinned apart from the clients" in out
        assert leftovers(tmp_path) == []
    finally:
        if bench.poll() is None:
            bench.kill()
            bench.communicate()


def test_fanout_refuses_to_pin_more_workers_than_it_leaves_cpus_for(tmp_path: Path) -> None:
    cpus = len(os.sched_getaffinity(0))
    result = run_bench(tmp_path, "fanout.py", "--floors", "--workers", str(cpus), "--pin")
    assert result.returncode == 2
    assert f"--pin needs more CPUs than --workers: this process may use {cpus}" in result.stderr
    assert leftovers(tmp_path) == []


def test_a_gateway_that_fails_to_start_stops_the_stack_at_once(tmp_path: Path) -> None:
    started = time.monotonic()
    result = run_bench(
        tmp_path, "-c", "from stack import start_stack; start_stack(False, '--workers', '0')"
    )
    assert result.returncode != 0
    assert "the gateway exited with status 2 as it started" in result.stderr
    assert time.monotonic() - started < 25  # not after a 30 s wait for /healthz
    assert leftovers(tmp_path) == []


def _children_once_serving(bench: subprocess.Popen[str]) -> list[psutil.Process]:
    """The devserver and the gateway of a running benchmark, once the gateway serves."""
    found: list[psutil.Process] = []

    def serving() -> bool:
        assert bench.poll() is None, bench.communicate()
        found[:] = psutil.Process(bench.pid).children()
        ports = [
            c.cmdline()[c.cmdline().index("--port") + 1] for c in found if "serve" in c.cmdline()
        ]
        try:
            return bool(ports) and httpx.get(f"http://127.0.0.1:{ports[0]}/healthz").is_success
        except httpx.TransportError:
            return False

    wait_until(serving, 60, "the benchmark's gateway to serve")
    assert len(found) == 2, found
    return found


@pytest.mark.parametrize("how", ["ctrl-c", "sigterm", "sigkill"])
def test_a_benchmark_stopped_midway_leaves_no_process_behind(tmp_path: Path, how: str) -> None:
    bench = subprocess.Popen(
        [*AS_FROM_A_TERMINAL, "idle.py", "--streams", "5", "--seconds", "120"],
        cwd=BENCH,
        env=bench_env(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        children = _children_once_serving(bench)
        if how == "ctrl-c":  # the terminal signals the whole foreground group
            os.killpg(bench.pid, signal.SIGINT)
        else:
            bench.send_signal(signal.SIGTERM if how == "sigterm" else signal.SIGKILL)
        _, err = bench.communicate(timeout=60)  # ends once nothing holds its pipes
        wait_until(lambda: not any(c.is_running() for c in children), 30, "the stack to stop")
        if how == "sigkill":
            # Nothing of its own runs after SIGKILL: its processes stop, its directory stays.
            assert bench.returncode == -signal.SIGKILL
        else:
            # Ctrl-C ends Python by SIGINT once the finally blocks ran; SIGTERM by SystemExit.
            assert bench.returncode == (-signal.SIGINT if how == "ctrl-c" else 143), err
            assert leftovers(tmp_path) == [], err
    finally:
        if bench.poll() is None:
            os.killpg(bench.pid, signal.SIGKILL)
            bench.communicate()
