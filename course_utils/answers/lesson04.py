"""Answers of lesson 04 (batch norm with small batches): ghost batch norm."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["GhostBatchNorm1d"]


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
