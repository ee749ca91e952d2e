"""serve --workers N: metrics that add up across workers, and workers that die."""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import psutil
import pytest
from httpx_sse import connect_sse

from gateway.backoff import Backoff
from gateway.supervisor import (
    METRICS_DIR_PREFIX,
    exit_description,
    restart_delay,
    sweep_metrics_directories,
)
from tests.conftest import (
    FAST,
    STATUS,
    DevServer,
    Gateway,
    free_port,
    metric_value,
    wait_until,
)

KREF = "kref://p/workers.model"

CLIENT = '{client="127.0.0.1"}'


def worker_pids(gateway: Gateway) -> set[int]:
    """The live worker processes (the parent's other child is multiprocessing's tracker)."""
    assert gateway.proc is not None
    pids = set()
    for child in psutil.Process(gateway.proc.pid).children():
        with contextlib.suppress(psutil.NoSuchProcess):
            if child.status() != psutil.STATUS_ZOMBIE and "spawn_main" in " ".join(child.cmdline()):
                pids.add(child.pid)
    return pids


def pool(
    make_devserver: Callable[..., DevServer], make_gateway: Callable[..., Gateway]
) -> tuple[DevServer, Gateway]:
    """A devserver and a gateway serving it with ``--workers 2``, both workers up."""
    devserver = make_devserver()
    gateway = make_gateway(devserver.address, *FAST, "--workers", "2")
    wait_until(lambda: len(worker_pids(gateway)) == 2, 15, "two workers")
    return devserver, gateway


def scrape(url: str) -> tuple[int, str]:
    """/metrics over a new connection, and the pid of the worker that answered.

    /healthz and /metrics go over one keep-alive connection, so one worker answers both.
    """
    with httpx.Client(timeout=10) as client:
        pid = int(client.get(url + "/healthz").json()["pid"])
        text = client.get(url + "/metrics").text
        assert int(client.get(url + "/healthz").json()["pid"]) == pid, "one connection"
    return pid, text


def sample(text: str, name: str, labels: str = "") -> float:
    value = metric_value(text, name, labels)
    assert value is not None, f"{name}{labels} missing from /metrics"
    return value


def pids_of(text: str, name: str) -> set[int]:
    """The pid labels of a per-process metric's series."""
    return {int(p) for p in re.findall(rf'^{re.escape(name)}{{pid="(\d+)"}} ', text, re.MULTILINE)}


def client_connections(pid: int, port: int) -> int:
    """Established connections a worker holds on the gateway's port."""
    return sum(
        1
        for c in psutil.Process(pid).net_connections(kind="tcp")
        if c.status == psutil.CONN_ESTABLISHED and c.laddr and c.laddr.port == port
    )


def test_every_scrape_gives_the_pool_s_numbers(
    make_devserver: Callable[..., DevServer], make_gateway: Callable[..., Gateway]
) -> None:
    devserver, gateway = pool(make_devserver, make_gateway)
    workers = worker_pids(gateway)
    streams, events = 4, 5
    with contextlib.ExitStack() as stack:
        for _ in range(streams):
            client = stack.enter_context(httpx.Client(timeout=30))
            response = stack.enter_context(client.stream("GET", gateway.url + "/events"))
            assert response.status_code == 200
        wait_until(
            lambda: gateway.metric("kumiho_gateway_streams_open") == streams, 15, "streams open"
        )
        devserver.publish("revision.created", KREF, count=events)
        wait_until(
            lambda: gateway.metric("kumiho_gateway_events_delivered_total") == streams * events,
            15,
            "every event written to every stream",
        )
        held = {pid: client_connections(pid, gateway.port) for pid in workers}
        answered = set()
        for _ in range(40):
            pid, text = scrape(gateway.url)
            answered.add(pid)
            assert sample(text, "kumiho_gateway_streams_open") == streams, (pid, held)
            assert sample(text, "kumiho_gateway_client_streams_open", CLIENT) == streams
            assert sample(text, "kumiho_gateway_events_delivered_total") == streams * events
            assert sample(text, "kumiho_gateway_stream_duration_seconds_count") == 0
            assert sample(text, "kumiho_gateway_workers") == 2
            assert sample(text, "kumiho_gateway_worker_restarts_total") == 0
            # Per process: one series per live worker, whichever answered.
            for name in (
                "process_resident_memory_bytes",
                "process_open_fds",
                "kumiho_gateway_asyncio_tasks",
            ):
                assert pids_of(text, name) == workers, name
        assert answered == workers, f"both workers answered scrapes (streams held: {held})"
    # The clients left: every scrape says so, and the closed streams add up too.
    wait_until(lambda: gateway.metric("kumiho_gateway_streams_open") == 0, 15, "streams closed")
    for _ in range(10):
        _, text = scrape(gateway.url)
        assert sample(text, "kumiho_gateway_streams_open") == 0
        assert sample(text, "kumiho_gateway_client_streams_open", CLIENT) in (0, None)
        assert sample(text, "kumiho_gateway_stream_duration_seconds_count") == streams
        assert sample(text, "kumiho_gateway_stream_closes_total", '{cause="client"}') == streams


