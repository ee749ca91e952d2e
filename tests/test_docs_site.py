"""The documentation site: built offline with --strict, loading nothing from another host,
its configuration table made from the settings object; and the README that points to it."""

from __future__ import annotations

import html.parser
import importlib.util
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import urlsplit

import pytest
from pydantic import AliasChoices, Field

import gateway.settings
from gateway.settings import Settings, env_names, flag_name
from tests.conftest import PageServer

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
README_MAX_LINES = 300
LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}

# Attributes by which a page loads something (a link a reader follows is no load).
LOADING = {
    "script": ("src",),
    "img": ("src", "srcset"),
    "iframe": ("src",),
    "source": ("src", "srcset"),
    "video": ("src", "poster"),
    "audio": ("src",),
    "embed": ("src",),
    "object": ("data",),
    "track": ("src",),
    "input": ("src",),
}
CSS_URL = re.compile(r"""(?:url\(\s*['"]?|@import\s+['"])(https?:)?//([^/'")\s]+)""")


def settings_table_hook() -> ModuleType:
    """docs/hooks/settings_table.py, as mkdocs loads it (by path)."""
    path = DOCS / "hooks" / "settings_table.py"
    spec = importlib.util.spec_from_file_location("settings_table", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def mkdocs_build(
    site: Path, config: Path = ROOT / "mkdocs.yml"
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(config), "-d", str(site)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )


@pytest.fixture(scope="module")
def site() -> Iterator[Path]:
    """The site, built once for the module into a directory removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="kumiho-docs-") as tmp:
        built = mkdocs_build(Path(tmp) / "site")
        assert built.returncode == 0, built.stdout + built.stderr
        yield Path(tmp) / "site"


class _Loads(html.parser.HTMLParser):
    """The URLs a page loads: by tag attributes, stylesheets and inline styles."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []
        self._in_style = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {name: value or "" for name, value in attrs}
        for name in LOADING.get(tag, ()):
            if name in values:
                self.urls += [part.split()[0] for part in values[name].split(",") if part.strip()]
        rel = set(values.get("rel", "").lower().split())
        # A <link> loads what it names, but for a canonical or alternate address.
        if tag == "link" and "href" in values and not rel & {"canonical", "alternate"}:
            self.urls.append(values["href"])
        if "style" in values:
            self.urls += [f"//{host}" for _, host in CSS_URL.findall(values["style"])]
        self._in_style = tag == "style"

    def handle_data(self, data: str) -> None:
        if self._in_style:
            self.urls += [f"//{host}" for _, host in CSS_URL.findall(data)]


def foreign_loads(page: str) -> list[str]:
    """The http(s) or protocol-relative URLs to another host that an HTML page loads."""
    parser = _Loads()
    parser.feed(page)
    return [url for url in parser.urls if urlsplit(url).hostname not in (None, *LOCAL_HOSTS)]


def test_the_site_builds_strictly(site: Path) -> None:
    pages = sorted(p.relative_to(site).as_posix() for p in site.rglob("index.html"))
    assert "index.html" in pages and "configuration/index.html" in pages
    # Every Markdown page of docs/ became a page of the site (strict mode also
    # refuses a page left out of the navigation).
    for source in DOCS.glob("*.md"):
        name = "index.html" if source.stem == "index" else f"{source.stem}/index.html"
        assert name in pages, f"{source.name} was not built"
    # The hook's source and the screenshots are not published.
    assert not list(site.rglob("*.py"))
    assert not (site / "screenshots").exists()
    # BENCHMARKS.md, included where it stands.
    benchmarks = (site / "benchmarks" / "index.html").read_text()
    assert "bench/throughput.py" in benchmarks and "--8&lt;--" not in benchmarks


def test_strict_build_fails_on_a_broken_link(tmp_path: Path) -> None:
    """--strict is what holds the links: a page with a dead one does not build."""
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "index.md").write_text("# Home\n\nSee [nowhere](missing.md) and [x](#no-such-part).\n")
    config = tmp_path / "mkdocs.yml"
    config.write_text(
        (ROOT / "mkdocs.yml")
        .read_text()
        .replace("docs_dir: docs", f"docs_dir: {docs}")
        .split("\nhooks:")[0]
        + "\nvalidation:\n  anchors: warn\n"
    )
    built = mkdocs_build(tmp_path / "site", config)
    assert built.returncode != 0
    assert "missing.md" in built.stdout + built.stderr


def test_no_page_loads_anything_from_another_host(site: Path) -> None:
    pages = list(site.rglob("*.html"))
    assert len(pages) > 10
    for page in pages:
        assert foreign_loads(page.read_text()) == [], page.relative_to(site)
    for sheet in site.rglob("*.css"):
        assert CSS_URL.findall(sheet.read_text()) == [], sheet.relative_to(site)
    # The theme's own fonts would come from Google's servers: off.
    assert "fonts.googleapis.com" not in (site / "index.html").read_text()


