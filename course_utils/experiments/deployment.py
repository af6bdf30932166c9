"""Lesson 10: batch norm folded into the layer before it, for inference.

- :func:`fold_model`: a copy of a model with every Linear/Conv -> BatchNorm pair of an
  ``nn.Sequential`` (the course's blocks are) folded into one layer, the batch norm replaced
  by ``nn.Identity``; uses the course's ``fold_bn``.
- :func:`time_inference`: per-call CPU times of several models on one input, interleaved so
  that a busy machine slows every model alike; :func:`median_ratio` summarises them.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping

import numpy as np
import torch
from torch import nn

from .timing import time_samples

__all__ = ["fold_model", "count_batch_norms", "time_inference", "median_ratio"]

_FOLDABLE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _fold_bn():
    from ..answers.lesson10 import fold_bn

    return fold_bn


def count_batch_norms(model: nn.Module) -> int:
    """How many batch-norm layers ``model`` holds."""
    return sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def fold_model(model: nn.Module) -> nn.Module:
    """A copy of ``model`` in eval mode with each layer -> batch norm pair folded.

    Pairs are found as consecutive children of an ``nn.Sequential`` (a Linear or Conv layer,
    then a batch norm); other batch norms are left as they are. ``model`` is not changed.
    """
    fold_bn = _fold_bn()
    folded = copy.deepcopy(model).eval()
    for seq in [m for m in folded.modules() if isinstance(m, nn.Sequential)]:
        names = list(seq._modules)
        for first, second in zip(names, names[1:]):
            layer, bn = seq._modules[first], seq._modules[second]
            if isinstance(layer, _FOLDABLE) and isinstance(bn, nn.modules.batchnorm._BatchNorm):
                seq._modules[first] = fold_bn(layer, bn)
                seq._modules[second] = nn.Identity()
    return folded


@torch.no_grad()
def time_inference(
    models: Mapping[str, nn.Module], x: torch.Tensor, repeats: int = 21, number: int = 3
) -> dict[str, np.ndarray]:
    """Seconds per forward pass of each model on ``x``: an array of ``repeats`` samples each.

    Each sample times ``number`` calls; the models take turns sample by sample, on the CPU-time
    clock of :func:`~course_utils.experiments.timing.time_samples`, so load from other
    processes falls on all of them alike. Every model runs in eval mode.
    """
    for m in models.values():
        m.eval()
    calls = {name: (lambda m=m: m(x)) for name, m in models.items()}
    return time_samples(calls, repeat=repeats, number=number, warmup=1)


def median_ratio(times: Mapping[str, np.ndarray], numerator: str, denominator: str) -> float:
    """median(times[numerator]) / median(times[denominator])."""
    return float(np.median(times[numerator]) / np.median(times[denominator]))
