"""Answers of lesson 04 (batch norm in practice): ghost batch norm, recalibration, the
evaluation loop."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["GhostBatchNorm1d", "recalibrate_bn", "evaluate_accuracy"]


class GhostBatchNorm1d(nn.Module):
    """Ghost batch normalization (Hoffer, Hubara & Soudry 2017) for (N, C) inputs.

    In training, the batch is split into consecutive chunks of ``ghost_size`` samples (N
    must be a multiple; a batch smaller than ``ghost_size`` is one chunk) and each chunk is
    normalized with its own mean and biased variance. The running statistics are updated
    once per call, like ``nn.BatchNorm1d``'s: ``running = (1 - momentum) * running +
    momentum * stat`` with ``stat`` the average over chunks of the chunk means and of the
    chunk *unbiased* variances. Eval mode uses the running statistics. Parameters ``weight``
    (ones) and ``bias`` (zeros), buffers ``running_mean`` (zeros), ``running_var`` (ones).
    """

    def __init__(
        self, num_features: int, ghost_size: int = 16, eps: float = 1e-5, momentum: float = 0.1
    ):
        super().__init__()
        self.num_features, self.ghost_size = num_features, ghost_size
        self.eps, self.momentum = eps, momentum
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            xh = (x - self.running_mean) / torch.sqrt(self.running_var + self.eps)
            return xh * self.weight + self.bias
        n, c = x.shape
        g = min(self.ghost_size, n)
        if n % g:
            raise ValueError(f"batch size {n} is not a multiple of ghost_size {g}")
        if g < 2:
            raise ValueError("each ghost batch needs at least 2 samples")
        xg = x.reshape(n // g, g, c)
        mean = xg.mean(1, keepdim=True)
        var = ((xg - mean) ** 2).mean(1, keepdim=True)
        xh = ((xg - mean) / torch.sqrt(var + self.eps)).reshape(n, c)
        with torch.no_grad():
            m = self.momentum
            self.running_mean.mul_(1 - m).add_(m * mean.mean((0, 1)))
            self.running_var.mul_(1 - m).add_(m * (var * g / (g - 1)).mean((0, 1)))
        return xh * self.weight + self.bias

    def extra_repr(self) -> str:
        return (
            f"{self.num_features}, ghost_size={self.ghost_size}, eps={self.eps}, "
            f"momentum={self.momentum}"
        )


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
    model's mode is restored afterwards (the fixed version of lesson 04's buggy loop)."""
    was_training = model.training
    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            correct += int((model(x[i : i + batch_size]).argmax(1) == y[i : i + batch_size]).sum())
    model.train(was_training)
    return correct / len(x)
