"""``serve --workers N``: N worker processes on one listening socket, kept at N.

The parent binds the socket, starts the workers (multiprocessing "spawn", so
each imports everything afresh) and supervises them:

- SIGTERM/SIGINT are forwarded to every worker, so each drains its own
  streams; the parent returns once all have exited. A second signal is
  forwarded too, and the workers exit at once.
- A worker that exits while the parent was not told to stop (a crash, the
  OOM killer, a stray SIGKILL) is logged and replaced after a backoff
  (``backoff.py``: 0.5 s, doubling to 30 s, each delay jittered down to as
  little as half; back to 0.5 s once a worker has stayed up a minute). The
  replacement accepts on the same socket; the dead worker's clients reconnect
  with their Last-Event-ID and resume on any worker.
- Each worker tells the parent when it serves (uvicorn has started). One
  that exits before that failed to start. At the pool's first start, one
  that exits with uvicorn's startup failure (status 3) would fail again: as
  gunicorn does, the parent then stops the pool and exits with status 3. A
  replacement that fails to start is restarted with the backoff like any
  other, but a place of the pool whose workers fail to start
  ``CRASH_LOOP_LIMIT`` times in a row stops the pool too (status 3): the
  cause (a file gone, the environment changed) will not go away by itself,
  and an outer supervisor should hear of it. Meanwhile every worker's
  /readyz answers 503 (``pool_failing``).
- Metrics: the parent makes a fresh ``PROMETHEUS_MULTIPROC_DIR`` before the
  first worker starts and removes it at exit (its workers do, if it was
  killed outright), and removes a dead worker's live gauges (see ``metrics.py``).
  A pool killed outright with no worker left to clean up (the whole process
  group SIGKILLed, or the parent while every worker waited to restart) leaves
  its directory: the next pool's parent removes those whose parent and
  workers are all gone (the parent's pid is in the name, the workers' in
  their files' names).
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import multiprocessing.connection
import os
import re
import shutil
import signal
import socket
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from multiprocessing.synchronize import Event
from pathlib import Path
from types import FrameType

from prometheus_client.multiprocess import mark_process_dead

from gateway import logs
from gateway.backoff import Backoff
from gateway.metrics import MULTIPROC_DIR_ENV
from gateway.server import listening_socket
from gateway.settings import Settings

log = logging.getLogger("gateway.supervisor")

# uvicorn's exit status when the app cannot start (its lifespan failed).
STARTUP_FAILURE = 3

RESTART_INITIAL = 0.5  # seconds before the first restart of a worker
RESTART_MAX = 30.0  # cap of the doubling
RESTART_RESET = 60.0  # a worker that stayed up this long restarts after RESTART_INITIAL again
CRASH_LOOP_LIMIT = 5  # failed starts in a row, at one place, that stop the pool


@dataclass(frozen=True)
class WorkerSpec:
    """What a worker is told (pickled to it)."""

    index: int  # its place in the pool, 0 to N - 1; a replacement takes the same
    parent: int  # the parent's pid: the worker drains and exits when the parent is gone
    metrics_dir: str  # the pool's PROMETHEUS_MULTIPROC_DIR
    restarted: bool  # it replaces a worker that died
    ready: Connection  # write end: the worker sends one message once it serves
    pool_failing: Event  # set by the parent while a place's workers fail to start

    def report_ready(self) -> None:
        """In the worker, once uvicorn serves: the parent counts this start as a success."""
        with contextlib.suppress(OSError):  # the parent is gone: nobody to tell
            self.ready.send_bytes(b"ready")
        self.ready.close()


Run = Callable[[Settings, list[socket.socket], WorkerSpec], None]


def restart_delay(backoff: Backoff, uptime: float) -> float:
    """Seconds to wait before the next start, after a worker that ran ``uptime`` seconds.

    A worker that stayed up ``RESTART_RESET`` seconds was healthy: the
    doubling starts over.
    """
    if uptime >= RESTART_RESET:
        backoff.reset()
    return backoff.delay()


@dataclass
class _Place:
    """One of the pool's N places: its worker, or when the next one starts."""

    index: int
    backoff: Backoff
    process: BaseProcess | None = None
    started: float = 0.0
    restart_at: float | None = None
    starts: int = 0  # workers started here so far
    ready: bool = False  # the current worker said it serves
    ready_reader: Connection | None = None  # where it says so, until it has
    failures: int = 0  # workers in a row that exited before they were ready


