"""Regenerate gateway/_proto from the .proto files beside this script.

Usage: python proto/generate.py [OUT_DIR]   (default: gateway/_proto)

The protos are compiled under the virtual path ``gateway/_proto`` so the
generated gRPC modules import their messages as ``gateway._proto.*``; no
post-processing, and the same command reproduces the checked-in files.
"""

import os
import shutil
import sys
import tempfile
from pathlib import Path
from shutil import copyfile

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ("kumiho.proto", "devserver.proto")


def _plugin(name: str) -> str:
    found = shutil.which(
        name, path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    )
    if not found:
        raise SystemExit(
            f"{name} not found: pip install -e '.[test]' (it comes with mypy-protobuf)"
        )
    return found


def generate(out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        args = [
            "protoc",
            f"-Igateway/_proto={ROOT / 'proto'}",
            f"--python_out={tmp}",
            f"--grpc_python_out={tmp}",
            # Typed stubs for messages and services (mypy-protobuf), so the
            # package type-checks under mypy --strict.
            f"--plugin=protoc-gen-mypy={_plugin('protoc-gen-mypy')}",
            f"--plugin=protoc-gen-mypy_grpc={_plugin('protoc-gen-mypy_grpc')}",
            f"--mypy_out={tmp}",
            f"--mypy_grpc_out={tmp}",
            *(f"gateway/_proto/{name}" for name in PROTOS),
        ]
        if protoc.main(args) != 0:
            raise SystemExit("protoc failed")
        for path in sorted((Path(tmp) / "gateway" / "_proto").iterdir()):
            copyfile(path, out_dir / path.name)
    init = out_dir / "__init__.py"
    init.write_text('"""Generated from proto/ by proto/generate.py; do not edit."""\n')


if __name__ == "__main__":
    generate(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "gateway" / "_proto")
