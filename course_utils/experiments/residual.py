"""Residual MLPs for lessons 08 and 09: where the batch norm sits in a residual block, and
what happens without any normalization.

- :class:`ResidualBlock`: ``variant="original"`` (He et al. 2015) or ``"preact"`` (He et al.
  2016); ``norm="batch"`` or ``"none"``.
- :class:`ResidualMLP`: a stem, ``depth`` blocks and a head; ``init="he"`` or ``"fixup"``
  (Zhang et al. 2019, simplified: see the class docstring).
- :func:`signal_through_depth`: forward std and gradient norm at every block, one batch.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .. import seeds as seeding

__all__ = ["RESIDUAL_VARIANTS", "ResidualBlock", "ResidualMLP", "signal_through_depth"]

RESIDUAL_VARIANTS = ("original", "preact")


class ResidualBlock(nn.Module):
    """A residual block of two Linear layers of width D; (N, D) -> (N, D).

    ``variant="original"`` (He et al. 2015)::

        y = relu(x + bn2(fc2(relu(bn1(fc1(x))))))

    ``variant="preact"`` (He et al. 2016, "identity mappings")::

        y = x + fc2(relu(bn2(fc1(relu(bn1(x))))))

    ``norm="none"`` replaces bn1 and bn2 by identities. ``scale`` multiplies the residual
    branch (a learnable scalar, 1 at the start; Fixup sets it up, see :class:`ResidualMLP`).
    """

    def __init__(self, width: int, variant: str = "preact", norm: str = "batch"):
        super().__init__()
        if variant not in RESIDUAL_VARIANTS:
            raise ValueError(f"variant must be one of {RESIDUAL_VARIANTS}, got {variant!r}")
        if norm not in ("batch", "none"):
            raise ValueError(f"norm must be 'batch' or 'none', got {norm!r}")
        self.variant = variant
        bias = norm == "none"
        self.fc1 = nn.Linear(width, width, bias=bias)
        self.bn1 = nn.BatchNorm1d(width) if norm == "batch" else nn.Identity()
        self.fc2 = nn.Linear(width, width, bias=bias)
        self.bn2 = nn.BatchNorm1d(width) if norm == "batch" else nn.Identity()
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.variant == "original":
            return F.relu(x + self.scale * self.bn2(self.fc2(F.relu(self.bn1(self.fc1(x))))))
        return x + self.scale * self.fc2(F.relu(self.bn2(self.fc1(F.relu(self.bn1(x))))))


class ResidualMLP(nn.Module):
    """Stem Linear 784 -> D, ``depth`` :class:`ResidualBlock` s, a head; (N, 784) -> (N, 10).

    The pre-activation stack with batch norm ends with BN and ReLU before the head (the
    residual stream itself is never normalized), as in He et al. 2016.

    ``init="he"``: every Linear is Kaiming-normal, biases zero. ``init="fixup"`` (a simplified
    Fixup, Zhang et al. 2019, for norm-free stacks): the last layer of every branch (fc2) and
    the head start at zero, fc1 is He-initialised and scaled by ``depth ** -0.5``
    (L^(-1/(2m-2)) with m=2 layers per branch), and each branch has a learnable scalar
    multiplier; the paper's scalar biases are left out. Every block then starts as the
    identity, so the signal neither grows nor shrinks with depth at initialisation.
    """

    def __init__(
        self,
        depth: int = 16,
        width: int = 64,
        variant: str = "preact",
        norm: str = "batch",
        init: str = "he",
        in_features: int = 784,
        out_features: int = 10,
        seed: int | None = 0,
    ):
        super().__init__()
        if init not in ("he", "fixup"):
            raise ValueError(f"init must be 'he' or 'fixup', got {init!r}")
        if seed is not None:
            seeding.torch_seed(seed)
        self.variant, self.norm, self.init = variant, norm, init
        self.stem = nn.Linear(in_features, width)
        self.blocks = nn.ModuleList(ResidualBlock(width, variant, norm) for _ in range(depth))
        self.final = (
            nn.Sequential(nn.BatchNorm1d(width), nn.ReLU())
            if variant == "preact" and norm == "batch"
            else nn.Identity()
        )
        self.head = nn.Linear(width, out_features)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        if init == "fixup":
            with torch.no_grad():
                for b in self.blocks:
                    b.fc1.weight.mul_(depth**-0.5)
                    b.fc2.weight.zero_()
                self.head.weight.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x.flatten(1))
        for block in self.blocks:
            x = block(x)
        return self.head(self.final(x))


def signal_through_depth(
    model: ResidualMLP, x: torch.Tensor, y: torch.Tensor
) -> dict[str, np.ndarray]:
    """Forward std of each block's output and the gradient norm at each block's input, one batch.

    Returns ``{"std": (depth,), "grad": (depth,)}``; ``grad[i]`` is the norm of the loss
    gradient with respect to the input of block i. The model is left in training mode with
    its gradients cleared (its running statistics see this one batch).
    """
    model.train()
    outs, ins = [], []

    def hook(module, inputs, output):
        inputs[0].retain_grad()
        ins.append(inputs[0])
        outs.append(float(output.detach().std()))

    handles = [b.register_forward_hook(hook) for b in model.blocks]
    try:
        loss = F.cross_entropy(model(x), y)
        if torch.isfinite(loss):
            loss.backward()
    finally:
        for h in handles:
            h.remove()
    grads = np.array([float(t.grad.norm()) if t.grad is not None else np.nan for t in ins])
    model.zero_grad(set_to_none=True)
    return {"std": np.array(outs), "grad": grads}
