"""The shell blocks of the README and the docs, read as tests/test_doc_commands.py runs them.

The convention (written for readers in docs/internals.md, "The docs' commands"):

- Every fenced block marked ``sh``, ``bash``, ``shell`` or ``console`` is run.
- A line ``<!-- not run: REASON -->`` just before the fence (blank lines and other
  markers may stand between) says why a block is not run: docker, kubectl, the test
  suite itself.
- ``<!-- output not compared: REASON -->`` runs the block but does not hold its
  commands to the output shown.
- In ``sh``/``bash`` blocks each line is a command (a trailing ``\\`` continues it;
  ``#`` lines are comments). In ``console`` blocks a command is a line starting with
  ``$ ``; the lines after it, up to the next command, are its output.

Output is compared by shape, not by value: events, cursors and times differ on
every run, the kinds of lines and their JSON keys do not (see ``shape``).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

SHELL_LANGUAGES = frozenset({"sh", "bash", "shell", "console"})
NOT_RUN = re.compile(r"<!--\s*not run:\s*(\S.*?)\s*-->")
NOT_COMPARED = re.compile(r"<!--\s*output not compared:\s*(\S.*?)\s*-->")
_FENCE = re.compile(r"^(?P<indent> *)(?P<fence>```+)(?P<lang>[\w-]*)\s*$")
# Shown output ends its compared part here: the reader stopped the command, or
# more output was left out.
_END_OF_SHOWN = ("^C", "...")


@dataclass
class Command:
    """One command of a block and the output the docs show for it (console blocks)."""

    text: str
    line: int
    shown: list[str] = field(default_factory=list)
    # The shown output stops early (^C or ...): compare it as a prefix.
    open_ended: bool = False


@dataclass
class Block:
    """A fenced shell block: where it is, how it is marked, its commands."""

    path: Path
    line: int
    language: str
    body: list[str]
    not_run: str | None = None
    not_compared: str | None = None

    @property
    def where(self) -> str:
        return f"{self.path.name}:{self.line}"

    def commands(self) -> list[Command]:
        """The block's commands, in order (see the module's docstring)."""
        if self.language == "console":
            return _console_commands(self.body, self.line + 1)
        return _script_commands(self.body, self.line + 1)


def shell_blocks(path: Path) -> list[Block]:
    """Every fenced shell block of a Markdown file, with the markers before it."""
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        opening = _FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        indent, fence = opening["indent"], opening["fence"]
        end = i + 1
        while end < len(lines) and lines[end].strip() != fence:
            end += 1
        language = opening["lang"].lower()
        if language in SHELL_LANGUAGES:
            body = [ln[len(indent) :] if ln.startswith(indent) else ln for ln in lines[i + 1 : end]]
            block = Block(path, i + 1, language, body)
            for marker in _markers_before(lines, i):
                if found := NOT_RUN.search(marker):
                    block.not_run = found.group(1)
                if found := NOT_COMPARED.search(marker):
                    block.not_compared = found.group(1)
            blocks.append(block)
        i = end + 1
    return blocks


def _markers_before(lines: list[str], fence: int) -> list[str]:
    """The HTML comments just above a fence (blank lines between are allowed)."""
    found = []
    i = fence - 1
    while i >= 0 and (not lines[i].strip() or lines[i].strip().startswith("<!--")):
        if lines[i].strip():
            found.append(lines[i].strip())
        i -= 1
    return found


def _joined(lines: list[str], start: int) -> list[tuple[int, str]]:
    """Lines with their numbers, a trailing backslash joining the next one on."""
    out: list[tuple[int, str]] = []
    pending = ""
    first = start
    for number, line in enumerate(lines, start):
        if not pending:
            first = number
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        out.append((first, pending + line))
        pending = ""
    if pending:
        out.append((first, pending))
    return out


def _script_commands(body: list[str], start: int) -> list[Command]:
    commands = []
    for number, line in _joined(body, start):
        text = line.strip()
        if text and not text.startswith("#"):
            commands.append(Command(text, number))
    return commands


def _console_commands(body: list[str], start: int) -> list[Command]:
    commands: list[Command] = []
    for number, line in _joined(body, start):
        if line.startswith("$ "):
            commands.append(Command(line[2:].strip(), number))
        elif commands and not commands[-1].open_ended:
            if line.strip() in _END_OF_SHOWN:
                commands[-1].open_ended = True
            else:
                commands[-1].shown.append(line)
    for command in commands:
        while command.shown and not command.shown[-1].strip():
            command.shown.pop()
    return commands


# ------------------------------------------------------------------ output shapes

Shape = tuple[object, ...]


def _json_keys(text: str) -> object:
    """A JSON value's shape: its object's keys, or an array's length; shown JSON may
    elide parts (``{...}``), so fall back to the keys written in it."""
    try:
        value = json.loads(text)
    except ValueError:
        return frozenset(re.findall(r'"([A-Za-z_][\w.]*)"\s*:', text))
    if isinstance(value, dict):
        return frozenset(value)
    if isinstance(value, list):
        return ("array", len(value))
    return ("scalar",)


def shape(line: str) -> Shape:
    """What must agree between a shown line of output and the real one.

    SSE fields by name (a ``gateway.*`` event name exactly), JSON by its keys, an
    HTTP status line by its code, a header by its name, any other line by its first
    word with digits made alike (``18:17:38`` and ``09:01:02`` agree), or by its
    scheme when that word is a URL.
    """
    line = line.rstrip()
    if not line:
        return ("blank",)
    if found := re.match(r"(retry|id|event|data):\s?(.*)$", line):
        name, value = found.groups()
        if name == "event":
            return ("event", value if value.startswith("gateway.") else "*")
        if name == "data":
            return ("data", _json_keys(value))
        return (name,)
    if line.startswith(":"):
        return ("comment", line[1:].split()[0] if line[1:].split() else "")
    if line[0] in "{[":
        return ("json", _json_keys(line))
    if found := re.match(r"HTTP/[\d.]+ (\d{3})\b", line):
        return ("status", found.group(1))
    if found := re.match(r"([A-Za-z][A-Za-z0-9-]*): ", line):
        return ("header", found.group(1).lower())
    first = line.split()[0]
    if url := re.match(r"[a-z][a-z0-9+.-]*://", first):
        return ("url", url.group(0))
    return ("text", re.sub(r"\d+", "0", first))


def agree(shown: Shape, real: Shape) -> bool:
    """Whether a real line has the shape of a shown one (shown JSON keys are a subset)."""
    if shown[0] != real[0] or len(shown) != len(real):
        return False
    for want, got in zip(shown[1:], real[1:], strict=True):
        if isinstance(want, frozenset) and isinstance(got, frozenset):
            if not want <= got:
                return False
        elif want != got:
            return False
    return True


def without_markers(lines: list[str]) -> list[str]:
    """Output less what comes on its own schedule: heartbeat comments, and frames that
    carry an ``id:`` alone (a position after events a filter passed over), each with
    the blank line that ends it."""
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        frame_start = not out or out[-1] == ""
        ends_frame = i + 1 < len(lines) and lines[i + 1] == ""
        if frame_start and ends_frame and (line.startswith("id:") or line == ": heartbeat"):
            i += 2
            continue
        out.append(line)
        i += 1
    return out


def mismatch(shown: list[str], real: list[str], prefix: bool) -> str | None:
    """Why real output does not have the shape shown (``None`` when it does)."""
    want = without_markers(shown)
    got = without_markers(real)
    if len(got) < len(want) or (not prefix and len(got) != len(want)):
        return f"{len(want)} lines shown, {len(got)} printed"
    for number, (a, b) in enumerate(zip(want, got, strict=False), 1):
        if not agree(shape(a), shape(b)):
            return f"line {number}: shown {a!r}, printed {b!r}"
    return None
