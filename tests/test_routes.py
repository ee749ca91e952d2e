"""The route modules (``gateway/routes``) in process, with dependency overrides.

Beside the end-to-end tests (the same routes behind uvicorn): here the app
runs in the test's process through FastAPI's TestClient, against no upstream
or a real devserver, and ``app.dependency_overrides`` swaps the credential
dependency to show every route takes who the request is from that one place.
"""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from gateway.app import build_app
from gateway.auth import Credential, identity_of
from gateway.lifecycle import Lifecycle
from gateway.routes.dependencies import credential
from tests.conftest import DevServer, unique_project
from tests.test_app import NOWHERE, POLLS, STREAMS, served, settings

RETRY_MS = 1000
# A few refusals of each kind the parsers make, on every route that parses them.
BAD = [
    ({"named": "maybe"}, "named"),
    ({"from": "yesterday"}, "from"),
    ({"routing_key": "a\nb"}, "routing_key"),
    ({"cursor": "1-0", "last_event_id": "2-0"}, "cursor"),
]
BAD_POLL = [({"max_events": "0"}, "max_events"), ({"timeout": "61"}, "timeout")]


def _as(token: str) -> Callable[[], Credential]:
    """A credential dependency that answers ``token``'s credential, whatever was sent."""

    async def who() -> Credential:
        return Credential(token, identity_of(token))

    return who


@pytest.fixture(scope="module")
def devserver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevServer]:
    """One open devserver for the module: each test reads only its own project's events."""
    server = DevServer(tmp_path_factory.mktemp("routes") / "devserver.sqlite3").start()
    yield server
    server.stop(signal.SIGKILL)


def _envelope(answer: Any, status: int, code: str) -> dict[str, Any]:
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"] == "application/json"
    assert answer.headers["cache-control"] == "no-store"
    error: dict[str, Any] = answer.json()["error"]
    assert error["code"] == code, error
    return error


def test_a_bad_parameter_is_a_400_envelope_on_every_stream_and_poll() -> None:
    with served(build_app(settings())) as client:
        for path in (*STREAMS, *POLLS):
            for params, name in BAD:
                error = _envelope(client.get(path, params=params), 400, "invalid_parameter")
                assert error["message"].startswith(name), (path, error)
                assert error["retryable"] is False
        for path in POLLS:
            for params, name in BAD_POLL:
                error = _envelope(client.get(path, params=params), 400, "invalid_parameter")
                assert error["message"].startswith(name), (path, error)
            # A consumer group's events between two polls would go to nobody.
            error = _envelope(
                client.get(path, params={"consumer_group": "g"}), 400, "invalid_parameter"
            )
            assert error["message"].startswith("consumer_group"), error


def test_the_credential_is_judged_first_and_comes_from_its_dependency() -> None:
    app = build_app(settings(auth="passthrough"))
    with served(app) as client:
        for path in (*STREAMS, *POLLS):
            answer = client.get(path, params={"named": "maybe"})
            _envelope(answer, 401, "unauthenticated")  # before the parameters are judged
            assert answer.headers["www-authenticate"] == "Bearer"
        _envelope(client.get("/capabilities"), 401, "unauthenticated")
        app.dependency_overrides[credential] = _as("tok-a")
        for path in (*STREAMS, *POLLS):
            _envelope(client.get(path, params={"named": "maybe"}), 400, "invalid_parameter")


def test_while_draining_streams_say_come_back_and_polls_and_readiness_refuse() -> None:
    lifecycle = Lifecycle()
    lifecycle.draining = True
    with served(build_app(settings(retry_ms=RETRY_MS), lifecycle)) as client:
        ready = client.get("/readyz")
        assert ready.status_code == 503 and ready.json() == {"status": "draining"}
        assert client.get("/healthz").status_code == 200  # the process still runs
        for path in STREAMS:
            # A 200 with a retry: line: EventSource would stop for good on a 503.
            answer = client.get(path)
            assert answer.status_code == 200
            assert answer.headers["content-type"] == "text/event-stream; charset=utf-8"
            [line] = answer.text.split("\n\n")[:-1]
            assert RETRY_MS <= int(line.removeprefix("retry: ")) <= RETRY_MS * 3 // 2
            script = client.get(path, params={"format": "ndjson"})
            assert script.status_code == 200 and script.content == b""  # reconnect at the end
            assert script.headers["content-type"] == "application/x-ndjson"
        for path in POLLS:
            error = _envelope(client.get(path), 503, "draining")
            assert error["retryable"] is True
            assert RETRY_MS <= error["retry_after_ms"] <= RETRY_MS * 3 // 2


