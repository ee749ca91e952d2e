"""Which events a subscription wants: wildcard patterns, and lists of them.

The one matcher of the project: the reference upstream filters with it, and
the gateway applies it to what an upstream stream cannot filter by itself
(a list of patterns, or a hub stream shared by several filters), so the two
cannot disagree.

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
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
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


MAX_ENTRIES = 16


def _entries(patterns: Iterable[str]) -> tuple[str, ...]:
    """A canonical list: sorted, without repeats; () when any entry matches everything."""
    entries = set(patterns)
    if entries & _MATCH_ALL:
        return ()
    return tuple(sorted(entries))


def _any(matchers: tuple[Matcher, ...]) -> Matcher | None:
    if not matchers:
        return None
    if len(matchers) == 1:
        return matchers[0]
    return lambda value: any(match(value) for match in matchers)


@dataclass(frozen=True)
class EventFilter:
    """Routing-key and kref patterns: an event matches when it matches any of each list.

    An empty list means everything. Equal filters compare and hash equal
    whatever the order of their entries, so the hub shares by them.
    """

    routing_keys: tuple[str, ...] = ()
    krefs: tuple[str, ...] = ()
    _routing: Matcher | None = field(default=None, init=False, repr=False, compare=False)
    _kref: Matcher | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Canonical entries and compiled matchers, once (ValueError if a pattern is invalid).
        object.__setattr__(self, "routing_keys", _entries(self.routing_keys))
        object.__setattr__(self, "krefs", _entries(self.krefs))
        object.__setattr__(
            self, "_routing", _any(tuple(map(routing_key_matcher, self.routing_keys)))
        )
        object.__setattr__(self, "_kref", _any(tuple(map(kref_matcher, self.krefs))))

    @property
    def everything(self) -> bool:
        return not self.routing_keys and not self.krefs

    def matches(self, routing_key: str, kref: str) -> bool:
        """Whether an event with this routing key and kref URI is wanted."""
        return (self._routing is None or self._routing(routing_key)) and (
            self._kref is None or self._kref(kref)
        )

    def upstream(self) -> tuple[str, str]:
        """(routing_key_filter, kref_filter) for one upstream call: a list cannot be sent, so ""."""
        return _single(self.routing_keys), _single(self.krefs)

    def beyond(self, routing_key_filter: str, kref_filter: str) -> EventFilter:
        """What is left to match in the gateway when the upstream filtered by these patterns."""
        return EventFilter(
            () if self.routing_keys == _entries([routing_key_filter]) else self.routing_keys,
            () if self.krefs == _entries([kref_filter]) else self.krefs,
        )


def _single(entries: tuple[str, ...]) -> str:
    return entries[0] if len(entries) == 1 else ""
