"""How long the grader takes for a class: 100 copies of one solved lesson.

    python -m course_utils.bench_grader [N] [LESSON ...]

Times :func:`course_utils.grading.grade` on N copies of ``solutions/NN_*.ipynb`` (lesson 00
by default; a minimal solved lesson-00 notebook when that file is absent), after the grader's
own imports, with the default settings (2 workers, the bubblewrap sandbox, whose start-up is
included). Every copy must score full marks, or the figure means nothing. Prints the wall time
and the CPU time of the grader and everything it started (sandboxes, zygotes, children), and
the load average, since wall time on a shared machine depends on what else runs.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

from .build import ROOT
from .grading import grade

__all__ = ["bench_grader", "measure_grader", "solved_lesson", "solved_lesson00"]

_SOLVED_CELL = '''def standardize_columns(x, eps=1e-5):
    """Standardize each column of x: (N, D) -> (N, D)."""
    ### BEGIN SOLUTION
    x = np.asarray(x, dtype=np.float64)
    mean = x.mean(axis=0)
    var = ((x - mean) ** 2).mean(axis=0)
    return (x - mean) / np.sqrt(var + eps)
    ### END SOLUTION
'''


def solved_lesson00() -> dict:
    """The solved lesson-00 notebook (the real one when present) as a JSON dict."""
    path = ROOT / "solutions" / "00_start_here.ipynb"
    if path.exists():
        return json.loads(path.read_text(encoding="utf-8"))
    return {
        "cells": [
            {
                "cell_type": "code",
                "metadata": {"tags": ["setup"]},
                "source": "import numpy as np\nfrom course_utils import check, hint",
                "outputs": [],
                "execution_count": None,
            },
            {
                "cell_type": "code",
                "metadata": {
                    "course": {"exercise": "00.standardize_columns"},
                    "tags": ["exercise"],
                },
                "source": _SOLVED_CELL,
                "outputs": [],
                "execution_count": None,
            },
        ],
        "metadata": {"course": {"lesson": "00"}},
        "nbformat": 4,
        "nbformat_minor": 5,
    }


def solved_lesson(lesson: str) -> dict:
    """The solved notebook of ``lesson`` ("00", "03", ...) as a JSON dict."""
    if lesson == "00":
        return solved_lesson00()
    paths = sorted((ROOT / "solutions").glob(f"{int(lesson):02d}_*.ipynb"))
    if not paths:
        raise FileNotFoundError(f"no solution notebook for lesson {lesson}")
    return json.loads(paths[0].read_text(encoding="utf-8"))


def _cpu_seconds() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def measure_grader(n: int = 100, workers: int = 2, lesson: str = "00") -> tuple[float, float]:
    """(wall seconds, CPU seconds) to grade ``n`` solved submissions of ``lesson``; the CPU
    time counts the grader and every process it started (sandboxes, zygotes, children).

    Raises:
        AssertionError: a copy did not score full marks.
    """
    text = json.dumps(solved_lesson(lesson))
    folder = Path(tempfile.mkdtemp(prefix="bench-grader-"))
    try:
        for i in range(n):
            (folder / f"student_{i:03d}.ipynb").write_text(text, encoding="utf-8")
        cpu = _cpu_seconds()
        stats: dict = {}
        start = time.perf_counter()
        results = grade([folder], workers=workers, seed=0, stats=stats)
        seconds = time.perf_counter() - start
        # the sandboxes' processes are not the grader's waited-for children: their zygotes
        # measure them (wait4) and report
        cpu = _cpu_seconds() - cpu + stats.get("sandbox_cpu_s", 0.0)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    assert len(results) == n, f"graded {len(results)} of {n}"
    bad = [r for r in results if r.score != r.max_score or r.max_score == 0]
    assert not bad, f"{len(bad)} solved copies lost points: {bad[0].to_dict()}"
    return seconds, cpu


def bench_grader(n: int = 100, workers: int = 2, lesson: str = "00") -> float:
    """Seconds (wall) to grade ``n`` solved submissions of ``lesson`` (see :func:`measure_grader`).

    Raises:
        AssertionError: a copy did not score full marks.
    """
    return measure_grader(n, workers, lesson)[0]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    n = int(argv[0]) if argv else 100
    for lesson in argv[1:] or ["00"]:
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
        seconds, cpu = measure_grader(n, lesson=lesson)
        print(
            f"graded {n} solved lesson-{lesson} submissions in {seconds:.1f} s "
            f"({1000 * seconds / n:.0f} ms each), {cpu:.1f} s of CPU; load average "
            f"{load:.1f} before, {os.getloadavg()[0]:.1f} after, on {os.cpu_count()} CPUs"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
