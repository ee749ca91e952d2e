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
import typing
from collections.abc import Callable
from pathlib import Path

import annotated_types
import httpx
import pytest
from pydantic import SecretStr

from gateway import cli
from gateway.cli import env_names
from gateway.settings import Settings
from tests.conftest import DevServer, Gateway, free_port, read_events, wait_until

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


def test_devserver_activity_reaches_every_token_s_tenant(
    make_devserver: Callable[..., DevServer], make_gateway: Callable[..., Gateway]
) -> None:
    devserver = make_devserver(
        "--token", "tok-a=studio-a", "--token", "tok-b=studio-b", "--activity", "20"
    )  # fmt: skip
    gateway = make_gateway(devserver.address, "--auth", "passthrough")

    def generated(token: str) -> int:
        answer = httpx.get(
            gateway.url + "/events/poll",
            params={"from": "beginning", "timeout": "2"},
            headers={"Authorization": f"Bearer {token}"},
            timeout=10,
        )
        assert answer.status_code == 200, answer.text
        return len(answer.json()["events"])

    for token in ("tok-a", "tok-b"):
        wait_until(lambda t=token: generated(t) >= 3, 20, f"studio activity for {token}")
    # No token, no events: the activity went to the tenants, not around them.
    assert httpx.get(gateway.url + "/events", timeout=10).status_code == 401


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


# Bad configuration, tried as a new user would: every setting, by flag and by
# each of its variables, with a value of the wrong kind for its type, is
# refused before anything starts in one line that names it (exit status 2).

# Values that settings of each type refuse, beyond their bounds (added below).
_BAD_BY_TYPE: dict[object, list[str]] = {
    bool: ["maybe"],
    int: ["abc", "1.5"],
    float: ["abc", "nan", "inf"],
    str: ["bad\x01value"],  # a control character: it would end a header or a log line
    SecretStr: ["bad\x01value"],
}
# Values of the right type whose meaning is wrong.
_BAD_MEANING = {
    "upstream": ["http://[bad", "kumiho.example:99999", "ftp://kumiho.example"],
    "ca_file": ["/nonexistent/ca.pem"],
    "auth_token_file": ["/nonexistent/token"],
    "cors_origins": ["ftp://app.example"],
    "forwarded_allow_ips": ["proxy.example", "10.0.0.1/8", "*,10.0.0.1"],
}


def _bad_values(field: str) -> list[str]:
    """Values ``field`` must refuse, from its type and bounds; a new type fails here first."""
    info = Settings.model_fields[field]
    annotation = info.annotation
    if typing.get_origin(annotation) is typing.Literal:
        return ["bogus"]
    kinds = [k for k in (annotation, *typing.get_args(annotation)) if k is not type(None)]
    bad = [v for k in kinds if k in _BAD_BY_TYPE for v in _BAD_BY_TYPE[k]]
    assert bad, f"no bad value known for {field}: {annotation}; teach _BAD_BY_TYPE"
    for bound in info.metadata:
        if isinstance(bound, annotated_types.Ge):
            bad.append(str(bound.ge - 1))
        elif isinstance(bound, annotated_types.Gt):
            bad.append(str(bound.gt))
        elif isinstance(bound, annotated_types.Le):
            bad.append(str(bound.le + 1))
    return sorted(set(bad + _BAD_MEANING.get(field, [])))


_CASES = [
    (field, value, where)
    for field in Settings.model_fields
    for value in _bad_values(field)
    for where in ("--" + field.replace("_", "-"), *env_names(field))
]


