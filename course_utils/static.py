"""The static edition: the solved course as a book of HTML pages that reads offline.

    python -m course_utils.static [--out site] [--only 00 03] [--jobs 1]

Every solution notebook is executed in a fresh kernel (``--jobs`` at a time), then Sphinx with
myst-nb and the book theme renders them (settings: :mod:`course_utils.static_conf`): one page
per lesson titled with the lesson, a sidebar of lessons, previous / next links and an index
page; math typeset by MathJax 3 copied next to the pages; figures embedded; each live widget
shown as the static image it leaves. Open ``site/index.html`` in any browser: no server, no
network. Needs the development requirements (``pip install -r requirements-dev.txt``).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import multiprocessing
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

from .build import ROOT

__all__ = ["execute_notebook", "build_site", "StaticBuildError"]


class StaticBuildError(Exception):
    """The site could not be built (a notebook failed, Sphinx failed, a bad output folder)."""


def execute_notebook(path: Path, dest: Path, timeout: int = 600) -> float:
    """Run a notebook top to bottom in a fresh kernel (in its own folder), write it to ``dest``.

    Widget state is dropped, so each widget's output falls back to its static image.

    Returns:
        The seconds it took.
    Raises:
        nbclient's CellExecutionError when a cell fails (cells tagged ``raises-exception``
        may fail).
    """
    import nbformat
    from nbclient import NotebookClient

    start = time.perf_counter()
    nb = nbformat.read(path, as_version=4)
    NotebookClient(
        nb,
        timeout=timeout,
        kernel_name="python3",
        resources={"metadata": {"path": str(path.parent)}},
    ).execute()
    nb.metadata.pop("widgets", None)
    nbformat.write(nb, dest)
    return time.perf_counter() - start


def _index(stems: list[str], partial: bool) -> str:
    today = time.strftime("%Y-%m-%d")
    note = (
        "\nThis build holds only some of the lessons; links to the others do not lead anywhere.\n"
        if partial
        else ""
    )
    return f"""# Normalization in deep learning

The static edition of the course: every lesson with its exercises solved and every cell run, on
{today}. Read it without running anything; to run the code, change the experiments and do the
exercises yourself, open the notebooks in JupyterLab (see the course's README).
{note}
```{{toctree}}
:maxdepth: 1
:caption: Lessons

{chr(10).join(stems)}
```

The embedded data: the MNIST database of handwritten digits (Yann LeCun, Corinna Cortes and
Christopher J.C. Burges), under Creative Commons Attribution-Share Alike 3.0.
"""


def _prepare_out(out: Path) -> None:
    """Empty ``out`` if it holds an earlier build; refuse any other non-empty folder."""
    if not out.exists() or not any(out.iterdir()):
        return
    if not (out / ".buildinfo").exists():
        raise StaticBuildError(
            f"{out} is not empty and is not an earlier static edition: choose another --out"
        )
    shutil.rmtree(out)


def build_site(
    out: Path = ROOT / "site",
    solutions: Path = ROOT / "solutions",
    only: list[str] | None = None,
    timeout: int = 600,
    jobs: int = 1,
    quiet: bool = False,
) -> list[Path]:
    """Execute the solution notebooks and render them into ``out`` as a Sphinx site.

    Args:
        only: lesson numbers to include (default: all), e.g. ["00", "03"].
        timeout: seconds per cell.
        jobs: notebooks executed at once (more is faster, but the lessons' timing claims
            are measured on a quiet machine: keep 1 on a busy one).
    Returns:
        The pages written: ``out/index.html``, then one ``out/NN_name.html`` per lesson.
    Raises:
        StaticBuildError: a notebook failed to run, Sphinx failed, or ``out`` is a folder
            that is not an earlier build.
    """
    from sphinx.cmd.build import build_main

    paths = sorted(solutions.glob("*.ipynb"))
    if only:
        wanted = {f"{int(n):02d}" for n in only}
        paths = [p for p in paths if p.name[:2] in wanted]
    if not paths:
        raise StaticBuildError(f"no solution notebooks to build in {solutions}")
    out = out.resolve()
    _prepare_out(out)
    with tempfile.TemporaryDirectory(prefix="course-static-") as tmp:
        src = Path(tmp) / "source"
        src.mkdir()
        ctx = multiprocessing.get_context("spawn")  # fresh processes: nothing inherited
        with concurrent.futures.ProcessPoolExecutor(max(1, jobs), mp_context=ctx) as pool:
            futures = {p: pool.submit(execute_notebook, p, src / p.name, timeout) for p in paths}
            for path, future in futures.items():
                try:
                    secs = future.result()
                except Exception as e:  # the notebook's own error, named, without colours
                    text = re.sub(r"\x1b\[[0-9;]*m", "", str(e))
                    raise StaticBuildError(f"{path.name} failed to run:\n{text}") from None
                if not quiet:
                    print(f"{path.name}: executed in {secs:.1f} s", flush=True)
        partial = len(paths) < len(list(solutions.glob("*.ipynb")))
        (src / "index.md").write_text(_index([p.stem for p in paths], partial), encoding="utf-8")
        (src / "conf.py").write_text(
            "from course_utils.static_conf import *  # noqa: F403\n"
            + ('suppress_warnings = ["myst.xref_missing"]\n' if partial else ""),
            encoding="utf-8",
        )
        args = ["-b", "html", "-E", "-d", str(Path(tmp) / "doctrees"), str(src), str(out)]
        if quiet:
            args.insert(0, "-q")
        if build_main(args) != 0:
            raise StaticBuildError("Sphinx could not build the site (its messages are above)")
    return [out / "index.html"] + [out / f"{p.stem}.html" for p in paths]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Build the static HTML edition of the course.")
    parser.add_argument("--out", type=Path, default=ROOT / "site")
    parser.add_argument("--only", nargs="*", help="lesson numbers to include (default: all)")
    parser.add_argument("--timeout", type=int, default=600, help="seconds per cell")
    parser.add_argument(
        "--jobs", type=int, default=1, help="notebooks executed at once (default 1: timing claims)"
    )
    args = parser.parse_args(argv)
    try:
        pages = build_site(args.out, only=args.only, timeout=args.timeout, jobs=args.jobs)
    except StaticBuildError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"open {pages[0]} in a browser ({len(pages) - 1} lessons)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
