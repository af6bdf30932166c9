"""Lesson 04's measurement on a single model: how much a gradient depends on the batch split."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["gradient_split_error"]


def gradient_split_error(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, sizes: Sequence[int] = (64, 16, 4, 2)
) -> dict[int, float]:
    """How much the gradient of a batch changes when it is computed in smaller batches.

    For each size b: the average of the gradients of the ``len(x) // b`` consecutive batches
    of size b, compared with the gradient of the whole batch ``x`` (all in training mode):
    ``|g_split - g_whole| / |g_whole|`` over all parameters. Per-sample normalizations give
    (numerically) zero, because the loss is a mean of per-sample terms; batch norm does not.
    Running statistics are restored afterwards.
    """
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    was_training = model.training
    model.train()

    def grad(xb, yb):
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(xb), yb).backward()
        return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])

    whole = grad(x, y)
    out = {}
    for b in sizes:
        parts = [grad(x[i : i + b], y[i : i + b]) for i in range(0, len(x) - b + 1, b)]
        split = torch.stack(parts).mean(0)
        out[b] = float((split - whole).norm() / whole.norm())
    model.zero_grad(set_to_none=True)
    model.load_state_dict(saved)
    model.train(was_training)
    return out
