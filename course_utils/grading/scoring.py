"""Turning what a job recorded into points and one line of feedback per exercise.

Runs in the grader's process: expected values come from the exercise's reference here
(once per case, see :mod:`.expected`), and the learner's outputs only as decoded plain
data. An exercise earns its points only if every visible and hidden case passes and nothing
disqualifies it.
"""

from __future__ import annotations

import copy
import functools
import re
import warnings
from typing import Any

import numpy as np

from ..exercises.core import Exercise
from ..exercises.notebook import describe_exception
from . import wire
from .expected import ExpectedCache
from .jobs import Job
from .results import ExerciseResult, SubmissionResult
from .sandbox import Task
from .traps import ANSWER_LABEL

__all__ = ["score_job", "score_unreadable"]

_MAX_FEEDBACK = 400


def _line(text: str) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= _MAX_FEEDBACK else text[: _MAX_FEEDBACK - 3] + "..."


def _points(ex: Exercise, ok: bool, feedback: str) -> ExerciseResult:
    return ExerciseResult(ex.id, ex.points if ok else 0, ex.points, _line(feedback))


def _not_attempted(ex: Exercise) -> str:
    return f"not attempted: {ex.name} still holds the placeholder (`raise NotImplementedError`)"


def _typed_unsupported(value: Any) -> Any:
    """Give an output the child could not send a class named like the learner's type, so the
    comparison's "got <type>" message names what the learner returned."""
    if isinstance(value, wire.Unsupported):
        name = re.sub(r"\W", "_", value.type_name) or "object"
        if not name.isidentifier():
            name = "object"
        return type(name, (wire.Unsupported,), {})(value.type_name)
    if isinstance(value, tuple):
        return tuple(_typed_unsupported(v) for v in value)
    if isinstance(value, list):
        return [_typed_unsupported(v) for v in value]
    if isinstance(value, dict):
        return {k: _typed_unsupported(v) for k, v in value.items()}
    return value


def _judge(ex: Exercise, encoded: Any, case: Any, expected: Any) -> str | None:
    """Compare one decoded output with the reference's."""
    try:
        got = _typed_unsupported(wire.decode(encoded))
    except (wire.WireError, ValueError, TypeError) as e:
        return f"the output could not be read back ({e})"
    try:
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            return ex.judge(got, copy.deepcopy(case), expected())
    except Exception as e:  # a malformed output the comparison itself chokes on
        return f"could not compare your output: {describe_exception(e)}"


def _forbidden_calls(ex: Exercise, calls: list[str]) -> list[str]:
    """The recorded calls that disqualify ``ex``: the course's answers always; torch's
    normalization unless the exercise allows it (``forbidden=()``, e.g. "use nn.BatchNorm1d")."""
    forbidden = set(ex.forbidden)
    return [
        c
        for c in calls
        if ANSWER_LABEL in c
        or (forbidden and (c.startswith("a torch.nn") or c.rsplit(".", 1)[-1] in forbidden))
    ]


def _cases_verdict(
    ex: Exercise, task: Task, results: list, cache: ExpectedCache
) -> tuple[bool, str]:
    """(passed, feedback) from the per-case results of a child."""
    n_visible = sum(1 for _, _, hidden in task.cases if not hidden)
    n_hidden = len(task.cases) - n_visible
    for i, (label, case, hidden) in enumerate(task.cases):
        if i >= len(results):
            return False, f"{label}: the exercise stopped before this test"
        item = results[i]
        if not (isinstance(item, tuple) and len(item) == 2):
            return False, f"{label}: the grader received a malformed result"
        kind, payload = item
        if kind == "placeholder":
            if i == 0:
                return False, _not_attempted(ex)
            msg = "raised NotImplementedError (part of the exercise is still the placeholder)"
        elif kind == "raised":
            msg = f"raised {payload}"
        elif kind == "ok":
            msg = _judge(ex, payload, case, functools.partial(cache.get, ex, i, case))
        else:
            msg = "the grader received a malformed result"
        if msg:
            # Cases run visible first: a hidden failure means every visible test passed.
            if hidden and n_visible:
                return False, f"passes the visible tests but fails hidden ones: {label}: {msg}"
            return False, f"{label}: {msg}"
    return True, f"passed all {len(task.cases)} tests ({n_visible} visible, {n_hidden} hidden)"


