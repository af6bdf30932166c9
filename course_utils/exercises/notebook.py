"""The learner's side: ``check(id, obj)`` runs the visible tests and shows one verdict;
``hint(id)`` reveals the next hint.

A check never raises because of the learner's code (an exception, ``sys.exit()``, a NaN, a
wrong type all become a verdict), so it cannot stop the kernel; only an interrupt
(the stop button) goes through.
"""

from __future__ import annotations

import dataclasses
import html
import linecache
import sys
import traceback
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .core import Exercise
from .registry import get_exercise

__all__ = [
    "Verdict",
    "verify",
    "check",
    "hint",
    "reset_hints",
    "describe_exception",
    "VISIBLE_SEED",
    "assert_passes",
]

VISIBLE_SEED = 1234
_PACKAGE_DIR = str(Path(__file__).resolve().parents[1])
_MAX_MESSAGE = 300
_hints_shown: dict[str, int] = {}


@dataclass
class Verdict:
    """The outcome of a check: ``status`` is "passed", "failed" or "not started"."""

    exercise_id: str
    status: str
    message: str

    @property
    def passed(self) -> bool:
        return self.status == "passed"

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


def _is_learner_frame(filename: str) -> bool:
    if filename.startswith(_PACKAGE_DIR):
        return False
    return not any(part in filename for part in ("site-packages", "/lib/python", "<frozen"))


def _one_line(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _MAX_MESSAGE else text[: _MAX_MESSAGE - 3] + "..."


def describe_exception(exc: BaseException) -> str:
    """``TypeError: message (in f, line 7: x_hat = ...)`` without the traceback wall.

    The location is the last frame in the learner's own code (frames of course_utils,
    numpy, torch are skipped), so the line shown is one the learner wrote.
    """
    if isinstance(exc, SystemExit):
        return (
            "SystemExit: sys.exit() or exit() was called, which stops the kernel - return instead"
        )
    if isinstance(exc, SyntaxError):
        where = f" (line {exc.lineno}: {exc.text.strip()})" if exc.text else f" (line {exc.lineno})"
        return _one_line(f"{type(exc).__name__}: {exc.msg}") + where
    text = _one_line(f"{type(exc).__name__}: {exc}".strip())
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if _is_learner_frame(f.filename)]
    if frames:
        f = frames[-1]
        line = (f.line or linecache.getline(f.filename, f.lineno or 0)).strip()
        loc = f"in {f.name}, line {f.lineno}"
        text += f" ({loc}: {_one_line(line)})" if line else f" ({loc})"
    return text


def _not_callable_message(ex: Exercise, obj: Any) -> str:
    return (
        f"expected your {ex.name} itself, got a {type(obj).__name__} - write "
        f'check("{ex.id}", {ex.name}) without calling {ex.name}'
    )


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
            return Verdict(str(exercise), "failed", str(e.args[0]))
    if obj is None:
        return Verdict(ex.id, "failed", f"got None instead of your {ex.name}")
    if not callable(obj):
        return Verdict(ex.id, "failed", _not_callable_message(ex, obj))
    cases = ex.cases(np.random.default_rng(VISIBLE_SEED), False)
    for i, case in enumerate(cases, 1):
        label = f"test {i} of {len(cases)}" + (f" ({case.label})" if case.label else "")
        try:
            # NaN and inf are reported by the comparison in plain words; numpy's
            # RuntimeWarnings on top would only add noise.
            with warnings.catch_warnings(), np.errstate(all="ignore"):
                warnings.simplefilter("ignore")
                got = ex.run(obj, case)
        except NotImplementedError:
            return Verdict(
                ex.id,
                "not started",
                f"{ex.name} still holds the placeholder: replace the "
                f"`raise NotImplementedError` line with your code.",
            )
        except KeyboardInterrupt:
            raise  # the learner pressed stop: let the kernel interrupt
        except BaseException as e:  # noqa: BLE001 - any learner error becomes a verdict
            return Verdict(ex.id, "failed", f"{label}: raised {describe_exception(e)}")
        try:
            with warnings.catch_warnings(), np.errstate(all="ignore"):
                warnings.simplefilter("ignore")
                msg = ex.judge(got, case)
        except Exception as e:  # a malformed output that even the comparison chokes on
            msg = f"could not compare your output: {describe_exception(e)}"
        if msg:
            return Verdict(ex.id, "failed", f"{label}: {msg}")
    return Verdict(
        ex.id,
        "passed",
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
    else:
        from ..grading.grader import make_task  # the grader's one derivation of hidden cases

        cases = [case for _, case, hidden in make_task(ex, hidden_seed).cases if hidden]
        verdict = verify(dataclasses.replace(ex, cases=lambda rng, hidden: cases), obj)
        message = (
            f"all {len(cases)} hidden tests pass"
            if verdict.passed
            else f"hidden {verdict.message}"
            if verdict.status == "failed"
            else verdict.message
        )
        verdict = Verdict(ex.id, verdict.status, message)
    if not verdict.passed:
        raise AssertionError(str(verdict))  # the error shows the verdict: no display too
    _show(verdict)
    verdict._shown = True  # type: ignore[attr-defined]
    return verdict
