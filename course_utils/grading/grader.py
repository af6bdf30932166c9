"""Grading a batch of submissions: read, scan, run sandboxed, judge.

    results = grade([Path("submissions/")])           # the instructor's secret seed
    results = grade([Path("submissions/")], seed=7)   # a given seed (a re-grade)

The hidden cases of an exercise are drawn from the seed (:mod:`course_utils.exercises.cases`):
the same seed gives the same tests (and the same scores), another seed other tests. Every
failure while reading or scoring one submission becomes that submission's 0 with a reason; the
batch always finishes.
"""

from __future__ import annotations

import inspect
import pickle
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from ..exercises.cases import grading_cases
from ..exercises.core import Exercise
from ..exercises.registry import all_exercises
from .isolation import INSTALL_HINT, resolve_isolation
from .jobs import Job, Task
from .notebooks import find_notebooks, read_submission
from .results import SubmissionResult
from .runner import SandboxFailure, run_jobs
from .scan import scan_cell, scan_setup
from .scoring import line, score_job, score_unreadable
from .secret import instructor_seed, seed_file

__all__ = ["grade", "default_catalog", "make_task", "GradeError", "DEFAULT_TIMEOUT"]

DEFAULT_TIMEOUT = 10.0
# Packages whose code the sandbox cannot import: a run driver may not live there.
_NOT_IN_SANDBOX = ("course_utils.answers", "course_utils.reference", "course_utils.grading")


class GradeError(Exception):
    """The grader cannot run (no notebooks, bad paths, no sandbox)."""


def default_catalog() -> dict[str, list[Exercise]]:
    """Every registered exercise, by lesson, in id order."""
    catalog: dict[str, list[Exercise]] = {}
    for ex in all_exercises().values():
        catalog.setdefault(ex.lesson, []).append(ex)
    return catalog


def _driver(ex: Exercise) -> tuple[str, str]:
    """Where the sandbox imports ``ex.run`` from: (module, qualified name)."""
    module = getattr(ex.run, "__module__", None)
    qualname = getattr(ex.run, "__qualname__", "")
    if not module or not qualname or "<" in qualname:
        raise GradeError(
            f"exercise {ex.id}: its run driver must be a module-level function (the sandbox "
            f"imports it by name), not {qualname or type(ex.run).__name__}"
        )
    if module.startswith(_NOT_IN_SANDBOX):
        raise GradeError(f"exercise {ex.id}: its run driver lives in {module}, outside the sandbox")
    return module, qualname


def make_task(ex: Exercise, seed: int, timeout: float = DEFAULT_TIMEOUT) -> Task:
    """The cases the grader runs for ``ex``: the visible ones, then the hidden ones.

    Hidden cases are drawn from ``seed`` and the exercise's seed key (its seed group, else its
    id), so they differ from the visible cases and from one seed to another, but not between
    runs.
    """
    cases = grading_cases(ex, seed)
    driver = _driver(ex)
    try:
        payloads = [pickle.dumps(c.case, protocol=pickle.HIGHEST_PROTOCOL) for c in cases]
    except Exception as e:
        raise GradeError(f"exercise {ex.id}: its test cases cannot be sent ({e})") from None
    return Task(
        exercise=ex,
        driver=driver,
        cases=cases,
        payloads=payloads,
        share=(ex.seed_key, *driver),
        budget=max(timeout, ex.time_limit or 0.0),
    )


def _driver_files(catalog: Mapping[str, Sequence[Exercise]]) -> dict[str, str]:
    """Files of run drivers outside the course package (a test catalog), by module name."""
    files = {}
    for exercises in catalog.values():
        for ex in exercises:
            module, _ = _driver(ex)
            if module == "course_utils" or module.startswith("course_utils."):
                continue
            try:
                files[module] = str(Path(inspect.getsourcefile(ex.run) or "").resolve())
            except TypeError:
                raise GradeError(f"exercise {ex.id}: cannot find the file of its driver") from None
    return files


def _preload() -> list[str]:
    """What each zygote imports besides numpy, torch and the exercises: every experiments
    module (the notebooks' setup cells import them)."""
    import pkgutil

    from .. import experiments

    return [
        f"course_utils.experiments.{m.name}" for m in pkgutil.iter_modules(experiments.__path__)
    ]


def _grader_error(sub: object, exercises: list, what: str, e: BaseException) -> SubmissionResult:
    res = score_unreadable(
        sub,
        exercises,
        line(f"the grader failed on this submission ({what}: {type(e).__name__}: {e})"),
    )
    res.grader_error = True
    return res


