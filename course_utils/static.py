"""The static edition: every solution notebook executed and rendered to HTML, with an index.

    python -m course_utils.static [--out site] [--only 00 03]

The folder opens in any browser with no server and no network: figures are embedded in the
pages, widgets show their static images, and MathJax is copied next to the pages. Links
between lessons (``NN_name.ipynb``) are rewritten to the HTML pages.
"""

from __future__ import annotations

import argparse
import html
import json
import re
import shutil
import sys
import time
from pathlib import Path

import nbformat

from .build import ROOT

__all__ = ["execute_notebook", "render_page", "build_site"]

_MATHJAX_URL = "mathjax/MathJax.js?config=TeX-AMS_CHTML-full,Safe"


def execute_notebook(path: Path, timeout: int = 600) -> nbformat.NotebookNode:
    """Run a notebook top to bottom in a fresh kernel (in its own folder); return it executed.

    Raises nbclient's CellExecutionError when a cell fails (cells tagged
    ``raises-exception`` may fail).
    """
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    NotebookClient(
        nb,
        timeout=timeout,
        kernel_name="python3",
        resources={"metadata": {"path": str(path.parent)}},
    ).execute()
    return nb


def _title(nb: dict, fallback: str) -> str:
    title = nb.get("metadata", {}).get("course", {}).get("title")
    if title:
        return title
    for cell in nb.get("cells", []):
        if cell["cell_type"] == "markdown":
            m = re.search(r"^#\s+(.+)$", "".join(cell["source"]), re.M)
            if m:
                return m.group(1).strip()
    return fallback


def render_page(nb: nbformat.NotebookNode, names: list[str]) -> str:
    """HTML of one executed notebook, images embedded, lesson links pointing at .html pages."""
    from nbconvert import HTMLExporter

    # with saved widget state nbconvert would embed live widgets, which render nothing
    # without a kernel; dropping it makes each widget fall back to its static image
    nb.metadata.pop("widgets", None)
    exporter = HTMLExporter(template_name="lab", embed_images=True)
    exporter.mathjax_url = _MATHJAX_URL
    body, _ = exporter.from_notebook_node(nb)
    # require.js only serves live widgets, which a static page shows as images: drop the
    # only remote script so the page loads nothing from the network
    body = re.sub(r'<script src="https?://[^"]*require[^"]*"></script>', "", body)
    for name in names:
        stem = name[: -len(".ipynb")]
        body = body.replace(f'href="{name}"', f'href="{stem}.html"')
    return body


def _index(entries: list[tuple[str, str, str, float]]) -> str:
    rows = "\n".join(
        f'<li><a href="{html.escape(page)}">{html.escape(lesson)} · {html.escape(title)}</a>'
        f' <span class="t">({secs:.0f} s to run)</span></li>'
        for lesson, title, page, secs in entries
    )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>Normalization in deep learning: the course</title>
<style>body{{font-family:sans-serif;max-width:46em;margin:2em auto;line-height:1.5}}
.t{{color:#57606a;font-size:90%}}</style></head>
<body><h1>Normalization in deep learning</h1>
<p>The static edition of the course: every lesson with its exercises solved, executed on
{time.strftime("%Y-%m-%d")}. Read it without running anything; to run and vary the experiments,
open the notebooks in JupyterLab (see the course's README).</p>
<ol start="0">
{rows}
</ol>
<p class="t">MNIST: Yann LeCun, Corinna Cortes and Christopher J.C. Burges, CC BY-SA 3.0.</p>
</body></html>
"""


def build_site(
    out: Path = ROOT / "site",
    solutions: Path = ROOT / "solutions",
    only: list[str] | None = None,
    timeout: int = 600,
    quiet: bool = False,
) -> list[Path]:
    """Execute and render the solution notebooks into ``out``; returns the pages written.

    Args:
        only: lesson numbers to include (default: all), e.g. ["00", "03"].
    """
    out.mkdir(parents=True, exist_ok=True)
    import jupyter_server_mathjax

    mathjax = Path(jupyter_server_mathjax.__file__).parent / "static"
    if not (out / "mathjax").exists():
        shutil.copytree(mathjax, out / "mathjax")
    paths = sorted(solutions.glob("*.ipynb"))
    names = [p.name for p in paths]
    if only:
        wanted = {f"{int(n):02d}" for n in only}
        paths = [p for p in paths if p.name[:2] in wanted]
    entries, pages = [], []
    for path in paths:
        t = time.perf_counter()
        nb = execute_notebook(path, timeout)
        secs = time.perf_counter() - t
        page = out / (path.stem + ".html")
        page.write_text(render_page(nb, names), encoding="utf-8")
        lesson = nb.metadata.get("course", {}).get("lesson", path.name[:2])
        entries.append(
            (lesson, _title(json.loads(nbformat.writes(nb)), path.stem), page.name, secs)
        )
        pages.append(page)
        if not quiet:
            print(f"{page.name}: executed in {secs:.1f} s")
    (out / "index.html").write_text(_index(entries), encoding="utf-8")
    pages.insert(0, out / "index.html")
    return pages


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Build the static HTML edition of the course.")
    parser.add_argument("--out", type=Path, default=ROOT / "site")
    parser.add_argument("--only", nargs="*", help="lesson numbers to include (default: all)")
    parser.add_argument("--timeout", type=int, default=600, help="seconds per cell")
    args = parser.parse_args(argv)
    pages = build_site(args.out, only=args.only, timeout=args.timeout)
    print(f"open {pages[0]} in a browser ({len(pages) - 1} lessons)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
