"""Lessons 04 and 05's data: MNIST at 14x14 with a validation split, seeded sample orders, and
inputs as if the raw images had changed (contrast and brightness)."""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ... import seeds as seeding
from ...data import MNISTSplit, load_mnist

__all__ = ["Split14", "mnist14", "sample_order", "shift_inputs"]


@dataclass(frozen=True)
class Split14:
    """MNIST at 14x14, standardized: train (7,000), validation (1,000) and test (2,000).

    ``x_*`` are float32 NumPy arrays (N, 196) (or (N, 1, 14, 14) with ``images``);
    ``y_*`` int64 arrays (N,). The validation images are the last 1,000 of the course's
    8,000 training images; the test images are the course's 2,000 test images.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    mean: float
    std: float

    def torch_split(self, validation: bool = False) -> MNISTSplit:
        """The same data as torch tensors, in :class:`~course_utils.data.MNISTSplit` form
        (``x_test`` is the validation set when ``validation=True``)."""
        xt = self.x_val if validation else self.x_test
        yt = self.y_val if validation else self.y_test
        return MNISTSplit(
            torch.tensor(self.x_train),
            torch.tensor(self.y_train),
            torch.tensor(xt),
            torch.tensor(yt),
        )


@functools.lru_cache(maxsize=2)
def mnist14(images: bool = False) -> Split14:
    """The embedded MNIST average-pooled 2x2 to 14x14 pixels and standardized.

    Args:
        images: ``True`` gives (N, 1, 14, 14) arrays for CNNs, ``False`` (N, 196) vectors.
    Returns:
        A :class:`Split14` (7,000 train / 1,000 validation / 2,000 test). Shared between
        calls: do not modify the arrays in place.
    """
    d = load_mnist(scale="unit", flatten=False)
    x_tr = F.avg_pool2d(d.x_train, 2)
    x_te = F.avg_pool2d(d.x_test, 2)
    mean, std = float(x_tr[:7000].mean()), float(x_tr[:7000].std())
    x_tr, x_te = (x_tr - mean) / std, (x_te - mean) / std
    if not images:
        x_tr, x_te = x_tr.flatten(1), x_te.flatten(1)
    x_tr, x_te = x_tr.numpy().astype(np.float32), x_te.numpy().astype(np.float32)
    y_tr, y_te = d.y_train.numpy(), d.y_test.numpy()
    out = Split14(x_tr[:7000], y_tr[:7000], x_tr[7000:], y_tr[7000:], x_te, y_te, mean, std)
    for a in (out.x_train, out.y_train, out.x_val, out.y_val, out.x_test, out.y_test):
        a.flags.writeable = False
    return out


def sample_order(seed: int, n: int, count: int) -> np.ndarray:
    """Indices of ``count`` samples drawn epoch by epoch from ``n`` (a fresh permutation per
    epoch), seeded: every arm that uses the same seed sees the same samples in the same order."""
    rng = seeding.rng(seed)
    reps = math.ceil(count / n)
    return np.concatenate([rng.permutation(n) for _ in range(reps)])[:count]


def shift_inputs(
    x: torch.Tensor,
    contrast: float = 1.0,
    brightness: float = 0.0,
    mean: float | None = None,
    std: float | None = None,
) -> torch.Tensor:
    """Standardized MNIST inputs as if the raw images (pixels in [0, 1]) had been changed to
    ``contrast * pixel + brightness`` before the training set's standardization.

    ``mean`` and ``std`` are that standardization's (default: the course's 28x28 MNIST).
    """
    if mean is None or std is None:
        raw = load_mnist(scale="unit").x_train
        mean, std = float(raw.mean()), float(raw.std())
    pixels = x * std + mean
    return ((contrast * pixels + brightness) - mean) / std