class ResumingReader(threading.Thread):
    """An EventSource: reads /events and, whenever the stream breaks, resumes with Last-Event-ID."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.ids: list[str] = []
        self.connects = 0
        self.connected = threading.Event()
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            headers = {"Last-Event-ID": self.ids[-1]} if self.ids else {}
            try:
                with (
                    httpx.Client(timeout=httpx.Timeout(10, read=2)) as client,
                    connect_sse(client, "GET", self.url + "/events", headers=headers) as source,
                ):
                    if source.response.status_code != 200:
                        continue
                    self.connects += 1
                    self.connected.set()
                    for sse in source.iter_sse():
                        if sse.data and sse.event != STATUS:
                            self.ids.append(sse.id)
                        if self.stop.is_set():
                            return
            except httpx.HTTPError:
                pass  # the worker died under it, or a read timed out: resume


def test_a_killed_worker_is_replaced_and_its_clients_lose_nothing(
    make_devserver: Callable[..., DevServer], make_gateway: Callable[..., Gateway]
) -> None:
    devserver, gateway = pool(make_devserver, make_gateway)
    workers = worker_pids(gateway)
    metrics_dir = Path(psutil.Process(min(workers)).environ()["PROMETHEUS_MULTIPROC_DIR"])
    assert metrics_dir.is_dir()
    readers = [ResumingReader(gateway.url) for _ in range(6)]
    for reader in readers:
        reader.start()
    wait_until(lambda: all(r.connected.is_set() for r in readers), 15, "readers connected")
    wait_until(lambda: gateway.metric("kumiho_gateway_streams_open") == 6, 15, "6 streams")

    def everyone_has(count: int) -> Callable[[], bool]:
        return lambda: all(len(r.ids) >= count for r in readers)

    cursors = devserver.publish("revision.created", KREF, {"when": "before"}, count=10)
    wait_until(everyone_has(10), 15, "the events before")
    wait_until(
        lambda: gateway.metric("kumiho_gateway_events_delivered_total") == 60, 5, "60 counted"
    )
    delivered = 60
    held = {pid: client_connections(pid, gateway.port) for pid in workers}
    victim = max(held, key=lambda pid: held[pid])
    assert held[victim] > 0, held

    cursors += devserver.publish("revision.created", KREF, {"when": "in flight"}, count=10)
    psutil.Process(victim).send_signal(signal.SIGKILL)
    cursors += devserver.publish("revision.created", KREF, {"when": "while dead"}, count=10)

    # The pool is back to two, with a new worker in the dead one's place.
    wait_until(
        lambda: len(worker_pids(gateway)) == 2 and victim not in worker_pids(gateway),
        15,
        "a replacement worker",
    )
    [replacement] = worker_pids(gateway) - workers
    wait_until(lambda: f"restarted: pid {replacement}" in gateway.log(), 5, "the restart logged")
    assert re.search(rf"worker \d \(pid {victim}\) was killed by SIGKILL after", gateway.log())
    assert sum(r.connects > 1 for r in readers) >= held[victim], "the victim's clients resumed"

    cursors += devserver.publish("revision.created", KREF, {"when": "after"}, count=10)
    wait_until(everyone_has(40), 30, "every event on every client")
    for reader in readers:
        assert reader.ids == cursors, "every event exactly once, in order"

    # The metrics: the dead worker's open streams are gone, its counters stay.
    wait_until(lambda: gateway.metric("kumiho_gateway_streams_open") == 6, 15, "6 streams again")
    wait_until(lambda: gateway.metric("kumiho_gateway_workers") == 2, 15, "the replacement serving")
    for _ in range(10):
        _, text = scrape(gateway.url)
        assert sample(text, "kumiho_gateway_streams_open") == 6
        assert sample(text, "kumiho_gateway_workers") == 2
        assert sample(text, "kumiho_gateway_worker_restarts_total") == 1
        assert sample(text, "kumiho_gateway_events_delivered_total") >= delivered
        assert pids_of(text, "process_resident_memory_bytes") == worker_pids(gateway)

    for reader in readers:
        reader.stop.set()
    assert gateway.proc is not None
    gateway.proc.send_signal(signal.SIGTERM)
    assert gateway.proc.wait(15) == 0
    assert not metrics_dir.exists(), "the parent removes the metrics directory"
    assert "signal 15: stopping 2 workers" in gateway.log()


def test_sigterm_while_a_worker_waits_to_restart_stops_the_pool(
    make_devserver: Callable[..., DevServer], make_gateway: Callable[..., Gateway]
) -> None:
    _, gateway = pool(make_devserver, make_gateway)
    workers = [psutil.Process(pid) for pid in worker_pids(gateway)]
    assert gateway.proc is not None
    workers[0].send_signal(signal.SIGKILL)
    # The parent notices the death and waits out the backoff (0.5 s) ...
    wait_until(lambda: "was killed by SIGKILL" in gateway.log(), 5, "the death noticed")
    gateway.proc.send_signal(signal.SIGTERM)  # ... when the signal comes
    assert gateway.proc.wait(15) == 0
    assert "restarted" not in gateway.log(), "no restart after the signal"
    assert not workers[1].is_running(), "the other worker drained and exited"


def test_a_parent_killed_outright_leaves_no_workers_and_no_metrics_directory(
    make_devserver: Callable[..., DevServer], make_gateway: Callable[..., Gateway]
) -> None:
    _, gateway = pool(make_devserver, make_gateway)
    workers = [psutil.Process(pid) for pid in worker_pids(gateway)]
    metrics_dir = Path(workers[0].environ()["PROMETHEUS_MULTIPROC_DIR"])
    assert metrics_dir.is_dir()
    assert gateway.proc is not None
    gateway.proc.kill()
    gateway.proc.wait(5)
    wait_until(lambda: not any(w.is_running() for w in workers), 15, "the workers to exit")
    assert not metrics_dir.exists(), "the orphaned workers remove it"


SHM = Path("/dev/shm")


def _of_a_live_pool(name: str) -> bool:
    """Whether a /dev/shm entry is the metrics directory of a pool still running
    (another test run on this machine may have one open)."""
    owner = name.removeprefix(METRICS_DIR_PREFIX).partition("-")[0]
    return name.startswith(METRICS_DIR_PREFIX) and owner.isdigit() and psutil.pid_exists(int(owner))


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["sigterm", "sigint"])
def test_a_pool_stopped_by_a_signal_leaves_nothing_in_dev_shm(
    make_devserver: Callable[..., DevServer], make_gateway: Callable[..., Gateway], sig: int
) -> None:
    if os.environ.get("TMPDIR") or not os.access(SHM, os.W_OK):
        pytest.skip("the pool keeps its metrics in $TMPDIR, not /dev/shm")
    before = set(os.listdir(SHM))
    _, gateway = pool(make_devserver, make_gateway)
    assert gateway.proc is not None
    workers = [psutil.Process(pid) for pid in worker_pids(gateway)]
    metrics_dir = Path(workers[0].environ()["PROMETHEUS_MULTIPROC_DIR"])
    assert metrics_dir.parent == SHM
    assert metrics_dir.name.startswith(f"{METRICS_DIR_PREFIX}{gateway.proc.pid}-")
    gateway.proc.send_signal(sig)
    assert gateway.proc.wait(30) == 0, gateway.log()
    assert not any(w.is_running() for w in workers)
    assert not metrics_dir.exists()
    # Nothing new stays: what another program made meanwhile goes by itself.
    wait_until(
        lambda: all(_of_a_live_pool(name) for name in set(os.listdir(SHM)) - before),
        10,
        f"no new entry in /dev/shm: {sorted(set(os.listdir(SHM)) - before)}",
    )


def test_a_pool_killed_with_its_workers_leaves_a_directory_the_next_pool_removes(
    make_devserver: Callable[..., DevServer], make_gateway: Callable[..., Gateway], tmp_path: Path
) -> None:
    devserver = make_devserver()
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    env = {"TMPDIR": str(tmpdir)}
    first = make_gateway(devserver.address, *FAST, "--workers", "2", env=env)
    wait_until(lambda: len(worker_pids(first)) == 2, 15, "two workers")
    assert first.proc is not None
    killed = [psutil.Process(first.proc.pid), *map(psutil.Process, worker_pids(first))]
    stale = Path(killed[1].environ()["PROMETHEUS_MULTIPROC_DIR"])
    assert stale.parent == tmpdir
    # As a container runtime or the OOM killer may: all at once, nobody left to clean up.
    for process in killed:
        process.kill()
    first.proc.wait(5)
    wait_until(lambda: not any(p.is_running() for p in killed), 15, "every process gone")
    assert stale.is_dir() and any(stale.iterdir()), "the workers' files stayed"

    second = make_gateway(devserver.address, *FAST, "--workers", "2", env=env)
    wait_until(lambda: len(worker_pids(second)) == 2, 15, "two workers")
    assert not stale.exists()
    assert f"removed {stale}: its pool is gone" in second.log()
    [current] = tmpdir.iterdir()
    assert current.name.startswith(f"{METRICS_DIR_PREFIX}{second.proc.pid}-")  # type: ignore[union-attr]


def test_the_sweep_removes_only_directories_whose_pool_is_gone(tmp_path: Path) -> None:
    exited = subprocess.Popen([sys.executable, "-c", ""])
    exited.wait()
    dead, alive = exited.pid, os.getpid()

    def directory(name: str, *files: str) -> Path:
        path = tmp_path / f"{METRICS_DIR_PREFIX}{name}"
        path.mkdir()
        for file in files:
            (path / file).write_bytes(b"")
        return path

    gone = directory(f"{dead}-a1", f"counter_{dead}.db", f"histogram_{dead}.db")
    worker_alive = directory(f"{dead}-b2", f"counter_{alive}.db")  # its parent was killed
    parent_alive = directory(f"{alive}-c3")  # a pool just started: no file yet
    unnamed = directory("d4", f"counter_{dead}.db")  # no pid in the name: not ours to judge
    not_a_directory = tmp_path / f"{METRICS_DIR_PREFIX}{dead}-e5"
    not_a_directory.write_text("")
    target = directory(f"{alive}-f6", "keep.db")
    link = tmp_path / f"{METRICS_DIR_PREFIX}{dead}-g7"
    link.symlink_to(target)

    assert sweep_metrics_directories(str(tmp_path)) == [gone]
    assert not gone.exists()
    for kept in (worker_alive, parent_alive, unnamed, not_a_directory, link, target / "keep.db"):
        assert kept.exists(), kept


def test_a_worker_that_cannot_start_stops_the_pool(tmp_path: Path) -> None:
    # A CA file the parent can read (its settings are checked before anything
    # starts) but no worker can: a descriptor the parent holds and does not pass
    # on, numbered high so that no worker has one of that number of its own.
    ca_file = tmp_path / "ca.pem"
    ca_file.write_text("-----BEGIN CERTIFICATE-----\n")
    with open(ca_file) as opened, open(fcntl.fcntl(opened, fcntl.F_DUPFD, 250)) as held:
        started = time.monotonic()
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "gateway",
                "serve",
                "--upstream",
                "127.0.0.1:1",
                "--port",
                str(free_port()),
                "--workers",
                "2",
                "--ca-file",
                f"/proc/self/fd/{held.fileno()}",  # read as each worker starts: it cannot
            ],
            capture_output=True,
            text=True,
            timeout=60,
            pass_fds=(held.fileno(),),
        )
    assert result.returncode == 3, result.stdout + result.stderr
    assert "could not start (exited with status 3): stopping the gateway" in result.stderr
    assert "restarting it" not in result.stderr
    assert time.monotonic() - started < 30


def test_restart_backoff_doubles_to_a_cap_and_resets_after_a_long_life() -> None:
    backoff = Backoff(0.5, 4, jitter=lambda: 0.999999)  # the top of each jittered range
    assert [round(restart_delay(backoff, 1), 3) for _ in range(6)] == [0.5, 1, 2, 4, 4, 4]
    assert round(restart_delay(backoff, 60), 3) == 0.5  # it stayed up a minute: a fresh start
    assert round(restart_delay(backoff, 59), 3) == 1
    assert restart_delay(Backoff(0.5, 4, jitter=lambda: 0.0), 1) == 0.25  # down to half


@pytest.mark.parametrize(
    ("code", "phrase"),
    [
        (-9, "was killed by SIGKILL"),
        (-15, "was killed by SIGTERM"),
        (1, "exited with status 1"),
        (0, "exited with status 0"),
    ],
)
def test_exit_descriptions(code: int, phrase: str) -> None:
    assert exit_description(code) == phrase


def _probe_readyz(url: str) -> int | None:
    """/readyz's status, or None when nobody answers within a second."""
    try:
        return httpx.get(url + "/readyz", timeout=1).status_code
    except httpx.TransportError:
        return None


