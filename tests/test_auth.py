"""--auth none | passthrough | service against a devserver that checks bearer tokens."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlencode

import httpx
import pytest

from tests.conftest import (
    BOTH_MODES,
    FAST,
    DevServer,
    Gateway,
    Reader,
    raw_request,
    read_events,
    wait_until,
)

pytestmark = BOTH_MODES

TOKENS = (
    "--token",
    "tok-a=studio-a",
    "--token",
    "tok-b=studio-b",
    "--token",
    "tok-x=studio-a",
    "--deny-token",
    "tok-x",
)


@pytest.fixture
def devserver(make_devserver: Callable[..., DevServer]) -> DevServer:
    return make_devserver(*TOKENS)


@pytest.fixture
def passthrough(devserver: DevServer, make_gateway: Callable[..., Gateway]) -> Gateway:
    return make_gateway(devserver.address, "--auth", "passthrough", *FAST)


def _publish_both(devserver: DevServer) -> tuple[list[str], list[str]]:
    a = devserver.publish("revision.created", "kref://a/x.model?r=1", tenant="studio-a", count=2)
    b = devserver.publish("revision.created", "kref://b/y.model?r=1", tenant="studio-b", count=2)
    return a, b


def test_passthrough_forwards_each_clients_token(
    devserver: DevServer, passthrough: Gateway
) -> None:
    a, b = _publish_both(devserver)
    beginning = {"from": "beginning"}
    by_header = read_events(
        passthrough.url, 2, params=beginning, headers={"Authorization": "Bearer tok-a"}
    )
    by_cookie = read_events(
        passthrough.url, 2, params=beginning, headers={"Cookie": "kumiho_token=tok-b"}
    )
    by_param = read_events(passthrough.url, 2, params={**beginning, "access_token": "tok-a"})
    assert [e.id for e in by_header] == a
    assert [e.id for e in by_cookie] == b  # tenants never see each other's events
    assert [e.id for e in by_param] == a
    with devserver.client() as c:
        assert {"studio-a", "studio-b"} <= set(c.stats().recent_tenants)


def test_header_beats_cookie_beats_parameter(devserver: DevServer, passthrough: Gateway) -> None:
    _, b = _publish_both(devserver)
    events = read_events(
        passthrough.url,
        2,
        params={"from": "beginning", "access_token": "tok-a"},
        headers={"Authorization": "Bearer tok-b", "Cookie": "kumiho_token=tok-a"},
    )
    assert [e.id for e in events] == b


@pytest.mark.parametrize(
    ("headers", "params", "status", "code"),
    [
        ({}, {}, 401, "unauthenticated"),  # missing
        ({"Authorization": "Basic dXNlcg=="}, {}, 401, "unauthenticated"),  # wrong scheme
        ({"Authorization": "Bearer tok-nope"}, {}, 401, "unauthenticated"),  # upstream refuses it
        ({"Authorization": "Bearer tok-x"}, {}, 403, "permission_denied"),  # upstream denies events
        ({}, {"access_token": "t" * 9000}, 400, "invalid_parameter"),  # over the limit
    ],
)
def test_refusals_come_before_the_stream(
    passthrough: Gateway, headers: dict[str, str], params: dict[str, str], status: int, code: str
) -> None:
    r = httpx.get(passthrough.url + "/events", headers=headers, params=params, timeout=10)
    assert r.status_code == status
    assert r.headers["content-type"] == "application/json"
    assert r.json()["error"]["code"] == code
    assert r.json()["error"]["message"]
    # A 401 names the scheme it wants (RFC 9110); other refusals do not ask for one.
    assert r.headers.get("www-authenticate") == ("Bearer" if status == 401 else None)


def test_revoked_token_ends_the_stream_with_gateway_error(
    devserver: DevServer, passthrough: Gateway
) -> None:
    started = devserver.client().stats().streams_started
    with (
        httpx.Client(timeout=10) as client,
        client.stream(
            "GET", passthrough.url + "/events", headers={"Authorization": "Bearer tok-b"}
        ) as r,
    ):
        assert r.status_code == 200
        lines = r.iter_lines()
        next(lines)
        # Counted by the upstream (streams of earlier tests may still linger).
        wait_until(
            lambda: devserver.client().stats().streams_started > started, 10, "the upstream stream"
        )
        with devserver.client() as c:
            c.revoke_token("tok-b")
        body = list(lines)  # the stream ends by itself after the error
    assert "event: gateway.error" in body
    error = json.loads(body[body.index("event: gateway.error") + 1].removeprefix("data: "))
    assert error["code"] == "unauthenticated" and error["retryable"] is False


def test_access_token_never_reaches_the_logs(devserver: DevServer, passthrough: Gateway) -> None:
    secret = "tok-a"
    _publish_both(devserver)
    read_events(passthrough.url, 1, params={"from": "beginning", "access_token": secret})
    httpx.get(passthrough.url + "/events", params={"access_token": "wrong-secret-123"}, timeout=10)
    log = passthrough.log()
    assert "access_token=***" in log  # the access log line is there, redacted
    assert secret not in log.replace("access_token=***", "")
    assert "wrong-secret-123" not in log


def test_service_mode_checks_gateway_keys_and_sends_its_own_token(
    devserver: DevServer, make_gateway: Callable[..., Gateway]
) -> None:
    gateway = make_gateway(
        devserver.address,
        "--auth",
        "service",
        *FAST,
        env={"KUMIHO_AUTH_TOKEN": "tok-b", "KUMIHO_GATEWAY_API_KEYS": "key-1, key-2"},
    )
    _, b = _publish_both(devserver)
    assert httpx.get(gateway.url + "/events", timeout=10).status_code == 401
    assert (
        httpx.get(
            gateway.url + "/events", headers={"Authorization": "Bearer key-3"}, timeout=10
        ).status_code
        == 401
    )
    events = read_events(
        gateway.url, 2, params={"from": "beginning"}, headers={"Authorization": "Bearer key-2"}
    )
    assert [e.id for e in events] == b  # the gateway's own token (tenant studio-b) went upstream


def test_credentials_are_decided_before_the_200_when_the_upstream_sends_headers_late(
    make_devserver: Callable[..., DevServer], make_gateway: Callable[..., Gateway]
) -> None:
    devserver = make_devserver(*TOKENS, "--late-headers")
    gateway = make_gateway(devserver.address, *FAST, "--auth", "passthrough")
    for token, status in (("tok-bad", 401), ("tok-x", 403)):
        r = httpx.get(
            gateway.url + "/events", headers={"Authorization": f"Bearer {token}"}, timeout=10
        )
        assert r.status_code == status, r.text
    cursors = devserver.publish("revision.created", "kref://a/x.model", tenant="studio-a")
    [event] = read_events(
        gateway.url, 1, headers={"Authorization": "Bearer tok-a"}, params={"from": "beginning"}
    )
    assert event.id == cursors[0]


def _with_token_file(
    make_devserver: Callable[..., DevServer],
    make_gateway: Callable[..., Gateway],
    token_file: Path,
    *args: str,
) -> tuple[DevServer, Gateway]:
    """A devserver that knows old-tok and new-tok, and a service-mode gateway whose
    token file holds old-tok (clients present key-1)."""
    devserver = make_devserver("--token", "old-tok=studio-a", "--token", "new-tok=studio-a")
    token_file.write_text("old-tok\n")
    gateway = make_gateway(
        devserver.address,
        "--auth",
        "service",
        "--api-keys",
        "key-1",
        *args,
        env={"KUMIHO_AUTH_TOKEN_FILE": str(token_file)},
    )
    return devserver, gateway


def test_a_rotated_service_token_file_is_picked_up_without_a_restart(
    make_devserver: Callable[..., DevServer], make_gateway: Callable[..., Gateway], tmp_path: Path
) -> None:
    token_file = tmp_path / "token"
    # Two streams on two upstream streams: each must switch, not only the first to notice.
    devserver, gateway = _with_token_file(
        make_devserver, make_gateway, token_file, *FAST, "--hub-filtering", "upstream"
    )
    key = {"Authorization": "Bearer key-1"}
    readers = {kind: Reader(gateway.url, {"routing_key": f"{kind}.*"}, key) for kind in "ab"}
    for reader in readers.values():
        reader.start()
        assert reader.connected.wait(10) and reader.status == 200
    wait_until(lambda: devserver.open_streams() == 2, 10, "the upstream streams")
    first = {
        k: devserver.publish(f"{k}.created", "kref://a/x.model", tenant="studio-a") for k in "ab"
    }
    for reader in readers.values():
        reader.wait_for(1)
    # Rotation: the new token goes into the file, then the old one is revoked upstream.
    token_file.write_text("new-tok\n")
    with devserver.client() as c:
        c.revoke_token("old-tok")
    second = {
        k: devserver.publish(f"{k}.created", "kref://a/x.model", tenant="studio-a") for k in "ab"
    }
    for kind, reader in readers.items():
        events = reader.wait_for(2)
        reader.stop.set()
        assert [e.id for e in events] == first[kind] + second[kind]  # no gateway.error
    assert httpx.get(gateway.url + "/capabilities", headers=key, timeout=10).status_code == 200
    assert "new one from its file" in gateway.log() and "new-tok" not in gateway.log()


def test_capabilities_alone_pick_up_a_rotated_service_token(
    make_devserver: Callable[..., DevServer], make_gateway: Callable[..., Gateway], tmp_path: Path
) -> None:
    token_file = tmp_path / "token"
    devserver, gateway = _with_token_file(
        make_devserver, make_gateway, token_file, "--capabilities-ttl", "0"
    )
    key = {"Authorization": "Bearer key-1"}
    assert httpx.get(gateway.url + "/capabilities", headers=key, timeout=10).status_code == 200
    with devserver.client() as c:
        c.revoke_token("old-tok")
    assert httpx.get(gateway.url + "/capabilities", headers=key, timeout=10).status_code == 401
    token_file.write_text("new-tok")  # no stream to notice: /capabilities reads it itself
    assert httpx.get(gateway.url + "/capabilities", headers=key, timeout=10).status_code == 200


# Every way a client can present nothing while seeming to present something.
EMPTY_CREDENTIALS: list[tuple[dict[str, str], dict[str, str]]] = [
    ({"X-Kumiho-Token": ""}, {}),
    ({"X-Kumiho-Token": "   "}, {}),
    ({"X-Kumiho-Token": " \t "}, {}),
    ({"Authorization": ""}, {}),
    ({"Authorization": "Bearer "}, {}),
    ({"Cookie": "kumiho_token="}, {}),
    ({"Cookie": 'kumiho_token=""'}, {}),
    ({}, {"access_token": ""}),
    ({"X-Kumiho-Token": "", "Cookie": "kumiho_token="}, {"access_token": ""}),
]


def test_an_empty_or_blank_credential_is_a_missing_one(
    make_devserver: Callable[..., DevServer], make_gateway: Callable[..., Gateway]
) -> None:
    # An open upstream serves anyone: only the gateway stands between it and a
    # passthrough client that sends an empty token, so the gateway must refuse.
    devserver = make_devserver()
    gateway = make_gateway(devserver.address, "--auth", "passthrough", *FAST)
    routes = ("/events", "/api/v1/events/stream", "/events/poll", "/api/v1/events/poll")
    for headers, params in EMPTY_CREDENTIALS:
        for path in (*routes, "/capabilities"):
            query = {**params, "timeout": "0"} if path.endswith("/poll") else params
            # httpx refuses to send blank header values: the bytes go as a script sends them.
            answer = raw_request(
                gateway.url,
                f"{path}?{urlencode(query)}".encode(),
                [(k.encode(), v.encode()) for k, v in headers.items()],
            )
            assert answer is not None and answer.status == 401, (headers, params, path, answer)
            assert answer.envelope()["code"] == "unauthenticated"
    assert devserver.client().stats().streams_started == 0  # nobody reached the upstream