def test_readiness_follows_the_pool_and_the_upstream() -> None:
    failing = Lifecycle(pool_failing=lambda: True)
    with served(build_app(settings(), failing)) as client:
        answer = client.get("/readyz")
        assert answer.status_code == 503 and answer.json() == {"status": "pool_failing"}
    with served(build_app(settings())) as client:
        answer = client.get("/readyz")
        assert answer.status_code == 503
        assert answer.json() == {"status": "unavailable", "upstream": NOWHERE}
        error = _envelope(client.get("/capabilities"), 503, "upstream_unavailable")
        assert error["retryable"] is True


@pytest.mark.parametrize("hub", [True, False], ids=["hub", "no-hub"])
def test_the_poll_router_answers_the_same_under_both_prefixes(
    devserver: DevServer, hub: bool
) -> None:
    kref = f"kref://{unique_project()}/shots/sq010.comp"
    cursors = devserver.publish("revision.created", kref, count=3)
    wanted = {"kref": kref, "from": "beginning", "timeout": "10"}
    with served(build_app(settings(devserver.address, hub=hub))) as client:
        assert client.get("/readyz").json()["status"] == "ready"
        for path in POLLS:
            assert _poll_until(client, path, wanted, len(cursors)) == cursors, path
            # Paged by a cursor, under either prefix.
            page = client.get(path, params={**wanted, "cursor": cursors[0], "max_events": "1"})
            assert [e["cursor"] for e in page.json()["events"]] == cursors[1:2], path


def _poll_until(client: Any, path: str, params: dict[str, str], count: int) -> list[str]:
    """The cursors of ``count`` events, read by a polling loop (an answer may hold fewer:
    it comes once events pause for 50 ms, which a loaded machine can make happen)."""
    got: list[str] = []
    for _ in range(count):
        answer = client.get(path, params={**params, **({"cursor": got[-1]} if got else {})})
        assert answer.status_code == 200, answer.text
        got += [e["cursor"] for e in answer.json()["events"]]
        if len(got) >= count:
            break
    return got


def test_head_validates_without_an_upstream_stream(devserver: DevServer) -> None:
    with served(build_app(settings(devserver.address, hub=False))) as client:
        started = devserver.client().stats().streams_started
        for path in (*STREAMS, *POLLS):
            answer = client.head(path, params={"from": "beginning"})
            assert answer.status_code == 200 and answer.content == b"", path
            assert client.head(path, params={"named": "maybe"}).status_code == 400, path
        assert devserver.client().stats().streams_started == started


def test_the_upstream_sees_the_credential_the_dependency_gives(
    make_devserver: Callable[..., DevServer],
) -> None:
    devserver = make_devserver("--token", "tok-a=studio-a", "--token", "tok-b=studio-b")
    kref = f"kref://{unique_project()}/a.model"
    [mine] = devserver.publish("revision.created", kref, tenant="studio-a")
    devserver.publish("revision.created", kref, tenant="studio-b")
    wanted = {"kref": kref, "from": "beginning", "timeout": "10"}
    app = build_app(settings(devserver.address, auth="passthrough", hub=False))
    with served(app) as client:
        _envelope(client.get(POLLS[0], params=wanted), 401, "unauthenticated")
        app.dependency_overrides[credential] = _as("tok-a")
        answer = client.get(POLLS[0], params=wanted)
        assert [e["cursor"] for e in answer.json()["events"]] == [mine]  # studio-a's only
        assert client.get("/capabilities").status_code == 200
        app.dependency_overrides[credential] = _as("tok-unknown")
        _envelope(client.get(POLLS[1], params=wanted), 401, "unauthenticated")  # the upstream's
