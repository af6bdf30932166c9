"""Lesson 11's exercise answers: QK-norm attention, adaLN-Zero, scaled weight standardization.

The lesson's experiments import these classes from here (one home for each answer); the
exercise declarations in :mod:`course_utils.exercises.lesson11` use them as references.
"""

from __future__ import annotations

import torch
from torch import nn

from ..experiments.transformer import SelfAttention

__all__ = ["QKNormAttention", "AdaLayerNorm", "ScaledWSConv2d"]


class QKNormAttention(SelfAttention):
    """Self-attention with QK-norm (Dehghani et al. 2023): each head's queries and keys are
    layer-normalized over their D/H features before the dot product; (N, T, D) -> (N, T, D).

    Submodules: those of :class:`SelfAttention` plus ``q_norm`` and ``k_norm``
    (``nn.LayerNorm(D // H)``).
    """

    def __init__(self, d_model: int, n_heads: int, causal: bool = False):
        super().__init__(d_model, n_heads, causal=causal)
        d_head = d_model // n_heads
        self.q_norm = nn.LayerNorm(d_head)
        self.k_norm = nn.LayerNorm(d_head)

    def project(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        q, k, v = super().project(x)  # 3 x (N, H, T, D/H)
        return self.q_norm(q), self.k_norm(k), v


class AdaLayerNorm(nn.Module):
    """adaLN-Zero (Peebles & Xie 2023): layer norm whose shift and scale come from a condition,
    plus a gate for the residual branch, all zero at initialisation.

    Args:
        dim: D, the features normalized. cond_dim: C, the condition's size.
    forward(x, cond): x (N, D) or (N, T, D), cond (N, C) -> (y, gate):
        y = LN(x) * (1 + scale) + shift, shaped like x (LN without its own affine);
        gate of shape (N, D) or (N, 1, D), to multiply the residual branch's output.
        ``modulation`` (Linear C -> 3D) gives (shift, scale, gate) and starts at zero.
    """

    def __init__(self, dim: int, cond_dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.modulation = nn.Linear(cond_dim, 3 * dim)
        nn.init.zeros_(self.modulation.weight)
        nn.init.zeros_(self.modulation.bias)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        shift, scale, gate = self.modulation(cond).chunk(3, dim=-1)  # 3 x (N, D)
        if x.dim() == 3:  # one condition per sequence: broadcast over the T positions
            shift, scale, gate = shift[:, None], scale[:, None], gate[:, None]
        mean = x.mean(-1, keepdim=True)
        var = x.var(-1, unbiased=False, keepdim=True)
        y = (x - mean) / torch.sqrt(var + self.eps)
        return y * (1 + scale) + shift, gate


class ScaledWSConv2d(nn.Conv2d):
    """A Conv2d with scaled weight standardization (Brock et al. 2021a), as in NF-ResNets.

    Each output channel's filter W_i (C_in x kH x kW values, fan-in F) is used as
    ``gain_i * gamma * (W_i - mean(W_i)) / sqrt(F * (var(W_i) + eps))``: mean 0 and squared
    norm about gamma^2, so a unit-variance input gives an output of variance about gamma^2.
    ``gamma`` is the activation's gain (1 / std of the activation of a unit Gaussian, about
    1.71 for ReLU); ``gain`` is a learnable (C_out, 1, 1, 1) parameter starting at 1.
    Input (N, C_in, H, W) -> (N, C_out, H', W') as nn.Conv2d.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        padding: int = 0,
        bias: bool = True,
        gamma: float = 1.0,
        eps: float = 1e-6,
    ):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, bias=bias)
        self.gamma = float(gamma)
        self.eps = eps
        self.gain = nn.Parameter(torch.ones(out_channels, 1, 1, 1))

    def standardized_weight(self) -> torch.Tensor:
        """The weight the convolution uses: (C_out, C_in, kH, kW)."""
        w = self.weight
        fan_in = w[0].numel()
        mean = w.mean(dim=(1, 2, 3), keepdim=True)
        var = w.var(dim=(1, 2, 3), unbiased=False, keepdim=True)
        return self.gain * self.gamma * (w - mean) / torch.sqrt(fan_in * (var + self.eps))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.standardized_weight(), self.bias)
