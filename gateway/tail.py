"""The terminal client: ``kumiho-sse-gateway tail [URL]``.

A client like any other: it talks HTTP to a gateway's ``/events`` (or the
hosted dialect's ``/api/v1/events/stream``), reads the stream with httpx-sse,
and imports nothing from the server side (only the pure ``backoff.py``, the
rule every retry loop of the gateway follows, and ``tokens.py``, how a token
file is read). Events go to stdout, one readable
line each (or the event's JSON object with ``--json``); everything else
(upstream status, gaps, reconnects, errors) goes to stderr, so a pipe only
ever sees events.

It resumes the way ``EventSource`` does: it keeps the last ``id:`` it saw
and sends it back as ``Last-Event-ID`` on every reconnect, after the
server's ``retry:`` delay (doubled, jittered and capped while attempts keep
failing). Ids are echoed exactly as received; the gateway decodes its own
``b64~`` form. With ``--cursor-file`` that id also survives the process.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import signal
import sys
import unicodedata
import zlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from pathlib import Path
from time import sleep
from typing import Any, NoReturn, TextIO
from urllib.parse import parse_qs, urlsplit, urlunsplit

import httpx
from httpx_sse import ServerSentEvent, connect_sse

from gateway.backoff import Backoff
from gateway.tokens import read_token_file

PROG = "kumiho-sse-gateway tail"
DEFAULT_URL = "http://127.0.0.1:8000/events"  # the demo's stream
TOKEN_ENV = "KUMIHO_TAIL_TOKEN"
# The Kumiho SDK's name for a file holding the token (read again on every connection).
TOKEN_FILE_ENV = "KUMIHO_AUTH_TOKEN_FILE"
# The gateway's code for a token past its exp (gateway/auth.py; tail imports no server code).
TOKEN_EXPIRED = "token_expired"

EXIT_OK = 0
EXIT_FAILED = 1  # this side failed (cursor file), or the answer was not an event stream
EXIT_REFUSED = 2  # bad usage, or the server refused in a way retrying cannot fix
EXIT_INTERRUPTED = 130  # Ctrl-C, as shells report SIGINT

# Until the server sends ``retry:``: the SDKs' first backoff.
DEFAULT_RETRY_MS = 1000
# Failed attempts double the delay from at least this, so a ``retry: 0`` cannot spin...
MIN_BACKOFF_MS = 100
# ...up to this, unless the server itself asked for longer.
MAX_BACKOFF_MS = 30_000
# Read: a quiet minute is four missed heartbeats of the gateway's default 15 s,
# so the connection is dead (a vanished host sends no reset) and is replaced.
TIMEOUT = httpx.Timeout(10.0, read=60.0)

SIGNALS = frozenset({"gateway.status", "gateway.reset", "gateway.error"})

DESCRIPTION = f"""\
Follow a gateway's event stream in the terminal: one readable line per event
(local time, routing key, kref, author, details) on stdout; upstream status
changes, gaps (gateway.reset), reconnects and errors on stderr.

