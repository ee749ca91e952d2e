"""The deployment files, which no test here can run: the Dockerfile.

It is parsed and its structure checked.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"

# --------------------------------------------------------------- Dockerfile


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments), continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    current = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        keyword, _, rest = (current + line).partition(" ")
        out.append((keyword.upper(), rest.strip()))
        current = ""
    assert not current, "the Dockerfile ends inside a continued line"
    return out


def dependency_install() -> tuple[int, str]:
    """The RUN that installs the dependencies: its position and its arguments."""
    steps = dockerfile_instructions()
    found = [(i, args) for i, (kw, args) in enumerate(steps) if kw == "RUN" and "-r " in args]
    assert len(found) == 1, "one RUN installs the dependency list"
    return found[0]


def test_dockerfile_installs_dependencies_in_a_layer_before_the_code() -> None:
    steps = dockerfile_instructions()
    deps_at, deps = dependency_install()
    copies = [(i, args.split()) for i, (kw, args) in enumerate(steps) if kw == "COPY"]
    # Before the dependencies: pyproject.toml alone, so only it can invalidate them.
    assert [files for i, files in copies if i < deps_at] == [["pyproject.toml", "./"]]
    assert "pip install" in deps
    code_at = next(i for i, files in copies if files[0] == "gateway")
    static_at = next(i for i, files in copies if files[0] == "static")
    assert deps_at < code_at and deps_at < static_at
    # After the code: the package alone, without fetching anything again.
    final = [args for i, (kw, args) in enumerate(steps) if kw == "RUN" and i > code_at]
    assert len(final) == 1 and "pip install --no-deps" in final[0]
    assert "--no-build-isolation" in final[0]


def test_dockerfile_dependency_list_is_pyproject_s() -> None:
    _, deps = dependency_install()
    words = shlex.split(deps)
    code = words[words.index("-c") + 1]
    # pip installs the very file that the code's output went to.
    assert words[words.index(">") + 1] == words[words.index("-r") + 1]
    listed = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split("\n")
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    expected = pyproject["build-system"]["requires"] + pyproject["project"]["dependencies"]
    assert [line for line in listed if line] == expected
