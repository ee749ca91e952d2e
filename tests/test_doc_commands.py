"""Every shell block of the README and the docs runs as written, against real servers.

The convention the blocks follow is in docs/internals.md ("The docs' commands")
and tests/doc_blocks.py. Each page runs in a session of its own: a copy of the
repository, its own cache and temporary directories, free ports for the 8000
and 8080 the docs name, one shell whose variables and directory carry from
command to command, and the servers the page starts (or the demo) stopped at
its end.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.metadata
import os
import pty
import re
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import termios
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from packaging.requirements import Requirement

import gateway
from tests.conftest import free_port, wait_until
from tests.doc_blocks import (
    Block,
    Command,
    agree,
    mismatch,
    shape,
    shell_blocks,
    without_markers,
)

ROOT = Path(__file__).resolve().parent.parent
DOC_FILES = [ROOT / "README.md", ROOT / "BENCHMARKS.md", *sorted((ROOT / "docs").glob("*.md"))]

GATEWAY_PORT, UPSTREAM_PORT = "8000", "8080"  # as the docs name them
COMMAND_DEADLINE = 120.0  # a command that ends by itself (an mkdocs build is the longest)
ENDLESS_DEADLINE = 45.0  # for a stream to print what the block shows (loaded machine)
SETTLE = 1.5  # after the lines shown have come: time for one more, to judge an id-only frame
SERVER_DEADLINE = 60.0

SERVER = re.compile(
    r"^(?:\w+=\S*\s+)*(?:kumiho-sse-gateway|python3? -m gateway)\s+(demo|serve|devserver)\b"
)
ENDLESS = (
    re.compile(r"\bcurl\b[^|;&]*\s(?:-[a-zA-Z]*N[a-zA-Z]*|--no-buffer)(?:\s|$)"),
    re.compile(r"\bkumiho-sse-gateway\s+tail\b(?!.*--count)"),
)
INSTALL = re.compile(r"""^pip install -e ['"]?\.(?:\[(?P<extra>[\w-]+)\])?['"]?$""")
VENV_STEPS = {"python3 -m venv .venv", ". .venv/bin/activate", "source .venv/bin/activate"}
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
# What a block may be spared for: things this machine's tests cannot run.
UNRUNNABLE = ("docker", "kubectl", "scripts/test", "kumiho.internal", "bench/", "proto/generate")

# The shell each command runs in: the session's variables and directory come in,
# the command runs, the variables it set and the directory it ends in go out.
WRAPPER = r"""
__before=$(compgen -v)
cd "$(cat "$DOC_STATE/cwd")" || exit 97
[ -f "$DOC_STATE/vars" ] && . "$DOC_STATE/vars"
set -o pipefail
. "$1"
__status=$?
__new=$(comm -13 <(printf '%s\n' "$__before" | sort) <(compgen -v | sort) \
    | grep -E '^[a-z][a-z0-9_]*$')
if [ -n "$__new" ]; then declare -p $__new > "$DOC_STATE/vars.new" \
    && mv "$DOC_STATE/vars.new" "$DOC_STATE/vars"; fi
pwd > "$DOC_STATE/cwd"
exit $__status
"""


def is_endless(command: str) -> bool:
    return any(pattern.search(command) for pattern in ENDLESS)


def _check_venv() -> None:
    assert sys.prefix != sys.base_prefix, "the docs' commands run in a virtualenv"


def _check_install(extra: str | None) -> None:
    """``pip install -e .[extra]`` has been done: this checkout, and each requirement met."""
    _check_venv()
    assert Path(gateway.__file__).resolve().is_relative_to(ROOT), "pip install -e . of this tree"
    if extra is None:
        return
    needed = [
        Requirement(line)
        for line in importlib.metadata.requires("kumiho-sse-gateway") or []
        if f'extra == "{extra}"' in line
    ]
    assert needed, f"the docs install the extra [{extra}], which pyproject.toml does not have"
    for requirement in needed:
        version = importlib.metadata.version(requirement.name)
        assert requirement.specifier.contains(version, prereleases=True), (requirement, version)


def without_setup(command: str) -> str:
    """The command less its leading install steps, which are checked rather than run."""
    parts = [part.strip() for part in command.split("&&")]
    while parts:
        if parts[0] in VENV_STEPS:
            _check_venv()
        elif found := INSTALL.match(parts[0]):
            _check_install(found["extra"])
        else:
            break
        parts.pop(0)
    return " && ".join(parts)


