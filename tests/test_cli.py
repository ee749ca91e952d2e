"""The command line: help, publish, and the one-command demo."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from gateway.cli import env_names
from gateway.settings import Settings
from tests.conftest import DevServer, free_port, read_events, wait_until

ROOT = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-m", "gateway"]


def test_console_script_is_installed() -> None:
    script = shutil.which("kumiho-sse-gateway", path=str(Path(sys.executable).parent))
    assert script, "pip install -e . should install the kumiho-sse-gateway command"
    out = subprocess.run([script, "--help"], capture_output=True, text=True, check=True).stdout
    assert all(cmd in out for cmd in ("serve", "demo", "devserver", "publish", "tail"))


def test_serve_help_lists_every_flag_with_its_environment_variable() -> None:
    out = subprocess.run(
        [*CLI, "serve", "--help"], capture_output=True, text=True, check=True
    ).stdout
    flat = " ".join(out.split())
    for field in Settings.model_fields:
        assert "--" + field.replace("_", "-") in out
        for env in env_names(field):
            assert env in flat, f"{env} missing from serve --help"
    assert "KUMIHO_SERVER_ENDPOINT" in flat and "KUMIHO_AUTH_TOKEN" in flat
    assert "--hub, --no-hub" in flat and "--use-tls, --no-use-tls" in flat
    assert "Undefined" not in out  # every default printable (lists too)


def test_a_busy_address_is_refused_and_named(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        for command in (
            ["devserver", "--port", str(port), "--db", str(tmp_path / "d.sqlite3")],
            ["serve", "--upstream", "127.0.0.1:1", "--port", str(port)],
            ["demo", "--port", str(port)],
        ):
            run = subprocess.run([*CLI, *command], capture_output=True, text=True, timeout=30)
            assert run.returncode != 0, command
            assert f"cannot listen on 127.0.0.1:{port}" in run.stderr, (command, run.stderr)


def test_readme_documents_every_setting() -> None:
    readme = (ROOT / "README.md").read_text()
    for field in Settings.model_fields:
        flag = f"| `--{field.replace('_', '-')}`"
        row = next((ln for ln in readme.splitlines() if ln.startswith(flag)), None)
        assert row, f"README configuration table has no row for --{field.replace('_', '-')}"
        for env in env_names(field):
            assert env in row


def test_publish_prints_cursors_that_the_gateway_serves(
    make_devserver: Callable[..., DevServer], make_gateway: Callable[..., object]
) -> None:
    devserver = make_devserver()
    out = subprocess.run(
        [
            *CLI,
            "publish",
            "--upstream",
            devserver.address,
            "revision.tagged",
            "kref://p/a/hero.model?r=2",
            "tag=approved",
            "note=a=b",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    cursor = out.strip()
    assert re.fullmatch(r"\d+-\d+", cursor)
    gateway = make_gateway(devserver.address)
    [event] = read_events(gateway.url, 1, params={"from": "beginning"})  # type: ignore[attr-defined]
    assert event.id == cursor
    assert event.json()["details"] == {"tag": "approved", "note": "a=b"}
    bad = subprocess.run(
        [*CLI, "publish", "--upstream", devserver.address, "x", "kref://p", "novalue"],
        capture_output=True,
        text=True,
    )
    assert bad.returncode != 0 and "KEY=VALUE" in bad.stderr


def test_demo_streams_studio_activity_within_two_seconds(tmp_path: Path) -> None:
    port = free_port()
    cache = tmp_path / "cache"  # where a devserver keeps its default store
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "XDG_CACHE_HOME": str(cache)}
    frontend = "http://localhost:5173"
    proc = subprocess.Popen(
        [*CLI, "demo", "--port", str(port), "--cors-origins", frontend],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None
        banner = ""
        while "\n  tail " not in banner:
            line = proc.stdout.readline()
            assert line, banner
            banner += line
        assert f"http://localhost:{port}/" in banner
        # A store of its own, fresh for this run: never the devserver's default.
        db = Path(re.search(r"db (\S+)\)", banner).group(1))  # type: ignore[union-attr]
        assert not db.is_relative_to(cache)
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: _ok(url + "/healthz"), 30, "the demo gateway")
        # --cors-origins: a frontend dev server on another origin may read the stream.
        preflight = httpx.options(
            url + "/events",
            headers={"Origin": frontend, "Access-Control-Request-Method": "GET"},
        )
        assert preflight.headers.get("access-control-allow-origin") == frontend
        started = time.monotonic()
        curl = subprocess.run(
            ["curl", "-sN", "--max-time", "2", url + "/events"], capture_output=True, text=True
        )
        ids = [ln[4:] for ln in curl.stdout.splitlines() if ln.startswith("id: ")]
        assert ids, f"no event within 2 s: {curl.stdout!r}"
        assert time.monotonic() - started < 3
        # Resume with the last id: no gap, no duplicate.
        more = read_events(url, 3, headers={"Last-Event-ID": ids[-1]})
        keys = [tuple(map(int, i.split("-"))) for i in [ids[-1], *(e.id for e in more)]]
        assert keys == sorted(keys) and len(set(keys)) == 4
        if len(ids) >= 2:
            [again] = read_events(url, 1, headers={"Last-Event-ID": ids[-2]})
            assert again.id == ids[-1]
        assert httpx.get(url + "/").status_code == 200
        # The banner's tail example works as printed (plus flags that make it end).
        example = next(ln for ln in banner.splitlines() if ln.startswith("  tail "))
        command = shlex.split(example.removeprefix("  tail "))
        assert command[:3] == ["kumiho-sse-gateway", "tail", f"http://localhost:{port}/events"]
        tail = subprocess.run(
            [*CLI, *command[1:], "--from", "beginning", "--count", "1", "--json"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert tail.returncode == 0, tail.stderr
        assert json.loads(tail.stdout)["routing_key"].startswith("revision.")
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert not db.exists()  # removed at exit
    assert not (cache / "kumiho-sse-gateway" / "devserver.sqlite3").exists()


def _ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.TransportError:
        return False


def test_readme_test_command_is_what_ci_runs() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    command = ci.strip().splitlines()[-1]
    assert command == "bash scripts/test"
    assert f"\n{command}\n" in (ROOT / "README.md").read_text()
