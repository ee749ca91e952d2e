"""Realistic studio activity for the reference upstream.

A small, seeded model of a studio: projects hold spaces, spaces hold items of
several kinds, items gain revisions, revisions gain artifacts, tags and
edges. Each step yields the event Kumiho would emit for it, so a dashboard
shows the mix a real server produces.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass, field

from gateway.devserver.store import NewEvent

PROJECTS = ("neon-harbor", "moon-garden", "paper-tigers")
SPACES = ("characters", "environments", "props", "shots/sq010", "shots/sq020", "fx")
ITEM_NAMES = ("hero", "villain", "drone", "lantern", "bridge", "forest", "rain", "crowd", "kitsuné")
KINDS = ("model", "texture", "rig", "anim", "comp", "usd", "audio")
ARTIFACTS = {
    "model": ("mesh.fbx", "mesh.usd"),
    "texture": ("albedo.exr", "normal.exr"),
    "rig": ("rig.ma",),
    "anim": ("anim.abc", "preview.mov"),
    "comp": ("comp.nk", "render.exr"),
    "usd": ("layer.usda",),
    "audio": ("mix.wav",),
}
TAGS = ("approved", "published", "review", "wip", "latest")
EDGE_TYPES = ("DEPENDS_ON", "DERIVED_FROM", "REFERENCED")
PEOPLE = (
    ("u-1f2a", "mina.park"),
    ("u-7c41", "jonas.weber"),
    ("u-93d0", "aiko.tanaka"),
    ("u-a512", "sam.okafor"),
    ("u-c0de", "pipeline-bot"),
)


@dataclass
class _Item:
    kref: str
    kind: str
    revisions: int = 0
    tags: dict[int, set[str]] = field(default_factory=dict)


class StudioActivity:
    """An endless, seeded sequence of plausible Kumiho events."""

    def __init__(self, seed: int | None = None) -> None:
        self._rng = random.Random(seed)
        self._spaces: list[str] = []
        self._items: list[_Item] = []

    def __iter__(self) -> Iterator[NewEvent]:
        while True:
            yield self.next_event()

    def next_event(self) -> NewEvent:
        rng = self._rng
        if len(self._spaces) < 3 or rng.random() < 0.02:
            return self._new_space()
        if len(self._items) < 5 or rng.random() < 0.12:
            return self._new_item()
        item = rng.choice(self._items)
        if item.revisions == 0:
            return self._new_revision(item)
        roll = rng.random()
        if roll < 0.30:
            return self._new_revision(item)
        if roll < 0.50:
            return self._new_artifact(item)
        if roll < 0.72:
            return self._tag(item)
        if roll < 0.80:
            return self._untag(item)
        if roll < 0.88:
            return self._edge(item)
        if roll < 0.95:
            return self._event("item.metadata.updated", item.kref, {"key": "status", "value": "ok"})
        return self._event("revision.deprecated", f"{item.kref}?r={item.revisions}", {})

    def _event(self, routing_key: str, kref: str, details: dict[str, str]) -> NewEvent:
        author, username = self._rng.choice(PEOPLE)
        return NewEvent(routing_key, kref, details, author, username)

    def _new_space(self) -> NewEvent:
        space = f"kref://{self._rng.choice(PROJECTS)}/{self._rng.choice(SPACES)}"
        if space not in self._spaces:
            self._spaces.append(space)
        return self._event("space.created", space, {})

    def _new_item(self) -> NewEvent:
        kind = self._rng.choice(KINDS)
        name = self._rng.choice(ITEM_NAMES)
        item = _Item(f"{self._rng.choice(self._spaces)}/{name}.{kind}", kind)
        self._items.append(item)
        return self._event(f"item.{kind}.created", item.kref, {"kind": kind})

    def _new_revision(self, item: _Item) -> NewEvent:
        item.revisions += 1
        return self._event(
            "revision.created", f"{item.kref}?r={item.revisions}", {"number": str(item.revisions)}
        )

    def _new_artifact(self, item: _Item) -> NewEvent:
        name = self._rng.choice(ARTIFACTS[item.kind])
        kref = f"{item.kref}?r={item.revisions}&a={name}"
        return self._event("artifact.created", kref, {"name": name})

    def _tag(self, item: _Item) -> NewEvent:
        tag = self._rng.choice(TAGS)
        item.tags.setdefault(item.revisions, set()).add(tag)
        return self._event("revision.tagged", f"{item.kref}?r={item.revisions}", {"tag": tag})

    def _untag(self, item: _Item) -> NewEvent:
        tags = item.tags.get(item.revisions)
        if not tags:
            return self._tag(item)
        tag = self._rng.choice(sorted(tags))
        tags.discard(tag)
        return self._event("revision.untagged", f"{item.kref}?r={item.revisions}", {"tag": tag})

    def _edge(self, item: _Item) -> NewEvent:
        target = self._rng.choice(self._items)
        return self._event(
            "edge.created",
            f"{item.kref}?r={item.revisions}",
            {
                "edge_type": self._rng.choice(EDGE_TYPES),
                "target": f"{target.kref}?r={max(1, target.revisions)}",
            },
        )
