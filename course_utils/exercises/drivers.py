"""Pieces the module exercises' ``run`` drivers share (lessons 03-06).

A module exercise builds the learner's ``nn.Module``, runs it forward and backward on the
case's inputs and returns plain arrays; while it runs, torch's own normalization kernels refuse
to work, so the in-notebook check catches a module that wraps them (the grader has its own
call trap for the same purpose).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

__all__ = ["kernels_blocked", "forward_backward"]

_KERNELS = ("batch_norm", "layer_norm", "group_norm", "instance_norm", "rms_norm")


@contextlib.contextmanager
def kernels_blocked(active: bool, what: str):
    """While active, torch's normalization functions raise a RuntimeError naming ``what``
    (the in-notebook check's counterpart of the grader's call trap)."""
    if not active:
        yield
        return
    import torch.nn.functional as tF

    def refuse(*args, **kwargs):
        raise RuntimeError(
            f"build {what} from primitive tensor operations (mean, arithmetic, sqrt); "
            "calling torch's own normalization is not allowed here"
        )

    saved = []
    for mod in (tF, torch):
        for name in _KERNELS:
            if hasattr(mod, name):
                saved.append((mod, name, getattr(mod, name)))
                setattr(mod, name, refuse)
    try:
        yield
    finally:
        for mod, name, fn in saved:
            setattr(mod, name, fn)


def forward_backward(
    m: nn.Module, x_np: np.ndarray, g_np: np.ndarray, grads: Sequence[str] = ("weight", "bias")
) -> dict[str, np.ndarray]:
    """Run ``m`` on ``x_np`` and backpropagate ``g_np`` (same shape) through it.

    Returns:
        ``{"output", "grad of x"}`` and ``"grad of NAME"`` for each name in ``grads`` that is
        a parameter of ``m`` (zeros when it received no gradient); all copies, shaped like
        x or like the parameter.
    Raises:
        ValueError: the module did not return a tensor shaped like x.
    """
    params = dict(m.named_parameters())
    for p in params.values():
        p.grad = None  # each call is judged on its own gradient, not an accumulated one
    x = torch.from_numpy(x_np.copy()).requires_grad_(True)
    y = m(x)
    if not isinstance(y, torch.Tensor) or tuple(y.shape) != tuple(x.shape):
        raise ValueError(f"the output must be a tensor shaped like x, {tuple(x.shape)}")
    y.backward(torch.from_numpy(g_np))
    out = {"output": y.detach().numpy().copy(), "grad of x": x.grad.numpy().copy()}
    for name in grads:
        if name in params:
            grad = params[name].grad
            out[f"grad of {name}"] = (
                np.zeros(tuple(params[name].shape)) if grad is None else grad.numpy().copy()
            )
    return out