def _score_exercise(
    job: Job, ex: Exercise, task: Task | None, cache: ExpectedCache
) -> ExerciseResult:
    sub = job.submission
    cell = sub.exercises.get(ex.id)
    if cell is None or task is None:
        return _points(
            ex,
            False,
            f"not found: no cell holds exercise {ex.id} or defines `{ex.name}` "
            "(was the cell deleted, or the function renamed?)",
        )
    static = job.static.get(ex.id, [])
    if static:
        more = f" (and {len(static) - 1} more)" if len(static) > 1 else ""
        return _points(
            ex, False, f"{static[0]}{more} - not allowed; write the computation yourself"
        )
    setup_patches = [p for c in sub.setup for p in job.cell_patches.get(c.index, [])]
    if setup_patches:
        return _points(
            ex,
            False,
            f"a setup cell patches {setup_patches[0]} - patching numpy or torch is not allowed",
        )
    if job.cell_patches.get(cell.index):
        return _points(
            ex,
            False,
            f"the exercise cell patches {job.cell_patches[cell.index][0]} - patching numpy or "
            "torch is not allowed",
        )
    outcome = job.outcomes.get(ex.id)
    cell_error = job.cell_errors.get(cell.index)
    if outcome is None:
        return _points(ex, False, "the grader could not run this exercise")
    if "died" in outcome:
        return _points(ex, False, f"{ex.name} {outcome['died']}")
    if outcome.get("missing"):
        if cell_error and cell_error.startswith("NotImplementedError"):
            # The placeholder sits in a class body, so the cell itself raises.
            return _points(ex, False, _not_attempted(ex))
        if cell_error:
            return _points(ex, False, f"the exercise cell failed: {cell_error}")
        return _points(
            ex,
            False,
            f"the exercise cell does not define `{ex.name}` (was it renamed?)",
        )
    calls = _forbidden_calls(ex, [str(c) for c in outcome.get("calls", [])])
    if calls:
        what = ", ".join(calls[:2])
        return _points(
            ex, False, f"calls {what} while running - not allowed; write the computation yourself"
        )
    if outcome.get("patched"):
        return _points(
            ex,
            False,
            f"{ex.name} patches {outcome['patched'][0]} while running - patching numpy or "
            "torch is not allowed",
        )
    if outcome.get("tampered"):
        return _points(ex, False, f"{ex.name} switches off the grader's call trap (sys.setprofile)")
    passed, feedback = _cases_verdict(ex, task, list(outcome.get("results", [])), cache)
    if not passed:
        if cell_error:
            feedback += f"; the exercise cell also raised {cell_error}"
        setup_errors = [
            f"cell {c.index}: {job.cell_errors[c.index]}"
            for c in sub.setup
            if c.index in job.cell_errors
        ]
        if setup_errors:
            feedback += f"; note: a setup cell failed ({setup_errors[0]})"
    return _points(ex, passed, feedback)


def score_job(job: Job, cache: ExpectedCache) -> SubmissionResult:
    """The grade of a finished job: one :class:`ExerciseResult` per exercise, in order."""
    tasks = {t.exercise_id: t for t in job.tasks}
    sub = job.submission
    result = SubmissionResult(str(sub.path), sub.lesson or "?")
    if sub.how and sub.how != "metadata":
        result.note = f"lesson recognised from {sub.how} (the notebook metadata was missing)"
    for ex in job.exercises:
        result.exercises.append(_score_exercise(job, ex, tasks.get(ex.id), cache))
    return result


def score_unreadable(sub: Any, exercises: list[Exercise]) -> SubmissionResult:
    """A notebook that could not be read (or whose lesson is unknown): 0 for everything."""
    lesson = sub.lesson or "?"
    if sub.problem:
        reason = sub.problem
    elif sub.lesson:
        reason = f"lesson {sub.lesson} has no graded exercises"
    else:
        reason = (
            "could not tell which lesson this is "
            "(no course metadata, exercise ids or known function names)"
        )
    result = SubmissionResult(str(sub.path), lesson, note=_line(reason))
    for ex in exercises:
        result.exercises.append(ExerciseResult(ex.id, 0, ex.points, _line(f"not graded: {reason}")))
    return result
