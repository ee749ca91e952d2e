"""Wildcard filters as the reference upstream applies them.

A pattern is split into segments (routing keys on ``.``, krefs on ``/``).
``*`` alone in a segment matches exactly one segment; inside a segment it
matches any run of characters but the separator (``*.model``). ``#`` or
``**`` matches any number of segments, zero included. An empty pattern and
``*`` alone match everything. Krefs match with or without their ``?r=...``
query, so ``kref://proj/**/*.model`` also selects that model's revisions.
A ``**`` inside a segment (``hero**``) is ambiguous and refused (ValueError).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import lru_cache

Matcher = Callable[[str], bool]

_MATCH_ALL = frozenset({"", "*", "#", "**"})
_MULTI = frozenset({"#", "**"})


def _match_all(_: str) -> bool:
    return True


@lru_cache(maxsize=256)
def compile_pattern(pattern: str, sep: str) -> Matcher:
    """A predicate that tells whether a value matches ``pattern``; ValueError if it is invalid."""
    if pattern in _MATCH_ALL:
        return _match_all
    s = re.escape(sep)
    parts: list[str] = []
    for part in pattern.split(sep):
        if "**" in part and part != "**":
            raise ValueError(f"'**' must be a whole segment, not part of {part!r}")
        # "**.**" is "**": consecutive multi-wildcards match what one matches.
        if not (part in _MULTI and parts and parts[-1] in _MULTI):
            parts.append(part)
    if parts in (["#"], ["**"]):
        return _match_all
    regex = ""
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if part in _MULTI:
            if last:
                # Trailing multi-wildcard: "a.#" matches "a" and "a.b.c".
                regex = regex[: -len(s)] + f"(?:{s}.*)?" if regex else ".*"
            else:
                regex += f"(?:[^{s}]*{s})*"
            continue
        if part == "*":
            regex += f"[^{s}]+"
        else:
            regex += "".join(f"[^{s}]*" if c == "*" else re.escape(c) for c in part)
        if not last:
            regex += s
    compiled = re.compile(regex, re.DOTALL)
    return lambda value: compiled.fullmatch(value) is not None


def routing_key_matcher(pattern: str) -> Matcher:
    """Matcher for a routing-key filter (segments split on ``.``)."""
    return compile_pattern(pattern, ".")


def kref_matcher(pattern: str) -> Matcher:
    """Matcher for a kref filter (segments split on ``/``), tried with and without the query."""
    match = compile_pattern(pattern, "/")
    if match is _match_all:
        return match

    def matches(kref: str) -> bool:
        return match(kref) or ("?" in kref and match(kref.partition("?")[0]))

    return matches
