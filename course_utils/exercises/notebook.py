"""The learner's side: ``check(id, obj)`` runs the visible tests and shows one verdict;
``hint(id)`` reveals the next hint."""

from __future__ import annotations

import html
import linecache
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .registry import get_exercise

__all__ = ["Verdict", "verify", "check", "hint", "describe_exception", "VISIBLE_SEED"]

VISIBLE_SEED = 1234
_PACKAGE_DIR = str(Path(__file__).resolve().parents[1])
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
        return (f'<div style="border-left:4px solid {colour};padding:4px 8px;font-family:sans-serif">'
                f'<b style="color:{colour}">{icon} {self.status.upper()}</b> '
                f"<code>{html.escape(self.exercise_id)}</code>: {html.escape(self.message)}</div>")

    def __repr__(self) -> str:
        return str(self)


def _is_learner_frame(filename: str) -> bool:
    if filename.startswith(_PACKAGE_DIR):
        return False
    return not any(part in filename for part in ("site-packages", "/lib/python", "<frozen"))


def describe_exception(exc: BaseException) -> str:
    """``TypeError: message (line 7: x_hat = ...)`` without the traceback wall."""
    text = f"{type(exc).__name__}: {exc}".strip()
    if len(text) > 300:
        text = text[:300] + "..."
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if _is_learner_frame(f.filename)]
    if frames:
        f = frames[-1]
        line = (f.line or linecache.getline(f.filename, f.lineno)).strip()
        text += f" (in {f.name}, line {f.lineno}: {line})" if line else f" (in {f.name}, line {f.lineno})"
    return text


def verify(exercise_id: str, obj: Any) -> Verdict:
    """Run the visible tests of ``exercise_id`` on ``obj``; never raises for learner errors."""
    try:
        ex = get_exercise(exercise_id)
    except KeyError as e:
        return Verdict(exercise_id, "failed", str(e.args[0]))
    if obj is None:
        return Verdict(exercise_id, "failed", f"got None instead of your {ex.name}")
    cases = ex.cases(np.random.default_rng(VISIBLE_SEED), False)
    for i, case in enumerate(cases, 1):
        label = f"test {i} of {len(cases)}" + (f" ({case.label})" if case.label else "")
        try:
            got = ex.run(obj, case)
        except NotImplementedError:
            return Verdict(exercise_id, "not started",
                           f"{ex.name} still holds the placeholder: replace the "
                           f"`raise NotImplementedError` line with your code.")
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as e:  # noqa: BLE001 - any learner error becomes a verdict
            return Verdict(exercise_id, "failed", f"{label}: raised {describe_exception(e)}")
        try:
            msg = ex.judge(got, case)
        except Exception as e:  # a malformed output that even the comparison chokes on
            msg = f"could not compare your output: {describe_exception(e)}"
        if msg:
            return Verdict(exercise_id, "failed", f"{label}: {msg}")
    return Verdict(exercise_id, "passed",
                   f"all {len(cases)} visible tests pass. Worth {ex.points} point"
                   f"{'s' if ex.points != 1 else ''}; the grader also runs hidden tests.")


def check(exercise_id: str, obj: Any) -> Verdict:
    """Check an exercise against the visible tests and show one clear verdict.

    Args:
        exercise_id: for example ``"03.batch_norm_forward"``.
        obj: the function or class you wrote.
    Returns:
        A :class:`Verdict` (shown in the notebook as a coloured line).
    """
    return verify(exercise_id, obj)


def hint(exercise_id: str) -> None:
    """Show the next hint for an exercise (one more each call)."""
    try:
        ex = get_exercise(exercise_id)
    except KeyError as e:
        print(e.args[0])
        return
    if not ex.hints:
        print(f"{exercise_id} has no hints.")
        return
    n = _hints_shown.get(exercise_id, 0)
    if n >= len(ex.hints):
        print(f"No more hints for {exercise_id} (all {len(ex.hints)} shown). "
              "Compare with the reference in course_utils.reference if you are stuck.")
        n = len(ex.hints) - 1
    else:
        _hints_shown[exercise_id] = n + 1
    print(f"Hint {n + 1} of {len(ex.hints)} for {exercise_id}: {ex.hints[n]}")
    sys.stdout.flush()
