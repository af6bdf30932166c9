"""Name the common numeric mistakes of a normalization exercise instead of "wrong values".

Most wrong outputs of a normalization are one of a handful of mistakes: the unbiased variance
(dividing by N - 1), eps missing or outside the square root, dividing by the variance instead
of the standard deviation, statistics over the wrong axes, the scale and shift forgotten.
:func:`normalization_mistake` recomputes the normalization with each mistake and says which
one the learner's output matches; :func:`factor_mistake` needs only the expected output and
recognises a constant factor such as ``sqrt((N - 1) / N)`` (used by the generic comparison).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["normalize", "normalization_mistake", "factor_mistake"]


def normalize(
    x: np.ndarray,
    axes: Sequence[int],
    eps: float,
    ddof: int = 0,
    eps_mode: str = "inside",
    center: bool = True,
) -> np.ndarray:
    """``(x - mean) / sqrt(var + eps)`` with the statistics over ``axes`` (kept for broadcasting).

    Args:
        x: any shape. axes: the axes one statistic pools.
        ddof: 0 for the biased variance (what normalization layers use), 1 for the unbiased.
        eps_mode: ``"inside"`` (the right place), ``"outside"`` (``sqrt(var) + eps``),
            ``"none"`` (no eps), ``"variance"`` (divides by ``var + eps``, no square root).
        center: False skips the mean (RMS norm: the "variance" is the mean of squares).
    """
    x = np.asarray(x, dtype=np.float64)
    axes = tuple(a % x.ndim for a in axes)
    n = math.prod(x.shape[a] for a in axes)
    mean = x.mean(axes, keepdims=True) if center else 0.0
    dev = x - mean
    with np.errstate(all="ignore"):
        var = (dev * dev).sum(axes, keepdims=True) / max(n - ddof, 1)
        if eps_mode == "inside":
            return dev / np.sqrt(var + eps)
        if eps_mode == "outside":
            return dev / (np.sqrt(var) + eps)
        if eps_mode == "none":
            return dev / np.sqrt(var)
        if eps_mode == "variance":
            return dev / (var + eps)
    raise ValueError(f"eps_mode must be inside, outside, none or variance, got {eps_mode!r}")


def _close(a: Any, b: np.ndarray, atol: float, rtol: float) -> bool:
    try:
        a = np.asarray(a, dtype=np.float64)
    except (TypeError, ValueError):
        return False
    return a.shape == b.shape and bool(np.allclose(a, b, atol=atol, rtol=rtol, equal_nan=True))


def _axes_text(axes: Sequence[int]) -> str:
    return f"axis {axes[0]}" if len(axes) == 1 else f"axes {tuple(axes)}"


def normalization_mistake(
    got: Any,
    x: np.ndarray,
    axes: Sequence[int],
    eps: float,
    weight: Any = None,
    bias: Any = None,
    center: bool = True,
    other_axes: dict[str, Sequence[int]] | None = None,
    atol: float = 1e-10,
    rtol: float = 1e-8,
) -> str | None:
    """Which common mistake turns the right normalization of ``x`` into ``got``?

    Args:
        got: the learner's output (same shape as ``x``).
        x: the input; axes: the axes each statistic should pool; eps: the exercise's eps.
        weight, bias: the scale and shift applied after normalizing (broadcastable to x), or
            None. center: False for RMS norm (no mean subtraction).
        other_axes: wrong axes to try, ``{description: axes}`` ("that is batch norm": (0,));
            default: every single axis and the complement of ``axes``.
        atol, rtol: how closely ``got`` must match a variant. Tight by default: a variant
            computed in float64 matches the learner's float64 code to rounding, and a loose
            tolerance would mistake a right answer for a slip (eps barely changes the output).
    Returns:
        A sentence naming the mistake, or None when ``got`` matches none of them (or is right).
    """
    x = np.asarray(x, dtype=np.float64)
    axes = tuple(a % x.ndim for a in axes)
    w = 1.0 if weight is None else np.asarray(weight, dtype=np.float64)
    b = 0.0 if bias is None else np.asarray(bias, dtype=np.float64)

    def out(**kw) -> np.ndarray:
        return normalize(x, kw.pop("axes", axes), eps, center=center, **kw) * w + b

    if _close(got, out(), atol, rtol):
        return None
    right = "sqrt(var + eps)" if center else "sqrt(mean(x**2) + eps)"
    checks: list[tuple[np.ndarray, str]] = []
    if center:
        checks.append(
            (
                out(ddof=1),
                "your variance divides by N - 1 (the unbiased estimate, torch's default for "
                "tensor.var()); normalization divides by N: np.var(..., ddof=0) or "
                "tensor.var(..., unbiased=False)",
            )
        )
    checks += [
        (
            out(eps_mode="outside"),
            f"eps is added outside the square root; it belongs inside: {right}",
        ),
        (out(eps_mode="none"), f"eps is missing: divide by {right}, not by the square root alone"),
        (
            out(eps_mode="variance"),
            f"you divided by the variance; divide by the standard deviation, {right}",
        ),
    ]
    if weight is not None or bias is not None:
        checks.append(
            (
                normalize(x, axes, eps, center=center),
                "the normalization is right but the scale and shift are missing: multiply by "
                "gamma (weight) and add beta (bias) after normalizing",
            )
        )
    if other_axes is None:
        other_axes = {}
        complement = tuple(a for a in range(x.ndim) if a not in axes)
        for cand in [(a,) for a in range(x.ndim)] + [complement]:
            if cand and cand != axes and x.ndim > 1:
                other_axes.setdefault(f"over {_axes_text(cand)}", cand)
    for what, cand in other_axes.items():
        cand = tuple(a % x.ndim for a in cand)
        if cand != axes and math.prod(x.shape[a] for a in cand) > 1:
            checks.append(
                (
                    out(axes=cand),
                    f"statistics computed {what} instead of over {_axes_text(axes)} "
                    "(the wrong axis)",
                )
            )
    for variant, message in checks:
        if _close(got, variant, atol, rtol):
            return message
    return None


def _candidate_counts(shape: Sequence[int]) -> list[int]:
    """Products of every non-empty subset of the axes' sizes: the possible N of a statistic."""
    counts = set()
    for k in range(1, len(shape) + 1):
        for combo in itertools.combinations(shape, k):
            n = math.prod(combo)
            if n > 1:
                counts.add(n)
    return sorted(counts)


