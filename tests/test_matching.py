"""The reference upstream's wildcard filters."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.matching import compile_pattern, kref_matcher, routing_key_matcher


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
