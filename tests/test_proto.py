"""gateway/_proto is exactly what proto/generate.py makes from proto/."""

from __future__ import annotations

import filecmp
import subprocess
import sys
from pathlib import Path

from gateway._proto import kumiho_pb2

ROOT = Path(__file__).resolve().parent.parent


def test_generated_code_is_reproducible(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, str(ROOT / "proto" / "generate.py"), str(tmp_path)],
        check=True,
        capture_output=True,
    )
    checked_in = ROOT / "gateway" / "_proto"
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == sorted(
        p.name for p in checked_in.iterdir() if p.is_file() and p.suffix in (".py", ".pyi")
    )
    for name in names:
        assert filecmp.cmp(tmp_path / name, checked_in / name, shallow=False), (
            f"{name} differs: run python proto/generate.py"
        )


def test_field_numbers_match_kumiho() -> None:
    def numbers(message: type) -> dict[str, int]:
        return {f.name: f.number for f in message.DESCRIPTOR.fields}  # type: ignore[attr-defined]

    assert kumiho_pb2.DESCRIPTOR.package == "kumiho"
    service = kumiho_pb2.DESCRIPTOR.services_by_name["KumihoService"]
    assert set(service.methods_by_name) == {"EventStream", "GetEventCapabilities"}
    assert service.methods_by_name["EventStream"].server_streaming
    assert numbers(kumiho_pb2.Kref) == {"uri": 1}
    assert numbers(kumiho_pb2.EventStreamRequest) == {
        "routing_key_filter": 1,
        "kref_filter": 2,
        "cursor": 3,
        "consumer_group": 4,
        "from_latest": 5,
        "from_cursor": 6,
        "from_timestamp": 7,
        "from_beginning": 8,
    }
    assert numbers(kumiho_pb2.Event) == {
        "routing_key": 1,
        "kref": 2,
        "timestamp": 3,
        "author": 4,
        "tenant_id": 5,
        "details": 6,
        "username": 7,
        "cursor": 8,
    }
    assert numbers(kumiho_pb2.EventCapabilities) == {
        "supports_replay": 1,
        "supports_cursor": 2,
        "supports_consumer_groups": 3,
        "max_retention_hours": 4,
        "max_buffer_size": 5,
        "tier": 6,
    }
    oneof = kumiho_pb2.EventStreamRequest.DESCRIPTOR.oneofs_by_name["start_position"]
    assert [f.name for f in oneof.fields] == [
        "from_latest",
        "from_cursor",
        "from_timestamp",
        "from_beginning",
    ]
