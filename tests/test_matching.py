"""The reference upstream's wildcard filters."""

from __future__ import annotations

import re
import time
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.matching import (
    Matcher,
    compile_pattern,
    glob_matcher,
    kref_matcher,
    routing_key_matcher,
)


@pytest.mark.parametrize(
    ("pattern", "key", "matches"),
    [
        ("", "revision.created", True),
        ("*", "item.model.created", True),  # '*' alone means everything
        ("#", "a.b.c", True),
        ("revision.*", "revision.created", True),
        ("revision.*", "revision.tagged", True),
        ("revision.*", "revision", False),
        ("revision.*", "revision.tag.extra", False),  # '*' is exactly one segment
        ("revision.#", "revision.tag.extra", True),
        ("revision.#", "revision", True),
        ("item.*.created", "item.model.created", True),
        ("item.*.created", "item.model.deleted", False),
        ("item.#.created", "item.created", True),
        ("item.#.created", "item.a.b.created", True),
        ("item.**", "item.model.created", True),
        ("revision.tagged", "revision.tagged", True),
        ("revision.tagged", "revision.untagged", False),
        ("revision.tag?ed", "revision.tagged", False),  # '?' is literal
        ("**.**", "a.b", True),  # consecutive multi-wildcards are one
        ("item.#.**.created", "item.created", True),
        ("item.#.#.created", "item.a.b.created", True),
    ],
)
def test_routing_key_filters(pattern: str, key: str, matches: bool) -> None:
    assert routing_key_matcher(pattern)(key) is matches


@pytest.mark.parametrize(
    ("pattern", "kref", "matches"),
    [
        ("kref://proj/**", "kref://proj/chars/hero.model?r=3&a=mesh", True),
        ("kref://proj/**", "kref://proj", True),
        ("kref://proj/**", "kref://project/chars/hero.model", False),
        ("kref://proj/**/*.model", "kref://proj/chars/hero.model", True),
        ("kref://proj/**/*.model", "kref://proj/a/b/c/hero.model?r=1", True),  # query ignored
        ("kref://proj/**/*.model", "kref://proj/chars/hero.rig", False),
        ("kref://proj/*/hero.model", "kref://proj/chars/hero.model", True),
        ("kref://proj/*/hero.model", "kref://proj/a/b/hero.model", False),
        ("kref://proj/chars/hero.model?r=3", "kref://proj/chars/hero.model?r=3", True),
        ("kref://狐/**", "kref://狐/空間/item.model", True),
        ("kref://p/**/**", "kref://p/a/b.model", True),
        ("kref://p/**/**", "kref://q/a/b.model", False),
    ],
)
def test_kref_filters(pattern: str, kref: str, matches: bool) -> None:
    assert kref_matcher(pattern)(kref) is matches


def test_a_multi_wildcard_inside_a_segment_is_refused() -> None:
    with pytest.raises(ValueError, match="whole segment"):
        routing_key_matcher("item.hero**")


_PIECES = st.sampled_from(["#", "**", "*", "a", "", "b*", "x.y", "/", "?"])


@given(st.lists(_PIECES, max_size=6), st.sampled_from([".", "/"]), st.text("ab./*#?", max_size=10))
def test_any_pattern_compiles_or_is_refused_with_value_error(
    pieces: list[str], sep: str, value: str
) -> None:
    # The reference upstream must answer INVALID_ARGUMENT, never crash (UNKNOWN).
    try:
        match = compile_pattern(sep.join(pieces), sep)
    except ValueError:
        return
    assert match(value) in (True, False)


# -- linear time, and the same meaning as the regular expressions it replaced ----------

# The matcher before issue 19 compiled each pattern to a backtracking regular
# expression. It is kept here as the meaning the linear matcher must keep.


def _regex_pattern(pattern: str, sep: str) -> Matcher:
    if pattern in {"", "*", "#", "**"}:
        return lambda _: True
    s = re.escape(sep)
    parts: list[str] = []
    for part in pattern.split(sep):
        if "**" in part and part != "**":
            raise ValueError(part)
        if not (part in {"#", "**"} and parts and parts[-1] in {"#", "**"}):
            parts.append(part)
    if parts in (["#"], ["**"]):
        return lambda _: True
    regex = ""
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if part in {"#", "**"}:
            if last:
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


def _regex_glob(pattern: str) -> Matcher:
    compiled = re.compile(".*".join(map(re.escape, pattern.split("*"))), re.DOTALL)
    return lambda value: compiled.fullmatch(value) is not None


# Small alphabets, so random patterns and values meet often; "\n" because
# values may hold one (the old expressions matched it with DOTALL).
_SEGMENT = st.text("ab*", max_size=4) | st.sampled_from(["*", "#", "**", ""])
_VALUE_SEGMENT = st.text("ab*#\n", max_size=4)


@settings(max_examples=400)
@given(st.lists(_SEGMENT, max_size=7), st.lists(_VALUE_SEGMENT, max_size=7), st.sampled_from(".:"))
def test_segment_patterns_mean_what_the_regular_expressions_meant(
    parts: list[str], segments: list[str], sep: str
) -> None:
    pattern, value = sep.join(parts), sep.join(segments)
    try:
        expected = _regex_pattern(pattern, sep)
    except ValueError:
        with pytest.raises(ValueError):
            compile_pattern(pattern, sep)
        return
    assert compile_pattern(pattern, sep)(value) == expected(value), (pattern, value)


@settings(max_examples=400)
@given(st.text("ab*.\n", max_size=10), st.text("ab*.\n", max_size=12))
def test_globs_mean_what_the_regular_expressions_meant(pattern: str, value: str) -> None:
    assert glob_matcher(pattern)(value) == _regex_glob(pattern)(value), (pattern, value)


# The worst patterns the API accepts (filters and globs up to 256
# characters) against long values built to make a backtracking matcher try
# every split: each took seconds to hours before (the first is the issue's
# 16 stars against an ordinary username).
_WORST = [
    (glob_matcher, "*" * 16 + "x", "a" * 20, False),
    (glob_matcher, "*" * 254 + "x", "a" * 100_000, False),
    (glob_matcher, "a" + "*a" * 126 + "*b", "a" * 100_000 + "c", False),
    (glob_matcher, "*ab" * 85, "ab" * 50_000 + "a", False),
    (glob_matcher, "*ab" * 85, "ab" * 50_000, True),
    (routing_key_matcher, "*e" * 127 + "*x", "e" * 100_000 + "y", False),
    (routing_key_matcher, ".".join(["*e*e*e*x"] * 4), ".".join(["e" * 28] * 4), False),
    (routing_key_matcher, "#." + "*." * 126 + "x", "e." * 50_000 + "e", False),
    (routing_key_matcher, "#." + "*." * 126 + "x", "e." * 50_000 + "x", True),
    (kref_matcher, "kref://**/" + "*e" * 500 + "*x", "kref://p/" + "e" * 100_000 + "?r=1", False),
]


@pytest.mark.parametrize(("compile_one", "pattern", "value", "expected"), _WORST)
def test_the_worst_accepted_patterns_match_in_linear_time(
    compile_one: Callable[[str], Matcher], pattern: str, value: str, expected: bool
) -> None:
    match = compile_one(pattern)
    started = time.process_time()
    assert match(value) is expected
    # A few milliseconds here; the regular expressions took seconds to
    # hours. The bound is CPU time, with room for a slow, loaded machine.
    assert time.process_time() - started < 1.0