def exit_description(code: int | None) -> str:
    """How a process ended, as a phrase: "was killed by SIGKILL", "exited with status 1"."""
    if code is not None and code < 0:
        with contextlib.suppress(ValueError):
            return f"was killed by {signal.Signals(-code).name}"
        return f"was killed by signal {-code}"
    return f"exited with status {code}"


class _Pool:
    def __init__(self, settings: Settings, run: Run, sock: socket.socket, metrics_dir: str):
        self._settings, self._run, self._sock, self._metrics_dir = settings, run, sock, metrics_dir
        self._context = multiprocessing.get_context("spawn")
        self._places = [
            _Place(i, Backoff(RESTART_INITIAL, RESTART_MAX)) for i in range(settings.workers)
        ]
        self._pool_failing = self._context.Event()
        self._stop_signal: int | None = None  # set: no more restarts
        self._received: int | None = None  # the signal that came, if any
        self.status = 0
        # A signal wakes the main loop through this pipe, even while it waits on no worker.
        self._wake_read, self._wake_write = os.pipe()
        os.set_blocking(self._wake_write, False)

    def close(self) -> None:
        os.close(self._wake_read)
        os.close(self._wake_write)

    def on_signal(self, sig: int, frame: FrameType | None) -> None:
        """SIGTERM/SIGINT: stop restarting, forward it to every worker."""
        self._received = sig
        self._stop(sig)
        with contextlib.suppress(BlockingIOError):
            os.write(self._wake_write, b"\0")

    def _stop(self, sig: int) -> None:
        self._stop_signal = sig
        for place in self._places:
            self._signal(place, sig)

    @staticmethod
    def _signal(place: _Place, sig: int) -> None:
        process = place.process
        if process is not None and process.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, sig)

    def _start(self, place: _Place, restarted: bool) -> None:
        reader, writer = self._context.Pipe(duplex=False)
        spec = WorkerSpec(
            place.index, os.getpid(), self._metrics_dir, restarted, writer, self._pool_failing
        )
        process = self._context.Process(
            target=self._run,
            args=(self._settings, [self._sock], spec),
            name=f"gateway-worker-{place.index}",
        )
        try:
            process.start()
        except BaseException:
            reader.close()
            raise
        finally:
            writer.close()  # the worker's copy stays open: EOF here once it is gone
        place.process, place.started, place.restart_at = process, time.monotonic(), None
        place.starts += 1
        place.ready, place.ready_reader = False, reader
        if self._stop_signal is not None:  # the signal came while it started
            self._signal(place, self._stop_signal)
        if restarted:
            log.info("worker %d restarted: pid %s", place.index, process.pid)

    def _read_ready(self, place: _Place) -> None:
        """Take the worker's "ready" message if it came (or EOF if it died first)."""
        reader = place.ready_reader
        if reader is None or not reader.poll(0):
            return
        try:
            reader.recv_bytes()
        except (EOFError, OSError):
            pass  # it died before it served
        else:
            place.ready = True
            if place.failures:
                assert place.process is not None
                log.info("worker %d (pid %s) restarted and ready", place.index, place.process.pid)
            place.failures = 0
            self._update_pool_failing()
        place.ready_reader = None
        reader.close()

    def _update_pool_failing(self) -> None:
        if any(p.failures for p in self._places):
            self._pool_failing.set()
        else:
            self._pool_failing.clear()

    def _exited(self, place: _Place) -> None:
        process = place.process
        assert process is not None and process.pid is not None
        process.join()
        self._read_ready(place)  # a message sent just before it died still counts
        if place.ready_reader is not None:
            place.ready_reader.close()
            place.ready_reader = None
        place.process = None
        mark_process_dead(process.pid, self._metrics_dir)  # type: ignore[no-untyped-call]
        uptime = time.monotonic() - place.started
        how = exit_description(process.exitcode)
        if self._stop_signal is not None:
            log.info("worker %d (pid %d) %s", place.index, process.pid, how)
        elif place.ready:
            self._schedule_restart(place, uptime, f"(pid {process.pid}) {how} after {uptime:.1f}s")
        elif place.starts == 1 and process.exitcode == STARTUP_FAILURE:
            # The pool's first start: the configuration or the host cannot work.
            self._give_up(f"worker {place.index} (pid {process.pid}) could not start ({how})")
        else:
            place.failures += 1
            self._update_pool_failing()
            if place.failures >= CRASH_LOOP_LIMIT:
                self._give_up(
                    f"worker {place.index} failed to start {place.failures} times in a row "
                    f"(last: {how})"
                )
            else:
                self._schedule_restart(
                    place,
                    uptime,
                    f"(pid {process.pid}) ended before it was ready ({how}; "
                    f"{place.failures} of {CRASH_LOOP_LIMIT} in a row)",
                )

    def _give_up(self, why: str) -> None:
        """Stop the pool for good: its workers cannot start."""
        log.error("%s: stopping the gateway", why)
        self.status = STARTUP_FAILURE
        self._stop(signal.SIGTERM)

    def _schedule_restart(self, place: _Place, uptime: float, what: str) -> None:
        delay = restart_delay(place.backoff, uptime)
        place.restart_at = time.monotonic() + delay
        log.error("worker %d %s; restarting it in %.1fs", place.index, what, delay)

    def run(self) -> int:
        """Start the pool, keep it at N until a signal, wait for every worker; the exit status."""
        for place in self._places:
            self._start(place, restarted=False)
        log.info(
            "%d workers serving on %s:%d",
            len(self._places),
            self._settings.host,
            self._settings.port,
        )
        announced = False
        while True:
            live = {p.process.sentinel: p for p in self._places if p.process is not None}
            if self._received is not None and not announced:
                announced = True
                log.info("signal %d: stopping %d workers", self._received, len(live))
            if self._stop_signal is not None:
                for place in self._places:
                    place.restart_at = None
                if not live:
                    return self.status
            due = [p.restart_at for p in self._places if p.restart_at is not None]
            timeout = max(0.0, min(due) - time.monotonic()) if due else None
            readers = {p.ready_reader: p for p in self._places if p.ready_reader is not None}
            ready = multiprocessing.connection.wait([*live, *readers, self._wake_read], timeout)
            if self._wake_read in ready:
                os.read(self._wake_read, 64)
            for reader, place in readers.items():
                if reader in ready:
                    self._read_ready(place)
            for sentinel in ready:
                if sentinel in live:
                    self._exited(live[sentinel])
            now = time.monotonic()
            for place in self._places:
                due_now = place.restart_at is not None and place.restart_at <= now
                if self._stop_signal is None and due_now:
                    self._restart(place)

    def _restart(self, place: _Place) -> None:
        try:
            self._start(place, restarted=True)
        except OSError as exc:  # no memory or processes left for it, for now
            delay = restart_delay(place.backoff, 0)
            place.restart_at = time.monotonic() + delay
            log.error(
                "worker %d could not be started (%s); trying in %.1fs", place.index, exc, delay
            )


