"""Running one test case on a learner's object, and judging what it gave: the one case runner
of the in-notebook check (``check``) and of the grader.

The two halves sit on either side of the grader's trust boundary:

* **running** (:func:`run_case`) needs only the learner's object, the exercise's ``run`` driver
  and the case. It runs in the learner's kernel for ``check``, and in the grader's sandbox,
  which sends the :class:`CaseRun` back as plain data (:meth:`CaseRun.to_wire`);
* **judging** (:func:`judge_run`) needs the answers' outputs. It runs in the learner's kernel
  for ``check`` and in the grader's own process, never in the sandbox.

Both run quietly (:func:`quietly`): NaN and inf are reported by the comparison in plain words,
and numpy's RuntimeWarnings on top would only add noise. A learner's error becomes one line
(:func:`describe_exception`). An exercise ends in one of three statuses: passed, failed, or
not started (its ``raise NotImplementedError`` placeholder is still there).
"""

from __future__ import annotations

import contextlib
import linecache
import traceback
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

if TYPE_CHECKING:
    from .core import Case, Exercise

__all__ = [
    "Status",
    "PASSED",
    "FAILED",
    "NOT_STARTED",
    "quietly",
    "one_line",
    "describe_exception",
    "CaseRun",
    "run_case",
    "judge_run",
]

Status = Literal["passed", "failed", "not started"]
PASSED: Status = "passed"
FAILED: Status = "failed"
NOT_STARTED: Status = "not started"  # the placeholder is still there

_PACKAGE_DIR = str(Path(__file__).resolve().parents[1])
_MAX_LINE = 300


@contextlib.contextmanager
def quietly() -> Iterator[None]:
    """No warnings and no numpy floating-point messages inside the block."""
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        yield


def one_line(text: str, limit: int = _MAX_LINE) -> str:
    """``text`` on one line (white space folded), cut to ``limit`` characters."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ------------------------------------------------------------------------------------------
# running: the learner's kernel and the grader's sandbox
# ------------------------------------------------------------------------------------------


def _is_learner_frame(filename: str) -> bool:
    if filename.startswith(_PACKAGE_DIR):
        return False
    return not any(part in filename for part in ("site-packages", "/lib/python", "<frozen"))


def _describe(exc: BaseException) -> str:
    if isinstance(exc, SystemExit):
        return (
            "SystemExit: sys.exit() or exit() was called, which stops the kernel - return instead"
        )
    if isinstance(exc, SyntaxError):
        where = f" (line {exc.lineno}: {exc.text.strip()})" if exc.text else f" (line {exc.lineno})"
        return one_line(f"{type(exc).__name__}: {exc.msg}") + where
    text = one_line(f"{type(exc).__name__}: {exc}".strip())
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if _is_learner_frame(f.filename)]
    if frames:
        f = frames[-1]
        line = (f.line or linecache.getline(f.filename, f.lineno or 0)).strip()
        loc = f"in {f.name}, line {f.lineno}"
        text += f" ({loc}: {one_line(line)})" if line else f" ({loc})"
    return text


def describe_exception(exc: BaseException) -> str:
    """``TypeError: message (in f, line 7: x_hat = ...)`` without the traceback wall.

    The location is the last frame in the learner's own code (frames of course_utils,
    numpy, torch are skipped), so the line shown is one the learner wrote. Never raises,
    even for an exception whose ``str()`` does.
    """
    try:
        return _describe(exc)
    except Exception:  # noqa: BLE001 - a hostile exception: say what little is safe
        try:
            return one_line(f"{type(exc).__name__}: {exc}")
        except Exception:  # noqa: BLE001
            return type(exc).__name__


@dataclass(frozen=True)
class CaseRun:
    """What running one case gave.

    Attributes:
        kind: ``"ok"`` (``output`` holds the driver's outputs), ``"placeholder"`` (the object
            raised ``NotImplementedError``), ``"raised"`` (``error`` says what, in one line) or
            ``"missing"`` (the grader's sandbox found no object of the exercise's name).
    """

    kind: Literal["ok", "placeholder", "raised", "missing"]
    output: Any = None
    error: str = ""

    def to_wire(self) -> tuple:
        """Plain data for the sandbox's channel: ``("ok", output)``, ``("raised", error)``,
        ``("placeholder",)`` or ``("missing",)``."""
        if self.kind == "ok":
            return ("ok", self.output)
        if self.kind == "raised":
            return ("raised", self.error)
        return (self.kind,)

    @classmethod
    def from_wire(cls, value: Any) -> CaseRun:
        """The inverse of :meth:`to_wire`. Raises ValueError for anything else."""
        if isinstance(value, tuple) and value:
            kind, rest = value[0], value[1:]
            if kind == "ok" and len(rest) == 1:
                return cls("ok", output=rest[0])
            if kind == "raised" and len(rest) == 1 and isinstance(rest[0], str):
                return cls("raised", error=rest[0])
            if kind in ("placeholder", "missing") and not rest:
                return cls(kind)
        raise ValueError("a malformed result")


def run_case(
    run: Callable[[Any, Case], Any], obj: Any, case: Case, *, interruptible: bool = True
) -> CaseRun:
    """Run the driver ``run(obj, case)`` quietly; never raises because of the learner's code.

    Args:
        run: the exercise's ``run`` driver. obj: the learner's function or class.
        interruptible: let ``KeyboardInterrupt`` through (the stop button of a kernel); in the
            grader's sandbox it is one more error of the learner's code.
    """
    try:
        with quietly():
            output = run(obj, case)
    except NotImplementedError:
        return CaseRun("placeholder")
    except KeyboardInterrupt as e:
        if interruptible:
            raise
        return CaseRun("raised", error=describe_exception(e))
    except BaseException as e:  # noqa: BLE001 - any learner error (SystemExit too) is a result
        return CaseRun("raised", error=describe_exception(e))
    return CaseRun("ok", output)


# ------------------------------------------------------------------------------------------
# judging: the learner's kernel and the grader's own process, never the sandbox
# ------------------------------------------------------------------------------------------


def judge_run(
    ex: Exercise,
    run: CaseRun,
    case: Case,
    expected: Callable[[], Any] | None = None,
) -> str | None:
    """What is wrong with a case that raised or gave an output; None when it passed.

    Args:
        ex: the exercise. run: a ``"raised"`` or ``"ok"`` run (the caller words
            ``"placeholder"`` and ``"missing"`` itself).
        case: the case it ran (``ex.judge`` may read it).
        expected: gives the answer's outputs for ``case`` (the grader's cache); None computes
            them from ``case`` (or, for an exercise with ``assess``, needs none).
    """
    if run.kind == "raised":
        return f"raised {run.error}"
    if run.kind != "ok":
        raise ValueError(f"cannot judge a {run.kind!r} run")
    try:
        with quietly():
            if expected is None or ex.assess is not None:
                return ex.judge(run.output, case)
            return ex.judge(run.output, case, expected())
    except Exception as e:  # a malformed output that even the comparison chokes on
        return f"could not compare your output: {describe_exception(e)}"
