"""The item vocabulary: its data objects, shared frames, and exhaustive consumers."""

from __future__ import annotations

import re
import shutil
import time
from pathlib import Path

import grpc
from mypy import api as mypy_api

from gateway._proto import kumiho_pb2
from gateway.items import Reset, SharedEvent, Status
from gateway.upstream import Rejected, down, terminal_error

ROOT = Path(__file__).resolve().parent.parent
# Every module that takes items apart: each must handle every kind of item.
CONSUMERS = ("pump.py", "poll.py", "channel.py", "catchup.py", "filtering.py")


def test_reset_data_is_the_gateway_reset_object() -> None:
    reset = Reset("cursor_expired", "1-2", "earliest")
    assert reset.data() == {
        "reason": "cursor_expired",
        "requested_cursor": "1-2",
        "resumed_from": "earliest",
    }


def test_status_data_counts_down_to_the_next_attempt() -> None:
    status = Status.now("unavailable", "UNAVAILABLE", 30.0)
    data = status.data()
    assert data["upstream"] == "unavailable" and data["code"] == "UNAVAILABLE"
    assert isinstance(data["retry_in_ms"], int) and 29_000 < data["retry_in_ms"] <= 30_000
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", str(data["since"]))
    past = Status("failing", "INTERNAL", time.monotonic() - 5, "2030-01-01T00:00:00.000Z")
    assert past.retry_in_ms() == 0  # overdue is now, never negative
    assert Status.now("live", None, None).retry_in_ms() is None


def test_same_state_ignores_when_and_the_retry_time() -> None:
    a = Status.now("unavailable", "UNAVAILABLE", 1.0)
    assert a.same_state(Status.now("unavailable", "UNAVAILABLE", 9.0))
    assert not a.same_state(Status.now("failing", "UNAVAILABLE", 1.0))
    assert not a.same_state(Status.now("unavailable", "DEADLINE_EXCEEDED", 1.0))


def test_a_failed_call_is_unavailable_when_unreachable_else_failing() -> None:
    assert down(grpc.StatusCode.UNAVAILABLE, 1.0).upstream == "unavailable"
    assert down(grpc.StatusCode.DEADLINE_EXCEEDED, 1.0).upstream == "unavailable"
    failing = down(grpc.StatusCode.INTERNAL, 1.0)
    assert (failing.upstream, failing.code) == ("failing", "INTERNAL")
    refused = terminal_error(Rejected(grpc.StatusCode.PERMISSION_DENIED, "no"))
    assert refused is not None and (refused.status, refused.code) == (403, "permission_denied")
    assert terminal_error(Rejected(grpc.StatusCode.UNAVAILABLE, "down")) is None


def test_a_shared_event_is_encoded_once_per_form_and_takes_a_minted_id_without_a_cursor() -> None:
    event = kumiho_pb2.Event(routing_key="a.b", kref=kumiho_pb2.Kref(uri="kref://p/x"), cursor="")
    shared = SharedEvent(event, "gw:1:7")
    assert shared.cursor == "gw:1:7"
    plain, named = shared.plain_frame(), shared.named_frame()
    assert plain.startswith(b"id: gw:1:7\n") and b"event: a.b\n" in named
    assert shared.plain_frame() is plain and shared.named_frame() is named
    assert SharedEvent(kumiho_pb2.Event(cursor="5-0"), "gw:1:8").cursor == "5-0"


def test_a_new_kind_of_item_is_a_type_error_in_every_consumer(tmp_path: Path) -> None:
    # The package as it is, plus one more kind of item that no consumer handles.
    shutil.copytree(ROOT / "gateway", tmp_path / "gateway")
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    items = tmp_path / "gateway" / "items.py"
    text = items.read_text()
    union = "Item = kumiho_pb2.Event | SharedEvent | Reset | Failure | Status | Advance"
    assert union in text
    items.write_text(text.replace(union, f"class Novel:\n    cursor = ''\n\n\n{union} | Novel"))
    out, _, status = mypy_api.run(
        ["--config-file", str(tmp_path / "pyproject.toml"), "--cache-dir", str(tmp_path / "c"),
         str(tmp_path / "gateway")]
    )  # fmt: skip
    assert status == 1, out
    unhandled = {
        Path(line.split(":")[0]).name
        for line in out.splitlines()
        if '"assert_never" has incompatible type "Novel"' in line
    }
    assert unhandled >= set(CONSUMERS), out
