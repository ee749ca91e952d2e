"""``kumiho-sse-gateway tail``: the terminal client, run as a process against real gateways."""

from __future__ import annotations

import json
import os
import pty
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

import pytest

from gateway.tail import (
    EXIT_INTERRUPTED,
    MAX_BACKOFF_MS,
    MIN_BACKOFF_MS,
    reconnect_delay_ms,
    stream_url,
    visible,
)
from tests.conftest import (
    FAST,
    DevServer,
    Gateway,
    Publisher,
    jwt,
    read_events,
    unique_project,
    wait_until,
)

TAIL = [sys.executable, "-m", "gateway", "tail"]
CURSOR = re.compile(r"\d+-\d+")


def tail_env(**extra: str) -> dict[str, str]:
    """The environment of a tail: UTC clock, no colour or token from the caller's shell."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("NO_COLOR", "TERM", "KUMIHO_TAIL_TOKEN", "KUMIHO_AUTH_TOKEN_FILE")
    }
    return {**env, "TZ": "UTC", "PYTHONIOENCODING": "utf-8", **extra}


def run_tail(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """A tail that must end by itself (``--count``, or a refusal) within the deadline."""
    return subprocess.run(
        [*TAIL, *args],
        capture_output=True,
        text=True,
        encoding="utf-8",
        env=env or tail_env(),
        timeout=60,
    )


# Runs tail as a script's `cmd &` (or `nohup cmd &`) and some CI runners do:
# SIGINT ignored (SIG_IGN survives exec). exec keeps the pid, so the signal reaches tail.
SIGINT_IGNORED = [
    sys.executable,
    "-c",
    "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_IGN); "
    "os.execv(sys.executable, [sys.executable, *sys.argv[1:]])",
    *TAIL[1:],
]


class TailProcess:
    """A tail running in the background; its stdout and stderr lines gathered as they come.

    ``sigint_ignored``: started by a parent that ignores SIGINT. Either way, a
    test signals it only once it shows it runs (a line, a notice, a stream).
    """

    def __init__(
        self, *args: str, env: dict[str, str] | None = None, sigint_ignored: bool = False
    ) -> None:
        self.proc = subprocess.Popen(
            [*(SIGINT_IGNORED if sigint_ignored else TAIL), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            encoding="utf-8",
            env=env or tail_env(),
        )
        self.out: list[str] = []
        self.err: list[str] = []
        for stream, lines in ((self.proc.stdout, self.out), (self.proc.stderr, self.err)):
            threading.Thread(target=self._gather, args=(stream, lines), daemon=True).start()

    @staticmethod
    def _gather(stream: IO[str], lines: list[str]) -> None:
        for line in stream:
            lines.append(line.rstrip("\n"))

    def wait_lines(self, count: int, deadline: float = 30.0) -> list[str]:
        wait_until(
            lambda: len(self.out) >= count or self.proc.poll() is not None,
            deadline,
            f"{count} lines from tail (stderr so far: {self.err})",
        )
        assert len(self.out) >= count, (self.out, self.err, self.proc.returncode)
        return self.out

    def wait_notice(self, text: str, deadline: float = 30.0) -> int:
        """The index of the first stderr line holding ``text``."""
        wait_until(lambda: any(text in line for line in self.err), deadline, f"{text!r} on stderr")
        return next(i for i, line in enumerate(self.err) if text in line)

    def kill(self, sig: int = signal.SIGKILL) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout=15)


@pytest.fixture
def start_tail() -> Iterator[Callable[..., TailProcess]]:
    started: list[TailProcess] = []

    def start(
        *args: str, env: dict[str, str] | None = None, sigint_ignored: bool = False
    ) -> TailProcess:
        started.append(TailProcess(*args, env=env, sigint_ignored=sigint_ignored))
        return started[-1]

    yield start
    for tail in started:
        tail.kill()


def cursors(lines: list[str]) -> list[str]:
    return [json.loads(line)["cursor"] for line in lines]


@pytest.mark.parametrize("path", ["", "/api/v1/events/stream"])
def test_json_prints_exactly_the_published_events_in_order(
    stack: tuple[DevServer, Gateway], path: str
) -> None:
    devserver, gateway = stack
    project = unique_project()
    published = [
        *devserver.publish("revision.created", f"kref://{project}/shots/a.model?r=1", count=3),
        *devserver.publish("item.model.created", f"kref://{project}/狐/b.model", {"k": "a\nb"}),
    ]
    run = run_tail(
        gateway.url + path,  # the gateway's own route, or the hosted API's
        "--json",
        "--from",
        "beginning",
        "--kref",
        f"kref://{project}/**",
        "--count",
        "4",
    )
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert cursors(lines) == published
    # Byte for byte the data lines the gateway sends, so `| jq` sees what EventSource sees.
    sent = read_events(gateway.url, 4, params={"from": "beginning", "kref": f"kref://{project}/**"})
    assert lines == [event.data for event in sent]
    assert json.loads(lines[3])["details"] == {"k": "a\nb"}


def test_a_bare_address_means_its_events_route(stack: tuple[DevServer, Gateway]) -> None:
    devserver, gateway = stack
    project = unique_project()
    [cursor] = devserver.publish("space.created", f"kref://{project}/props")
    address = gateway.url.removeprefix("http://")  # no scheme, no path
    run = run_tail(
        address, "--json", "--from", "beginning", "--kref", f"kref://{project}/**", "--count", "1"
    )
    assert run.returncode == 0, run.stderr
    assert cursors(run.stdout.splitlines()) == [cursor]


def test_the_cursor_file_resumes_a_new_tail_with_no_gap_and_no_repeat(
    stack: tuple[DevServer, Gateway], tmp_path: Path
) -> None:
    devserver, gateway = stack
    project = unique_project()
    kref = f"kref://{project}/shots/a.model"
    cursor_file = tmp_path / "tail.cursor"
    flags = ["--json", "--from", "beginning", "--kref", f"kref://{project}/**"]
    first = devserver.publish("revision.created", kref, count=3)
    run1 = run_tail(gateway.url, *flags, "--cursor-file", str(cursor_file), "--count", "2")
    assert run1.returncode == 0, run1.stderr
    assert cursor_file.read_text() == first[1] + "\n"
    second = devserver.publish("revision.created", kref, count=3)
    run2 = run_tail(gateway.url, *flags, "--cursor-file", str(cursor_file), "--count", "4")
    assert run2.returncode == 0, run2.stderr
    assert f"resuming after {first[1]}" in run2.stderr
    assert cursors(run1.stdout.splitlines()) + cursors(run2.stdout.splitlines()) == first + second
    assert cursor_file.read_text() == second[-1] + "\n"
    assert os.listdir(tmp_path) == ["tail.cursor"]  # no temporary file left behind


def test_the_cursor_file_is_replaced_whole_while_a_reader_watches(
    stack: tuple[DevServer, Gateway], tmp_path: Path
) -> None:
    devserver, gateway = stack
    project = unique_project()
    published = devserver.publish("revision.created", f"kref://{project}/a/b.model", count=300)
    cursor_file = tmp_path / "tail.cursor"
    seen: list[str] = []
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            try:
                seen.append(cursor_file.read_text())
            except FileNotFoundError:
                assert not seen, "the cursor file vanished after it was written"

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        run = run_tail(
            gateway.url,
            "--json",
            "--from",
            "beginning",
            "--kref",
            f"kref://{project}/**",
            "--cursor-file",
            str(cursor_file),
            "--count",
            "300",
        )
    finally:
        done.set()
        watcher.join(10)
    assert run.returncode == 0, run.stderr
    assert cursors(run.stdout.splitlines()) == published
    assert seen, "the watcher never saw the file"
    # Every read found one whole cursor, each no older than the one before (an
    # id-only frame's may be another test's event: the devserver's cursors sort).
    assert all(CURSOR.fullmatch(text.removesuffix("\n")) for text in seen), set(seen)
    order = [tuple(map(int, text.removesuffix("\n").split("-"))) for text in seen]
    assert order == sorted(order)
    assert os.listdir(tmp_path) == ["tail.cursor"]


def test_a_tail_killed_outright_continues_with_no_gap_and_no_repeat(
    stack: tuple[DevServer, Gateway], tmp_path: Path, start_tail: Callable[..., TailProcess]
) -> None:
    devserver, gateway = stack
    project = unique_project()
    kref = f"kref://{project}/shots/a.model"
    cursor_file = tmp_path / "tail.cursor"
    flags = [
        "--json",
        "--from",
        "beginning",
        "--kref",
        f"kref://{project}/**",
        "--cursor-file",
        str(cursor_file),
    ]
    first = devserver.publish("revision.created", kref, count=3)
    tail = start_tail(gateway.url, *flags)
    assert cursors(tail.wait_lines(3)) == first
    # The cursor is stored after the line is printed: wait for it, then kill -9.
    wait_until(lambda: cursor_file.read_text() == first[-1] + "\n", 10, "the stored cursor")
    assert tail.kill(signal.SIGKILL) == -signal.SIGKILL
    second = devserver.publish("revision.created", kref, count=2)
    run = run_tail(gateway.url, *flags, "--count", "2")
    assert run.returncode == 0, run.stderr
    assert cursors(run.stdout.splitlines()) == second
    assert os.listdir(tmp_path) == ["tail.cursor"]


def test_tails_killed_while_writing_leave_no_temporary_file_and_no_gap(
    stack: tuple[DevServer, Gateway], tmp_path: Path, start_tail: Callable[..., TailProcess]
) -> None:
    devserver, gateway = stack
    project = unique_project()
    kref = f"kref://{project}/a.model"
    # A backlog read from the beginning: each tail writes its cursor file as fast
    # as it can, so a kill -9 often lands in the middle of a write.
    published = devserver.publish("revision.created", kref, count=5000)
    cursor_file = tmp_path / "tail.cursor"
    flags = ["--json", "--from", "beginning", "--kref", f"kref://{project}/**"]
    flags += ["--cursor-file", str(cursor_file)]
    got: list[str] = []

    def printed(run: list[str]) -> None:
        # Each run starts right after the last cursor stored: the event printed
        # just before a kill may come again (the one window), none is skipped.
        got.extend(run[1:] if got and run[:1] == got[-1:] else run)

    for kill in range(12):  # bounded: 12 kills, each after 20 to 69 events
        tail = start_tail(gateway.url, *flags)
        tail.wait_lines(20 + 7 * kill % 50)
        assert tail.kill(signal.SIGKILL) == -signal.SIGKILL
        # A line cut short by the kill was not stored: the next tail prints it again.
        printed(cursors([line for line in tail.out if line.endswith("}")]))
        left = set(os.listdir(tmp_path)) - {"tail.cursor"}
        assert left <= {".tail.cursor.tmp"}, left  # one fixed name, never one per kill
    assert len(got) < len(published)
    # One more than is left (the first may be a repeat), and one event more to read.
    devserver.publish("revision.created", kref)
    final = run_tail(gateway.url, *flags, "--count", str(len(published) - len(got) + 1))
    assert final.returncode == 0, final.stderr
    printed(cursors(final.stdout.splitlines()))
    assert os.listdir(tmp_path) == ["tail.cursor"]  # none stays once a tail runs again
    assert got[: len(published)] == published


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--routing-key", "revision.\x01"], "contains the control character U+0001"),
        (["--from", "yesterday"], "'yesterday' is not latest, beginning or an ISO 8601 timestamp"),
    ],
)
def test_a_refused_request_exits_2_with_the_gateway_s_message(
    stack: tuple[DevServer, Gateway], flags: list[str], message: str
) -> None:
    _, gateway = stack
    run = run_tail(gateway.url, *flags)
    assert run.returncode == 2
    assert run.stdout == ""
    [line] = run.stderr.splitlines()
    assert line.startswith("kumiho-sse-gateway tail: HTTP 400 invalid_parameter: ")
    assert message in line


def test_a_missing_route_and_a_route_that_is_not_a_stream_end_tail(
    stack: tuple[DevServer, Gateway],
) -> None:
    _, gateway = stack
    missing = run_tail(gateway.url + "/nothing-here")
    assert missing.returncode == 2
    assert "HTTP 404 not_found" in missing.stderr
    health = run_tail(gateway.url + "/healthz")
    assert health.returncode == 1
    assert "not text/event-stream" in health.stderr


def test_tokens_from_the_flag_or_the_environment(
    make_devserver: Callable[..., DevServer], make_gateway: Callable[..., Gateway]
) -> None:
    devserver = make_devserver()
    gateway = make_gateway(devserver.address, "--auth", "service", "--api-keys", "key-1,key-2")
    [cursor] = devserver.publish("revision.created", "kref://p/a/b.model")
    flags = [gateway.url, "--json", "--from", "beginning", "--count", "1"]
    for refused in (run_tail(*flags), run_tail(*flags, "--token", "key-3")):
        assert refused.returncode == 2
        assert "HTTP 401 unauthenticated" in refused.stderr
    by_flag = run_tail(*flags, "--token", "key-1")
    by_env = run_tail(*flags, env=tail_env(KUMIHO_TAIL_TOKEN="key-2"))
    for run in (by_flag, by_env):
        assert run.returncode == 0, run.stderr
        assert cursors(run.stdout.splitlines()) == [cursor]


# Seconds a token lasts in the tests of expiry: room for a tail process to start
# and connect on a loaded machine before its token expires.
STARTING = 10


def _rotate(path: Path, token: str) -> None:
    """Put a new token in the file as operators should: a new file renamed over the old."""
    fresh = path.with_name(path.name + ".new")
    fresh.write_text(token + "\n")
    os.replace(fresh, path)


def test_on_token_expired_tail_reconnects_at_once_with_the_renewed_token_file(
    make_devserver: Callable[..., DevServer],
    make_gateway: Callable[..., Gateway],
    start_tail: Callable[..., TailProcess],
    tmp_path: Path,
) -> None:
    devserver = make_devserver()
    gateway = make_gateway(devserver.address, "--auth", "passthrough", *FAST)
    project = unique_project()
    token_file = tmp_path / "token"
    exp = time.time() + STARTING
    token_file.write_text(jwt({"sub": "mina", "exp": exp}) + "\n")
    tail = start_tail(
        gateway.url,
        "--json",
        "--kref",
        f"kref://{project}/**",
        env=tail_env(KUMIHO_AUTH_TOKEN_FILE=str(token_file)),
    )
    wait_until(lambda: gateway.metric("kumiho_gateway_streams_open") == 1, STARTING, f"{tail.err}")
    publisher = Publisher(devserver, f"kref://{project}/hero.model", rate=20)
    publisher.start()  # events before, at and after the expiry
    wait_until(lambda: len(tail.out) >= 3, 20, "events before the expiry")
    # Renewed before the old token expires, as a sidecar or an SDK's login does.
    _rotate(token_file, jwt({"sub": "mina", "exp": time.time() + 3600}))
    expired = tail.wait_notice("gateway error token_expired: ")
    tail.wait_notice("the token expired; reconnecting in 0 ms")
    assert time.time() >= exp - 0.05
    wait_until(lambda: any("connected" in line for line in tail.err[expired:]), 20, "reconnect")
    reconnected = len(publisher.cursors)
    wait_until(lambda: len(tail.out) >= reconnected + 10, 20, "events after it")
    published = publisher.stop()
    lines = tail.wait_lines(len(published))
    # Every event exactly once, in order, across the expiry: no gap, no repeat.
    assert cursors(lines) == published
    assert gateway.metric("kumiho_gateway_stream_closes_total", '{cause="token_expired"}') == 1
    assert tail.proc.poll() is None


def test_an_expired_token_file_is_waited_for_and_a_fixed_token_ends_tail(
    make_devserver: Callable[..., DevServer],
    make_gateway: Callable[..., Gateway],
    start_tail: Callable[..., TailProcess],
    tmp_path: Path,
) -> None:
    devserver = make_devserver()
    gateway = make_gateway(devserver.address, "--auth", "passthrough", "--retry-ms", "100")
    project = unique_project()
    exp = time.time() + STARTING
    token_file = tmp_path / "token"
    token_file.write_text(jwt({"exp": exp}))
    flags = [gateway.url, "--json", "--kref", f"kref://{project}/**"]
    # A fixed token cannot be renewed: after token_expired the same token is refused,
    # and tail says why and exits 2.
    fixed = start_tail(*flags, "--token", jwt({"exp": exp}))
    # A file renewed late: tail waits (backing off) for the new token, then goes on.
    renewed = start_tail(*flags, "--token-file", str(token_file))
    wait_until(
        lambda: gateway.metric("kumiho_gateway_streams_open") == 2,
        STARTING,
        f"both streams: {fixed.err} {renewed.err}",
    )
    first = devserver.publish("revision.created", f"kref://{project}/a.model")
    assert cursors(renewed.wait_lines(1)) == cursors(fixed.wait_lines(1)) == first
    assert fixed.proc.wait(timeout=30) == 2
    assert any("gateway error token_expired: " in line for line in fixed.err), fixed.err
    assert any("HTTP 401 token_expired: the token expired at " in line for line in fixed.err)
    renewed.wait_notice("waiting for a new token in the token file")
    during = devserver.publish("revision.created", f"kref://{project}/a.model")  # in the gap
    _rotate(token_file, jwt({"exp": time.time() + 3600}))
    after = devserver.publish("revision.created", f"kref://{project}/a.model")
    assert cursors(renewed.wait_lines(3)) == first + during + after
    assert renewed.proc.poll() is None


def test_tail_imports_only_the_pure_helpers_of_the_gateway() -> None:
    out = subprocess.run(
        [sys.executable, "-c", "import sys, gateway.tail; print(*sorted(sys.modules))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert sorted(m for m in out if m.startswith("gateway")) == [
        "gateway",
        "gateway.backoff",
        "gateway.tail",
        "gateway.tokens",
    ]


def test_a_gateway_error_ends_tail_unless_it_is_retryable(
    make_devserver: Callable[..., DevServer],
    make_gateway: Callable[..., Gateway],
    start_tail: Callable[..., TailProcess],
) -> None:
    devserver = make_devserver("--token", "tok-a=studio-a")
    # One upstream stream per request (no hub), and room for one.
    gateway = make_gateway(
        devserver.address,
        *FAST,
        "--no-hub",
        "--auth",
        "passthrough",
        "--max-upstream-streams",
        "1",
        "--retry-ms",
        "100",
    )
    holder = start_tail(gateway.url, "--routing-key", "a.*", "--token", "tok-a")
    wait_until(lambda: devserver.open_streams() == 1, 10, "the first tail's upstream stream")
    # The cap is reached: come back later (a retryable gateway.error), again and again.
    waiter = start_tail(gateway.url, "--json", "--routing-key", "b.*", "--token", "tok-a")
    waiter.wait_notice("gateway error too_many_streams: ")
    assert waiter.proc.poll() is None
    assert not any(line.endswith("tail: connected") for line in waiter.err)  # refusals only
    # The place frees up: the waiter gets in by itself, and (asking from=its first
    # answer, having no id yet) receives what was published meanwhile, whenever that was.
    holder.kill(signal.SIGINT)
    in_b = devserver.publish("b.created", "kref://b/x.model", tenant="studio-a")
    assert cursors(waiter.wait_lines(1)) == in_b
    waiter.wait_notice("connected")
    # A revoked credential cannot come back: the waiter ends, saying why.
    with devserver.client() as c:
        c.revoke_token("tok-a")
    assert waiter.proc.wait(timeout=30) == 2
    assert any("gateway error unauthenticated: " in line for line in waiter.err), waiter.err


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["drained", "killed"])
def test_tail_reconnects_through_a_gateway_restart_with_no_gap_and_no_repeat(
    make_devserver: Callable[..., DevServer],
    make_gateway: Callable[..., Gateway],
    start_tail: Callable[..., TailProcess],
    sig: int,
) -> None:
    devserver = make_devserver()
    # A short retry: so the test need not wait the default two seconds.
    gateway = make_gateway(devserver.address, *FAST, "--retry-ms", "100")
    kref = "kref://p/shots/a.model"
    tail = start_tail(gateway.url, "--json", "--from", "beginning")
    before = devserver.publish("revision.created", kref, count=5)
    tail.wait_lines(5)
    gateway.stop(sig)
    during = devserver.publish("revision.created", kref, count=5)  # while no gateway runs
    tail.wait_notice("cannot connect")
    gateway.start()  # the same port
    after = devserver.publish("revision.created", kref, count=5)
    assert cursors(tail.wait_lines(15)) == before + during + after
    tail.wait_notice(f"connected, resuming after {before[-1]}")
    # The first reconnect waited the gateway's retry: (100 ms plus up to 50% jitter).
    first = next(line for line in tail.err if "reconnecting" in line)
    assert re.search(r"; reconnecting in 1[0-5]\d ms$", first), tail.err
    assert tail.proc.poll() is None  # still following


def test_a_tail_from_the_latest_event_loses_nothing_to_a_restart_before_its_first_event(
    make_devserver: Callable[..., DevServer],
    make_gateway: Callable[..., Gateway],
    start_tail: Callable[..., TailProcess],
) -> None:
    devserver = make_devserver()
    gateway = make_gateway(devserver.address, *FAST, "--retry-ms", "100")
    tail = start_tail(gateway.url, "--json")
    wait_until(lambda: gateway.metric("kumiho_gateway_streams_open") == 1, 10, "tail's stream")
    gateway.stop(signal.SIGKILL)
    during = devserver.publish("revision.created", "kref://p/new/a.model", count=2)
    tail.wait_notice("cannot connect")
    gateway.start()
    tail.wait_notice("connected")
    after = devserver.publish("revision.created", "kref://p/new/a.model", count=2)
    assert cursors(tail.wait_lines(4)) == during + after


def test_upstream_status_changes_are_notices_on_stderr(
    make_devserver: Callable[..., DevServer],
    make_gateway: Callable[..., Gateway],
    start_tail: Callable[..., TailProcess],
) -> None:
    devserver = make_devserver()
    gateway = make_gateway(devserver.address, *FAST)
    kref = "kref://p/shots/a.model"
    tail = start_tail(gateway.url, "--json", "--from", "beginning")
    first = devserver.publish("revision.created", kref)
    tail.wait_lines(1)
    devserver.stop(signal.SIGKILL)
    down = tail.wait_notice("upstream unavailable (UNAVAILABLE); the gateway retries in")
    devserver.start()  # same port, same event log
    second = devserver.publish("revision.created", kref)
    assert cursors(tail.wait_lines(2)) == first + second
    assert tail.wait_notice("upstream live") > down
    assert not any("reconnecting" in line for line in tail.err)  # the gateway kept the stream
    assert len(tail.out) == 2  # notices never reach stdout


def test_ctrl_c_exits_130_quietly_and_a_closed_pipe_exits_0(
    stack: tuple[DevServer, Gateway], start_tail: Callable[..., TailProcess]
) -> None:
    devserver, gateway = stack
    project = unique_project()
    kref = f"kref://{project}/a/b.model"
    flags = [gateway.url, "--json", "--from", "beginning", "--kref", f"kref://{project}/**"]
    devserver.publish("revision.created", kref)
    interrupted = start_tail(*flags)
    interrupted.wait_lines(1)
    assert interrupted.kill(signal.SIGINT) == 130
    assert interrupted.err == []
    # `tail --json | head -n 1`: the reader goes away, tail ends at its next line.
    reader = subprocess.Popen(
        [*TAIL, *flags], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=tail_env()
    )
    try:
        assert reader.stdout is not None and reader.stdout.readline()
        reader.stdout.close()
        devserver.publish("revision.created", kref)
        assert reader.wait(timeout=30) == 0
        assert reader.stderr is not None and reader.stderr.read() == b""
    finally:
        reader.kill()
        reader.wait()


def test_readable_lines_show_time_routing_key_kref_author_and_details(
    stack: tuple[DevServer, Gateway],
) -> None:
    devserver, gateway = stack
    project = unique_project()
    kref = f"kref://{project}/chars/hero.model?r=3"
    devserver.publish(
        "revision.tagged",
        kref,
        {"tag": "approved", "note": "two words", "evil": "\x1b[31mred\n"},
        username="mina.park",
    )
    everything = f"kref://{project}/**"
    flags = [gateway.url, "--from", "beginning", "--kref", everything, "--count", "1"]
    [event] = read_events(gateway.url, 1, params={"from": "beginning", "kref": everything})
    run = run_tail(*flags)
    assert run.returncode == 0, run.stderr
    [line] = run.stdout.splitlines()
    moment = datetime.fromisoformat(event.json()["timestamp"]).astimezone(UTC)
    assert line.startswith(f"{moment:%H:%M:%S}  revision.tagged ")
    assert f"  {kref}  mina.park  " in line
    assert "tag=approved" in line and 'note="two words"' in line
    # What a detail holds never reaches the terminal raw: no escape sequence, no line break.
    assert "\x1b" not in run.stdout
    assert 'evil="\\u001b[31mred\\n"' in line

    coloured = run_tail(*flags, "--color", "always")
    assert "\x1b[32mrevision.tagged\x1b[0m" in coloured.stdout  # revision.* is green
    assert re.sub(r"\x1b\[[0-9;]*m", "", coloured.stdout) == run.stdout

    with_no_color = run_tail(*flags, "--color", "always", env=tail_env(NO_COLOR="1"))
    assert with_no_color.stdout == coloured.stdout  # an explicit choice wins over NO_COLOR


def test_ctrl_c_stops_a_tail_started_with_sigint_ignored(
    stack: tuple[DevServer, Gateway], start_tail: Callable[..., TailProcess]
) -> None:
    devserver, gateway = stack
    project = unique_project()
    flags = [gateway.url, "--json", "--from", "beginning", "--kref", f"kref://{project}/**"]
    published = devserver.publish("revision.created", f"kref://{project}/a/b.model")
    tail = start_tail(*flags, sigint_ignored=True)
    assert cursors(tail.wait_lines(1)) == published  # it runs, with its own handling in place
    assert tail.kill(signal.SIGINT) == EXIT_INTERRUPTED
    assert tail.err == []


def run_in_terminal(*args: str, env: dict[str, str]) -> str:
    """A tail whose stdout is a terminal (a pty): what it wrote there."""
    main, child = pty.openpty()
    proc = subprocess.Popen([*TAIL, *args], stdout=child, stderr=subprocess.DEVNULL, env=env)
    os.close(child)
    output = b""
    try:
        while True:
            try:
                chunk = os.read(main, 4096)
            except OSError:  # EIO: the child is gone and the terminal drained
                break
            if not chunk:
                break
            output += chunk
    finally:
        os.close(main)
        assert proc.wait(timeout=30) == 0
    return output.decode()


def test_auto_colour_means_a_terminal_without_no_color(stack: tuple[DevServer, Gateway]) -> None:
    devserver, gateway = stack
    project = unique_project()
    devserver.publish("item.model.created", f"kref://{project}/a/b.model")
    flags = [gateway.url, "--from", "beginning", "--kref", f"kref://{project}/**", "--count", "1"]
    assert "\x1b[36mitem.model.created\x1b[0m" in run_in_terminal(*flags, env=tail_env())
    assert "\x1b[" not in run_in_terminal(*flags, env=tail_env(NO_COLOR="1"))
    assert "\x1b[" not in run_tail(*flags).stdout  # a pipe


def test_help_documents_every_flag_the_exit_codes_and_the_token_variable() -> None:
    out = subprocess.run([*TAIL, "--help"], capture_output=True, text=True, check=True).stdout
    for flag in (
        "--routing-key",
        "--routing-key-filter",
        "--kref",
        "--from",
        "--cursor-file",
        "--json",
        "--token",
        "--token-file",
        "--color",
        "--count",
    ):
        assert flag in out
    assert "KUMIHO_TAIL_TOKEN" in out and "KUMIHO_AUTH_TOKEN_FILE" in out and "NO_COLOR" in out
    assert all(f"\n  {code} " in out for code in ("0", "1", "2", "130"))
    usage = subprocess.run([*TAIL, "--count", "0"], capture_output=True, text=True)
    assert usage.returncode == 2 and "not a positive number" in usage.stderr


def test_reconnect_delay_honours_retry_then_backs_off_with_a_cap() -> None:
    assert reconnect_delay_ms(2500, 0) == 2500  # the server's retry: after a stream that delivered
    assert reconnect_delay_ms(0, 0) == 0
    high, low = (lambda: 1.0), (lambda: 0.0)
    assert [reconnect_delay_ms(200, n, high) for n in range(1, 6)] == [200, 400, 800, 1600, 3200]
    assert reconnect_delay_ms(200, 3, low) == 400  # jitter: half to all of it
    assert reconnect_delay_ms(0, 1, high) == MIN_BACKOFF_MS  # retry: 0 cannot spin
    assert reconnect_delay_ms(200, 60, high) == MAX_BACKOFF_MS
    assert reconnect_delay_ms(60_000, 5, high) == 60_000  # the server's own longer delay stands


def test_stream_url_and_visible() -> None:
    assert stream_url("localhost:8000") == "http://localhost:8000/events"
    assert stream_url("https://gw.example/") == "https://gw.example/events"
    assert stream_url("http://h/api/v1/events/stream?x=1") == "http://h/api/v1/events/stream?x=1"
    assert visible("kref://p/狐.model") == "kref://p/狐.model"
    assert visible("a\x1b[2J\r\nb\u2028\u202e") == "a\\x1b[2J\\r\\nb\\u2028\\u202e"
