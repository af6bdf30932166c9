"""Torch modules and module helpers of lessons 04 and 05: batch renormalization (04), frozen
statistics (05)."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["BatchRenorm1d", "freeze_bn_statistics", "bn_modules"]


class BatchRenorm1d(nn.BatchNorm1d):
    """Batch renormalization (Ioffe 2017) for (N, C) inputs.

    Training: ``x_hat = (x - mu_B) / sigma_B * r + d`` with ``r = clip(sigma_B / sigma,
    1/rmax, rmax)`` and ``d = clip((mu_B - mu) / sigma, -dmax, dmax)`` treated as constants
    in the backward pass (``sigma = sqrt(running_var + eps)``, ``mu = running_mean``). With
    ``rmax = 1, dmax = 0`` it is batch norm; as the limits open, training uses the running
    statistics' scale and shift, like inference. ``rmax`` and ``dmax`` are attributes: raise
    them during training (the paper: plain BN for a while, then up to 3 and 5).

    Everything else (parameters, running statistics, eval mode, the state dict) is
    ``nn.BatchNorm1d``'s: only the training forward differs.

    Example::

        >>> rn, bn = BatchRenorm1d(4, rmax=1.0, dmax=0.0), torch.nn.BatchNorm1d(4)
        >>> x = torch.randn(16, 4) * 2 + 1
        >>> torch.allclose(rn(x), bn(x), atol=1e-5)  # at the limits (1, 0): batch norm
        True
    """

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float = 0.1,
        rmax: float = 3.0,
        dmax: float = 5.0,
    ):
        super().__init__(num_features, eps, momentum)
        self.rmax, self.dmax = rmax, dmax

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return super().forward(x)
        if x.dim() != 2:
            raise ValueError(f"expected 2D input (got {x.dim()}D input)")
        n = x.shape[0]
        var, mean = torch.var_mean(x, 0, unbiased=False)
        std = torch.sqrt(var + self.eps)
        with torch.no_grad():
            sigma = torch.sqrt(self.running_var + self.eps)
            r = (std / sigma).clamp(1 / self.rmax, self.rmax)
            d = ((mean - self.running_mean) / sigma).clamp(-self.dmax, self.dmax)
            # the running statistics are updated as nn.BatchNorm1d updates them
            m = self.momentum
            self.num_batches_tracked.add_(1)
            self.running_mean.mul_(1 - m).add_(mean, alpha=m)
            self.running_var.mul_(1 - m).add_(var, alpha=m * n / max(n - 1, 1))
        return ((x - mean) / std * r + d) * self.weight + self.bias

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, rmax={self.rmax}, dmax={self.dmax}"


def bn_modules(model: nn.Module) -> list[nn.Module]:
    """The batch-norm layers of ``model`` (``torch.nn``'s)."""
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def freeze_bn_statistics(model: nn.Module) -> nn.Module:
    """Put every batch-norm layer of ``model`` in eval mode: it normalizes with its running
    statistics and stops updating them; its weight and bias still learn. Call it *after*
    ``model.train()``, which would switch the layers back."""
    for m in bn_modules(model):
        m.eval()
    return model
