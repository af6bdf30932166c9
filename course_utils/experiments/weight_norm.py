"""Lesson 09: normalization without activation statistics.

- :func:`weight_normed_mlp`: :func:`course_utils.make_mlp` with every Linear layer
  reparametrized by ``torch.nn.utils.parametrizations.weight_norm`` (w = g v / ||v||).
- :class:`WSLinear`, :class:`WSConv2d`: weight standardization (Qiao et al. 2019): each
  output unit's weights are standardized to mean 0 and variance 1 before use.
- :func:`norm_free_sweep`: deep residual MLPs without normalization, with He or Fixup init,
  against batch norm (see :mod:`course_utils.experiments.residual`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils.parametrizations import weight_norm

from ..data import MNISTSplit
from ..models import make_mlp
from ..training import train
from .residual import ResidualMLP

__all__ = [
    "weight_normed_mlp",
    "WSLinear",
    "WSConv2d",
    "standardize_weight",
    "NORM_FREE_ARMS",
    "norm_free_model",
    "norm_free_sweep",
]


def weight_normed_mlp(**kwargs) -> nn.Module:
    """``make_mlp(norm="none", **kwargs)`` with weight norm on every Linear (hidden and head)."""
    model = make_mlp(norm="none", **kwargs)
    for block in model.blocks:
        weight_norm(block.linear)
    weight_norm(model.head)
    return model


def standardize_weight(w: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Standardize each output unit's weights (dim 0) over its fan-in: (w - mean) / std."""
    flat = w.flatten(1)
    mean = flat.mean(dim=1, keepdim=True)
    var = flat.var(dim=1, unbiased=False, keepdim=True)
    return ((flat - mean) / torch.sqrt(var + eps)).view_as(w)


class WSLinear(nn.Linear):
    """A Linear layer whose weight is standardized per output unit at every forward pass;
    (N, in_features) -> (N, out_features). The stored weight can have any scale."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, standardize_weight(self.weight), self.bias)


class WSConv2d(nn.Conv2d):
    """A Conv2d whose filters are standardized per output channel (over C_in x kH x kW)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, standardize_weight(self.weight), self.bias)


NORM_FREE_ARMS = {
    "no norm, He init": dict(norm="none", init="he"),
    "no norm, Fixup init": dict(norm="none", init="fixup"),
    "batch norm": dict(norm="batch", init="he"),
}


def norm_free_model(arm: str, depth: int = 16, width: int = 64, seed: int = 0) -> ResidualMLP:
    """A pre-activation :class:`ResidualMLP` for one of :data:`NORM_FREE_ARMS`."""
    return ResidualMLP(depth, width, "preact", seed=seed, **NORM_FREE_ARMS[arm])


def norm_free_sweep(
    data: MNISTSplit,
    lrs: Sequence[float] = (0.01, 0.03),
    depth: int = 16,
    width: int = 64,
    steps: int = 150,
    seed: int = 0,
    arms: Sequence[str] = tuple(NORM_FREE_ARMS),
) -> dict[str, dict]:
    """Train every arm at every lr (SGD momentum 0.9); ``{arm: {"acc": (lrs,), "diverged":
    (lrs,) bool}}``. A diverged run stops at the first NaN loss (so it costs little)."""
    out = {}
    for arm in arms:
        acc, div = [], []
        for lr in lrs:
            model = norm_free_model(arm, depth, width, seed)
            hist = train(model, data, steps=steps, lr=float(lr), momentum=0.9, seed=seed)
            acc.append(hist.final_acc)
            div.append(hist.diverged)
        out[arm] = {"acc": np.array(acc), "diverged": np.array(div)}
    return out