def test_the_load_check_sees_a_foreign_asset() -> None:
    page = (
        '<link rel="stylesheet" href="https://cdn.example/a.css">'
        '<link rel="canonical" href="https://docs.example/">'
        '<a href="https://example.org/">a link is fine</a>'
        '<img srcset="/local.png 1x, //img.example/b.png 2x">'
        "<style>@import 'https://fonts.example/c.css';</style>"
        '<div style="background: url(http://bg.example/d.png)"></div>'
        '<script src="/assets/local.js"></script><script src="http://127.0.0.1:1/x.js"></script>'
    )
    assert foreign_loads(page) == [
        "https://cdn.example/a.css",
        "//img.example/b.png",
        "//fonts.example",
        "//bg.example",
    ]


def test_pages_load_nothing_from_another_host_in_chromium(site: Path, chromium: Any) -> None:
    """Served and opened as a reader would: every request the browser makes stays local."""
    server = PageServer(site)
    requests: list[str] = []
    context = chromium.new_context()
    context.on("request", lambda request: requests.append(request.url))
    # Nothing may leave this machine, whatever a page asks for.
    context.route(
        re.compile(r"^(?!https?://(127\.0\.0\.1|localhost)[:/]).*"),
        lambda route: route.abort(),
    )
    try:
        page = context.new_page()
        for html_page in sorted(site.rglob("index.html")):
            path = html_page.relative_to(site).parent.as_posix()
            url = f"{server.origin}/" + ("" if path == "." else f"{path}/")
            page.goto(url, wait_until="networkidle")
            assert page.locator("h1").first.is_visible()
        # Search runs in the browser, from the site's own index.
        page.goto(server.origin + "/", wait_until="networkidle")
        page.keyboard.press("/")
        page.keyboard.type("Last-Event-ID")
        page.wait_for_selector(".md-search-result__item", timeout=30_000)
    finally:
        context.close()
        server.close()
    foreign = [
        url
        for url in requests
        if urlsplit(url).scheme in ("http", "https", "ws", "wss")
        and urlsplit(url).hostname not in LOCAL_HOSTS
    ]
    assert requests and foreign == []


def test_the_configuration_table_has_every_setting() -> None:
    table = settings_table_hook().settings_table()
    rows = table.splitlines()[2:]
    assert len(rows) == len(Settings.model_fields)
    for field, row in zip(Settings.model_fields, rows, strict=True):
        assert row.startswith(f"| `{flag_name(field)}`"), row
        for env in env_names(field):
            assert f"`{env}`" in row
        assert row.count(" | ") == 4, f"a cell of {field} breaks the table: {row}"
    assert "| `--hub` / `--no-hub` |" in table
    assert "| `--port` | `KUMIHO_GATEWAY_PORT` | `8000` | an integer from 0 to 65535 |" in table
    assert (
        "| `--auth` | `KUMIHO_GATEWAY_AUTH` | `none` | `none`, `passthrough`, `service` |" in table
    )


def test_a_setting_added_to_the_code_is_in_the_table(monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing to edit in the docs when a setting arrives: the table follows the class."""

    class Grown(Settings):
        frobnicate_limit: int = Field(
            7,
            ge=1,
            le=9,
            validation_alias=AliasChoices("KUMIHO_GATEWAY_FROBNICATE_LIMIT"),
            description="how many | things at once",
        )

    monkeypatch.setattr(gateway.settings, "Settings", Grown)
    hook = settings_table_hook()
    monkeypatch.setattr(hook, "Settings", Grown)
    row = hook.settings_table().splitlines()[-1]
    assert row == (
        "| `--frobnicate-limit` | `KUMIHO_GATEWAY_FROBNICATE_LIMIT` | `7` | "
        "an integer from 1 to 9 | how many \\| things at once |"
    )


def test_the_built_configuration_page_names_every_flag_and_variable(site: Path) -> None:
    page = (site / "configuration" / "index.html").read_text()
    assert "settings table" not in page, "the marker was left unreplaced"
    text = re.sub(r"<[^>]+>", "", page)
    for field in Settings.model_fields:
        assert flag_name(field) in text, flag_name(field)
        for env in env_names(field):
            assert env in text, env


# -------------------------------------------------------------------- README


def readme() -> str:
    return (ROOT / "README.md").read_text()


def test_readme_is_a_front_page() -> None:
    text = readme()
    assert len(text.splitlines()) <= README_MAX_LINES
    # The two set-up commands, as they are.
    assert (
        "\npython3 -m venv .venv && . .venv/bin/activate && pip install -e . && "
        "kumiho-sse-gateway demo\n" in text
    )
    assert "\nbash scripts/test\n" in text
    # An example for each kind of user.
    for example in (
        "new EventSource(",
        'from "/kumiho-events.js"',
        "curl -N ",
        "Accept: application/x-ndjson",
        "/api/v1/events/poll",
        "kumiho-sse-gateway tail",
    ):
        assert example in text, example
    assert "docs/dashboard.png" in text


def test_readme_links_to_every_docs_page_and_only_to_real_ones() -> None:
    text = readme()
    linked = set(re.findall(r"\]\((docs/[^)#\s]+)", text))
    pages = {f"docs/{p.name}" for p in DOCS.glob("*.md")}
    assert pages <= linked, f"not linked from the README: {sorted(pages - linked)}"
    for target in linked:
        assert (ROOT / target).exists(), target
