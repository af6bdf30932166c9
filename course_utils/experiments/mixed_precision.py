"""Lesson 10: normalization statistics under mixed precision (bfloat16).

bfloat16 keeps 8 significant bits: numbers near 100 are 0.5 apart, near 1000 they are 4
apart. A variance computed as E[x^2] - E[x]^2 subtracts two numbers of size mean^2, so when
the mean is large next to the spread, the rounding of those two numbers swamps the variance
(catastrophic cancellation). Float32 accumulators and a two-pass (or Welford) formula avoid it.

- :func:`variance_errors`: relative error of the variance, per method, against float64, for
  activations with a growing mean.
- :class:`SumsBatchNorm1d`: batch norm whose statistics come from the sums of x and x^2 (the
  one-pass formula the synchronised batch norm of this lesson uses), computed in the input's
  dtype or in float32.
- :func:`train_offset_mlp`: train an MLP whose pre-activations carry a constant offset (which
  batch norm removes exactly in exact arithmetic) under ``torch.autocast`` with bfloat16.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .. import seeds as seeding
from ..data import batches, load_mnist
from ..models import make_mlp

__all__ = [
    "METHODS",
    "variance_of",
    "variance_errors",
    "SumsBatchNorm1d",
    "Offset",
    "ARMS",
    "offset_mlp",
    "train_offset_mlp",
]

METHODS = (
    "float32, two-pass",
    "float32, sums",
    "bfloat16 values, float32 statistics",
    "bfloat16, sums",
)


def variance_of(x: torch.Tensor, method: str) -> torch.Tensor:
    """The biased variance over axis 0 of ``x`` (N, D) by one of :data:`METHODS`; (D,).

    "sums" is the one-pass formula sum(x^2) / N - (sum(x) / N)^2; "two-pass" subtracts the
    mean first. "bfloat16, sums" rounds x and every intermediate result to bfloat16.
    """
    if method == "float32, two-pass":
        return x.float().var(0, unbiased=False)
    if method == "float32, sums":
        x = x.float()
        m = x.mean(0)
        return (x * x).mean(0) - m * m
    if method == "bfloat16 values, float32 statistics":
        return x.to(torch.bfloat16).float().var(0, unbiased=False)
    if method == "bfloat16, sums":
        x = x.to(torch.bfloat16)
        m = x.mean(0)
        return ((x * x).mean(0) - m * m).float()
    raise ValueError(f"method must be one of {METHODS}, got {method!r}")


def variance_errors(
    offsets: Sequence[float], n: int = 256, d: int = 64, seed: int = 0
) -> dict[str, np.ndarray]:
    """Median (over the D features) relative error of each method's variance.

    The activations are x = offset + N(0, 1), shape (n, d), drawn in float64; the truth is
    their float64 variance. Returns method -> (len(offsets),) array.
    """
    gen = seeding.generator(seed)
    out: dict[str, list[float]] = {m: [] for m in METHODS}
    for offset in offsets:
        x = torch.randn(n, d, generator=gen, dtype=torch.float64) + offset
        truth = x.var(0, unbiased=False)
        for m in METHODS:
            err = (variance_of(x, m).double() - truth).abs() / truth
            out[m].append(float(err.median()))
    return {m: np.array(v) for m, v in out.items()}


class SumsBatchNorm1d(nn.Module):
    """Batch norm for (N, C) whose batch statistics come from sum(x) and sum(x^2).

    ``float32_stats=False``: the statistics are computed in the input's dtype (bfloat16
    under autocast); ``True``: the input is upcast to float32 first (what torch's own
    kernels and most hand-written norm layers in large models do). Parameters and running
    statistics are float32; the output has the input's dtype.
    """

    def __init__(self, num_features: int, float32_stats: bool, eps: float = 1e-5, momentum=0.1):
        super().__init__()
        self.float32_stats, self.eps, self.momentum = float32_stats, eps, momentum
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        if self.float32_stats:
            x = x.float()
        if self.training:
            mean = x.mean(0)
            var = ((x * x).mean(0) - mean * mean).clamp_min(0.0)
            with torch.no_grad():
                n = x.shape[0]
                self.running_mean.lerp_(mean.float(), self.momentum)
                self.running_var.lerp_(var.float() * n / max(n - 1, 1), self.momentum)
        else:
            mean, var = self.running_mean.to(x.dtype), self.running_var.to(x.dtype)
        y = (x - mean) * torch.rsqrt(var + self.eps) * self.weight + self.bias
        return y.to(dtype)


class Offset(nn.Module):
    """Adds a constant: ``x + offset`` (any shape)."""

    def __init__(self, offset: float):
        super().__init__()
        self.offset = float(offset)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.offset


ARMS = ("nn.BatchNorm1d", "sums in float32", "sums in bfloat16")


def offset_mlp(
    arm: str, offset: float, depth: int = 2, width: int = 128, seed: int = 0
) -> nn.Module:
    """make_mlp(norm="batch") with ``Offset(offset)`` after every hidden Linear and the batch
    norm of ``arm``: torch's ``nn.BatchNorm1d`` or :class:`SumsBatchNorm1d`."""
    if arm not in ARMS:
        raise ValueError(f"arm must be one of {ARMS}, got {arm!r}")
    model = make_mlp(depth=depth, width=width, norm="batch", seed=seed)
    for block in model.blocks:
        block.linear = nn.Sequential(block.linear, Offset(offset))
        if arm != "nn.BatchNorm1d":
            block.norm = SumsBatchNorm1d(width, float32_stats=arm == "sums in float32")
    return model


def train_offset_mlp(
    arm: str,
    offset: float,
    steps: int = 300,
    lr: float = 0.1,
    momentum: float = 0.9,
    batch_size: int = 64,
    autocast: bool = True,
    seed: int = 0,
) -> float:
    """Train :func:`offset_mlp` with SGD under ``torch.autocast("cpu", torch.bfloat16)``
    (matrix products in bfloat16) and return its test accuracy (evaluated the same way)."""
    data = load_mnist()
    model = offset_mlp(arm, offset, seed=seed)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    stream = batches(data.x_train, data.y_train, batch_size, seed=seed)
    model.train()
    for _ in range(steps):
        xb, yb = next(stream)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            loss = F.cross_entropy(model(xb), yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        pred = model(data.x_test).argmax(1)
    return float((pred == data.y_test).float().mean())
