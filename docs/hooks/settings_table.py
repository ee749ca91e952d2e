"""mkdocs hook: the configuration page's table of settings, made from gateway/settings.py.

The page holds a marker where the table goes; each build replaces it with one
row per field of ``Settings`` (flag, variables, default, accepted values,
description), so a setting added to the code is on the page with no edit here.
"""

from __future__ import annotations

import typing
from typing import Any

import annotated_types
from pydantic import SecretStr

from gateway.settings import Settings, env_names, flag_name, shown_default

MARKER = "<!-- settings table -->"


def _accepted(field: str) -> str:
    """What a field takes, from its type and its bounds."""
    info = Settings.model_fields[field]
    annotation = info.annotation
    if typing.get_origin(annotation) is typing.Literal:
        return ", ".join(f"`{choice}`" for choice in typing.get_args(annotation))
    if annotation in (bool, bool | None):
        return "on or off (`true`/`false` in the variable)"
    kind = {int: "an integer", float: "a number"}.get(annotation)
    if kind is None:
        args = typing.get_args(annotation)
        if typing.get_origin(annotation) is list or (args and typing.get_origin(args[0]) is list):
            return "a comma-separated list"
        secret = SecretStr in (annotation, *args)
        return "text (a secret: never printed)" if secret else "text"
    bounds: dict[str, object] = {}
    for rule in info.metadata:
        for name in ("ge", "gt", "le", "lt"):
            if isinstance(rule, getattr(annotated_types, name.capitalize())):
                bounds[name] = getattr(rule, name)
    if "ge" in bounds and "le" in bounds:
        return f"{kind} from {bounds['ge']} to {bounds['le']}"
    signs = {"ge": "≥", "gt": ">", "le": "≤", "lt": "<"}
    parts = [f"{signs[name]} {value}" for name, value in bounds.items()]
    return f"{kind}, {' and '.join(parts)}" if parts else kind


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def settings_table() -> str:
    """The Markdown table of every setting, in the order of ``Settings``."""
    rows = [
        "| flag | environment | default | accepts | meaning |",
        "|---|---|---|---|---|",
    ]
    for field, info in Settings.model_fields.items():
        flag = f"`{flag_name(field)}`"
        if info.annotation in (bool, bool | None):
            flag += f" / `--no-{flag_name(field)[2:]}`"
        envs = ", ".join(f"`{name}`" for name in env_names(field))
        default = shown_default(field)
        default = default if default == "unset" else f"`{default}`"
        rows.append(
            f"| {flag} | {envs} | {default} | {_cell(_accepted(field))} | "
            f"{_cell(info.description or '')} |"
        )
    return "\n".join(rows)


def on_page_markdown(markdown: str, **kwargs: Any) -> str:
    """Put the table where the page's marker is."""
    return markdown.replace(MARKER, settings_table()) if MARKER in markdown else markdown
