"""The ``kumiho-sse-gateway`` command: serve, demo, devserver, publish, tail."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import socket
import sys
import tempfile
import typing
from collections.abc import AsyncIterator, Coroutine, Sequence
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any, TypeVar

from pydantic import ValidationError

from gateway import __version__, logs, server, supervisor, tail, tracing
from gateway.devserver.control import DevServerClient
from gateway.devserver.server import AddressInUse, DevServerConfig, running_devserver
from gateway.devserver.servicer import TIERS
from gateway.lifecycle import Lifecycle
from gateway.metrics import Metrics
from gateway.settings import Settings, env_names, flag_name, problems, shown_default

T = TypeVar("T")

DEFAULT_DB = Path(
    os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache",
    "kumiho-sse-gateway",
    "devserver.sqlite3",
)
# tail's default URL as the demo's banner spells it (localhost).
_LOCAL_DEMO_EVENTS = tail.DEFAULT_URL.replace("127.0.0.1", "localhost")


class _Parser(argparse.ArgumentParser):
    """argparse, whose refusals are one line (the usage of ``serve`` is forty lines long)."""

    def error(self, message: str) -> typing.NoReturn:
        # "argument --hub/--no-hub: ..." also names the setting's variables.
        flag = re.match(r"argument --([a-z-]+)(/--[a-z-]+)*", message)
        field = flag.group(1).replace("-", "_") if flag else ""
        if flag and field in Settings.model_fields:
            where = flag.group(0)
            message = message.replace(where, f"{where} ({', '.join(env_names(field))})", 1)
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def _add_settings_flags(parser: argparse.ArgumentParser, only: Sequence[str] = ()) -> None:
    """One flag per Settings field (or those in ``only``); flags left out fall back to the
    environment. Values stay text: Settings checks them, flags and environment alike."""
    for name, field in Settings.model_fields.items():
        if only and name not in only:
            continue
        envs = ", ".join(env_names(name))
        default = shown_default(name)
        help_text = f"{field.description} (env: {envs}; default: {default})".replace("%", "%%")
        kwargs: dict[str, Any] = {"default": argparse.SUPPRESS, "help": help_text}
        annotation = field.annotation
        if annotation in (bool, bool | None):
            kwargs["action"] = argparse.BooleanOptionalAction
        elif typing.get_origin(annotation) is typing.Literal:
            kwargs["metavar"] = "{" + ",".join(typing.get_args(annotation)) + "}"
        elif annotation in (int, float):
            kwargs["metavar"] = "N"
        else:
            kwargs["metavar"] = "VALUE"
        parser.add_argument(flag_name(name), **kwargs)


def _settings(namespace: argparse.Namespace, **overrides: Any) -> Settings:
    """The settings from flags and environment; a refusal is one line per problem, status 2."""
    given = {k: v for k, v in vars(namespace).items() if k in Settings.model_fields}
    try:
        return Settings(**{**given, **overrides})
    except ValidationError as exc:
        prog = f"kumiho-sse-gateway {getattr(namespace, 'command', None) or 'serve'}"
        for line in problems(exc):
            print(f"{prog}: {line}", file=sys.stderr)
        raise SystemExit(2) from None


def _check_tracing(namespace: argparse.Namespace, settings: Settings) -> None:
    """Once, before anything starts: tracing as the OTEL_* variables ask, or one line why not."""
    logs.install(settings.log_level)
    try:
        tracing.check()
    except tracing.TracingError as exc:
        prog = f"kumiho-sse-gateway {getattr(namespace, 'command', None) or 'serve'}"
        print(f"{prog}: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def _run(main: Coroutine[Any, Any, None]) -> None:
    """Run on uvloop when it is installed (uvicorn[standard] brings it)."""
    factory: Any = None
    try:
        import uvloop

        factory = uvloop.new_event_loop
    except ImportError:  # pragma: no cover - uvicorn[standard] is a dependency
        pass
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(main)


def _cmd_serve(ns: argparse.Namespace) -> None:
    settings = _settings(ns)
    _check_tracing(ns, settings)
    if settings.workers > 1:
        status = supervisor.serve_workers(settings, _worker)
        if status:
            raise SystemExit(status)
    else:
        _run(server.serve(settings))


def _worker(settings: Settings, sockets: list[socket.socket], spec: supervisor.WorkerSpec) -> None:
    """One worker process of ``serve --workers N`` (module level: it is pickled)."""
    supervisor.exit_with_parent(spec.parent)
    metrics = Metrics(spec.metrics_dir, restarted=spec.restarted)
    lifecycle = Lifecycle(pool_failing=spec.pool_failing.is_set)
    try:
        with contextlib.suppress(KeyboardInterrupt):
            _run(
                server.serve(
                    settings,
                    sockets=sockets,
                    metrics=metrics,
                    lifecycle=lifecycle,
                    started=spec.report_ready,
                )
            )
    finally:
        supervisor.worker_exited(spec)


def _devserver_config(ns: argparse.Namespace) -> DevServerConfig:
    tokens: dict[str, str] = {}
    for spec in ns.token or ():
        token, _, tenant = spec.partition("=")
        tokens[token] = tenant or "default"
    return DevServerConfig(
        host=ns.host,
        port=ns.port,
        db=Path(ns.db),
        tier=ns.tier,
        buffer_size=ns.buffer_size,
        retention_hours=ns.retention_hours,
        tokens=tokens,
        denied_tokens=set(ns.deny_token or ()),
        activity=ns.activity,
        break_after=ns.break_after,
        refuse=ns.refuse,
        late_headers=ns.late_headers,
    )


def _cmd_devserver(ns: argparse.Namespace) -> None:
    config = _devserver_config(ns)
    config.db.parent.mkdir(parents=True, exist_ok=True)

    async def main() -> None:
        async with _started(running_devserver(config)) as running:
            print(
                f"kumiho devserver listening on {config.host}:{running.port} "
                f"(tier {config.tier}, db {config.db})",
                flush=True,
            )
            await running.server.wait_for_termination()

    _run(main())


@contextlib.asynccontextmanager
async def _started(devserver: AbstractAsyncContextManager[T]) -> AsyncIterator[T]:
    """A devserver that could not bind says so in one line, naming the address."""
    try:
        async with devserver as running:
            yield running
    except AddressInUse as exc:
        raise SystemExit(f"kumiho-sse-gateway: {exc}") from None


def _cmd_demo(ns: argparse.Namespace) -> None:
    # Checked before anything starts; the upstream is the embedded one, known once it listens.
    settings = _settings(ns, upstream="127.0.0.1:8080")
    _check_tracing(ns, settings)
    # A store of its own: never the devserver's default, and by default fresh
    # each run, so from=beginning shows this demo's activity and nothing else.
    with contextlib.ExitStack() as cleanup:
        if ns.db:
            db = Path(ns.db)
            db.parent.mkdir(parents=True, exist_ok=True)
        else:
            db = Path(cleanup.enter_context(tempfile.TemporaryDirectory())) / "demo.sqlite3"
        _run(_demo(ns, settings, DevServerConfig(port=0, db=db, activity=ns.activity)))


async def _demo(ns: argparse.Namespace, settings: Settings, config: DevServerConfig) -> None:
    async with _started(running_devserver(config)) as running:
        settings = settings.model_copy(update={"upstream": f"127.0.0.1:{running.port}"})
        host, port = settings.host, settings.port
        url = f"http://{'localhost' if host in ('127.0.0.1', '0.0.0.0') else host}:{port}/"
        # tail's default URL is this demo's on its default address: name it otherwise.
        tail_url = "" if f"{url}events" == _LOCAL_DEMO_EVENTS else f" {url}events"
        await server.serve(
            settings,
            announce=(
                f"kumiho-sse-gateway demo: reference upstream on 127.0.0.1:{running.port} "
                f"({ns.activity:g} events/s, db {config.db})\n"
                f"  dashboard  {url}\n"
                f"  stream     curl -N {url}events\n"
                f"  tail       kumiho-sse-gateway tail{tail_url} --routing-key 'revision.*'"
            ),
        )


def _cmd_publish(ns: argparse.Namespace) -> None:
    details: dict[str, str] = {}
    for pair in ns.details:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"kumiho-sse-gateway publish: {pair!r} is not KEY=VALUE")
        details[key] = value
    with DevServerClient(ns.upstream) as client:
        cursors = client.publish(
            ns.routing_key,
            ns.kref,
            details,
            author=ns.author,
            username=ns.username,
            tenant=ns.tenant,
            count=ns.count,
        )
    print("\n".join(cursors))


def _cmd_tail(ns: argparse.Namespace) -> None:
    status = tail.run(ns)
    if status:
        raise SystemExit(status)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="kumiho-sse-gateway",
        description="Server-Sent Events gateway for Kumiho's gRPC EventStream.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser(
        "serve",
        help="run the gateway in front of a Kumiho server",
        description="Run the gateway in front of a Kumiho server. Each flag falls back to "
        "the environment variable named in its help.",
    )
    _add_settings_flags(serve)
    serve.set_defaults(func=_cmd_serve)

    demo = commands.add_parser(
        "demo",
        help="run the reference upstream with studio activity and the gateway in front of it",
    )
    # The same settings and environment as serve: the Docker image sets KUMIHO_GATEWAY_HOST=0.0.0.0.
    _add_settings_flags(demo, only=("host", "port", "cors_origins"))
    demo.add_argument(
        "--activity",
        type=float,
        default=2.0,
        metavar="RATE",
        help="events per second (default: %(default)s)",
    )
    demo.add_argument(
        "--db",
        default="",
        help="SQLite event log to keep across runs (default: a fresh one for each run, "
        "removed at exit)",
    )
    demo.set_defaults(func=_cmd_demo)

    dev = commands.add_parser(
        "devserver",
        help="run the reference upstream (a Kumiho-compatible event server) on its own",
    )
    dev.add_argument("--host", default="127.0.0.1", help="listen address (default: %(default)s)")
    dev.add_argument(
        "--port", type=int, default=8080, help="gRPC port, 0 = any (default: %(default)s)"
    )
    dev.add_argument(
        "--db",
        default=str(DEFAULT_DB),
        help="SQLite event log (default: %(default)s; the demo never uses it)",
    )
    dev.add_argument(
        "--tier",
        choices=sorted(TIERS),
        default="studio",
        help="capabilities to report (default: %(default)s)",
    )
    dev.add_argument(
        "--buffer-size", type=int, metavar="N", help="events kept per tenant (default: the tier's)"
    )
    dev.add_argument(
        "--retention-hours", type=float, metavar="H", help="age limit of events (default: none)"
    )
    dev.add_argument(
        "--token",
        action="append",
        metavar="TOKEN=TENANT",
        help="accept this bearer token for TENANT (repeatable); with none, no token is needed",
    )
    dev.add_argument(
        "--deny-token",
        action="append",
        metavar="TOKEN",
        help="a valid token that gets PERMISSION_DENIED on events",
    )
    dev.add_argument(
        "--activity",
        type=float,
        default=0.0,
        metavar="RATE",
        help="generate studio events per second, into every --token's tenant (default: 0, none)",
    )
    dev.add_argument(
        "--break-after",
        type=int,
        default=0,
        metavar="N",
        help="fault: abort each stream after N events",
    )
    dev.add_argument(
        "--refuse", action="store_true", help="fault: answer every EventStream with UNAVAILABLE"
    )
    dev.add_argument(
        "--late-headers",
        action="store_true",
        help="send a stream's response headers only with its first event (as many gRPC servers do)",
    )
    dev.set_defaults(func=_cmd_devserver)

    pub = commands.add_parser(
        "publish", help="publish an event into a devserver and print its cursor"
    )
    pub.add_argument(
        "--upstream",
        default=os.environ.get("KUMIHO_SERVER_ENDPOINT") or "localhost:8080",
        help="devserver address (env: KUMIHO_SERVER_ENDPOINT; default: %(default)s)",
    )
    pub.add_argument(
        "--tenant", default="", help="tenant to publish for (default: the devserver's default)"
    )
    pub.add_argument("--author", default="u-cli", help="author user id (default: %(default)s)")
    pub.add_argument("--username", default="cli", help="author name (default: %(default)s)")
    pub.add_argument(
        "--count", type=int, default=1, help="publish N numbered copies (default: %(default)s)"
    )
    pub.add_argument("routing_key", metavar="ROUTING_KEY")
    pub.add_argument("kref", metavar="KREF")
    pub.add_argument("details", nargs="*", metavar="KEY=VALUE", help="event details")
    pub.set_defaults(func=_cmd_publish)

    follow = commands.add_parser(
        "tail",
        help="follow a gateway's events in the terminal (readable lines, or NDJSON)",
        description=tail.DESCRIPTION,
        epilog=tail.EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    tail.add_arguments(follow)
    follow.set_defaults(func=_cmd_tail)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    ns = build_parser().parse_args(argv)
    try:
        ns.func(ns)
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
