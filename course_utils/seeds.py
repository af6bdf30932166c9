"""The one place every seed of the course passes through.

Lessons and experiments write literal seeds (``seed=0``, ``seeds=(0, 1, 2)``); the generators
are created here, from ``seed + offset``. The offset is 0 unless the environment variable
``COURSE_SEED_OFFSET`` says otherwise. The claims audit (``python -m course_utils.claims``)
re-runs every notebook with several offsets to see whether each claim holds on other seeds;
because every generator a claim depends on is created by a function of this module, one
variable shifts them all (``tests/test_seeds.py`` checks that no other code creates one).

Deliberately *not* shifted: the fixed 8,000 / 2,000 split of MNIST (the data set is part of
the course, not of an experiment), the exercises' test cases and the grader's seeds.
"""

from __future__ import annotations

import os
import random
from collections.abc import Sequence

import numpy as np
import torch

__all__ = ["ENV", "offset", "shifted", "set_seed", "torch_seed", "generator", "rng"]

ENV = "COURSE_SEED_OFFSET"


def offset() -> int:
    """The current seed offset: ``int($COURSE_SEED_OFFSET)``, 0 when unset or empty."""
    text = os.environ.get(ENV, "").strip()
    if not text:
        return 0
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"{ENV} must be an integer, got {text!r}") from None


def shifted(seed: int) -> int:
    """``seed + offset()``: the seed a generator is actually created with."""
    return int(seed) + offset()


def set_seed(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators (with the offset)."""
    s = shifted(seed)
    random.seed(s)
    np.random.seed(s % 2**32)
    torch.manual_seed(s)


def torch_seed(seed: int) -> None:
    """Seed torch's global generator only (with the offset): ``torch.manual_seed``."""
    torch.manual_seed(shifted(seed))


def generator(seed: int) -> torch.Generator:
    """A fresh ``torch.Generator`` seeded with ``seed`` (plus the offset)."""
    return torch.Generator().manual_seed(shifted(seed))


def rng(seed: int | Sequence[int]) -> np.random.Generator:
    """A fresh NumPy ``Generator``: ``np.random.default_rng(seed)`` with the offset.

    ``seed`` may be a sequence of ints (independent streams ``[seed, layer, ...]``): the
    offset is added to its first entry.
    """
    if isinstance(seed, (int, np.integer)):
        return np.random.default_rng(shifted(int(seed)))
    parts = [int(s) for s in seed]
    if not parts:
        raise ValueError("rng() needs a seed or a non-empty sequence of ints")
    return np.random.default_rng([shifted(parts[0]), *parts[1:]])
