"""Gradient explosion at initialisation in deep batch-normalized networks (Yang et al. 2019,
"A mean field theory of batch normalization"), measured on one MNIST batch.

In a deep Linear -> BN -> ReLU stack without skip connections the gradient grows
geometrically from the output towards the input at initialisation; mean-field theory gives,
for ReLU and large batches, a factor of pi / (pi - 1) ~ 1.467 per layer in the squared
gradient norm. Residual connections (pre-activation blocks) keep it nearly flat, and so does
the same stack without batch norm under He initialisation.

- :func:`weight_gradient_norms`: ||dL/dW|| of every hidden weight matrix, input side first.
- :func:`growth_per_layer`: the fitted factor per layer of the squared norm, towards the input.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .. import seeds as seeding
from ..data import load_mnist
from ..models import make_mlp
from .residual import ResidualMLP

__all__ = ["ARCHITECTURES", "MEAN_FIELD_GROWTH", "weight_gradient_norms", "growth_per_layer"]

ARCHITECTURES = ("batch", "residual", "plain")
MEAN_FIELD_GROWTH = math.pi / (math.pi - 1.0)  # per layer, squared gradient norm, ReLU + BN


def _hidden_weights(model: nn.Module, arch: str) -> list[torch.Tensor]:
    if arch == "residual":
        return [w for b in model.blocks for w in (b.fc1.weight, b.fc2.weight)]
    return [b.linear.weight for b in model.blocks]


def weight_gradient_norms(
    arch: str, depth: int = 50, width: int = 256, batch_size: int = 128, seed: int = 0
) -> np.ndarray:
    """Frobenius norms of the loss gradient of each hidden weight matrix, at initialisation.

    Args:
        arch: ``"batch"`` (Linear -> BN -> ReLU, no skips), ``"residual"`` (pre-activation
            blocks x + W2 relu(bn(W1 relu(bn(x)))), depth / 2 of them, two matrices each) or
            ``"plain"`` (Linear -> ReLU). He initialisation (std sqrt(2 / fan_in)) throughout.
        depth: number of hidden (width x width or 784 x width) weight matrices.
        batch_size: one batch of the MNIST training split (N, 784), chosen by ``seed``.
        seed: seeds the weights and the batch.
    Returns:
        (depth,) array, input side first; cross-entropy loss on the true labels.
    """
    if arch not in ARCHITECTURES:
        raise ValueError(f"arch must be one of {ARCHITECTURES}, got {arch!r}")
    if arch == "residual":
        if depth % 2:
            raise ValueError(
                f"the residual stack has two matrices per block: depth must be even, got {depth}"
            )
        model = ResidualMLP(
            depth=depth // 2, width=width, variant="preact", norm="batch", seed=seed
        )
    else:
        norm = "batch" if arch == "batch" else "none"
        model = make_mlp(depth=depth, width=width, norm=norm, init_scale=math.sqrt(2.0), seed=seed)
    data = load_mnist()
    gen = seeding.generator(seed)
    idx = torch.randperm(len(data.x_train), generator=gen)[:batch_size]
    model.train()
    F.cross_entropy(model(data.x_train[idx]), data.y_train[idx]).backward()
    weights = _hidden_weights(model, arch)
    if arch == "residual":
        weights = [model.stem.weight, *weights[1:]]  # depth matrices: the stem, then the blocks
    return np.array([float(w.grad.norm()) for w in weights])


def growth_per_layer(norms: np.ndarray, skip: int = 2) -> float:
    """The factor by which the squared gradient norm grows per layer towards the input.

    A least-squares line through log(norm^2) against the layer index, leaving out ``skip``
    layers at each end (the first and last layers have other shapes and neighbours);
    returns exp(-slope). 1 means flat; MEAN_FIELD_GROWTH is the mean-field prediction for
    a Linear -> BN -> ReLU stack.
    """
    norms = np.asarray(norms, dtype=np.float64)
    if len(norms) < 2 * skip + 2:
        raise ValueError(f"need at least {2 * skip + 2} layers, got {len(norms)}")
    y = np.log(norms[skip : len(norms) - skip] ** 2)
    x = np.arange(len(y))
    slope = np.polyfit(x, y, 1)[0]
    return float(np.exp(-slope))