def test_a_pool_whose_workers_can_no_longer_start_stops_instead_of_looping(
    make_devserver: Callable[..., DevServer], make_gateway: Callable[..., Gateway], tmp_path: Path
) -> None:
    devserver = make_devserver()
    token_file = tmp_path / "token"
    token_file.write_text("svc-token\n")
    gateway = make_gateway(
        devserver.address,
        "--workers",
        "2",
        "--auth",
        "service",
        "--api-keys",
        "key-1",
        env={"KUMIHO_AUTH_TOKEN_FILE": str(token_file)},
    )
    wait_until(lambda: len(worker_pids(gateway)) == 2, 15, "two workers")
    # An unlucky operator: the mounted secret goes away, then both workers die.
    # Every replacement fails before it serves (it reads the token file first).
    token_file.unlink()
    for pid in worker_pids(gateway):
        psutil.Process(pid).send_signal(signal.SIGKILL)
    assert gateway.proc is not None
    probes: list[int | None] = []

    def stopped() -> bool:
        probes.append(_probe_readyz(gateway.url))
        return gateway.proc is not None and gateway.proc.poll() is not None

    wait_until(stopped, 120, "the pool to give up")
    assert 200 not in probes, "/readyz said ready while no worker could serve"
    assert gateway.proc.returncode == 3, gateway.log()
    log = gateway.log()
    [line] = [ln for ln in log.splitlines() if "stopping the gateway" in ln]
    assert re.search(
        r"worker \d failed to start 5 times in a row \(last: exited with status 1\)", line
    ), line
    assert "cannot read the token file" in log  # the worker's own reason is in the log too
    with pytest.raises(httpx.ConnectError):  # nothing listens any more
        httpx.get(gateway.url + "/healthz", timeout=5)


