"""Answers of lesson 09 (best practices): weight-decay groups, recalibration, the capstone's fix."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from ..data import batches
from ..experiments import capstone
from ..experiments.practice import is_norm_layer

__all__ = ["param_groups", "recalibrate_bn", "train_fixed"]


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two optimizer groups: weights of Linear/Conv layers with ``weight_decay``, every bias
    and every parameter of a normalization layer without."""
    decay, no_decay = [], []
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            (no_decay if is_norm_layer(module) or name == "bias" else decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


@torch.no_grad()
def recalibrate_bn(model: nn.Module, x: torch.Tensor, batch_size: int = 256) -> nn.Module:
    """Recompute every batch-norm layer's running statistics from ``x`` (equal-weight average
    over batches of ``batch_size``), then return the model in eval mode."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the batches that follow
    model.train()
    for i in range(0, len(x), batch_size):
        model(x[i : i + batch_size])
    for m, mom in zip(bns, saved):
        m.momentum = mom
    return model.eval()


def train_fixed(data, seed: int) -> nn.Module:
    """The trusted fix of :func:`~course_utils.experiments.capstone.train_broken`: standardized
    inputs (inside the model), batch norm before tanh, batches of 64, eval mode at the end."""
    torch.manual_seed(seed)
    model = nn.Sequential(
        capstone.Standardize(data.x_train.mean(), data.x_train.std()),
        nn.Linear(784, 128, bias=False),
        nn.BatchNorm1d(128),
        nn.Tanh(),
        nn.Linear(128, 128, bias=False),
        nn.BatchNorm1d(128),
        nn.Tanh(),
        nn.Linear(128, 10),
    )
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for _, (xb, yb) in zip(
        range(400), batches(data.x_train, data.y_train, batch_size=64, seed=seed)
    ):
        loss = F.cross_entropy(model(xb), yb)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()
