"""Answers of lesson 00 (start here)."""

from __future__ import annotations

import numpy as np

__all__ = ["standardize_columns"]


def standardize_columns(x: np.ndarray, eps: float = 1e-5) -> np.ndarray:
    """Standardize each column of x: (N, D) -> (N, D), biased variance, eps inside the root."""
    x = np.asarray(x, dtype=np.float64)
    mean = x.mean(axis=0)
    var = ((x - mean) ** 2).mean(axis=0)
    return (x - mean) / np.sqrt(var + eps)