@pytest.fixture
def busy_port() -> typing.Iterator[int]:
    """A port something already listens on: a gateway that got past its checks stops there."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        yield busy.getsockname()[1]


@pytest.mark.parametrize(
    ("field", "value", "where"), _CASES, ids=[f"{w}={v!r}" for _, v, w in _CASES]
)
def test_every_setting_refuses_a_bad_value_in_one_line_before_anything_starts(
    field: str,
    value: str,
    where: str,
    busy_port: int,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for name in list(os.environ):
        if name.startswith("KUMIHO_"):
            monkeypatch.delenv(name)
    # Should the value pass, the gateway stops at once, at its listening socket.
    guard = {"upstream": ["--upstream", "127.0.0.1:1"], "port": ["--port", str(busy_port)]}
    if field == "port":
        guard["host"] = ["--host", "203.0.113.1"]  # TEST-NET: no such local address
    argv = ["serve", *(arg for name, args in guard.items() if name != field for arg in args)]
    if where.startswith("--"):
        argv.append(f"{where}={value}")
    else:
        monkeypatch.setenv(where, value)
    with pytest.raises(SystemExit) as exited:
        cli.main(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert exited.value.code == 2, err
    assert len(lines) == 1, err
    [line] = lines
    assert line.startswith("kumiho-sse-gateway serve: ")
    assert "--" + field.replace("_", "-") in line
    assert all(env in line for env in env_names(field)), line
    assert "Traceback" not in err and "pydantic" not in err
    if field in ("auth_token", "api_keys"):
        assert value not in line, "a credential is never echoed"


def _run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("KUMIHO_")}
    return subprocess.run(
        [*CLI, *args], capture_output=True, text=True, timeout=60, env={**clean, **env}
    )


@pytest.mark.parametrize("hostile", ["garbage", "empty"])
def test_help_and_version_work_whatever_the_environment_holds(hostile: str) -> None:
    value = "not valid\x01" if hostile == "garbage" else ""
    env = {name: value for field in Settings.model_fields for name in env_names(field)}
    env.update(PORT="abc", HOST="")  # a platform's own variables, not the gateway's
    runs = {
        args: subprocess.Popen(
            [*CLI, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**{k: v for k, v in os.environ.items() if not k.startswith("KUMIHO_")}, **env},
        )
        for args in (
            ("--help",),
            ("--version",),
            *((command, "--help") for command in ("serve", "demo", "devserver", "publish", "tail")),
        )
    }
    for args, proc in runs.items():
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, (args, err)
        assert "Traceback" not in err and out, args


def test_the_reported_mistakes_are_one_line_each_with_status_2() -> None:
    for args, env, names in [
        (("serve", "--upstream", "http://[bad"), {}, "--upstream (KUMIHO_SERVER_ENDPOINT"),
        (("serve", "--auth", "service"), {}, "--auth service needs --api-keys"),
        (("serve",), {"KUMIHO_GATEWAY_PORT": "abc"}, "--port (KUMIHO_GATEWAY_PORT)"),
        (("demo",), {"KUMIHO_GATEWAY_PORT": "eighty"}, "--port (KUMIHO_GATEWAY_PORT)"),
        (("serve", "--hub=maybe"), {}, "--hub/--no-hub (KUMIHO_GATEWAY_HUB)"),
    ]:
        run = _run_cli(*args, env=env)
        assert run.returncode == 2, (args, run.stdout, run.stderr)
        lines = run.stderr.strip().splitlines()
        assert len(lines) == 1 and names in lines[0], (args, run.stderr)
        # Nothing started: no server line, no demo banner, no pydantic internals.
        for never in ("Uvicorn running", "reference upstream", "Traceback", "pydantic"):
            assert never not in run.stdout + run.stderr, (args, never)


def test_empty_variables_mean_unset_and_platform_variables_are_not_read(
    make_devserver: Callable[..., DevServer],
    make_gateway: Callable[..., Gateway],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    every = [name for field in Settings.model_fields for name in env_names(field)]
    for name in every:
        monkeypatch.setenv(name, "")
    assert Settings() == Settings.model_construct()  # every default
    devserver = make_devserver()
    # PORT and HOST belong to the platform (Heroku, Cloud Run set PORT): a gateway
    # started with them, and with every one of its own variables empty, serves.
    env = {name: "" for name in every} | {"PORT": "abc", "HOST": "203.0.113.1"}
    gateway = make_gateway(devserver.address, env=env)
    assert httpx.get(gateway.url + "/readyz", timeout=10).status_code == 200