METRICS_DIR_PREFIX = "kumiho-gateway-metrics-"
# The pid in a metrics file's name (prometheus-client's "<kind>_<pid>.db").
_FILE_PID = re.compile(r"_(\d{1,10})\.db")


def metrics_directory() -> str:
    """A fresh directory for the pool's metrics files, named with this process's pid.

    In ``$TMPDIR`` when it is set, else in ``/dev/shm`` (memory, and writable in
    a container with a read-only root file system), else in the default temporary
    directory. Stale ones there go first (``sweep_metrics_directories``).
    """
    parent = tempfile.gettempdir()
    if not os.environ.get("TMPDIR") and os.access("/dev/shm", os.W_OK | os.X_OK):
        parent = "/dev/shm"
    for stale in sweep_metrics_directories(parent):
        log.info("removed %s: its pool is gone", stale)
    return tempfile.mkdtemp(prefix=f"{METRICS_DIR_PREFIX}{os.getpid()}-", dir=parent)


def sweep_metrics_directories(parent: str) -> list[Path]:
    """Remove this user's pool metrics directories in ``parent`` whose processes are all gone.

    A directory is left alone when its parent's pid or any of its workers' is
    alive (a pid reused since only delays the removal), when it is another
    user's, or when its name carries no pid (not made by this version).
    """
    removed = []
    for path in Path(parent).glob(METRICS_DIR_PREFIX + "*"):
        pids = _pool_pids(path)
        if pids is not None and not any(_alive(pid) for pid in pids):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def _pool_pids(path: Path) -> set[int] | None:
    """The pids of the pool that made ``path``, or None when it is not ours to judge."""
    owner, dash, _ = path.name.removeprefix(METRICS_DIR_PREFIX).partition("-")
    try:
        if not (dash and owner.isdigit() and len(owner) <= 10):
            return None
        info = path.lstat()
        if not path.is_dir() or path.is_symlink() or info.st_uid != os.getuid():
            return None
        files = [_FILE_PID.search(entry.name) for entry in path.iterdir()]
    except OSError:  # gone meanwhile, or unreadable
        return None
    return {int(owner)} | {int(found.group(1)) for found in files if found}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: asks only whether the process exists
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):  # another user's, or no pid at all
        return True
    return True