def factor_mistake(got: np.ndarray, expected: np.ndarray) -> str | None:
    """A sentence when ``got`` is ``expected`` times a constant, plus a constant, or negated.

    A factor of ``sqrt((N - 1) / N)`` or ``(N - 1) / N`` for an N that the output's shape
    allows is named as the biased/unbiased variance mix-up. Both arrays: the same shape,
    finite. Returns None when no such simple relation holds.
    """
    g = np.asarray(got, dtype=np.float64).ravel()
    e = np.asarray(expected, dtype=np.float64).ravel()
    if g.size < 2 or not (np.isfinite(g).all() and np.isfinite(e).all()):
        return None
    scale = float(np.abs(e).max()) or 1.0
    ee = float(e @ e)
    if ee > 0:
        c = float(g @ e) / ee
        if abs(c - 1) > 1e-4 and np.allclose(g, c * e, rtol=1e-5, atol=1e-8 * scale):
            if abs(c + 1) < 1e-4:
                return "the sign of every value is flipped"
            for n in _candidate_counts(np.shape(expected)):
                for power, name in ((0.5, "sqrt((N - 1) / N)"), (1.0, "(N - 1) / N")):
                    r = ((n - 1) / n) ** power
                    if abs(c - r) < 1e-4 * r:
                        return (
                            f"every value is {c:.4g} times the expected one, which is {name} "
                            f"for N = {n}: the unbiased variance (dividing by N - 1) where the "
                            "biased one (dividing by N) belongs"
                        )
                    if abs(c - 1 / r) < 1e-4 / r:
                        return (
                            f"every value is {c:.4g} times the expected one, which is "
                            f"1 / {name} for N = {n}: the biased variance (dividing by N) "
                            "where the unbiased one (dividing by N - 1) belongs"
                        )
            return f"every value is {c:.4g} times the expected one (a constant factor)"
    d = g - e
    if np.ptp(d) <= 1e-6 * max(scale, 1.0) and abs(float(d.mean())) > 1e-6 * max(scale, 1.0):
        shift = float(d.mean())
        return f"every value is off by the same constant, {shift:.4g} (a missing or extra shift)"
    return None
