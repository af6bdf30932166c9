"""Answers to lesson 10's exercises: folding batch norm into the layer before it, and batch
norm synchronised across processes as an autograd Function.

The lesson's experiments use these (never a second copy); the exercise module imports them
lazily as its references.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import nn

__all__ = ["fold_bn", "SyncBatchNormFunction"]

_FOLDABLE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


@torch.no_grad()
def fold_bn(layer: nn.Module, bn: nn.modules.batchnorm._BatchNorm) -> nn.Module:
    """The layer that computes ``bn(layer(x))`` of ``bn`` in evaluation mode, in one layer.

    In eval mode batch norm is an affine map per output channel c,
    ``y_c = s_c * (z_c - running_mean_c) + beta_c`` with
    ``s_c = gamma_c / sqrt(running_var_c + eps)``, so ``W' = s * W`` (each output channel's
    slice scaled) and ``b' = s * (b - running_mean) + beta``.

    Args:
        layer: an ``nn.Linear`` (weight (C_out, C_in)) or ``nn.Conv1d/2d/3d`` (weight
            (C_out, C_in / groups, *kernel)), with or without a bias.
        bn: a batch-norm layer over the C_out outputs, with running statistics.
    Returns:
        A new layer of the same class and hyperparameters (stride, padding, dilation,
        groups) with a bias; ``layer`` and ``bn`` are not changed.
    """
    if not isinstance(layer, _FOLDABLE):
        raise TypeError(f"can fold into Linear or Conv1d/2d/3d, not {type(layer).__name__}")
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("this batch norm keeps no running statistics: nothing fixed to fold")
    out_channels = layer.weight.shape[0]
    if bn.running_mean.numel() != out_channels:
        raise ValueError(
            f"batch norm has {bn.running_mean.numel()} channels, the layer {out_channels} outputs"
        )
    scale = torch.rsqrt(bn.running_var + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight
    shift = bn.bias if bn.bias is not None else torch.zeros_like(scale)
    bias = layer.bias if layer.bias is not None else torch.zeros_like(scale)
    folded = copy.deepcopy(layer)
    folded.weight.copy_(layer.weight * scale.view(-1, *[1] * (layer.weight.dim() - 1)))
    folded.bias = nn.Parameter((bias - bn.running_mean) * scale + shift)
    return folded


class SyncBatchNormFunction(torch.autograd.Function):
    """Training-mode batch norm whose statistics pool the batch of every process.

    ``all_reduce(t)`` replaces the tensor ``t``, in place, by its elementwise sum over the
    processes (as ``torch.distributed.all_reduce`` does) and returns None. Every process calls
    ``SyncBatchNormFunction.apply`` with its own slice of the batch.

    forward(ctx, x, weight, bias, running_mean, running_var, eps, momentum, all_reduce):
        x: (N_local, C, *) this process's inputs; weight, bias: (C,);
        running_mean, running_var: (C,) buffers, updated in place with the global mean and
        the global unbiased variance; returns y, shaped like x.
    backward(ctx, grad_out): grad_out shaped like x; returns the gradient of x (needs the
        all-reduced sums of dy and dy * x_hat), this process's share of the weight and bias
        gradients (a data-parallel wrapper sums them over processes), and None for the rest.
    """

    @staticmethod
    def forward(
        ctx,
        x: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor,
        running_mean: torch.Tensor,
        running_var: torch.Tensor,
        eps: float,
        momentum: float,
        all_reduce: Callable[[torch.Tensor], None],
    ) -> torch.Tensor:
        dims = [0, *range(2, x.dim())]
        shape = [1, -1] + [1] * (x.dim() - 2)
        c = x.shape[1]
        local_count = x.numel() // c
        # one message: (sum, sum of squares, count)
        stats = torch.cat([x.sum(dims), (x * x).sum(dims), x.new_full((1,), local_count)])
        all_reduce(stats)
        n = stats[-1]
        mean = stats[:c] / n
        var = (stats[c : 2 * c] / n - mean * mean).clamp_min(0.0)
        invstd = torch.rsqrt(var + eps)
        if running_mean is not None:
            running_mean.mul_(1 - momentum).add_(momentum * mean)
        if running_var is not None:
            running_var.mul_(1 - momentum).add_(momentum * var * n / (n - 1).clamp_min(1))
        x_hat = (x - mean.view(shape)) * invstd.view(shape)
        ctx.save_for_backward(x_hat, weight, invstd, n)
        ctx.all_reduce = all_reduce
        return x_hat * weight.view(shape) + bias.view(shape)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        x_hat, weight, invstd, n = ctx.saved_tensors
        dims = [0, *range(2, grad_out.dim())]
        shape = [1, -1] + [1] * (grad_out.dim() - 2)
        c = grad_out.shape[1]
        sum_dy = grad_out.sum(dims)
        sum_dy_xhat = (grad_out * x_hat).sum(dims)
        grad_weight, grad_bias = sum_dy_xhat.clone(), sum_dy.clone()  # this process's share
        sums = torch.cat([sum_dy, sum_dy_xhat])
        ctx.all_reduce(sums)
        mean_dy, mean_dy_xhat = sums[:c] / n, sums[c:] / n
        grad_x = (weight * invstd).view(shape) * (
            grad_out - mean_dy.view(shape) - x_hat * mean_dy_xhat.view(shape)
        )
        return grad_x, grad_weight, grad_bias, None, None, None, None, None
