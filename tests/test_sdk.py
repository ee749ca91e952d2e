"""The reference upstream speaks Kumiho's real wire protocol: the official SDK reads it.

The SDK runs in a subprocess because its generated proto registers the same
``kumiho.*`` message names as ours, and one process can hold only one.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Callable

from tests.conftest import DevServer

SDK_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import kumiho

    endpoint, resume_from = sys.argv[1], sys.argv[2]
    client = kumiho.connect(endpoint=endpoint, use_discovery=False, enable_auto_login=False)

    def take(n, **kwargs):
        out = []
        for event in kumiho.event_stream(timeout=20, **kwargs):
            out.append({"routing_key": event.routing_key, "kref": str(event.kref.uri),
                        "details": dict(event.details), "cursor": event.cursor,
                        "author": event.author,
                        "timestamp": str(event.timestamp)})
            if len(out) == n:
                return out

    with kumiho.use_client(client):
        caps = kumiho.get_event_capabilities()
        result = {
            "tier": caps.tier,
            "supports_cursor": caps.supports_cursor,
            "from_beginning": take(3, from_beginning=True, kref_filter="kref://sdk/**"),
            "resumed": take(2, cursor=resume_from, kref_filter="kref://sdk/**"),
            "filtered": take(1, from_beginning=True, routing_key_filter="revision.*",
                             kref_filter="kref://sdk/**"),
        }
    print(json.dumps(result))
    """
)


def test_official_sdk_reads_events_resumes_and_reads_capabilities(
    make_devserver: Callable[..., DevServer],
) -> None:
    devserver = make_devserver("--tier", "creator")
    first = devserver.publish(
        "item.model.created",
        "kref://sdk/chars/hero.model",
        {"kind": "model"},
        author="u-1",
        username="mina",
    )
    rest = devserver.publish(
        "revision.tagged", "kref://sdk/chars/hero.model?r=1", {"tag": "approved"}, count=2
    )
    proc = subprocess.run(
        [sys.executable, "-c", SDK_SCRIPT, devserver.address, first[0]],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["tier"] == "creator" and result["supports_cursor"] is True
    events = result["from_beginning"]
    assert [e["cursor"] for e in events] == first + rest
    assert events[0]["routing_key"] == "item.model.created"
    assert events[0]["kref"] == "kref://sdk/chars/hero.model"
    assert events[0]["details"] == {"kind": "model"}
    assert events[0]["author"] == "u-1"  # the SDK's Event has no username attribute
    assert [e["cursor"] for e in result["resumed"]] == rest  # resume is exclusive of the cursor
    assert result["filtered"][0]["cursor"] == rest[0]