@dataclass
class Run:
    lines: list[str]
    returncode: int | None  # None: stopped by us
    timed_out: bool

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


def _stop_group(proc: subprocess.Popen[bytes], grace: float = 15.0) -> None:
    """End a process and everything it started (its own session), politely first."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    end = time.monotonic() + grace
    while time.monotonic() < end:
        proc.poll()
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _lines(buffer: bytes, ended: bool) -> list[str]:
    text = ANSI.sub("", buffer.decode("utf-8", "replace")).replace("\r\n", "\n").replace("\r", "")
    lines = text.split("\n")
    return lines if ended and lines[-1] else lines[:-1]


def run_in_terminal(
    args: list[str],
    env: dict[str, str],
    deadline: float,
    enough: Callable[[list[str], float], bool] | None = None,
) -> Run:
    """Run in a pseudo-terminal, as a reader's shell would (line-buffered output, no
    progress meters), until it ends, ``enough`` says so, or the deadline passes."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 500, 0, 0))
    proc = subprocess.Popen(
        args, stdin=subprocess.DEVNULL, stdout=slave, stderr=slave, env=env, start_new_session=True
    )
    os.close(slave)
    buffer = b""
    start = time.monotonic()
    timed_out = stopped = False
    try:
        while True:
            now = time.monotonic()
            if now - start > deadline:
                timed_out = True
                break
            ready, _, _ = select.select([master], [], [], 0.1)
            chunk = b""
            if ready:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # every writer is gone
                    chunk = b""
                if not chunk:
                    break
                buffer += chunk
            if enough and enough(_lines(buffer, False), time.monotonic() - start):
                stopped = True
                break
            if not ready and proc.poll() is not None:
                break
    finally:
        if proc.poll() is None:
            _stop_group(proc, grace=5)
        os.close(master)
    returncode = None if stopped or timed_out else proc.wait()
    return Run(_lines(buffer, True), returncode, timed_out)


def _enough_of(command: Command) -> Callable[[list[str], float], bool]:
    """When an endless command has printed what its block shows (or, showing nothing,
    its first frame)."""
    if not command.shown:
        return lambda lines, _: any(ln.strip() and not ln.startswith("retry:") for ln in lines)
    want = len(without_markers(command.shown))
    reached: list[float] = []

    def enough(lines: list[str], elapsed: float) -> bool:
        got = len(without_markers(lines))
        if got > want:
            return True
        if got == want:
            reached.append(elapsed)
            return elapsed - reached[0] >= SETTLE
        return False

    return enough


@dataclass
class Server:
    command: str
    port: int
    proc: subprocess.Popen[bytes]
    log: Path


