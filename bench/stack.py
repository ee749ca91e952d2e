"""What every benchmark needs: free ports, a devserver and a gateway on 127.0.0.1.

A stack cleans up after itself however the benchmark ends: ``stop_stack``
(in the caller's ``finally``) stops both processes and removes the
devserver's temporary directory, also after Ctrl-C; SIGTERM ends the
benchmark by ``SystemExit``, so its ``finally`` runs too; a launch that
fails stops what it had started; and each process is told to stop when the
benchmark dies by any means (even SIGKILL), so none is left an orphan
holding the terminal.
"""

from __future__ import annotations

import ctypes
import os
import resource
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil

# Loaded here, not in a forked child (where loading a library is not safe).
_LIBC = ctypes.CDLL(None, use_errno=True)
_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 65536)), hard))


def wait_healthy(url: str, proc: subprocess.Popen[bytes] | None = None) -> None:
    """Wait until ``url`` answers /healthz; fail at once if ``proc`` (its server) exits."""
    end = time.monotonic() + 30
    while time.monotonic() < end:
        if proc is not None and proc.poll() is not None:
            raise SystemExit(f"the gateway exited with status {proc.returncode} as it started")
        try:
            if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.05)
    raise SystemExit("the gateway did not start")


def _child(fd_limit: bool, cpus: set[int] | None) -> Callable[[], None]:
    """What a stack's process does between fork and exec."""

    def setup() -> None:
        # Stopped when the benchmark's process dies, even by SIGKILL (started from the
        # main thread: the signal comes when the thread that started it ends).
        _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        if fd_limit:
            raise_fd_limit()
        if cpus:
            os.sched_setaffinity(0, cpus)

    return setup


def _exit_on_sigterm() -> None:
    """SIGTERM ends the benchmark as SystemExit (status 143), so its ``finally`` cleans up."""

    def stop(sig: int, _: object) -> None:
        raise SystemExit(128 + sig)

    if signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
        signal.signal(signal.SIGTERM, stop)


@dataclass
class Stack:
    devserver: subprocess.Popen[bytes]
    gateway: subprocess.Popen[bytes]
    dev_addr: str
    gw_port: int
    gw: psutil.Process
    tmp: Path  # the devserver's database, removed by stop_stack
    others: list[subprocess.Popen[bytes]] = field(default_factory=list)  # add_gateway's


# Every benchmark client comes from 127.0.0.1: thousands of streams from one
# address, opened as fast as they can be. The per-client limits would refuse them.
UNLIMITED = ("--max-streams-per-client", "0", "--max-opens-per-client-per-second", "0")


def start_stack(
    no_hub: bool,
    *gateway_args: str,
    launcher: Sequence[str] = ("-m", "gateway"),
    devserver_args: Sequence[str] = (),
    devserver_cpus: set[int] | None = None,
    gateway_cpus: set[int] | None = None,
    gateway_env: Mapping[str, str] | None = None,
) -> Stack:
    """A devserver and a gateway (with a raised open-file limit) on free ports.

    ``launcher`` runs the gateway's command line: the package, or a bench module
    that patches it first (``sse_starlette_gateway.py``); ``devserver_args`` are
    the devserver's own flags (``--activity 2``); ``*_cpus`` pin a process to
    those CPUs; ``gateway_env`` replaces the gateway's environment. Stop it with
    ``stop_stack`` in a ``finally``.
    """
    _exit_on_sigterm()
    tmp = Path(tempfile.mkdtemp(prefix="kumiho-bench-"))
    dev_port, gw_port = free_port(), free_port()
    dev_addr = f"127.0.0.1:{dev_port}"
    started: list[subprocess.Popen[bytes]] = []
    try:
        devserver = subprocess.Popen(
            [sys.executable, "-m", "gateway", "devserver", "--port", str(dev_port),
             "--db", str(tmp / "bench.sqlite3"), *devserver_args],
            stdout=subprocess.PIPE, preexec_fn=_child(False, devserver_cpus),
        )  # fmt: skip
        started.append(devserver)
        assert devserver.stdout is not None
        # It prints one line once it listens (or exits, and the pipe ends).
        ready, _, _ = select.select([devserver.stdout], [], [], 30)
        line = devserver.stdout.readline() if ready else b""
        if b"listening" not in line:
            raise SystemExit(f"the devserver did not start: {line.decode(errors='replace')!r}")
        hub = ("--no-hub",) if no_hub else ()
        gateway = _gateway(dev_addr, gw_port, (*hub, *gateway_args), launcher, gateway_cpus,
                           gateway_env, None)  # fmt: skip
        started.append(gateway)
        wait_healthy(f"http://127.0.0.1:{gw_port}", gateway)
        return Stack(devserver, gateway, dev_addr, gw_port, psutil.Process(gateway.pid), tmp)
    except BaseException:
        _stop(started[::-1], tmp)
        raise


def _gateway(
    dev_addr: str,
    port: int,
    args: Sequence[str],
    launcher: Sequence[str],
    cpus: set[int] | None,
    env: Mapping[str, str] | None,
    stdout: int | None,
) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, *launcher, "serve", "--upstream", dev_addr,
         "--port", str(port), "--log-level", "warning", *UNLIMITED, *args],
        preexec_fn=_child(True, cpus), env=env, stdout=stdout,
    )  # fmt: skip


def add_gateway(
    stack: Stack,
    *gateway_args: str,
    cpus: set[int] | None = None,
    env: Mapping[str, str] | None = None,
    stdout: int | None = None,
) -> tuple[int, psutil.Process]:
    """Another gateway in front of the stack's devserver, stopped with it: its port and process."""
    port = free_port()
    proc = _gateway(stack.dev_addr, port, gateway_args, ("-m", "gateway"), cpus, env, stdout)
    stack.others.append(proc)
    wait_healthy(f"http://127.0.0.1:{port}", proc)
    return port, psutil.Process(proc.pid)


def stop_stack(stack: Stack) -> None:
    """Stop the gateways (they drain), then the devserver; remove the devserver's directory."""
    _stop([*stack.others, stack.gateway, stack.devserver], stack.tmp)


def _stop(processes: list[subprocess.Popen[bytes]], tmp: Path) -> None:
    try:
        # SIGTERM, not SIGINT: a benchmark started with SIGINT ignored (`cmd &` in a
        # script) passes that on, and the devserver would not stop.
        for proc in processes:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    finally:  # also when a second Ctrl-C cut the polite stop short
        for proc in processes:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()
        shutil.rmtree(tmp, ignore_errors=True)
