"""Lesson 00 (start here): a warm-up exercise that shows how checks and hints work."""

from __future__ import annotations

import numpy as np

from .core import Case, Exercise, answer
from .mistakes import normalization_mistake
from .registry import register


def _cases(rng: np.random.Generator, hidden: bool) -> list[Case]:
    if not hidden:
        shapes = [(8, 3), (32, 5), (4, 1)]
    else:
        shapes = [(int(rng.integers(2, 64)), int(rng.integers(1, 12))) for _ in range(4)]
    cases = []
    for n, d in shapes:
        scale = rng.uniform(0.1, 100.0, size=d)
        shift = rng.uniform(-50.0, 50.0, size=d)
        x = rng.normal(size=(n, d)) * scale + shift
        cases.append(Case(args=(x,), label=f"x of shape ({n}, {d})"))
    const = np.full((5, 2), 3.0)
    const[:, 1] = rng.normal(size=5)
    cases.append(Case(args=(const,), label="a constant column"))
    return cases


def _diagnose(got, expected, case: Case) -> str | None:
    # name the usual mistakes: N - 1, eps misplaced or missing, the wrong axis
    return normalization_mistake(got, case.args[0], (0,), case.kwargs.get("eps", 1e-5))


register(
    Exercise(
        id="00.standardize_columns",
        name="standardize_columns",
        points=1,
        title="Standardize each column of an (N, D) array to mean 0 and variance 1",
        reference=answer("00", "standardize_columns"),
        cases=_cases,
        diagnose=_diagnose,
        hints=(
            "Each column is one feature. Which axis of the (N, D) array runs over the samples "
            "of one column? The mean and the variance you need have one value per column.",
            "Reduce over axis 0 (the results have shape (D,)) and use the biased variance: "
            "the mean of the squared deviations, dividing by N, not N - 1.",
            "Return (x - mean) / np.sqrt(var + eps): eps inside the square root turns a "
            "constant column into zeros instead of NaN.",
        ),
    )
)
