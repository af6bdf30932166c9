"""The learner's side: ``check(id, obj)`` runs the visible tests and shows one verdict;
``hint(id)`` reveals the next hint.

A check never raises because of the learner's code (an exception, ``sys.exit()``, a NaN, a
wrong type all become a verdict), so it cannot stop the kernel; only an interrupt
(the stop button) goes through.
"""

from __future__ import annotations

import html
import sys
from dataclasses import dataclass
from typing import Any

from .cases import VISIBLE_SEED, LabelledCase, hidden_cases, labelled, visible_cases
from .core import Exercise
from .registry import get_exercise
from .running import FAILED, NOT_STARTED, PASSED, Status, judge_run, run_case

__all__ = [
    "Verdict",
    "verify",
    "check",
    "hint",
    "reset_hints",
    "assert_passes",
    "VISIBLE_SEED",  # the seed of the visible tests check runs (defined in .cases)
]

_hints_shown: dict[str, int] = {}


@dataclass
class Verdict:
    """The outcome of a check: ``status`` is "passed", "failed" or "not started"."""

    exercise_id: str
    status: Status
    message: str

    @property
    def passed(self) -> bool:
        return self.status == PASSED

    def __str__(self) -> str:
        mark = {"passed": "PASSED", "failed": "FAILED", "not started": "NOT STARTED"}[self.status]
        return f"[{mark}] {self.exercise_id}: {self.message}"

    def _repr_html_(self) -> str:
        colour = {"passed": "#1a7f37", "failed": "#b35900", "not started": "#57606a"}[self.status]
        icon = {"passed": "&#10004;", "failed": "&#10008;", "not started": "&#9675;"}[self.status]
        return (
            f'<div style="border-left:4px solid {colour};padding:4px 8px;font-family:sans-serif">'
            f'<b style="color:{colour}">{icon} {self.status.upper()}</b> '
            f"<code>{html.escape(self.exercise_id)}</code>: {html.escape(self.message)}</div>"
        )

    def __repr__(self) -> str:
        return str(self)

    def _ipython_display_(self) -> None:
        # check() has already shown this verdict; showing the returned value again as the
        # cell's result would print it twice.
        if getattr(self, "_shown", False):
            self._shown = False
            return
        _show(self)


def _show(verdict: Verdict) -> None:
    """Display a verdict: coloured HTML in a notebook, one text line elsewhere."""
    shell = None
    if "IPython" in sys.modules:
        try:
            from IPython import get_ipython

            shell = get_ipython()
        except Exception:  # an odd IPython install must not break the check
            shell = None
    if shell is not None and getattr(shell, "kernel", None) is not None:
        from IPython.display import display

        display({"text/plain": str(verdict), "text/html": verdict._repr_html_()}, raw=True)
    else:
        print(verdict, flush=True)


def _not_callable_message(ex: Exercise, obj: Any) -> str:
    return (
        f"expected your {ex.name} itself, got a {type(obj).__name__} - write "
        f'check("{ex.id}", {ex.name}) without calling {ex.name}'
    )


def _object_problem(ex: Exercise, obj: Any) -> Verdict | None:
    """A failed verdict when ``obj`` cannot be the learner's function or class."""
    if obj is None:
        return Verdict(ex.id, FAILED, f"got None instead of your {ex.name}")
    if not callable(obj):
        return Verdict(ex.id, FAILED, _not_callable_message(ex, obj))
    return None


def _first_failure(ex: Exercise, obj: Any, cases: list[LabelledCase]) -> Verdict | None:
    """The verdict of the first case that does not pass, or None when all of them pass."""
    for label, case, _ in cases:
        run = run_case(ex.run, obj, case)
        if run.kind == "placeholder":
            return Verdict(
                ex.id,
                NOT_STARTED,
                f"{ex.name} still holds the placeholder: replace the "
                f"`raise NotImplementedError` line with your code.",
            )
        msg = judge_run(ex, run, case)
        if msg:
            return Verdict(ex.id, FAILED, f"{label}: {msg}")
    return None