def serve_workers(settings: Settings, run: Run) -> int:
    """Run ``settings.workers`` processes on one listening socket; each has its own hub.

    Returns when a signal has stopped them all: 0, or 3 when a worker could not start.
    """
    logs.install(settings.log_level)
    with contextlib.ExitStack() as cleanup:  # undone in reverse, whatever ends the pool
        sock = listening_socket(settings)
        cleanup.callback(sock.close)
        metrics_dir = metrics_directory()
        cleanup.callback(shutil.rmtree, metrics_dir, ignore_errors=True)
        # Inherited by each worker, whose prometheus-client then keeps its values in files there.
        previous = os.environ.get(MULTIPROC_DIR_ENV)
        os.environ[MULTIPROC_DIR_ENV] = metrics_dir
        cleanup.callback(_restore_environment, MULTIPROC_DIR_ENV, previous)
        pool = _Pool(settings, run, sock, metrics_dir)
        cleanup.callback(pool.close)
        for sig in (signal.SIGTERM, signal.SIGINT):
            cleanup.callback(signal.signal, sig, signal.signal(sig, pool.on_signal))
        return pool.run()


def _restore_environment(name: str, value: str | None) -> None:
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value


def worker_exited(spec: WorkerSpec) -> None:
    """In a worker, as it ends: the parent cleans up after a pool, unless it died first.

    A parent killed outright (SIGKILL) leaves the metrics directory behind;
    its workers drain and exit (``exit_with_parent``), and they remove it.
    """
    if os.getppid() != spec.parent:
        shutil.rmtree(spec.metrics_dir, ignore_errors=True)


def exit_with_parent(parent: int, poll: float = 1.0) -> None:
    """In a worker: drain and exit if ``parent`` dies (even by SIGKILL), never orphaned."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()
