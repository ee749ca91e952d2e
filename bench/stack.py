"""What every benchmark needs: free ports, a devserver and a gateway on 127.0.0.1."""

from __future__ import annotations

import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 65536)), hard))


def wait_healthy(url: str) -> None:
    end = time.monotonic() + 30
    while time.monotonic() < end:
        try:
            if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.05)
    raise SystemExit("the gateway did not start")


@dataclass
class Stack:
    devserver: subprocess.Popen[str]
    gateway: subprocess.Popen[bytes]
    dev_addr: str
    gw_port: int
    gw: psutil.Process
    tmp: Path  # the devserver's database, removed by stop_stack


# Every benchmark client comes from 127.0.0.1: thousands of streams from one
# address, opened as fast as they can be. The per-client limits would refuse them.
UNLIMITED = ("--max-streams-per-client", "0", "--max-opens-per-client-per-second", "0")


def start_stack(
    no_hub: bool,
    *gateway_args: str,
    launcher: Sequence[str] = ("-m", "gateway"),
    devserver_args: Sequence[str] = (),
) -> Stack:
    """A devserver and a gateway (with a raised open-file limit) on free ports.

    ``launcher`` runs the gateway's command line: the package, or a bench module
    that patches it first (``sse_starlette_gateway.py``); ``devserver_args`` are
    the devserver's own flags (``--activity 2``).
    """
    tmp = Path(tempfile.mkdtemp(prefix="kumiho-bench-"))
    dev_port, gw_port = free_port(), free_port()
    dev_addr = f"127.0.0.1:{dev_port}"
    devserver = subprocess.Popen(
        [sys.executable, "-m", "gateway", "devserver", "--port", str(dev_port),
         "--db", str(tmp / "bench.sqlite3"), *devserver_args],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    hub = ["--no-hub"] if no_hub else []
    gateway = subprocess.Popen(
        [sys.executable, *launcher, "serve", "--upstream", dev_addr,
         "--port", str(gw_port), "--log-level", "warning", *UNLIMITED, *hub, *gateway_args],
        preexec_fn=raise_fd_limit,
    )  # fmt: skip
    assert devserver.stdout is not None
    devserver.stdout.readline()
    wait_healthy(f"http://127.0.0.1:{gw_port}")
    return Stack(devserver, gateway, dev_addr, gw_port, psutil.Process(gateway.pid), tmp)


def stop_stack(stack: Stack) -> None:
    for proc in (stack.gateway, stack.devserver):
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    shutil.rmtree(stack.tmp, ignore_errors=True)