def test_a_replacement_that_cannot_start_does_not_stop_a_healthy_pool(
    make_devserver: Callable[..., DevServer], make_gateway: Callable[..., Gateway], tmp_path: Path
) -> None:
    devserver = make_devserver()
    ca_file = tmp_path / "ca.pem"
    ca_text = "-----BEGIN CERTIFICATE-----\nnot used: the upstream is plaintext\n"
    ca_file.write_text(ca_text)
    gateway = make_gateway(devserver.address, *FAST, "--workers", "2", "--ca-file", str(ca_file))
    # Both first starts done (each read the file): uvicorn says so once per worker.
    wait_until(
        lambda: gateway.log().count("Application startup complete.") == 2, 30, "both workers up"
    )
    wait_until(lambda: _probe_readyz(gateway.url) == 200, 15, "the pool ready")
    survivor, victim = sorted(worker_pids(gateway))
    # The file goes away; a worker dies, and its replacement exits with uvicorn's
    # "cannot start" status (its lifespan reads the file).
    ca_file.unlink()
    psutil.Process(victim).send_signal(signal.SIGKILL)
    wait_until(
        lambda: "ended before it was ready (exited with status 3;" in gateway.log(),
        60,
        "a replacement that could not start",
    )
    assert gateway.proc is not None and gateway.proc.poll() is None, gateway.log()
    # The surviving worker keeps serving, but says the pool is not ready.
    with httpx.Client(timeout=10) as client:
        assert client.get(gateway.url + "/healthz").json()["pid"] == survivor
        readyz = client.get(gateway.url + "/readyz")
    assert readyz.status_code == 503 and readyz.json()["status"] == "pool_failing", readyz.text
    # The operator puts the file back: the next replacement serves, the pool is whole.
    ca_file.write_text(ca_text)
    wait_until(
        lambda: len(worker_pids(gateway)) == 2 and "restarted and ready" in gateway.log(),
        60,
        "a replacement that started",
    )
    wait_until(lambda: _probe_readyz(gateway.url) == 200, 15, "the pool ready again")
    assert gateway.proc.poll() is None
    assert "stopping the gateway" not in gateway.log()
