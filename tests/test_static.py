"""The static edition: build it, check every page, link and figure, then read it in Chromium.

To keep CI quick the build holds three lessons (00, 01 with a widget, 06 with much math);
COURSE_STATIC_ONLY="all" (or a list of lesson numbers) builds others.
"""

import json
import os
import re
import shutil
import tempfile
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest

from course_utils.static import StaticBuildError, build_site
from course_utils.widgets.browser import CHROMIUM as BROWSER_BINARY

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = str(BROWSER_BINARY)
ONLY = os.environ.get("COURSE_STATIC_ONLY", "00 01 06").split()
ONLY = None if ONLY == ["all"] else ONLY


class _Page(HTMLParser):
    """The links, images, scripts and stylesheets of one page, and its title."""

    def __init__(self):
        super().__init__()
        self.links, self.assets, self.scripts = [], [], []
        self.title, self._in_title = "", False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "a" and a.get("href"):
            self.links.append(a["href"])
        if tag in ("img", "script") and a.get("src"):
            self.assets.append(a["src"])
        if tag == "link" and a.get("rel") in ("stylesheet", "preload") and a.get("href"):
            self.assets.append(a["href"])
        if tag == "title":
            self._in_title = True

    def handle_endtag(self, tag):
        if tag == "title":
            self._in_title = False

    def handle_data(self, data):
        if self._in_title:
            self.title += data


def _parse(page: Path) -> _Page:
    parser = _Page()
    parser.feed(page.read_text(encoding="utf-8"))
    return parser


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    out = tmp_path_factory.mktemp("site")
    pages = build_site(out, only=ONLY, quiet=True)
    return out, pages


def _built(pages):
    return {p.stem[:2] for p in pages[1:]}


def test_every_lesson_has_a_page_titled_with_it_in_lesson_order(site):
    out, pages = site
    solutions = sorted((ROOT / "solutions").glob("*.ipynb"))
    if ONLY:
        solutions = [s for s in solutions if s.name[:2] in {f"{int(n):02d}" for n in ONLY}]
    assert [p.stem for p in pages[1:]] == [s.stem for s in solutions]
    index = (out / "index.html").read_text(encoding="utf-8")
    positions = [index.index(f'href="{s.stem}.html"') for s in solutions]
    assert positions == sorted(positions)
    for page, solution in zip(pages[1:], solutions):
        title = json.loads(solution.read_text())["metadata"]["course"]["title"]
        assert title in _parse(page).title, page.name


def test_pages_link_only_to_pages_that_exist_and_load_nothing_remote(site):
    out, pages = site
    built = _built(pages)
    for page in pages:
        parsed = _parse(page)
        for href in parsed.links:
            url = urlparse(href)
            if url.scheme in ("http", "https", "mailto"):
                continue
            if not url.path:  # an anchor on the same page
                lesson = re.fullmatch(r"(\d\d)_\w+\.ipynb", unquote(url.fragment))
                # an unresolved lesson link: only allowed to a lesson this build left out
                assert not lesson or lesson.group(1) not in built, f"{page.name}: {href}"
                continue
            assert (page.parent / unquote(url.path)).is_file(), f"{page.name}: broken {href}"
            assert not url.path.endswith(".ipynb"), f"{page.name}: links a notebook {href}"
        for src in parsed.assets:
            url = urlparse(src)
            assert url.scheme in ("", "data"), f"{page.name}: loads {src[:80]} from the network"
            if not url.scheme:
                assert (page.parent / unquote(url.path)).is_file(), f"{page.name}: missing {src}"
        text = page.read_text(encoding="utf-8")
        if page.name != "index.html":
            assert any(re.search(r"\.(png|jpe?g|svg)$|^data:image/", s) for s in parsed.assets)
            assert "Traceback (most recent call last)" not in text, page.name
            # each widget left its static image: no widget view, no widget manager
            assert "application/vnd.jupyter.widget-view+json" not in text, page.name
    assert (out / "_static" / "mathjax" / "tex-chtml.js").is_file()


def test_an_output_folder_that_is_not_a_build_is_never_emptied(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(StaticBuildError, match="not an earlier static edition"):
        build_site(tmp_path, only=["00"], quiet=True)
    assert (tmp_path / "notes.txt").read_text() == "mine"


@pytest.mark.browser
def test_the_book_reads_in_chromium_with_typeset_math(site):
    if not Path(CHROMIUM).exists():
        pytest.skip(
            f"no Chromium at {CHROMIUM}: install Debian's chromium (.ci/browser-deps) or set "
            "COURSE_CHROMIUM to a Chromium or Chrome binary"
        )
    from playwright.sync_api import sync_playwright

    out, pages = site
    artifacts = ROOT / "test-artifacts"
    artifacts.mkdir(exist_ok=True)
    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    problems, remote = [], []
    try:
        with sync_playwright() as p:
            ctx = p.chromium.launch_persistent_context(
                profile,
                executable_path=CHROMIUM,
                headless=True,
                viewport={"width": 1280, "height": 800},
                args=[
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                    "--no-first-run",
                ],
            )
            try:
                page = ctx.new_page()
                page.on(
                    "console",
                    lambda m: (
                        problems.append(f"{m.type}: {m.text}")
                        if m.type in ("error", "warning")
                        else None
                    ),
                )
                page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
                page.on("requestfailed", lambda r: problems.append(f"failed: {r.url}"))
                page.on(
                    "request",
                    lambda r: (
                        remote.append(r.url)
                        if not r.url.startswith(("file:", "data:", "blob:"))
                        else None
                    ),
                )
                page.goto((out / "index.html").as_uri())
                # the sidebar lists every lesson of the build
                sidebar = page.locator("nav.bd-docs-nav a").evaluate_all(
                    "els => els.map(e => e.getAttribute('href'))"
                )
                assert [h for h in sidebar if h.endswith(".html") and h[:2].isdigit()] == [
                    p.name for p in pages[1:]
                ]
                # read the book front to back with its "next" links
                for expected in pages[1:]:
                    page.click("a.right-next")
                    page.wait_for_load_state("load")
                    assert page.url.endswith(expected.name), page.url
                    page.wait_for_function(
                        "window.MathJax && MathJax.startup && MathJax.startup.promise"
                    )
                    page.evaluate("MathJax.startup.promise")
                    maths = page.locator("span.math, div.math").count()
                    typeset = page.locator(
                        ":is(span.math, div.math) mjx-container:not(:has(mjx-merror))"
                    ).count()
                    assert maths > 0 and typeset == maths, (
                        f"{expected.name}: {typeset} of {maths} formulas typeset"
                    )
                    text = page.inner_text("article")
                    for raw in ("$$", "\\(", "\\[", "\\begin{"):
                        assert raw not in text, f"{expected.name}: raw {raw} in the text"
                    broken = page.evaluate(
                        "Array.from(document.images)"
                        ".filter(i => !(i.complete && i.naturalWidth > 0)).length"
                    )
                    assert broken == 0, f"{expected.name}: {broken} images did not load"
                    assert page.title().startswith(expected.stem[:2]), page.title()
                    page.screenshot(path=str(artifacts / f"static_{expected.stem}.png"))
            finally:
                ctx.close()
    finally:
        shutil.rmtree(profile, ignore_errors=True)
    assert not problems, problems
    assert not remote, remote
