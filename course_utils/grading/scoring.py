"""Verdicts: judging each case's output as it arrives, and turning a finished job into points
and one line of feedback per exercise.

Runs in the grader's process only: expected values come from the answers here (once per
case, see :mod:`.expected`), the learner's outputs arrive as decoded plain data. An exercise
earns its points only if every visible and hidden case passes and nothing disqualifies it.
"""

from __future__ import annotations

import copy
import re
from typing import Any

from ..exercises.core import Exercise
from ..exercises.running import FAILED, NOT_STARTED, PASSED, CaseRun, Status, judge_run, one_line
from ..sandbox import wire
from ..sandbox.traps import COURSE_CODE_LABEL
from .expected import ExpectedCache
from .jobs import Job, Outcome, Task
from .protocol import CaseReply
from .results import ExerciseResult, SubmissionResult

__all__ = ["judge_result", "forbidden_calls", "score_job", "score_unreadable", "line"]

_MAX_FEEDBACK = 400


def line(text: str) -> str:
    """One line of at most 400 characters."""
    return one_line(text, _MAX_FEEDBACK)


def _result(ex: Exercise, status: Status, feedback: str) -> ExerciseResult:
    """Full points when passed, else none."""
    score = ex.points if status == PASSED else 0
    return ExerciseResult(ex.id, score, ex.points, line(feedback), status)


def _failed(ex: Exercise, feedback: str) -> ExerciseResult:
    return _result(ex, FAILED, feedback)


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


def forbidden_calls(ex: Exercise, calls: list[str]) -> list[str]:
    """The recorded calls that disqualify ``ex``: the course's grading code always; a
    forbidden name unless the exercise allows it (``forbidden=()``)."""
    forbidden = set(ex.forbidden)
    out = []
    for c in calls:
        base = c.split(" (")[0].rsplit(".", 1)[-1]
        if COURSE_CODE_LABEL in c:
            out.append(c)
        elif forbidden and (
            base in forbidden
            or c.startswith("a torch.nn")
            or (c.startswith("torch.autograd engine") and "backward" in forbidden)
        ):
            out.append(c)
    return out


def judge_result(
    task: Task, index: int, reply: CaseReply, outcome: Outcome, cache: ExpectedCache
) -> None:
    """Fold one case's reply into ``outcome`` (a verdict once a case fails or all pass).

    Args:
        reply: what the child reported for case ``index`` of ``task`` (already validated).
    """
    ex = task.exercise
    outcome.calls += [c for c in reply.calls if c not in outcome.calls]
    outcome.patched += [p for p in reply.patched if p not in outcome.patched]
    outcome.tampered = outcome.tampered or reply.tampered
    if forbidden_calls(ex, outcome.calls) or outcome.patched or outcome.tampered:
        outcome.decide(FAILED, "disqualified")  # the reason is given by score_job
        return
    label, case, hidden = task.cases[index]
    run = reply.run
    if run.kind == "missing":
        outcome.missing = True
        return
    status: Status = FAILED
    if run.kind == "placeholder":
        if index == 0:
            outcome.decide(NOT_STARTED, _not_attempted(ex))
            return
        status = NOT_STARTED
        msg: str | None = (
            "raised NotImplementedError (part of the exercise is still the placeholder)"
        )
    else:
        if run.kind == "ok":
            run = CaseRun("ok", _typed_unsupported(run.output))
        msg = judge_run(ex, run, copy.deepcopy(case), lambda: cache.get(ex, index, case))
    n_visible = sum(1 for c in task.cases if not c.hidden)
    if msg:
        # Cases run visible first: a hidden failure means every visible test passed.
        if hidden and n_visible:
            msg = f"passes the visible tests but fails hidden ones: {label}: {msg}"
        else:
            msg = f"{label}: {msg}"
        outcome.decide(status, msg)
    elif index == len(task.cases) - 1:
        n_hidden = len(task.cases) - n_visible
        outcome.decide(
            PASSED, f"passed all {len(task.cases)} tests ({n_visible} visible, {n_hidden} hidden)"
        )


