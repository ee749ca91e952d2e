"""Logging set-up, with credentials scrubbed from every line (uvicorn's access log included)."""

from __future__ import annotations

import logging
import re

_SECRET_PARAM = re.compile(r"((?:^|[?&;])access_token=)[^&;\s\"]*", re.IGNORECASE)


def redact(text: str) -> str:
    """``access_token=secret`` becomes ``access_token=***`` anywhere in a URL or line."""
    return _SECRET_PARAM.sub(r"\1***", text)


class RedactSecrets(logging.Filter):
    """Rewrites a record's message arguments so no query-string credential is printed."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(redact(a) if isinstance(a, str) else a for a in record.args)
        elif isinstance(record.msg, str):
            record.msg = redact(record.msg)
        return True


def install(level: str) -> None:
    """Attach the redaction filter to the loggers that print requests."""
    logging.basicConfig(level=level.upper(), format="%(levelname)s:     %(name)s %(message)s")
    logging.getLogger("gateway").setLevel(level.upper())
    for name in ("uvicorn.access", "uvicorn.error", "gateway"):
        logging.getLogger(name).addFilter(RedactSecrets())