URL is the stream to read (default: {DEFAULT_URL},
the demo's); a bare http://host:port means its /events. Any endpoint of the
same dialect works, Kumiho's hosted /api/v1/events/stream path included."""

EPILOG = f"""\
resume:
  tail reconnects by itself after the server's retry: delay (doubled while
  attempts fail, up to 30 s), sending the last id it saw as Last-Event-ID.
  --cursor-file PATH holds that id across runs: read at start (a missing
  file means start at --from), replaced atomically after each event is
  printed, so a tail killed and started again continues with no gap and no
  repeat. With a cursor, --from is ignored.

environment:
  {TOKEN_ENV}   the token to send when neither --token nor --token-file is given
  {TOKEN_FILE_ENV}   else, a file holding it (as --token-file)
  NO_COLOR            when set (non-empty), --color auto means never

exit status:
  0    --count N events printed (or stdout was closed, as by `| head`)
  1    a failure on this side (the cursor file), or the URL answered
       something that is not an event stream
  2    bad usage, or the server refused for good: a 4xx answer (its error
       message is printed), a gateway.error that is not retryable, or a
       5xx whose error says retrying cannot help (a token from a file that
       has expired is waited for instead: the file may be renewed)
  130  interrupted (Ctrl-C)

examples:
  kumiho-sse-gateway tail --routing-key 'revision.*'
  kumiho-sse-gateway tail --json --from beginning | jq -r .kref
  kumiho-sse-gateway tail --cursor-file ~/.cache/studio.cursor https://gw.example/events"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of ``tail``, on the subcommand parser the CLI made for it."""
    parser.add_argument(
        "url", nargs="?", default=DEFAULT_URL, metavar="URL", help="the stream to read"
    )
    parser.add_argument(
        "--routing-key",
        "--routing-key-filter",
        dest="routing_key",
        metavar="PATTERN",
        help="routing-key filter, e.g. 'revision.*' or 'item.deleted,item.deprecated' "
        "(sent as routing_key_filter)",
    )
    parser.add_argument(
        "--kref",
        "--kref-filter",
        dest="kref",
        metavar="PATTERN",
        help="kref filter, e.g. 'kref://film/**/*.model' (sent as kref_filter)",
    )
    parser.add_argument(
        "--from",
        dest="start",
        metavar="WHEN",
        help="where to start without a cursor: latest (the server's default), beginning, "
        "or an ISO 8601 time",
    )
    parser.add_argument(
        "--cursor-file",
        type=Path,
        metavar="PATH",
        help="resume from the id in PATH, and keep the last printed event's id there",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help="print each event's JSON object on one line (NDJSON), for jq and scripts",
    )
    credential = parser.add_mutually_exclusive_group()
    credential.add_argument(
        "--token",
        metavar="TOKEN",
        help=f"sent as Authorization: Bearer TOKEN (default: ${TOKEN_ENV}; prefer the "
        "variable: flags show in process lists)",
    )
    credential.add_argument(
        "--token-file",
        type=Path,
        metavar="PATH",
        help="send the token PATH holds, read again on every (re)connection, so a renewed "
        f"token is used without a restart (default: ${TOKEN_FILE_ENV}, when ${TOKEN_ENV} "
        "is unset)",
    )
    parser.add_argument(
        "--color",
        choices=("auto", "always", "never"),
        default="auto",
        help="colour the output: auto = when writing to a terminal and NO_COLOR is unset "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--count",
        type=_positive,
        metavar="N",
        help="exit (status 0) after printing N events",
    )


def _positive(text: str) -> int:
    number = int(text)
    if number < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a positive number")
    return number


def run(ns: argparse.Namespace) -> int:
    """Follow the stream the parsed flags name until done; returns the exit status."""
    # Ctrl-C ends tail with 130 even when it was started with SIGINT ignored
    # (a script's `cmd &`, some CI runners): Python keeps an inherited
    # SIG_IGN, and a terminal client that Ctrl-C cannot stop is a trap.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for stream in (sys.stdout, sys.stderr):
        # A kref in a script the terminal's encoding lacks is escaped, never a crash.
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    out = Output(
        sys.stdout,
        sys.stderr,
        as_json=ns.json,
        color_out=use_color(ns.color, sys.stdout),
        color_err=use_color(ns.color, sys.stderr),
    )
    try:
        tail = Tail(
            stream_url(ns.url),
            params=_params(ns),
            token=token_source(ns),
            cursor_file=CursorFile(ns.cursor_file) if ns.cursor_file else None,
            count=ns.count,
            out=out,
        )
        tail.follow()
    except Stop as stop:
        if stop.message:
            print(f"{PROG}: {stop.message}", file=sys.stderr, flush=True)
        return stop.status
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (`| head`): done. Point stdout at /dev/null so the
        # interpreter's last flush does not complain about the pipe.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_OK
    raise AssertionError("follow() returns only by raising Stop")  # pragma: no cover


def _params(ns: argparse.Namespace) -> dict[str, str]:
    # The hosted names: /events takes them as aliases, and the hosted route
    # knows only them.
    params = {"routing_key_filter": ns.routing_key, "kref_filter": ns.kref, "from": ns.start}
    return {name: value for name, value in params.items() if value is not None}


def token_source(ns: argparse.Namespace) -> Token:
    """Where the token comes from: --token, --token-file, $KUMIHO_TAIL_TOKEN, then
    $KUMIHO_AUTH_TOKEN_FILE (a flag beats the environment; a token, a file)."""
    if ns.token is not None:
        return Token(ns.token or None)
    if ns.token_file is not None:
        return Token.from_file(ns.token_file)
    if os.environ.get(TOKEN_ENV):
        return Token(os.environ[TOKEN_ENV])
    path = os.environ.get(TOKEN_FILE_ENV)
    return Token.from_file(Path(path)) if path else Token(None)


class Token:
    """The token sent on each connection: a fixed one, or a file's, read again each time."""

    def __init__(self, value: str | None, path: Path | None = None) -> None:
        self.value = value
        self.path = path

    @classmethod
    def from_file(cls, path: Path) -> Token:
        """The token in ``path``, which must be readable now (``Stop`` otherwise)."""
        try:
            return cls(read_token_file(path.expanduser()), path.expanduser())
        except ValueError as exc:
            raise Stop(EXIT_REFUSED, str(exc)) from None

    @property
    def renewable(self) -> bool:
        """Whether another connection may send another token (it comes from a file)."""
        return self.path is not None

    def current(self, out: Output) -> str | None:
        """The token to send now: the file read again (a rotated token is used at once).

        A file caught mid-rotation (gone, empty) keeps the token read before.
        """
        if self.path is not None:
            try:
                self.value = read_token_file(self.path)
            except ValueError as exc:
                out.notice(f"{exc}; sending the token read before", tone="warn")
        return self.value


def stream_url(url: str) -> str:
    """``url`` with ``http://`` when it names no scheme, and ``/events`` when no path."""
    if "://" not in url:
        url = "http://" + url
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise Stop(EXIT_REFUSED, f"{url!r} is not an http:// or https:// URL")
    if parts.path in ("", "/"):
        parts = parts._replace(path="/events")
    return urlunsplit(parts)


class Stop(Exception):
    """Ends ``tail``: an exit status, and a message for stderr (none for a normal end)."""

    def __init__(self, status: int, message: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class Pause:
    """Why a connection ended, and the server's own wait before the next, if it gave one."""

    reason: str
    wait_ms: int | None = None


class Tail:
    """The reconnect loop over one stream URL."""

    def __init__(
        self,
        url: str,
        *,
        params: Mapping[str, str],
        token: Token,
        cursor_file: CursorFile | None,
        count: int | None,
        out: Output,
    ) -> None:
        self.url = url
        self.params = dict(params)
        # Following from the latest event (the default), a reconnect before the
        # first id would start at the latest again and skip what came meanwhile:
        # it asks for everything since this stream first opened instead.
        self.follows_latest = self.params.get("from", "") in ("", "latest") and (
            "from" not in parse_qs(urlsplit(url).query)
        )
        self.opened_at: str | None = None
        self.token = token
        self.cursor_file = cursor_file
        self.count = count
        self.out = out
        self.last_id = cursor_file.read() if cursor_file else None
        self.retry_ms = DEFAULT_RETRY_MS
        self.printed = 0
        self.upstream: tuple[object, object] = ("live", None)  # the last state shown
        self.dispatched = False  # whether the current connection delivered anything
        self.connected_notice = ""  # for a reconnect, until its stream brings something

    def follow(self) -> NoReturn:
        """Read, reconnecting after every end, until ``Stop`` (count reached, or fatal)."""
        if self.last_id and self.cursor_file:
            self.out.notice(f"resuming after {visible(self.last_id)} ({self.cursor_file.path})")
        failures = 0
        reconnect = False
        with httpx.Client(timeout=TIMEOUT) as client:
            while True:
                self.dispatched, self.connected_notice = False, ""
                pause = self._connection(client, reconnect=reconnect)
                reconnect = True
                # A connection that delivered something was healthy: the next wait
                # is the server's retry: again. Failed attempts back off.
                failures = 0 if self.dispatched else failures + 1
                wait_ms = pause.wait_ms
                if wait_ms is None:
                    wait_ms = reconnect_delay_ms(self.retry_ms, failures)
                self.out.notice(f"{pause.reason}; reconnecting in {duration(wait_ms)}")
                sleep(max(0, wait_ms) / 1000)

    def _connection(self, client: httpx.Client, *, reconnect: bool) -> Pause:
        """One request: print what it delivers, then say why it ended."""
        # Bytes: an id is sent back exactly as received, UTF-8 included.
        headers = {"Last-Event-ID": self.last_id.encode()} if self.last_id else {}
        token = self.token.current(self.out)
        if token:
            headers["Authorization"] = f"Bearer {token}".encode()
        params = self.params
        if not self.last_id and self.opened_at:
            params = {**params, "from": self.opened_at}
        try:
            with connect_sse(client, "GET", self.url, params=params, headers=headers) as source:
                response = source.response
                if response.status_code != 200:
                    return refusal(response, renewable=self.token.renewable)
                _check_event_stream(response)
                if self.follows_latest and not self.last_id and not self.opened_at:
                    self.opened_at = opened_at(response)
                if reconnect:
                    after = f", resuming after {visible(self.last_id)}" if self.last_id else ""
                    self.connected_notice = f"connected{after}"
                for sse in source.iter_sse():
                    pause = self._dispatch(sse)
                    if pause:
                        return pause
                return Pause("the server ended the stream")
        except httpx.TransportError as exc:
            return Pause(describe_transport_error(exc, self.url))

    def _remember(self, cursor: str) -> None:
        """The id to resume after, kept in the cursor file too."""
        if cursor and cursor != self.last_id:
            self.last_id = cursor
            if self.cursor_file:
                self.cursor_file.write(cursor)

    def _dispatch(self, sse: ServerSentEvent) -> Pause | None:
        """One message; a Pause when it ends the stream (a retryable gateway.error)."""
        if sse.retry is not None:
            self.retry_ms = max(0, sse.retry)  # a negative one parses; it cannot be waited
        if not sse.data:
            # A retry:-only block, or an id-only frame (the gateway moved this
            # client's resume point past events its filter does not want).
            if sse.id:
                self._remember(sse.id)
            return None
        self.dispatched = True
        try:
            data = json.loads(sse.data)
        except ValueError:
            data = None
        # Said once the stream brings something other than its own refusal.
        if self.connected_notice and sse.event != "gateway.error":
            self.out.notice(self.connected_notice)
            self.connected_notice = ""
        if not isinstance(data, dict):
            self.out.notice(f"skipped data that is not a JSON object: {visible(sse.data[:80])}")
            return None
        # With named=true an event's name is its routing key: a signal has none.
        if sse.event in SIGNALS and "routing_key" not in data:
            return self._signal(sse.event, data)
        self.out.event(sse.data, data)
        # The frame's id (httpx-sse keeps the last one, as EventSource does); a
        # stream without id: lines (the hosted dialect's clients read the
        # cursor from the JSON) still resumes by the data's cursor.
        self._remember(sse.id or _text(data.get("cursor")))
        self.printed += 1
        if self.count is not None and self.printed >= self.count:
            raise Stop(EXIT_OK)
        return None

    def _signal(self, name: str, data: dict[str, Any]) -> Pause | None:
        if name == "gateway.status":
            state = (data.get("upstream"), data.get("code"))
            if state != self.upstream:
                self.upstream = state
                self.out.notice(describe_status(data), tone="ok" if state[0] == "live" else "warn")
            return None
        if name == "gateway.reset":
            self.out.notice(describe_reset(data), tone="warn")
            return None
        # gateway.error: the stream ends after it.
        what = f"gateway error {describe_error(data)}"
        if data.get("retryable") is True:
            self.out.notice(what, tone="error")
            if data.get("code") == TOKEN_EXPIRED:
                # Nothing to wait for: the next connection sends the token as it is now.
                return Pause("the token expired", 0)
            return Pause("the stream ended after the error", _int(data.get("retry_after_ms")))
        raise Stop(EXIT_REFUSED, what)


def opened_at(response: httpx.Response) -> str:
    """A second before the server answered (its ``Date``, else this clock), in ISO 8601.

    The gateway resubscribes its own upstream the same way: a second early,
    since clocks differ, so a reconnect may show an event from just before
    the first connection, never leave a gap.
    """
    try:
        answered = parsedate_to_datetime(response.headers["date"]).astimezone(UTC)
    except (KeyError, TypeError, ValueError):
        answered = datetime.now(UTC)
    moment = answered - timedelta(seconds=1)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def reconnect_delay_ms(
    retry_ms: int, failures: int, jitter: Callable[[], float] = random.random
) -> int:
    """How long to wait before the next attempt, after ``failures`` failed ones in a row.

    None failed (the last stream delivered and then ended): the server's
    ``retry:``, as ``EventSource`` does. Then the gateway's one backoff
    (``backoff.py``): doubling from the server's delay (at least
    ``MIN_BACKOFF_MS``) up to ``MAX_BACKOFF_MS`` or the server's own delay if
    longer, jittered so clients that failed together do not return together.
    The server may change ``retry:`` between attempts, so the rule is applied
    afresh each time rather than kept in a ``Backoff`` across them.
    """
    if failures == 0:
        return retry_ms
    backoff = Backoff(
        max(retry_ms, MIN_BACKOFF_MS) / 1000,
        max(retry_ms, MAX_BACKOFF_MS) / 1000,
        jitter=jitter,
    )
    return round(backoff.nth(failures) * 1000)


def refusal(response: httpx.Response, *, renewable: bool = False) -> Pause:
    """A non-200 answer: a Pause when retrying can help, else ``Stop``.

    ``renewable``: the token comes from a file, so an expired one may be
    replaced there: tail waits for it (backing off) rather than give up.
    """
    status = response.status_code
    response.read()
    error = _envelope(response)
    if error is not None:
        what = f"HTTP {status} {describe_error(error)}"
    else:
        body = " ".join(response.text.split())[:200]
        what = f"HTTP {status} {response.reason_phrase}" + (f": {visible(body)}" if body else "")
    retryable = error.get("retryable") if error else None
    if renewable and error is not None and error.get("code") == TOKEN_EXPIRED:
        return Pause(f"{what} (waiting for a new token in the token file)")
    if status in (408, 429) or retryable is True:
        wait = _int(error.get("retry_after_ms")) if error else None
        if wait is None:
            wait = _retry_after_ms(response)
        return Pause(what, wait)
    if 400 <= status < 500 or (status >= 500 and retryable is False):
        raise Stop(EXIT_REFUSED, what)
    if status >= 500:
        return Pause(what, _retry_after_ms(response))
    if 300 <= status < 400 and "location" in response.headers:
        what += f" (redirected to {visible(response.headers['location'])}: use that URL)"
    raise Stop(EXIT_FAILED, f"{what}; expected 200 and an event stream")


def _envelope(response: httpx.Response) -> dict[str, Any] | None:
    """The error object of a ``{"error": {...}}`` body, or None for any other body."""
    try:
        body = response.json()
    except ValueError:
        return None
    error = body.get("error") if isinstance(body, dict) else None
    return error if isinstance(error, dict) else None


def _retry_after_ms(response: httpx.Response) -> int | None:
    seconds = response.headers.get("retry-after", "")
    # ASCII digits only: str.isdigit() also takes other scripts' digits ("٣").
    return int(seconds) * 1000 if seconds.isascii() and seconds.isdigit() else None


def _check_event_stream(response: httpx.Response) -> None:
    media = response.headers.get("content-type", "").partition(";")[0].strip().lower()
    if media != "text/event-stream":
        raise Stop(
            EXIT_FAILED,
            f"{response.url} answered with Content-Type {media or 'none'}, not "
            "text/event-stream: is it a gateway's /events?",
        )


def describe_transport_error(exc: httpx.TransportError, url: str) -> str:
    """A short reason for a network failure, for the reconnect notice."""
    if isinstance(exc, httpx.ConnectError):
        return f"cannot connect to {urlsplit(url).netloc} ({exc})"
    if isinstance(exc, httpx.ReadTimeout):
        return f"nothing received for {TIMEOUT.read:g} s"
    return f"connection lost ({exc or type(exc).__name__})"


def describe_status(data: Mapping[str, Any]) -> str:
    """A ``gateway.status`` as a sentence: ``upstream unavailable (UNAVAILABLE); ...``."""
    text = f"upstream {visible(_text(data.get('upstream')) or '?')}"
    if data.get("code"):
        text += f" ({visible(_text(data.get('code')))})"
    retry_in = _int(data.get("retry_in_ms"))
    if retry_in is not None:
        text += f"; the gateway retries in {duration(retry_in)}"
    return text


def describe_reset(data: Mapping[str, Any]) -> str:
    """A ``gateway.reset`` as a sentence: a gap, why, and where the stream resumed."""
    text = f"gap: {visible(_text(data.get('reason')) or 'reset')}"
    if data.get("requested_cursor"):
        text += f", {visible(_text(data.get('requested_cursor')))} could not be resumed"
    if data.get("resumed_from"):
        text += f"; resumed from {visible(_text(data.get('resumed_from')))}"
    return text


def describe_error(error: Mapping[str, Any]) -> str:
    """An error envelope's object as ``code: message``, with its correlation id if any."""
    text = f"{visible(_text(error.get('code')) or 'error')}: {visible(_text(error.get('message')))}"
    if error.get("correlation_id"):
        text += f" (correlation id {visible(_text(error.get('correlation_id')))})"
    return text


def duration(ms: int) -> str:
    """``40 ms``, ``2.5 s``: a wait as people read it."""
    return f"{ms} ms" if ms < 1000 else f"{ms / 1000:.1f} s"


def _text(value: object) -> str:
    return value if isinstance(value, str) else "" if value is None else str(value)


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


class CursorFile:
    """The last printed event's id, kept in a file so a new ``tail`` resumes after it.

    Each write goes through one temporary file of a fixed name beside it
    (``.NAME.tmp``), so a tail killed mid-write leaves at most that one file,
    which the next tail removes as it starts. Tails sharing a cursor file take
    turns with it under a lock on the directory (where the OS has ``flock``).
    """

    def __init__(self, path: Path) -> None:
        self.path = path.expanduser()
        if not self.path.parent.is_dir():
            raise Stop(EXIT_REFUSED, f"--cursor-file: no directory {self.path.parent}")
        self.temporary = self.path.with_name(f".{self.path.name}.tmp")

    def read(self) -> str | None:
        """The stored id; None when the file does not exist or is empty.

        What a tail killed mid-write left is removed first.
        """
        try:
            with self._turn(), contextlib.suppress(FileNotFoundError):
                os.unlink(self.temporary)
        except OSError as exc:
            raise Stop(EXIT_FAILED, f"cannot clear {self.temporary}: {exc}") from None
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError) as exc:
            raise Stop(EXIT_FAILED, f"cannot read the cursor file: {exc}") from None
        cursor = text.removesuffix("\n")
        if any(c in cursor for c in "\r\n\0"):
            raise Stop(EXIT_REFUSED, f"{self.path} does not hold a cursor (one line)")
        return cursor or None

    def write(self, cursor: str) -> None:
        """Replace the file with one holding ``cursor``: readers see the old or the new, whole.

        The temporary file is in the same directory (so the rename stays on one
        file system), flushed to disk, then renamed over the old one. The
        process can die at any moment and the file still holds a whole cursor.
        """
        try:
            with self._turn():
                try:
                    with open(self.temporary, "w", encoding="utf-8") as file:
                        file.write(cursor + "\n")
                        file.flush()
                        os.fsync(file.fileno())
                    os.replace(self.temporary, self.path)
                except BaseException:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(self.temporary)
                    raise
        except OSError as exc:
            raise Stop(EXIT_FAILED, f"cannot write the cursor file: {exc}") from None

    @contextlib.contextmanager
    def _turn(self) -> Iterator[None]:
        """Hold the directory's lock: two tails never write the one temporary file at once."""
        if sys.platform == "win32":  # no flock: one tail per cursor file there
            yield
            return
        import fcntl

        directory = os.open(self.path.parent, os.O_RDONLY)
        try:
            fcntl.flock(directory, fcntl.LOCK_EX)
            yield
        finally:
            os.close(directory)  # and with it the lock


def use_color(choice: str, stream: TextIO) -> bool:
    """Whether to colour ``stream``: always, never, or auto (a terminal, and no NO_COLOR)."""
    if choice != "auto":
        return choice == "always"
    if os.environ.get("NO_COLOR") or os.environ.get("TERM") == "dumb":
        return False
    return stream.isatty()


# SGR codes. A routing key's first segment picks its colour, so kinds of
# events stand apart at a glance; unknown segments get a stable one.
_RESET = "\x1b[0m"
_DIM, _BOLD = "2", "1"
_SEGMENT_COLORS = {
    "project": "33",
    "space": "33",
    "item": "36",
    "revision": "32",
    "artifact": "34",
    "edge": "35",
}
_PALETTE = ("31", "32", "33", "34", "35", "36")
_TONES = {"info": _DIM, "ok": "32", "warn": "33", "error": "31"}
ROUTING_KEY_WIDTH = 20


def paint(text: str, code: str, enabled: bool) -> str:
    """``text`` in the SGR ``code`` when colour is on."""
    return f"\x1b[{code}m{text}{_RESET}" if enabled and text else text


def segment_color(routing_key: str) -> str:
    """The SGR colour of a routing key, from its first segment."""
    first = routing_key.partition(".")[0]
    return _SEGMENT_COLORS.get(first) or _PALETTE[zlib.crc32(first.encode()) % len(_PALETTE)]


# Bidirectional overrides and isolates: they would reorder what follows on
# the terminal line ("Trojan Source"), so they are shown escaped too.
_BIDI = frozenset(range(0x202A, 0x202F)) | frozenset(range(0x2066, 0x206A))


def visible(text: str) -> str:
    """``text`` safe for a terminal: controls (ESC, CR, LF, U+0085, ...), line
    separators and bidi overrides are shown as escapes, never sent raw."""
    if text.isascii() and text.isprintable():
        return text
    return "".join(
        ch.encode("unicode_escape").decode("ascii")
        if unicodedata.category(ch) in ("Cc", "Zl", "Zp") or ord(ch) in _BIDI
        else ch
        for ch in text
    )


def clock(timestamp: str) -> str:
    """``HH:MM:SS`` of an ISO 8601 timestamp in local time (as given when it has no zone)."""
    try:
        moment = datetime.fromisoformat(timestamp)
    except ValueError:
        return visible(timestamp) or "--:--:--"
    if moment.tzinfo is not None:
        moment = moment.astimezone()
    return moment.strftime("%H:%M:%S")


def format_details(details: object) -> str:
    """``key=value`` pairs; a value that is empty or holds spaces or quotes is quoted."""
    if not isinstance(details, Mapping):
        return visible(json.dumps(details, ensure_ascii=False)) if details else ""
    pairs = []
    for key, value in details.items():
        text = _text(value)
        if not text or any(c.isspace() or c in "\"\\'" for c in text) or visible(text) != text:
            text = json.dumps(text, ensure_ascii=False)
        pairs.append(f"{visible(_text(key))}={visible(text)}")
    return " ".join(pairs)


def format_event(data: Mapping[str, Any], color: bool) -> str:
    """One event as a readable line: time, routing key, kref, author, details."""
    routing_key = visible(_text(data.get("routing_key")))
    author = _text(data.get("username")) or _text(data.get("author"))
    columns = [
        paint(clock(_text(data.get("timestamp"))), _DIM, color),
        paint(routing_key, segment_color(routing_key), color)
        + " " * (ROUTING_KEY_WIDTH - len(routing_key)),
        paint(visible(_text(data.get("kref"))), _BOLD, color),
    ]
    if author:
        columns.append(paint(visible(author), "36", color))
    details = format_details(data.get("details"))
    if details:
        columns.append(details)
    # Two spaces after the time, the key and the kref: their widths vary, a
    # kref holds no spaces, so the columns still read apart.
    return "  ".join(columns)


def json_line(raw: str, data: Mapping[str, Any]) -> str:
    """The event's JSON object on one line: as received when that is one line of ASCII."""
    if raw.isascii() and "\n" not in raw and "\r" not in raw:
        return raw
    # Several data: lines, or raw non-ASCII from another server: one safe line.
    return json.dumps(data, ensure_ascii=True, separators=(",", ":"))


class Output:
    """Where things go: events to stdout (flushed each), notices to stderr."""

    def __init__(
        self, stdout: TextIO, stderr: TextIO, *, as_json: bool, color_out: bool, color_err: bool
    ) -> None:
        self.stdout, self.stderr = stdout, stderr
        self.as_json = as_json
        self.color_out, self.color_err = color_out, color_err

    def event(self, raw: str, data: Mapping[str, Any]) -> None:
        """Print one event; it is on its way before its cursor is stored."""
        line = json_line(raw, data) if self.as_json else format_event(data, self.color_out)
        self.stdout.write(line + "\n")
        self.stdout.flush()

    def notice(self, text: str, tone: str = "info") -> None:
        """A line on stderr for people: status changes, gaps, reconnects."""
        now = datetime.now().strftime("%H:%M:%S")
        line = f"{now} tail: {text}"
        self.stderr.write(paint(line, _TONES[tone], self.color_err) + "\n")
        self.stderr.flush()