def grade(
    paths: Sequence[Path | str],
    *,
    seed: int | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    memory_mb: int = 1024,
    workers: int = 2,
    catalog: Mapping[str, Sequence[Exercise]] | None = None,
    on_result: Callable[[SubmissionResult], None] | None = None,
    isolation: str = "sandbox",
    stats: dict | None = None,
) -> list[SubmissionResult]:
    """Grade notebooks (files, or folders searched for ``*.ipynb``).

    Args:
        paths: notebook files and folders of notebooks (one notebook per student).
        seed: seeds the hidden tests; None: the instructor's secret seed
            (:func:`~course_utils.grading.secret.instructor_seed`).
        timeout: seconds per cell, and per exercise (all its cases together) at least.
        memory_mb: address space each sandboxed child may use beyond its zygote's.
        workers: submissions run at once (one sandbox each).
        catalog: lesson -> exercises (default: every registered exercise).
        on_result: called with each result as soon as it is ready.
        isolation: ``"sandbox"`` (bubblewrap; refuse to grade where it cannot run),
            ``"none"`` (plain processes: trusted notebooks only) or ``"auto"`` (the sandbox
            where available, else plain processes: a learner's own notebooks).
        stats: a dict to fill with ``sandbox_cpu_s`` (CPU seconds used in the sandboxes) and
            ``zygotes_started`` (for benchmarks).
    Returns:
        One :class:`SubmissionResult` per notebook, in the order found; a result whose
        ``grader_error`` is set means the grader itself failed on it.
    Raises:
        GradeError: a path does not exist, no notebook was found, no sandbox, a bad catalog.
    """
    notebooks, errors = find_notebooks([Path(p) for p in paths])
    missing = [e for e in errors if e.endswith("no such file or folder")]
    if missing:
        raise GradeError("; ".join(missing))
    if not notebooks:
        raise GradeError("no notebooks found" + (f" ({'; '.join(errors)})" if errors else ""))
    mode, problem = resolve_isolation(isolation)
    if problem is not None and mode == "sandbox":
        raise GradeError(
            f"refusing to run untrusted notebooks without a sandbox: {problem}; {INSTALL_HINT}"
        )
    if seed is None:
        try:
            seed = instructor_seed()
        except (OSError, ValueError) as e:
            raise GradeError(f"cannot read or create the secret seed {seed_file()}: {e}") from None
    catalog = {
        k: list(v) for k, v in (catalog if catalog is not None else default_catalog()).items()
    }
    driver_files = _driver_files(catalog)

    results: list[SubmissionResult | None] = [None] * len(notebooks)
    tasks: dict[str, Task] = {}
    jobs: list[Job] = []
    slot: dict[int, int] = {}

    def publish(i: int, res: SubmissionResult) -> None:
        results[i] = res
        if on_result:
            on_result(res)

    for i, path in enumerate(notebooks):
        sub = read_submission(path, catalog)
        exercises = catalog.get(sub.lesson or "", [])
        if sub.problem or not exercises:
            publish(i, score_unreadable(sub, exercises))
            continue
        try:
            job = Job(submission=sub, exercises=exercises, tasks=[])
            for ex in exercises:
                cell = sub.exercises.get(ex.id)
                if cell is None:
                    continue
                reasons = scan_cell(cell, sub.setup, ex.forbidden) + scan_setup(sub.setup, ex.name)
                if reasons:
                    job.static[ex.id] = reasons
                    continue
                if ex.id not in tasks:
                    tasks[ex.id] = make_task(ex, seed, timeout)
                job.tasks.append(tasks[ex.id])
        except GradeError:
            raise
        except Exception as e:  # noqa: BLE001 - one submission, never the batch
            publish(i, _grader_error(sub, exercises, "reading it", e))
            continue
        slot[id(job)] = i
        jobs.append(job)

    def done(job: Job) -> None:
        i = slot.pop(id(job))
        try:
            res = score_job(job)
        except Exception as e:  # noqa: BLE001 - one submission, never the batch
            res = _grader_error(job.submission, job.exercises, "scoring it", e)
        job.release()
        publish(i, res)

    workdir = tempfile.mkdtemp(prefix="course-grade-")
    try:
        used = run_jobs(
            jobs,
            timeout=timeout,
            memory_mb=memory_mb,
            workers=workers,
            workdir=workdir,
            mode=mode,
            driver_files=driver_files,
            preload=_preload(),
            on_done=done,
        )
        if stats is not None:
            stats.update(used)
    except SandboxFailure as e:
        for job in jobs:
            if id(job) in slot:
                publish(
                    slot.pop(id(job)),
                    _grader_error(job.submission, job.exercises, "its sandbox", e),
                )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return [r for r in results if r is not None]
