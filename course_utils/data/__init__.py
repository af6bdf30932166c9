"""Data sets for the course: the embedded MNIST test set and small synthetic sets.

MNIST: the MNIST database of handwritten digits, Yann LeCun, Corinna Cortes and
Christopher J.C. Burges, distributed under Creative Commons Attribution-Share Alike 3.0.
The course ships the original 10,000-image test set (``t10k-*.gz``, byte-identical to the
published files; the md5 is verified on load) and splits it into a fixed, stratified
8,000 / 2,000 train / test partition.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .. import seeds as seeding

__all__ = [
    "MNIST_MD5",
    "MNISTSplit",
    "load_mnist",
    "load_mnist_raw",
    "badly_scaled_2d",
    "with_outliers",
    "batches",
]

_HERE = Path(__file__).resolve().parent
MNIST_MD5 = {
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}
_SPLIT_SEED = 20150211  # the day Ioffe & Szegedy's batch-norm paper appeared


def _read_verified(name: str) -> bytes:
    path = _HERE / name
    if not path.exists():
        raise FileNotFoundError(
            f"{path} is missing: the embedded MNIST files ship with course_utils; "
            "reinstall the package (pip install -e .)."
        )
    raw = path.read_bytes()
    digest = hashlib.md5(raw).hexdigest()
    if digest != MNIST_MD5[name]:
        raise ValueError(f"{path} is corrupt: md5 {digest}, expected {MNIST_MD5[name]}")
    return gzip.decompress(raw)


@functools.lru_cache(maxsize=1)
def load_mnist_raw() -> tuple[np.ndarray, np.ndarray]:
    """The 10,000 MNIST test images as published.

    Returns:
        images: uint8 array of shape (10000, 28, 28), 0 = background, 255 = ink.
        labels: uint8 array of shape (10000,), digits 0-9.
    """
    img = _read_verified("t10k-images-idx3-ubyte.gz")
    lab = _read_verified("t10k-labels-idx1-ubyte.gz")
    magic, n, rows, cols = np.frombuffer(img[:16], dtype=">i4")
    if magic != 2051 or (n, rows, cols) != (10000, 28, 28):
        raise ValueError("unexpected MNIST image header")
    magic_l, n_l = np.frombuffer(lab[:8], dtype=">i4")
    if magic_l != 2049 or n_l != 10000:
        raise ValueError("unexpected MNIST label header")
    images = np.frombuffer(img, dtype=np.uint8, offset=16).reshape(n, rows, cols)
    labels = np.frombuffer(lab, dtype=np.uint8, offset=8)
    images.flags.writeable = False
    labels.flags.writeable = False
    return images, labels


@dataclass(frozen=True)
class MNISTSplit:
    """A fixed train/test split of the embedded MNIST.

    Attributes:
        x_train: float32 tensor (8000, 1, 28, 28) or (8000, 784) when flattened.
        y_train: int64 tensor (8000,).
        x_test:  float32 tensor (2000, 1, 28, 28) or (2000, 784).
        y_test:  int64 tensor (2000,).
    """

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor


def _stratified_indices(
    labels: np.ndarray, n_test_per_class: int = 200
) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(_SPLIT_SEED)
    train, test = [], []
    for digit in range(10):
        idx = np.flatnonzero(labels == digit)
        rng.shuffle(idx)
        test.append(idx[:n_test_per_class])
        train.append(idx[n_test_per_class:])
    train_idx = np.concatenate(train)
    test_idx = np.concatenate(test)
    rng.shuffle(train_idx)
    rng.shuffle(test_idx)
    return train_idx, test_idx


@functools.lru_cache(maxsize=8)
def _split_cached(scale: str, flatten: bool) -> MNISTSplit:
    images, labels = load_mnist_raw()
    train_idx, test_idx = _stratified_indices(labels)
    x = torch.from_numpy(images.astype(np.float32))
    if scale == "unit":
        x = x / 255.0
    elif scale == "standard":
        x = x / 255.0
        # statistics of the training split only: fitting on test data would leak
        mean = x[torch.from_numpy(train_idx)].mean()
        std = x[torch.from_numpy(train_idx)].std()
        x = (x - mean) / std
    x = x.reshape(-1, 784) if flatten else x.unsqueeze(1)
    y = torch.from_numpy(labels.astype(np.int64))
    ti, vi = torch.from_numpy(train_idx), torch.from_numpy(test_idx)
    return MNISTSplit(
        x[ti].contiguous(), y[ti].contiguous(), x[vi].contiguous(), y[vi].contiguous()
    )


def load_mnist(scale: str = "standard", flatten: bool = True) -> MNISTSplit:
    """The embedded MNIST, split 8,000 train / 2,000 test (stratified, fixed seed).

    Args:
        scale: ``"raw"`` keeps pixel values 0-255, ``"unit"`` divides by 255,
            ``"standard"`` (default) also subtracts the training split's mean and
            divides by its standard deviation.
        flatten: ``True`` gives (N, 784) vectors for MLPs; ``False`` gives
            (N, 1, 28, 28) images for CNNs.

    Returns:
        An :class:`MNISTSplit`. The tensors are shared between calls: do not modify
        them in place (``.clone()`` first).
    """
    if scale not in ("raw", "unit", "standard"):
        raise ValueError(f"scale must be 'raw', 'unit' or 'standard', got {scale!r}")
    return _split_cached(scale, bool(flatten))


def batches(
    x: torch.Tensor, y: torch.Tensor, batch_size: int, seed: int = 0, epochs: int | None = None
):
    """Yield shuffled mini-batches ``(xb, yb)`` forever (or for ``epochs`` passes).

    Args:
        x: (N, ...) inputs. y: (N,) targets.
        batch_size: samples per batch; the last partial batch of each epoch is dropped so
            every batch has the same size (batch norm needs that to be comparable).
        seed: seeds the shuffling generator, so two runs see the same batches.
    """
    if batch_size < 1 or batch_size > len(x):
        raise ValueError(f"batch_size must be between 1 and {len(x)}, got {batch_size}")
    g = seeding.generator(seed)
    epoch = 0
    while epochs is None or epoch < epochs:
        perm = torch.randperm(len(x), generator=g)
        for i in range(0, len(x) - batch_size + 1, batch_size):
            idx = perm[i : i + batch_size]
            yield x[idx], y[idx]
        epoch += 1


def badly_scaled_2d(n: int = 200, scales: tuple[float, float] = (1.0, 100.0), seed: int = 0):
    """A 2-D linear-regression data set whose two features differ in scale.

    Returns:
        X: float64 array (n, 2), feature j has standard deviation ``scales[j]`` and a
           non-zero mean. y: float64 array (n,), ``y = X @ w_true + noise``.
        w_true: float64 array (2,).
    """
    rng = seeding.rng(seed)
    X = rng.normal(size=(n, 2)) * np.asarray(scales) + np.asarray(scales) * np.array([0.5, 2.0])
    w_true = np.array([2.0, -3.0]) / np.asarray(scales)
    y = X @ w_true + 0.1 * rng.normal(size=n)
    return X, y, w_true


def with_outliers(
    n: int = 200, frac: float = 0.02, magnitude: float = 50.0, seed: int = 0
) -> np.ndarray:
    """A 1-feature data set, standard normal, with a fraction of large outliers.

    Returns:
        float64 array (n, 1).
    """
    rng = seeding.rng(seed)
    x = rng.normal(size=(n, 1))
    k = max(1, int(round(frac * n)))
    x[rng.choice(n, size=k, replace=False), 0] = magnitude * (1 + rng.random(k))
    return x
