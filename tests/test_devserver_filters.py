"""The reference upstream's wildcard filters."""

from __future__ import annotations

import pytest

from gateway.devserver.filters import kref_matcher, routing_key_matcher


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
    ],
)
def test_kref_filters(pattern: str, kref: str, matches: bool) -> None:
    assert kref_matcher(pattern)(kref) is matches
