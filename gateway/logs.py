"""Logging set-up, with credentials scrubbed from every line of every logger.

Each line written while a request is served names its correlation id
(``correlation.py``), so one client's story can be read out of a busy log.

Scrubbing happens where records are made (a log record factory), not in a
filter on chosen loggers: a filter on ``gateway`` does not see the records
of ``gateway.pump``, and uvicorn's loggers do not propagate.
"""

from __future__ import annotations

import copy
import logging
import re
import traceback
from collections.abc import Iterable
from typing import Any
from urllib.parse import unquote_plus

import uvicorn.config

from gateway import correlation

# Query parameter names whose values are credentials, after decoding.
SECRET_PARAMS = frozenset({"access_token"})
# A name=value pair in a URL or a line; the name may be percent-encoded.
_PAIR = re.compile(r"(?P<lead>^|[?&;\s])(?P<name>[^=&;\s?\"]+)=(?P<value>[^&;\s\"#]*)")
# Where a credential's value ends: where the app's query parser ends it (only
# at "&"), or where the URL ends in a line. Not at ";", '"' or "#": a token
# may hold them, and the app reads them as part of it.
_SECRET_END = re.compile(r"[&\s]|$")
# A bearer credential quoted in a line (an upstream's error details, a
# header echoed back): masked up to the next blank.
_BEARER = re.compile(r"(?i)(\bbearer\s+)\S+")


def _decoded(name: str) -> str:
    # The app decodes names once; decoding until stable also catches what a
    # proxy in front might decode again.
    for _ in range(3):
        decoded = unquote_plus(name)
        if decoded == name:
            break
        name = decoded
    return name.strip().lower()


def redact(text: str) -> str:
    """``access_token=secret`` (however its name is spelled) becomes ``access_token=***``.

    So does ``Bearer secret`` (``Bearer ***``), in any letter case.
    """
    text = _BEARER.sub(r"\1***", text)
    if "=" not in text:
        return text
    parts: list[str] = []
    done = 0  # text[:done] is in parts, masked where it held a credential
    for match in _PAIR.finditer(text):
        if match.start() < done or _decoded(match["name"]) not in SECRET_PARAMS:
            continue  # inside a value already masked, or not a credential
        start = match.start("value")
        end = _SECRET_END.search(text, start)
        assert end is not None  # "$" always matches
        parts += [text[done:start], "***"]
        done = end.start()
    if not parts:
        return text
    parts.append(text[done:])
    return "".join(parts)


def scrub(text: str, secrets: Iterable[str | None]) -> str:
    """``text`` with each of ``secrets`` (and what ``redact`` masks) turned into ``***``."""
    for secret in sorted(filter(None, secrets), key=len, reverse=True):
        text = text.replace(secret, "***")  # the longest first: one may hold another
    return redact(text)


def _scrubbed(value: Any) -> Any:
    return redact(value) if isinstance(value, str) else value


def _install_factory() -> None:
    make = logging.getLogRecordFactory()
    if getattr(make, "redacts", False):
        return

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = make(*args, **kwargs)
        cid = correlation.current()
        record.correlation = f"[{cid}] " if cid else ""
        if isinstance(record.msg, str):
            record.msg = redact(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(_scrubbed(a) for a in record.args)
        elif isinstance(record.args, dict):
            record.args = {k: _scrubbed(v) for k, v in record.args.items()}
        if record.exc_info and record.exc_info[1] is not None:
            # Formatters print exc_text when it is set: a traceback's messages
            # (an upstream error's details among them) are scrubbed too.
            record.exc_text = redact("".join(traceback.format_exception(*record.exc_info)))
            record.exc_text = record.exc_text.rstrip("\n")
        return record

    factory.redacts = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(factory)


def install(level: str) -> None:
    """Configure logging; from then on no record of any logger carries a credential."""
    _install_factory()
    logging.basicConfig(
        level=level.upper(), format="%(levelname)s:     %(name)s %(correlation)s%(message)s"
    )
    logging.getLogger("gateway").setLevel(level.upper())


def uvicorn_config() -> dict[str, Any]:
    """uvicorn's logging set-up, with each access line naming the request's correlation id."""
    config = copy.deepcopy(uvicorn.config.LOGGING_CONFIG)
    access = config["formatters"]["access"]
    access["fmt"] = access["fmt"].replace("%(client_addr)s", "%(correlation)s%(client_addr)s")
    return config
