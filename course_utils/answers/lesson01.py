"""Answers of lesson 01 (input scaling): the two scalers and the which-scaler rule."""

from __future__ import annotations

import numpy as np

from ..experiments.scaling import _as_2d

__all__ = ["Standardizer", "MinMaxScaler", "choose_scaler"]


class Standardizer:
    """Per-feature standardization ``z = (x - mean) / std``, statistics from ``fit`` only.

    ``std`` is the population standard deviation (``ddof=0``); a constant feature (std 0)
    gets scale 1, so it maps to 0 instead of NaN.

    Attributes after ``fit``: ``mean_`` and ``scale_``, both shape (D,).
    """

    def fit(self, X) -> Standardizer:
        """Learn ``mean_`` and ``scale_`` from X (N, D); returns self."""
        X = _as_2d(X)
        self.mean_ = X.mean(axis=0)
        std = X.std(axis=0)
        self.scale_ = np.where(std > 0, std, 1.0)
        return self

    def transform(self, X) -> np.ndarray:
        """(N, D) -> (N, D) with the statistics learned by ``fit``."""
        return (_as_2d(X) - self.mean_) / self.scale_

    def inverse_transform(self, Z) -> np.ndarray:
        """Undo ``transform``: (N, D) -> (N, D)."""
        return _as_2d(Z) * self.scale_ + self.mean_


class MinMaxScaler:
    """Per-feature min-max scaling to [0, 1]: ``(x - min) / (max - min)``.

    A constant feature (range 0) gets range 1, so it maps to 0. Data outside the fitted
    range (test data) maps outside [0, 1]; that is expected.

    Attributes after ``fit``: ``min_`` and ``range_``, both shape (D,).
    """

    def fit(self, X) -> MinMaxScaler:
        """Learn ``min_`` and ``range_`` from X (N, D); returns self."""
        X = _as_2d(X)
        self.min_ = X.min(axis=0)
        rng = X.max(axis=0) - self.min_
        self.range_ = np.where(rng > 0, rng, 1.0)
        return self

    def transform(self, X) -> np.ndarray:
        """(N, D) -> (N, D) with the statistics learned by ``fit``."""
        return (_as_2d(X) - self.min_) / self.range_

    def inverse_transform(self, Z) -> np.ndarray:
        """Undo ``transform``: (N, D) -> (N, D)."""
        return _as_2d(Z) * self.range_ + self.min_


def choose_scaler(x, bounded_range: bool = False, threshold: float = 10.0) -> str:
    """The lesson's rule of thumb for one feature: ``"robust"``, ``"minmax"`` or ``"standard"``.

    Args:
        x: the feature's training values, shape (N,).
        bounded_range: the model or the data format requires values in a fixed range.
        threshold: a value farther than ``threshold`` interquartile ranges from the median
            counts as an outlier.
    Returns:
        ``"robust"`` if the feature has outliers (this takes precedence), else ``"minmax"``
        if a bounded range is required, else ``"standard"``.
    """
    x = np.asarray(x, dtype=np.float64).reshape(-1)
    q25, q50, q75 = np.percentile(x, [25, 50, 75])
    iqr = q75 - q25
    if iqr > 0 and np.max(np.abs(x - q50)) > threshold * iqr:
        return "robust"
    return "minmax" if bounded_range else "standard"