def _score_exercise(job: Job, ex: Exercise, task: Task | None) -> ExerciseResult:
    sub = job.submission
    cell = sub.exercises.get(ex.id)
    if cell is None:
        return _failed(
            ex,
            f"not found: no cell holds exercise {ex.id} or defines `{ex.name}` "
            "(was the cell deleted, or the function renamed?)",
        )
    static = job.static.get(ex.id, [])
    if static:
        more = f" (and {len(static) - 1} more)" if len(static) > 1 else ""
        return _failed(ex, f"{static[0]}{more} - not allowed; write it yourself")
    setup_patches = [p for c in sub.setup for p in job.cell_patches.get(c.index, [])]
    if setup_patches:
        return _failed(
            ex,
            f"a setup cell patches {setup_patches[0]} - patching numpy or torch is not allowed",
        )
    if job.cell_patches.get(cell.index):
        return _failed(
            ex,
            f"the exercise cell patches {job.cell_patches[cell.index][0]} - patching numpy or "
            "torch is not allowed",
        )
    outcome = job.outcomes.get(ex.id)
    cell_error = job.cell_errors.get(cell.index)
    if outcome is None or task is None:
        return _failed(ex, "the grader could not run this exercise")
    calls = forbidden_calls(ex, outcome.calls)
    if calls:
        what = ", ".join(calls[:2])
        return _failed(
            ex, f"calls {what} while running - not allowed; write the computation yourself"
        )
    if outcome.patched:
        return _failed(
            ex,
            f"{ex.name} patches {outcome.patched[0]} while running - patching numpy or "
            "torch is not allowed",
        )
    if outcome.tampered:
        return _failed(ex, f"{ex.name} switches off the grader's call trap (sys.setprofile)")
    if outcome.died is not None:
        return _failed(ex, f"{ex.name} {outcome.died}")
    if outcome.missing:
        if cell_error and cell_error.startswith("NotImplementedError"):
            # The placeholder sits in a class body, so the cell itself raises.
            return _result(ex, NOT_STARTED, _not_attempted(ex))
        if cell_error:
            return _failed(ex, f"the exercise cell failed: {cell_error}")
        return _failed(ex, f"the exercise cell does not define `{ex.name}` (was it renamed?)")
    if outcome.status is None:
        return _failed(ex, "the grader could not run this exercise")
    feedback = outcome.feedback
    if outcome.status != PASSED:
        if cell_error:
            feedback += f"; the exercise cell also raised {cell_error}"
        setup_errors = [
            f"cell {c.index}: {job.cell_errors[c.index]}"
            for c in sub.setup
            if c.index in job.cell_errors
        ]
        if setup_errors:
            feedback += f"; note: a setup cell failed ({setup_errors[0]})"
    return _result(ex, outcome.status, feedback)


def score_job(job: Job) -> SubmissionResult:
    """The grade of a finished job: one :class:`ExerciseResult` per exercise, in order."""
    tasks = {t.exercise_id: t for t in job.tasks}
    sub = job.submission
    result = SubmissionResult(str(sub.path), sub.lesson or "?")
    if sub.how and sub.how != "metadata":
        result.note = f"lesson recognised from {sub.how} (the notebook metadata was missing)"
    for ex in job.exercises:
        result.exercises.append(_score_exercise(job, ex, tasks.get(ex.id)))
    return result


def score_unreadable(sub: Any, exercises: list[Exercise], reason: str = "") -> SubmissionResult:
    """A notebook that could not be read (or whose lesson is unknown): 0 for everything."""
    lesson = sub.lesson or "?"
    if reason:
        pass  # the caller's (a grader error)
    elif sub.problem:
        reason = sub.problem
    elif sub.lesson:
        reason = f"lesson {sub.lesson} has no graded exercises"
    else:
        reason = (
            "could not tell which lesson this is "
            "(no course metadata, exercise ids or known function names)"
        )
    result = SubmissionResult(str(sub.path), lesson, note=line(reason))
    for ex in exercises:
        result.exercises.append(_failed(ex, f"not graded: {reason}"))
    return result
