"""The deployment files, which no test here can run: compose and the Dockerfile.

compose.yaml and the Dockerfile are parsed and their structure checked.
"""

from __future__ import annotations

import re
import shlex
import shutil
import ssl
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "deploy" / "compose.yaml"
DOCKERFILE = ROOT / "Dockerfile"

# Seconds beyond --shutdown-grace before the SIGKILL: uvicorn's share of the
# grace is rounded up to whole seconds (gateway/server.py), then the
# interpreter exits.
SHUTDOWN_MARGIN = 5.0

# ------------------------------------------------------------------ compose


def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return data


def mounts(service: dict[str, Any]) -> dict[str, tuple[str, str]]:
    """A service's volumes as target -> (source, mode), from the short syntax."""
    out = {}
    for volume in service.get("volumes", []):
        source, target, *mode = volume.split(":")
        out[target] = (source, mode[0] if mode else "rw")
    return out


def test_compose_makes_its_own_certificate() -> None:
    services = compose()["services"]
    tls, nginx = services["tls"], services["nginx"]
    assert nginx["depends_on"]["tls"] == {"condition": "service_completed_successfully"}

    [(target, (volume, mode))] = mounts(tls).items()
    assert mode == "rw"
    assert volume in compose()["volumes"], "the certificate lives in a named volume"
    # The paths the tls service writes are those nginx reads, through the same volume.
    command = " ".join(tls["command"])
    nginx_conf = (ROOT / "deploy" / "nginx" / "nginx.conf").read_text()
    read = re.findall(r"ssl_certificate(?:_key)?\s+(\S+);", nginx_conf)
    assert len(read) == 2
    for path in read:
        directory, name = path.rsplit("/", 1)
        assert mounts(nginx)[directory] == (volume, "ro")
        assert f"{target}/{name}" in command

    # No service needs files that are not in the repository.
    for name, service in services.items():
        for source, _ in mounts(service).values():
            assert "tls" not in source or source == volume, f"{name} mounts {source}"
            if source.startswith("."):
                assert (COMPOSE.parent / source).exists(), f"{name} mounts missing {source}"
    assert not (COMPOSE.parent / "tls").exists()


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_compose_certificate_command_makes_a_usable_certificate(tmp_path: Path) -> None:
    tls = compose()["services"]["tls"]
    [target] = mounts(tls)
    assert tls["entrypoint"] == ["sh", "-c"]
    script = tls["command"][0].replace(f"{target}/", f"{tmp_path}/")
    subprocess.run(["sh", "-c", script], check=True, capture_output=True, timeout=60)
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert, key)
    text = subprocess.run(
        ["openssl", "x509", "-in", str(cert), "-noout", "-ext", "subjectAltName"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    assert "DNS:localhost" in text
    # A restart keeps a certificate that is still good.
    before = cert.read_bytes()
    subprocess.run(["sh", "-c", script], check=True, capture_output=True, timeout=60)
    assert cert.read_bytes() == before


def test_compose_stop_grace_covers_the_gateway_shutdown() -> None:
    for name in ("gateway-1", "gateway-2"):
        service = compose()["services"][name]
        grace = float(service["environment"]["KUMIHO_GATEWAY_SHUTDOWN_GRACE"])
        drain = float(service["environment"]["KUMIHO_GATEWAY_DRAIN_DELAY"])
        assert drain <= grace / 2
        stop = float(service["stop_grace_period"].removesuffix("s"))
        assert stop >= grace + SHUTDOWN_MARGIN


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