class Session:
    """One page's shell session: a copy of the repository, its servers, its variables."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.repo = workdir / "repo"
        self.state = workdir / "state"
        for sub in ("state", "cache", "tmp"):
            (workdir / sub).mkdir()
        files = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=ROOT,
            capture_output=True,
            check=True,
        ).stdout.decode()
        for name in filter(None, files.split("\0")):
            source = ROOT / name
            if source.is_file():
                (self.repo / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, self.repo / name)
        (self.state / "cwd").write_text(str(self.repo))
        (self.state / "wrapper.sh").write_text(WRAPPER)
        self.ports = {GATEWAY_PORT: free_port(), UPSTREAM_PORT: free_port()}
        bin_dir = str(Path(sys.executable).parent)
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("KUMIHO_", "NO_COLOR"))},
            "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""),
            "VIRTUAL_ENV": str(Path(sys.executable).parent.parent),
            "XDG_CACHE_HOME": str(workdir / "cache"),
            "TMPDIR": str(workdir / "tmp"),
            "NO_COLOR": "1",
            "NO_MKDOCS_2_WARNING": "1",
            "TERM": "dumb",
            "PYTHONUNBUFFERED": "1",
            "KUMIHO_GATEWAY_PORT": str(self.ports[GATEWAY_PORT]),
            "DOC_STATE": str(self.state),
        }
        self.servers: list[Server] = []
        self._count = 0

    # -- the pieces

    def local(self, command: str) -> str:
        """The command with the docs' ports replaced by this session's."""
        for documented, port in self.ports.items():
            command = re.sub(rf"(?<!\d){documented}(?!\d)", str(port), command)
        return command

    def _script(self, command: str) -> list[str]:
        self._count += 1
        path = self.state / f"command-{self._count}.sh"
        path.write_text(command + "\n")
        return ["bash", str(self.state / "wrapper.sh"), str(path)]

    def _server_on(self, port: int) -> Server | None:
        return next((s for s in self.servers if s.port == port and s.proc.poll() is None), None)

    def start_server(self, command: str, where: str) -> None:
        kind = SERVER.match(command)
        assert kind
        given = re.search(r"--port[ =](\d+)", command)
        default = self.ports[UPSTREAM_PORT if kind[1] == "devserver" else GATEWAY_PORT]
        port = int(given[1]) if given else default
        if (running := self._server_on(port)) is not None:
            self.stop(running)  # the page's own server takes the place of the demo
        log = self.state / f"server-{self._count + 1}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                self._script(command),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self.env,
                start_new_session=True,
            )
        server = Server(command, port, proc, log)
        self.servers.append(server)

        def ready() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"{where}: `{command}` exited:\n{log.read_text()}")
            if kind[1] == "devserver":
                with socket.socket() as probe:
                    return probe.connect_ex(("127.0.0.1", port)) == 0
            try:
                url = f"http://127.0.0.1:{port}/healthz"
                return httpx.get(url, timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        wait_until(ready, SERVER_DEADLINE, f"{where}: `{command}` to serve on {port}")

    def stop(self, server: Server) -> None:
        _stop_group(server.proc)
        self.servers.remove(server)

    def close(self) -> None:
        for server in list(self.servers):
            self.stop(server)

    # -- running a page

    def run_command(self, command: Command, block: Block) -> None:
        where = f"{block.path.name}:{command.line}"
        text = self.local(without_setup(command.text))
        if not text:
            return
        if SERVER.match(text) and not command.shown:
            self.start_server(text, where)
            return
        gateway_port = self.ports[GATEWAY_PORT]
        if f":{gateway_port}" in text and self._server_on(gateway_port) is None:
            self.start_server("kumiho-sse-gateway demo", f"{where} (the demo it reads)")
        endless = is_endless(text)
        deadline = ENDLESS_DEADLINE if endless else COMMAND_DEADLINE
        run = run_in_terminal(
            self._script(text), self.env, deadline, _enough_of(command) if endless else None
        )
        said = f"{where}: `{command.text}`"
        if endless:
            assert not run.timed_out, f"{said} printed too little in {deadline:.0f}s:\n{run.text}"
        else:
            assert not run.timed_out, f"{said} did not end within {deadline:.0f}s:\n{run.text}"
            assert run.returncode == 0, f"{said} exited {run.returncode}:\n{run.text}"
        if command.shown and not block.not_compared:
            prefix = endless or command.open_ended
            problem = mismatch(command.shown, run.lines, prefix)
            assert problem is None, f"{said}: the output is not as shown: {problem}\n{run.text}"

    def run_block(self, block: Block) -> None:
        for command in block.commands():
            self.run_command(command, block)


@contextlib.contextmanager
def session() -> Iterator[Session]:
    with tempfile.TemporaryDirectory(prefix="kumiho-doc-commands-") as tmp:
        page = Session(Path(tmp))
        try:
            yield page
        finally:
            page.close()


def _tree_status() -> str:
    return subprocess.run(
        ["git", "status", "--porcelain", "--ignored"], cwd=ROOT, capture_output=True, text=True
    ).stdout


@pytest.mark.timeout(900)
@pytest.mark.parametrize("doc", DOC_FILES, ids=[p.relative_to(ROOT).as_posix() for p in DOC_FILES])
def test_every_command_of_the_page_runs_as_written(doc: Path) -> None:
    before = _tree_status()
    blocks = [block for block in shell_blocks(doc) if not block.not_run]
    with session() as page:
        for block in blocks:
            page.run_block(block)
        assert not page.servers or all(s.proc.poll() is None for s in page.servers), (
            "a server of the page died while it ran"
        )
    assert _tree_status() == before, "running the commands changed the repository"


def test_blocks_are_spared_only_for_what_cannot_run_here() -> None:
    spared = 0
    for doc in DOC_FILES:
        for block in shell_blocks(doc):
            body = "\n".join(block.body)
            if block.not_run is None:
                # The test suite runs this test: never from a page.
                assert "scripts/test" not in body, f"{block.where}: mark it not run"
                continue
            spared += 1
            assert any(word in body for word in UNRUNNABLE), (
                f"{block.where} is marked not run ({block.not_run}) but needs nothing "
                "this machine lacks: let the test run it"
            )
    assert spared, "the README's test command is marked"


def test_a_broken_command_fails_the_page(tmp_path: Path) -> None:
    """The runner bites: a wrong path, an output that is not as shown, a failing command."""
    doc = tmp_path / "broken.md"
    doc.write_text(
        "```console\n"
        "$ curl -N localhost:8000/event\n"
        "retry: 2000\n\n"
        "event: gateway.status\n"
        'data: {"upstream":"live"}\n'
        "^C\n"
        "```\n\n"
        "```sh\n"
        "kumiho-sse-gateway tail localhost:8000 --from yesterday --count 1\n"
        "```\n"
    )
    first, second = shell_blocks(doc)
    with session() as page:
        with pytest.raises(AssertionError, match="the output is not as shown"):
            page.run_block(first)
        with pytest.raises(AssertionError, match="exited 2"):
            page.run_block(second)


# ------------------------------------------------------------ the parts, alone


def test_blocks_markers_and_commands_are_read_as_documented(tmp_path: Path) -> None:
    doc = tmp_path / "page.md"
    doc.write_text(
        "<!-- not run: needs docker -->\n"
        "```sh\ndocker build .\n```\n\n"
        "<!-- output not compared: the clock -->\n\n"
        "```console\n$ date\nMon\n$ echo a \\\n  b\na b\n...\nignored\n```\n\n"
        "- a list\n\n"
        "  ```bash\n  # a comment\n  echo one\n  ```\n\n"
        "```html\n<p>not a shell</p>\n```\n"
    )
    docker, console, bash = shell_blocks(doc)
    assert docker.not_run == "needs docker" and docker.not_compared is None
    assert console.not_compared == "the clock" and console.not_run is None
    date, echo = console.commands()
    assert (date.text, date.shown, date.open_ended) == ("date", ["Mon"], False)
    assert (echo.text, echo.shown, echo.open_ended) == ("echo a    b", ["a b"], True)
    assert [c.text for c in bash.commands()] == ["echo one"]
    assert is_endless("curl -sN 'x' | jq .") and is_endless("curl --no-buffer x")
    assert is_endless("kumiho-sse-gateway tail localhost:8000")
    assert not is_endless("kumiho-sse-gateway tail localhost:8000 --count 2")
    assert not is_endless("curl -s 'localhost:8000/events/poll?a=NaN'")


def test_shapes_agree_on_kind_not_value() -> None:
    def same(a: str, b: str) -> bool:
        return agree(shape(a), shape(b))

    assert same("retry: 2231", "retry: 2775")
    assert same("event: gateway.status", "event: gateway.status")
    assert not same("event: gateway.status", "event: gateway.reset")
    assert same("event: revision.created", "event: revision.tagged")
    assert same('data: {"upstream":"live"}', 'data: {"upstream":"down","code":"X"}')
    assert not same('data: {"upstream":"live"}', 'data: {"routing_key":"a"}')
    assert same('{"events":[{...}],"cursor":"1-0"}', '{"events":[],"cursor":"2-0","more":true}')
    assert not same("HTTP/1.1 400 Bad Request", "HTTP/1.1 404 Not Found")
    assert same("date: Sun, 06 Dec 2026", "date: Mon, 07 Dec 2026")
    assert same("18:17:38  revision.created  kref://a", "09:01:02  item.created  kref://b")
    assert same("kref://a/b", "kref://c") and not same("kref://a", "https://a")
    assert not same("id: 1-0", "data: {}")
    shown = ["retry: 1", "", "id: 1-0", "data: {}"]
    real = ["retry: 9", "", "id: 7-0", "", ": heartbeat", "", "id: 8-0", "data: {}", ""]
    assert mismatch(shown, real, prefix=True) is None
    assert mismatch(shown, real[:-2], prefix=True) is not None


@settings(deadline=None)  # a loaded 2-core machine
@given(st.lists(st.text(alphabet=st.characters(exclude_categories=("Cs",)), max_size=80)))
def test_any_output_has_its_own_shape(lines: list[str]) -> None:
    lines = [ln.replace("\n", " ").replace("\r", " ") for ln in lines]
    assert mismatch(lines, lines, prefix=False) is None
    assert mismatch(lines, [*lines, "more"], prefix=True) is None
