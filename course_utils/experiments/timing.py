"""Timing that survives a busy machine: interleaved repeats, compared by their medians.

A timing claim ("A is faster than B") measured once can flip when another process takes the
CPU for a moment. :func:`median_times` runs the candidates in turn (A, B, A, B, ...), so a
slow period hits all of them alike, and reports each one's median over the repeats; a claim
then asserts a ratio of medians with a margin (``course_utils.claim``).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

__all__ = ["median_times"]


def median_times(
    fns: dict[str, Callable[[], object]], repeat: int = 15, number: int = 3, warmup: int = 1
) -> dict[str, float]:
    """Median over ``repeat`` rounds of each function's mean wall time, in seconds.

    Args:
        fns: name -> zero-argument callable.
        repeat: rounds; in each round every function runs ``number`` times, in turn.
        number: calls per function per round (their mean is one sample).
        warmup: untimed rounds first (caches, lazy initialisation).
    Returns:
        name -> median seconds per call.
    """
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeat):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            for _ in range(number):
                fn()
            samples[name].append((time.perf_counter() - t0) / number)
    return {name: statistics.median(s) for name, s in samples.items()}
