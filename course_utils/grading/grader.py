"""Grading a batch of submissions: read, scan, run sandboxed, score.

    results = grade([Path("submissions/")], seed=0, timeout=10)

The hidden cases of an exercise come from ``numpy.random.default_rng([seed, crc32(key)])``,
key being the exercise's ``seed_group`` or else its id:
the same seed gives the same tests (and the same scores), another seed other tests.
"""

from __future__ import annotations

import ast
import importlib
import shutil
import tempfile
import zlib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

from ..exercises.core import Exercise
from ..exercises.notebook import VISIBLE_SEED
from ..exercises.registry import all_exercises
from .expected import ExpectedCache
from .jobs import Job
from .notebooks import Submission, find_notebooks, read_submission
from .results import SubmissionResult
from .runner import run_jobs
from .sandbox import Task
from .scan import scan_cell
from .scoring import score_job, score_unreadable

__all__ = ["grade", "default_catalog", "make_task", "DEFAULT_SEED", "GradeError"]

DEFAULT_SEED = 0
# Packages a setup cell may import that the grader imports once, before forking, so each
# child does not pay for them again (matplotlib alone costs ~0.3 s).
_PREWARM_ROOTS = {"numpy", "torch", "matplotlib", "course_utils", "scipy", "IPython", "ipywidgets"}


class GradeError(Exception):
    """The grader cannot run (no notebooks, bad paths)."""


def default_catalog() -> dict[str, list[Exercise]]:
    """Every registered exercise, by lesson, in id order."""
    catalog: dict[str, list[Exercise]] = {}
    for ex in all_exercises().values():
        catalog.setdefault(ex.lesson, []).append(ex)
    return catalog


def make_task(ex: Exercise, seed: int) -> Task:
    """The cases the grader runs for ``ex``: the visible ones, then the hidden ones.

    Hidden cases use a generator seeded from ``seed`` and the exercise id, so they differ
    from the visible cases and from one seed to another, but not between runs.
    """
    visible = ex.cases(np.random.default_rng(VISIBLE_SEED), False)
    key = ex.seed_group or ex.id
    hidden = ex.cases(np.random.default_rng([seed, zlib.crc32(key.encode())]), True)
    cases: list[tuple[str, object, bool]] = []
    for kind, group in (("visible", visible), ("hidden", hidden)):
        for i, case in enumerate(group, 1):
            label = f"{kind} test {i} of {len(group)}" + (f" ({case.label})" if case.label else "")
            cases.append((label, case, kind == "hidden"))
    return Task(ex.id, ex.name, ex.run, cases, ex.time_limit)  # type: ignore[arg-type]


def _prewarm(subs: Sequence[Submission]) -> None:
    """Import, in the grader, the common packages the setup cells import."""
    names: set[str] = set()
    for sub in subs:
        for cell in sub.setup:
            try:
                tree = ast.parse(cell.source)
            except (SyntaxError, ValueError):
                continue
            for node in ast.walk(tree):
                if isinstance(node, ast.Import):
                    names.update(a.name for a in node.names)
                elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                    names.add(node.module)
    for name in sorted(names):
        if name.split(".")[0] in _PREWARM_ROOTS:
            try:
                importlib.import_module(name)
            except Exception:  # a child will report the failed import where it matters
                pass


def grade(
    paths: Sequence[Path | str],
    *,
    seed: int = DEFAULT_SEED,
    timeout: float = 10.0,
    memory_mb: int = 1024,
    workers: int = 2,
    catalog: Mapping[str, Sequence[Exercise]] | None = None,
    on_result: Callable[[SubmissionResult], None] | None = None,
) -> list[SubmissionResult]:
    """Grade notebooks (files, or folders searched for ``*.ipynb``).

    Args:
        paths: notebook files and folders of notebooks (one notebook per student).
        seed: seeds the hidden tests.
        timeout: seconds per cell and per exercise.
        memory_mb: address space each sandboxed child may use beyond the grader's own.
        workers: submissions run at once.
        catalog: lesson -> exercises (default: every registered exercise).
        on_result: called with each result as soon as it is ready.
    Returns:
        One :class:`SubmissionResult` per notebook, in the order found.
    Raises:
        GradeError: a path does not exist, or no notebook was found.
    """
    notebooks, errors = find_notebooks([Path(p) for p in paths])
    missing = [e for e in errors if e.endswith("no such file or folder")]
    if missing:
        raise GradeError("; ".join(missing))
    if not notebooks:
        raise GradeError("no notebooks found" + (f" ({'; '.join(errors)})" if errors else ""))
    catalog = {
        k: list(v) for k, v in (catalog if catalog is not None else default_catalog()).items()
    }
    subs = [read_submission(p, catalog) for p in notebooks]
    _prewarm(subs)

    tasks: dict[str, Task] = {}
    results: list[SubmissionResult | None] = [None] * len(subs)
    jobs: list[Job] = []
    slot: dict[int, int] = {}
    for i, sub in enumerate(subs):
        exercises = catalog.get(sub.lesson or "", [])
        if sub.problem or not exercises:
            results[i] = score_unreadable(sub, exercises)
            if on_result:
                on_result(results[i])
            continue
        for ex in exercises:
            if ex.id not in tasks and ex.id in sub.exercises:
                tasks[ex.id] = make_task(ex, seed)
        setup_sources = [c.source for c in sub.setup]
        job = Job(
            submission=sub,
            exercises=exercises,
            tasks=[tasks[ex.id] for ex in exercises if ex.id in sub.exercises],
            static={
                ex.id: scan_cell(sub.exercises[ex.id].source, setup_sources, ex.forbidden)
                for ex in exercises
                if ex.id in sub.exercises
            },
        )
        slot[id(job)] = i
        jobs.append(job)

    cache = ExpectedCache()

    def done(job: Job) -> None:
        res = score_job(job, cache)
        results[slot[id(job)]] = res
        if on_result:
            on_result(res)

    workdir = tempfile.mkdtemp(prefix="course-grade-")
    try:
        run_jobs(
            jobs,
            timeout=timeout,
            memory_mb=memory_mb,
            workers=workers,
            workdir=workdir,
            on_done=done,
            forget=cache.scrub,
        )
    finally:
        cache.scrub()  # a later grade() in this process forks children too
        shutil.rmtree(workdir, ignore_errors=True)
    return [r for r in results if r is not None]
