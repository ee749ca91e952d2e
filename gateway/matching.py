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

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from functools import lru_cache

from gateway._proto import kumiho_pb2

Matcher = Callable[[str], bool]

_MATCH_ALL = frozenset({"", "*", "#", "**"})
_MULTI = frozenset({"#", "**"})


def _match_all(_: str) -> bool:
    return True


def glob_matcher(pattern: str) -> Matcher:
    """A whole-value match where ``*`` stands for any run of characters (details, actors).

    Linear in the value: the first and last pieces anchor the ends and each
    piece between is taken at its leftmost place after the one before (which
    leaves the most room for the rest), so no choice is ever undone.
    """
    if pattern == "*":
        return _match_all
    pieces = pattern.split("*")
    if len(pieces) == 1:
        return pattern.__eq__
    first, *middle, last = pieces
    least = len(first) + len(last)

    def matches(value: str) -> bool:
        if len(value) < least or not value.startswith(first) or not value.endswith(last):
            return False
        at, end = len(first), len(value) - len(last)
        for piece in middle:
            found = value.find(piece, at, end)
            if found < 0:
                return False
            at = found + len(piece)
        return True

    return matches


Run = tuple[Matcher, ...]  # one matcher per segment, for consecutive segments


def _segment(part: str) -> Matcher:
    """One segment of a pattern: ``*`` alone is any non-empty segment, inside one a glob."""
    return bool if part == "*" else glob_matcher(part)


def _run_at(run: Run, segments: list[str], at: int) -> bool:
    for match in run:  # a loop, not all(...): this runs per event and filter
        if not match(segments[at]):
            return False
        at += 1
    return True


def _exactly(run: Run, segments: list[str]) -> bool:
    return len(segments) == len(run) and _run_at(run, segments, 0)


@lru_cache(maxsize=256)
def compile_pattern(pattern: str, sep: str) -> Matcher:
    """A predicate that tells whether a value matches ``pattern``; ValueError if it is invalid.

    The pattern is cut at its multi-wildcards into runs of one-segment
    matchers; the value's segments must start with the first run and end
    with the last, and hold the runs between in order, each taken at its
    leftmost place: time linear in segments times pattern, never more.
    """
    if pattern in _MATCH_ALL:
        return _match_all
    runs: list[list[Matcher]] = [[]]
    for part in pattern.split(sep):
        if "**" in part and part != "**":
            raise ValueError(f"'**' must be a whole segment, not part of {part!r}")
        if part in _MULTI:
            # "**.**" is "**": consecutive multi-wildcards match what one matches.
            if runs[-1] or len(runs) == 1:
                runs.append([])
        else:
            runs[-1].append(_segment(part))
    if len(runs) == 2 and not runs[0] and not runs[1]:
        return _match_all
    if len(runs) == 1:
        only = tuple(runs[0])
        return lambda value: _exactly(only, value.split(sep))
    first, *middle, last = (tuple(run) for run in runs)

    def matches(value: str) -> bool:
        segments = value.split(sep)
        end = len(segments) - len(last)
        if end < len(first) or not _run_at(first, segments, 0) or not _run_at(last, segments, end):
            return False
        at = len(first)
        for run in middle:
            while at + len(run) <= end and not _run_at(run, segments, at):
                at += 1
            if at + len(run) > end:
                return False
            at += len(run)
        return True

    return matches


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


_GLOB_ALL = frozenset({"*"})


def _entries(patterns: Iterable[str], match_all: frozenset[str] = _MATCH_ALL) -> tuple[str, ...]:
    """A canonical list: sorted, without repeats; () when any entry matches everything."""
    entries = set(patterns)
    if entries & match_all:
        return ()
    return tuple(sorted(entries))


def _any(patterns: tuple[str, ...], compile_one: Callable[[str], Matcher]) -> Matcher | None:
    """One matcher for any of ``patterns`` (None when there are none: everything)."""
    matchers = tuple(map(compile_one, patterns))
    if not matchers:
        return None
    if len(matchers) == 1:
        return matchers[0]
    return lambda value: any(match(value) for match in matchers)


Check = Callable[[kumiho_pb2.Event], bool]
Details = tuple[tuple[str, tuple[str, ...]], ...]  # (detail key, its value patterns)


@dataclass(frozen=True)
class EventFilter:
    """What a subscription wants: an event must match any pattern of each list given.

    Routing keys and krefs are wildcard patterns (above), which an upstream
    call can carry one of; detail values, authors and usernames are globs
    the gateway alone applies. An empty list means everything. Equal filters
    compare and hash equal whatever the order of their entries, so the hub
    shares by them.
    """

    routing_keys: tuple[str, ...] = ()
    krefs: tuple[str, ...] = ()
    details: Details = ()
    authors: tuple[str, ...] = ()
    usernames: tuple[str, ...] = ()
    _checks: tuple[Check, ...] = field(default=(), init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Canonical entries and compiled checks, once (ValueError if a pattern is invalid).
        canonical = {
            "routing_keys": _entries(self.routing_keys),
            "krefs": _entries(self.krefs),
            "details": tuple(
                # No pattern means "any value" here: "*" still asks for the detail.
                sorted((key, _entries(patterns, frozenset())) for key, patterns in self.details)
            ),
            "authors": _entries(self.authors, _GLOB_ALL),
            "usernames": _entries(self.usernames, _GLOB_ALL),
        }
        for name, value in canonical.items():
            object.__setattr__(self, name, value)
        object.__setattr__(self, "_checks", tuple(self._compile()))

    def _compile(self) -> Iterator[Check]:
        if routing := _any(self.routing_keys, routing_key_matcher):
            yield lambda event: routing(event.routing_key)
        if kref := _any(self.krefs, kref_matcher):
            yield lambda event: kref(event.kref.uri)
        for key, patterns in self.details:
            if detail := _any(patterns, glob_matcher):
                yield _detail_check(key, detail)
        if author := _any(self.authors, glob_matcher):
            yield lambda event: author(event.author)
        if username := _any(self.usernames, glob_matcher):
            yield lambda event: username(event.username)

    @property
    def everything(self) -> bool:
        return not self._checks

    def wants(self, event: kumiho_pb2.Event) -> bool:
        """Whether the event matches every part of the filter."""
        return all(check(event) for check in self._checks)

    def upstream(self) -> tuple[str, str]:
        """(routing_key_filter, kref_filter) for one upstream call: a list cannot be sent, so ""."""
        return _single(self.routing_keys), _single(self.krefs)

    def beyond(self, routing_key_filter: str, kref_filter: str) -> EventFilter:
        """What is left to match in the gateway when the upstream filtered by these patterns."""
        return replace(
            self,
            routing_keys=()
            if self.routing_keys == _entries([routing_key_filter])
            else self.routing_keys,
            krefs=() if self.krefs == _entries([kref_filter]) else self.krefs,
        )


def _detail_check(key: str, match: Matcher) -> Check:
    """An event without the detail does not match its pattern."""
    return lambda event: key in event.details and match(event.details[key])


def _single(entries: tuple[str, ...]) -> str:
    return entries[0] if len(entries) == 1 else ""
