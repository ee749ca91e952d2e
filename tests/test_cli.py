"""The command line: help, publish, and the one-command demo."""

from __future__ import annotations

import os
import re
import shutil
import signal
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
    assert all(cmd in out for cmd in ("serve", "demo", "devserver", "publish"))


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
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [*CLI, "demo", "--port", str(port), "--db", str(tmp_path / "demo.sqlite3")],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None
        banner = "".join(proc.stdout.readline() for _ in range(3))
        assert f"http://localhost:{port}/" in banner
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: _ok(url + "/healthz"), 30, "the demo gateway")
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
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


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
