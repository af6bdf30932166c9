"""The static edition: build it, then check every page, figure and link, also in Chromium."""

import os
import re
import shutil
import tempfile
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urlparse

import pytest

from course_utils.static import build_site

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"


class _Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.links, self.images, self.scripts = [], [], []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "a" and a.get("href"):
            self.links.append(a["href"])
        if tag == "img":
            self.images.append(a.get("src", ""))
        if tag == "script" and a.get("src"):
            self.scripts.append(a["src"])


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    out = tmp_path_factory.mktemp("site")
    only = os.environ.get("COURSE_STATIC_ONLY", "").split() or None
    pages = build_site(out, only=only, quiet=True)
    return out, pages


def test_every_solution_has_a_page_in_lesson_order(site):
    out, pages = site
    solutions = sorted(p.stem for p in (ROOT / "solutions").glob("*.ipynb"))
    only = os.environ.get("COURSE_STATIC_ONLY", "").split()
    if only:
        solutions = [s for s in solutions if s[:2] in {f"{int(n):02d}" for n in only}]
    assert [p.stem for p in pages[1:]] == solutions
    index = (out / "index.html").read_text()
    positions = [index.index(f'href="{s}.html"') for s in solutions]
    assert positions == sorted(positions)


def test_pages_have_figures_working_links_and_nothing_remote(site):
    out, pages = site
    only = {f"{int(n):02d}" for n in os.environ.get("COURSE_STATIC_ONLY", "").split()}
    for page in pages:
        parser = _Links()
        text = page.read_text()
        parser.feed(text)
        for href in parser.links:
            url = urlparse(href)
            if url.scheme in ("http", "https", "mailto") or href.startswith("#"):
                continue
            target = (page.parent / url.path).resolve()
            if only and re.fullmatch(r"\d\d_\w+\.html", url.path) and url.path[:2] not in only:
                continue  # a lesson this partial build left out
            assert target.exists(), f"{page.name}: broken link {href}"
            assert not href.endswith(".ipynb"), f"{page.name}: link to a notebook {href}"
        for src in parser.images:
            assert src.startswith("data:image/"), f"{page.name}: image not embedded: {src[:60]}"
        for src in parser.scripts:
            assert not src.startswith("http"), f"{page.name}: loads a remote script {src}"
        if page.name != "index.html":
            assert parser.images, f"{page.name}: no figures"
            # an error output, not a word in highlighted code: a traceback in an output area
            assert "Traceback (most recent call last)" not in text, page.name
    assert (out / "mathjax" / "MathJax.js").exists()


@pytest.mark.browser
def test_index_and_a_lesson_render_in_chromium(site):
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian's chromium is not installed (.ci/browser-deps installs it)")
    from playwright.sync_api import sync_playwright

    out, pages = site
    artifacts = ROOT / "test-artifacts"
    artifacts.mkdir(exist_ok=True)
    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    try:
        with sync_playwright() as p:
            ctx = p.chromium.launch_persistent_context(
                profile,
                executable_path=CHROMIUM,
                headless=True,
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
                page.goto((out / "index.html").as_uri())
                lesson = pages[1]
                page.click(f'a[href="{lesson.name}"]')
                page.wait_for_load_state("load")
                assert page.url.endswith(lesson.name)
                broken = page.evaluate(
                    "Array.from(document.images).filter(i => !(i.complete && i.naturalWidth > 0))"
                    ".length"
                )
                total = page.evaluate("document.images.length")
                page.screenshot(path=str(artifacts / "static_lesson.png"))
                assert total > 0 and broken == 0, f"{broken} of {total} images broken"
                assert re.search(r"\S", page.inner_text("body"))
            finally:
                ctx.close()
    finally:
        shutil.rmtree(profile, ignore_errors=True)
