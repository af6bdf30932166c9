"""Timing that survives a busy machine: CPU time, interleaved repeats, compared by medians.

A timing claim ("A is faster than B") measured once can flip when another process takes the
CPU for a moment. Two things keep it honest here:

- the clock is the CPU time of the calling thread (``time.thread_time``) where the platform
  measures it finely, so time spent waiting while another process runs is not counted (the
  course runs torch on one thread, ``course_utils.config``, so the work happens on this
  thread); elsewhere (Windows' thread clock ticks every 15.6 ms) it is wall time;
- the candidates run in turn (A, B, A, B, ...), so what the clock still sees of a busy
  period (shared caches and memory bandwidth) hits all of them alike, and each one's median
  over the rounds is compared; a claim then asserts a ratio of medians with a margin
  (``course_utils.claim``).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import numpy as np

__all__ = ["CLOCK", "median_times", "time_samples"]


def _pick_clock() -> Callable[[], float]:
    try:
        if time.get_clock_info("thread_time").resolution <= 1e-6:
            return time.thread_time
    except (AttributeError, ValueError, OSError):  # no thread clock on this platform
        pass
    return time.perf_counter


CLOCK: Callable[[], float] = _pick_clock()
"""The clock the course times with: this thread's CPU time where it is fine-grained."""


def time_samples(
    fns: dict[str, Callable[[], object]], repeat: int = 15, number: int = 3, warmup: int = 1
) -> dict[str, np.ndarray]:
    """Seconds per call of each function, one sample per round, the functions taking turns.

    Args:
        fns: name -> zero-argument callable.
        repeat: rounds; in each round every function runs ``number`` times, in turn.
        number: calls per function per round (their mean is one sample).
        warmup: untimed rounds first (caches, lazy initialisation).
    Returns:
        name -> array of shape (repeat,): seconds per call in each round (:data:`CLOCK`).
    """
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeat):
        for name, fn in fns.items():
            t0 = CLOCK()
            for _ in range(number):
                fn()
            samples[name].append((CLOCK() - t0) / number)
    return {name: np.array(s) for name, s in samples.items()}


def median_times(
    fns: dict[str, Callable[[], object]], repeat: int = 15, number: int = 3, warmup: int = 1
) -> dict[str, float]:
    """Median seconds per call of each function over ``repeat`` interleaved rounds.

    Same arguments as :func:`time_samples`. Returns name -> median seconds per call.
    """
    samples = time_samples(fns, repeat=repeat, number=number, warmup=warmup)
    return {name: float(statistics.median(s)) for name, s in samples.items()}
