"""The answers' outputs for each case, computed once per grading run, in the grader.

Only the grader's own process ever holds them: the sandboxed children are forked from a
zygote that never imported an answer, and cases are sent to them one at a time.
"""

from __future__ import annotations

import copy
from typing import Any

from ..exercises.core import Case, Exercise

__all__ = ["ExpectedCache"]


class ExpectedCache:
    """``(exercise id, case index) -> the answer's output`` for the cases of a run."""

    def __init__(self) -> None:
        self._values: dict[tuple[str, int], Any] = {}

    def get(self, ex: Exercise, index: int, case: Case) -> Any:
        """The answer's output for case ``index`` of ``ex`` (a private copy each call, so a
        ``diagnose`` that modifies it cannot spoil the next submission's comparison)."""
        key = (ex.id, index)
        if key not in self._values:
            self._values[key] = ex.expected(copy.deepcopy(case))
        return copy.deepcopy(self._values[key])
