"""Which test cases an exercise runs, and how a verdict names them.

The in-notebook check runs the *visible* cases, drawn with a fixed seed. The grader runs the
visible cases, then the *hidden* ones, drawn from the grader's seed and the exercise's
``seed_key`` (its seed group, else its id): the same seed gives the same tests (and scores),
another seed other tests, and ``assert_passes(..., hidden_seed=N)`` (nbgrader's hidden tests)
runs exactly the hidden tests of ``python -m course_utils.grade --seed N``.
"""

from __future__ import annotations

import zlib
from typing import Literal, NamedTuple

import numpy as np

from .core import Case, Exercise

__all__ = [
    "VISIBLE_SEED",
    "LabelledCase",
    "visible_cases",
    "hidden_cases",
    "labelled",
    "grading_cases",
]

VISIBLE_SEED = 1234


class LabelledCase(NamedTuple):
    """One case as a verdict names it."""

    label: str  # "visible test 2 of 3 (x of shape (4, 5))"
    case: Case
    hidden: bool


def visible_cases(ex: Exercise) -> list[Case]:
    """The cases the in-notebook check runs (the same on every machine)."""
    return ex.cases(np.random.default_rng(VISIBLE_SEED), False)


def hidden_cases(ex: Exercise, seed: int) -> list[Case]:
    """The grader's hidden cases for ``seed``: randomised shapes and values from a generator
    seeded with ``[seed, crc32(ex.seed_key)]``, so exercises sharing a seed group share them."""
    return ex.cases(np.random.default_rng([seed, zlib.crc32(ex.seed_key.encode())]), True)


def labelled(cases: list[Case], kind: Literal["", "visible", "hidden"] = "") -> list[LabelledCase]:
    """Name each case "KIND test I of N (its label)"; ``kind="hidden"`` marks them hidden."""
    prefix = f"{kind} " if kind else ""
    return [
        LabelledCase(
            f"{prefix}test {i} of {len(cases)}" + (f" ({case.label})" if case.label else ""),
            case,
            kind == "hidden",
        )
        for i, case in enumerate(cases, 1)
    ]


def grading_cases(ex: Exercise, seed: int) -> list[LabelledCase]:
    """What the grader runs for ``ex``: the visible cases, then the hidden ones for ``seed``."""
    return labelled(visible_cases(ex), "visible") + labelled(hidden_cases(ex, seed), "hidden")