def verify(exercise: str | Exercise, obj: Any) -> Verdict:
    """Run the visible tests of an exercise on ``obj``; never raises for learner errors.

    Args:
        exercise: an exercise id (``"03.batch_norm_forward"``) or an :class:`Exercise`.
        obj: the learner's function or class.
    Returns:
        The :class:`Verdict` of the first failing visible test, or "passed".
    """
    if isinstance(exercise, Exercise):
        ex = exercise
    else:
        try:
            ex = get_exercise(exercise)
        except KeyError as e:
            return Verdict(str(exercise), FAILED, str(e.args[0]))
    cases = labelled(visible_cases(ex))
    failed = _object_problem(ex, obj) or _first_failure(ex, obj, cases)
    return failed or Verdict(
        ex.id,
        PASSED,
        f"all {len(cases)} visible tests pass. Worth {ex.points} point"
        f"{'s' if ex.points != 1 else ''}; the grader also runs hidden tests.",
    )


def check(exercise_id: str, obj: Any) -> Verdict:
    """Check an exercise against the visible tests and show one clear verdict.

    The verdict is shown at once (so a check that is not the last line of its cell still
    shows), and returned for code that wants ``check(...).passed``.

    Args:
        exercise_id: for example ``"03.batch_norm_forward"``.
        obj: the function or class you wrote (not its result).
    Returns:
        A :class:`Verdict`.
    """
    verdict = verify(exercise_id, obj)
    _show(verdict)
    verdict._shown = True  # type: ignore[attr-defined]
    return verdict


def hint(exercise_id: str) -> None:
    """Reveal one more hint for an exercise and show every hint revealed so far.

    Hints go from a nudge to the idea to the formula; the first never gives the answer away.
    ``reset_hints(exercise_id)`` starts again from the first.
    """
    try:
        ex = get_exercise(exercise_id)
    except KeyError as e:
        print(e.args[0])
        return
    if not ex.hints:
        print(f"{exercise_id} has no hints.")
        return
    total = len(ex.hints)
    before = _hints_shown.get(exercise_id, 0)
    shown = min(before + 1, total)
    _hints_shown[exercise_id] = shown
    lines = [f"Hints for {exercise_id} ({shown} of {total} shown):"]
    lines += [f"  {k}. {text}" for k, text in enumerate(ex.hints[:shown], 1)]
    if before >= total:
        lines.append(
            f"That was the last one. Still stuck? Re-read the formula above the exercise, "
            f"print the shapes of your intermediate results, and run check() again: it names "
            f'the first thing that is wrong. reset_hints("{exercise_id}") starts the hints over.'
        )
    elif shown < total:
        lines.append(f'Call hint("{exercise_id}") again for the next hint.')
    print("\n".join(lines), flush=True)


def reset_hints(exercise_id: str | None = None) -> None:
    """Start the hints of one exercise (or of all) from the first again."""
    if exercise_id is None:
        _hints_shown.clear()
    else:
        _hints_shown.pop(exercise_id, None)


def assert_passes(exercise_id: str, obj: Any, hidden_seed: int | None = None) -> Verdict:
    """:func:`check` for autograders (nbgrader's test cells): raises unless the tests pass.

    Shows a passing verdict like :func:`check`; otherwise raises ``AssertionError`` carrying
    the verdict, so an autograder that scores a test cell by whether it raises gives a wrong
    or unfinished answer no points.

    Args:
        exercise_id: for example ``"03.batch_norm_forward"``.
        obj: the learner's function or class.
        hidden_seed: None runs the visible tests; an int runs the hidden tests instead, the
            same ones ``python -m course_utils.grade --seed hidden_seed`` draws.
    Returns:
        The passing :class:`Verdict`.
    Raises:
        AssertionError: the exercise did not pass (or the id is unknown).
    """
    try:
        ex = get_exercise(exercise_id)
    except KeyError as e:
        raise AssertionError(str(e.args[0])) from None
    if hidden_seed is None:
        verdict = verify(ex, obj)
    else:  # the hidden tests the grader draws from this seed
        cases = labelled(hidden_cases(ex, hidden_seed), "hidden")
        failed = _object_problem(ex, obj) or _first_failure(ex, obj, cases)
        verdict = failed or Verdict(ex.id, PASSED, f"all {len(cases)} hidden tests pass")
    if not verdict.passed:
        raise AssertionError(str(verdict))  # the error shows the verdict: no display too
    _show(verdict)
    verdict._shown = True  # type: ignore[attr-defined]
    return verdict
