"""The reference's outputs for each case, computed once per grading run, in the grader.

Children are forked from the grader, so they start with a copy of this cache in memory.
:meth:`ExpectedCache.scrub` runs first thing in every child: it overwrites every cached array
(in the child's copy only; copy-on-write leaves the grader's intact) and drops the cache, so
learner code cannot fish the expected outputs out of its own memory.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np

from ..exercises.core import Case, Exercise

__all__ = ["ExpectedCache"]


def _wipe(value: Any, depth: int = 0) -> None:
    if depth > 32:
        return
    if isinstance(value, np.ndarray):
        if value.flags.writeable and value.dtype.kind in "biufc":
            value.fill(0)
        return
    torch = __import__("sys").modules.get("torch")
    if torch is not None and isinstance(value, torch.Tensor):
        with torch.no_grad():
            if value.dtype.is_floating_point or value.dtype.is_complex:
                value.detach().zero_()
        return
    if isinstance(value, dict):
        items = list(value.values())
    elif isinstance(value, (tuple, list)):
        items = list(value)
    else:
        return
    for v in items:
        _wipe(v, depth + 1)


class ExpectedCache:
    """``(exercise id, case index) -> the reference's output`` for the cases of a run."""

    def __init__(self) -> None:
        self._values: dict[tuple[str, int], Any] = {}

    def get(self, ex: Exercise, index: int, case: Case) -> Any:
        """The reference's output for case ``index`` of ``ex`` (a private copy each call,
        so a ``diagnose`` that modifies it cannot spoil the next submission's comparison)."""
        key = (ex.id, index)
        if key not in self._values:
            self._values[key] = ex.expected(copy.deepcopy(case))
        return copy.deepcopy(self._values[key])

    def scrub(self) -> None:
        """Overwrite and forget every cached value (called in a child, before learner code)."""
        for value in self._values.values():
            _wipe(value)
        self._values.clear()
