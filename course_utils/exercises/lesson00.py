"""Lesson 00 (start here): a warm-up exercise that shows how checks and hints work."""

from __future__ import annotations

import numpy as np

from .core import Case, Exercise, answer
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


register(
    Exercise(
        id="00.standardize_columns",
        name="standardize_columns",
        points=1,
        title="Standardize each column of an (N, D) array to mean 0 and variance 1",
        reference=answer("00", "standardize_columns"),
        cases=_cases,
        hints=(
            "Reduce over the batch axis: x.mean(axis=0) has shape (D,).",
            "Use the biased variance ((x - mean)**2).mean(axis=0), as batch norm does.",
            "Divide by np.sqrt(var + eps), so a constant column gives zeros instead of NaN.",
        ),
    )
)
