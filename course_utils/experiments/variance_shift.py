"""Dropout before batch norm shifts the variance (Li et al. 2019, "Understanding the
disharmony between dropout and batch normalization by variance shift").

In training, dropout (inverted: keep with probability 1 - p, scale by 1 / (1 - p)) adds noise
whose variance reaches the batch norm after the next Linear layer; its running variance
learns the *noisy* variance. In evaluation dropout is off, the inputs vary less than the
running variance says, and batch norm shrinks them: a train/eval mismatch, the "variance
shift". Dropout placed only after the last batch norm causes none.

- :func:`dropout_mlp`: Linear -> BN -> ReLU blocks with dropout placed ``"before_bn"`` (before
  the Linear of every block but the first) or ``"after_bn"`` (only after the last block).
- :func:`variance_ratios`: per batch-norm layer, running_var over the variance of the layer's
  input measured in eval mode.
- :func:`variance_shift_experiment`: train, then measure the ratios and the test accuracy
  (also after recalibrating the statistics with dropout off).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..data import load_mnist
from ..models import make_mlp
from ..training import evaluate, train

__all__ = [
    "PLACEMENTS",
    "dropout_mlp",
    "variance_ratios",
    "ShiftResult",
    "variance_shift_experiment",
]

PLACEMENTS = ("before_bn", "after_bn")


def dropout_mlp(
    placement: str, p: float = 0.5, depth: int = 3, width: int = 256, seed: int = 0
) -> nn.Module:
    """A batch-norm MLP (784 -> width x depth -> 10) with dropout.

    ``"before_bn"``: Dropout(p) in front of the Linear of blocks 2..depth, so its noise
    passes through Linear into that block's batch norm (Li et al.'s harmful order).
    ``"after_bn"``: one Dropout(p) after the last block, before the head (no batch norm
    follows it).
    """
    if placement not in PLACEMENTS:
        raise ValueError(f"placement must be one of {PLACEMENTS}, got {placement!r}")
    model = make_mlp(depth=depth, width=width, norm="batch", seed=seed)
    if placement == "before_bn":
        for block in model.blocks[1:]:
            block.linear = nn.Sequential(nn.Dropout(p), block.linear)
    else:
        model.head = nn.Sequential(nn.Dropout(p), model.head)
    return model


def _bn_layers(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@torch.no_grad()
def variance_ratios(model: nn.Module, x: torch.Tensor) -> np.ndarray:
    """running_var / (variance of the layer's input in eval mode), averaged over units, for
    every batch-norm layer (input side first). 1 means train and eval statistics agree.

    Args:
        x: (N, 784) inputs (use many: the variance is over N).
    """
    layers = _bn_layers(model)
    inputs: dict[int, torch.Tensor] = {}
    hooks = [
        m.register_forward_hook(lambda mod, inp, out, i=i: inputs.__setitem__(i, inp[0]))
        for i, m in enumerate(layers)
    ]
    was_training = model.training
    model.eval()
    try:
        model(x)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return np.array(
        [
            float((m.running_var / inputs[i].var(0).clamp_min(1e-12)).mean())
            for i, m in enumerate(layers)
        ]
    )


@torch.no_grad()
def _recalibrate(model: nn.Module, x: torch.Tensor, batch_size: int = 500) -> None:
    """Running statistics recomputed with dropout off (cumulative average over ``x``)."""
    layers = _bn_layers(model)
    saved = [m.momentum for m in layers]
    for m in layers:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    drops = [m for m in model.modules() if isinstance(m, nn.Dropout)]
    for d in drops:
        d.eval()
    for i in range(0, len(x) - batch_size + 1, batch_size):
        model(x[i : i + batch_size])
    for m, mom in zip(layers, saved):
        m.momentum = mom
    model.eval()


@dataclass
class ShiftResult:
    """``ratios``: per batch-norm layer (:func:`variance_ratios` on the test inputs);
    ``acc``: test accuracy as trained; ``acc_recalibrated``: after recomputing the
    statistics with dropout off; ``train_loss``: the last 50 steps' mean."""

    placement: str
    ratios: np.ndarray
    acc: float
    acc_recalibrated: float
    train_loss: float

    @property
    def shifted_ratio(self) -> float:
        """Mean ratio over the layers that follow a dropout (blocks 2..depth)."""
        return float(np.mean(self.ratios[1:]))


def variance_shift_experiment(
    placement: str,
    p: float = 0.5,
    depth: int = 3,
    width: int = 256,
    steps: int = 600,
    lr: float = 0.05,
    momentum: float = 0.9,
    batch_size: int = 64,
    seed: int = 0,
) -> ShiftResult:
    """Train :func:`dropout_mlp` with SGD and measure the variance shift and the accuracy."""
    data = load_mnist()
    model = dropout_mlp(placement, p, depth, width, seed)
    hist = train(
        model, data, steps=steps, lr=lr, momentum=momentum, batch_size=batch_size, seed=seed
    )
    ratios = variance_ratios(model, data.x_test)
    acc = float(hist.final_acc)
    _recalibrate(model, data.x_train)
    _, acc_recal = evaluate(model, data.x_test, data.y_test)
    return ShiftResult(placement, ratios, acc, float(acc_recal), float(np.mean(hist.loss[-50:])))
