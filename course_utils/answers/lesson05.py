"""Answers of lesson 05 (batch norm at inference): recalibration, the evaluation loop."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["recalibrate_bn", "evaluate_accuracy"]


@torch.no_grad()
def recalibrate_bn(model: nn.Module, x: torch.Tensor, batch_size: int = 64) -> nn.Module:
    """Re-estimate every batch-norm layer's running statistics on the inputs ``x``.

    Resets the running statistics, then runs the consecutive batches ``x[i:i+batch_size]``
    through the model in training mode with ``momentum=None`` (torch's cumulative average:
    every batch counts equally), without gradients; restores each layer's momentum and
    the model's mode. Weights are not changed. Returns the model.
    """
    was_training = model.training
    layers = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in layers]
    for m in layers:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    try:
        for i in range(0, len(x), batch_size):
            model(x[i : i + batch_size])
    finally:
        for m, mom in zip(layers, saved):
            m.momentum = mom
        model.train(was_training)
    return model


def evaluate_accuracy(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 50
) -> float:
    """Accuracy of ``model`` on (x, y) in eval mode, in batches, without gradients; the
    model's mode is restored afterwards (the fixed version of lesson 05's buggy loop)."""
    was_training = model.training
    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            correct += int((model(x[i : i + batch_size]).argmax(1) == y[i : i + batch_size]).sum())
    model.train(was_training)
    return correct / len(x)
