"""Answers of lesson 02 (activations and covariate shift)."""

from __future__ import annotations

import numpy as np
import torch

from ..models import MLP

__all__ = ["activation_stats"]


def activation_stats(model: MLP, x: torch.Tensor, threshold: float = 0.97) -> dict[str, np.ndarray]:
    """Mean, standard deviation and saturated fraction of every hidden layer's activations.

    Hooks each ``model.blocks[i].act``, runs one forward pass on ``x`` without tracking
    gradients, and removes the hooks again.

    Args:
        model: a course MLP with L hidden blocks. x: (N, D_in) inputs.
        threshold: a value counts as saturated when ``|a| > threshold``.
    Returns:
        ``{"mean": (L,), "std": (L,), "saturated": (L,)}`` NumPy float64 arrays; ``std`` is
        the unbiased standard deviation of all N * width values of a layer.
    """
    outputs: list[torch.Tensor] = []
    handles = [
        b.act.register_forward_hook(lambda m, i, o: outputs.append(o.detach()))
        for b in model.blocks
    ]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    a = [o.double() for o in outputs]
    return {
        "mean": np.array([float(o.mean()) for o in a]),
        "std": np.array([float(o.std()) for o in a]),
        "saturated": np.array([float((o.abs() > threshold).double().mean()) for o in a]),
    }
