"""Axis helpers for live plots: limits that rarely move, log axes that draw fast, and an
incrementally extended moving average.

Every change of an axis' limits forces the whole figure to be rendered again (several times
the cost of a blitted frame), so limits here move in round steps and only when the data
leaves them or fills a small part of them.
"""

from __future__ import annotations

import numpy as np
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

__all__ = [
    "decades",
    "finite_range",
    "sticky_ylim",
    "sqrt_clipped",
    "log_axis",
    "nice_ceiling",
    "EMA",
]


def decades(values: np.ndarray) -> tuple[float, float]:
    """Log-axis limits: the powers of ten around the positive finite values."""
    ok = values[np.isfinite(values) & (values > 0)]
    if ok.size == 0:
        return 1e-4, 1e-2
    lo, hi = np.floor(np.log10(ok.min())), np.ceil(np.log10(ok.max()))
    return float(10**lo), float(10 ** max(hi, lo + 1))


def finite_range(values: np.ndarray) -> tuple[float, float]:
    """(min, max) of the positive finite values, or a harmless (1e-3, 1e-3)."""
    v = np.asarray(values)
    ok = v[np.isfinite(v) & (v > 0)]
    return (float(ok.min()), float(ok.max())) if ok.size else (1e-3, 1e-3)


def sticky_ylim(
    ax, lo: float, hi: float, data_lo: float, data_hi: float, log: bool = False, slack: float = 4.0
) -> None:
    """Set the y limits to (lo, hi) unless the current ones still hold the data
    (data_lo, data_hi) and are at most ``slack`` times looser (log: ``slack`` decades):
    every change of limits costs a re-render of the axes, so they change rarely."""
    cur_lo, cur_hi = ax.get_ylim()
    if cur_lo <= data_lo and data_hi <= cur_hi:
        if log:
            loose = np.log10(cur_hi / cur_lo) - np.log10(hi / lo) <= slack
        else:
            loose = (cur_hi - cur_lo) <= slack * (hi - lo)
        if loose:
            return
    ax.set_ylim(lo, hi)


def sqrt_clipped(x: np.ndarray) -> np.ndarray:
    """sqrt(max(x, 0)): the forward function of a square-root axis scale."""
    return np.sqrt(np.maximum(x, 0.0))


def _power_label(v: float, _pos=None) -> str:
    # 1e-3, 1e-2, 0.1 is 1e-1, then 1, 10, 100
    return f"{v:g}" if v >= 1 else f"{v:.0e}".replace("e-0", "e-")


def log_axis(ax) -> None:
    """A log y axis labelled 1e-3 style at the powers of ten (no mathtext: faster to draw)."""
    ax.set_yscale("log")
    ax.yaxis.set_major_locator(LogLocator(numticks=6))
    ax.yaxis.set_major_formatter(FuncFormatter(_power_label))
    ax.yaxis.set_minor_formatter(NullFormatter())


def nice_ceiling(x: float) -> float:
    """The next value of 1, 1.5, 2, 3, 5, 7.5 x 10^k at or above x (round axis limits)."""
    if not np.isfinite(x) or x <= 0:
        return 1.0
    k = 10 ** np.floor(np.log10(x))
    return float(next(m * k for m in (1, 1.5, 2, 3, 5, 7.5, 10) if m * k >= x * (1 - 1e-9)))


class EMA:
    """Exponential moving average with Adam's bias correction, extended incrementally as
    the loss history grows (recomputing it would cost O(steps) per redraw)."""

    def __init__(self, beta: float):
        self.beta = beta
        self._acc = 0.0
        self.values: list[float] = []

    def update(self, x: list[float]) -> np.ndarray:
        b = self.beta
        for v in x[len(self.values) :]:
            self._acc = b * self._acc + (1 - b) * v
            self.values.append(self._acc / (1 - b ** (len(self.values) + 1)))
        return np.asarray(self.values)
