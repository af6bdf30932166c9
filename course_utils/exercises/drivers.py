"""Pieces the module exercises' ``run`` drivers share (lessons 03-07).

A module exercise builds the learner's ``nn.Module``, checks it has the parameters and buffers
torch's module has, loads the case's weights, runs it forward and backward on the case's inputs
and returns plain arrays. While it runs, torch's own normalization refuses to work
(:func:`~course_utils.exercises.forbidden.kernels_blocked`), so the in-notebook check catches
a module that wraps it (the grader has its own call trap for the same purpose).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = [
    "module_inputs",
    "random_modes",
    "modes_text",
    "require_names",
    "load_parameters",
    "parameter_shapes",
    "forward_backward",
    "call_sequence",
]


def module_inputs(
    rng: np.random.Generator, x: np.ndarray, param_shape: int | tuple[int, ...]
) -> dict[str, np.ndarray]:
    """A module case's data: the input ``x``, an upstream gradient ``"g"`` shaped like it, and
    a ``"weight"`` and ``"bias"`` of ``param_shape`` (float32, drawn from ``rng`` in that
    order) that the driver loads into the module."""
    return {
        "x": x,
        "g": rng.normal(size=x.shape).astype(np.float32),
        "weight": rng.uniform(0.5, 1.5, size=param_shape).astype(np.float32),
        "bias": rng.normal(size=param_shape).astype(np.float32),
    }


def random_modes(rng: np.random.Generator, calls: int, p_train: float) -> tuple[bool, ...]:
    """A sequence of calls to a module with running statistics (True: training mode): training
    first, then ``calls`` random modes (training with probability ``p_train``), eval last."""
    return (True,) + tuple(bool(m) for m in rng.random(calls) < p_train) + (False,)


def modes_text(modes: Sequence[bool]) -> str:
    """``"train, eval, train"``, for a case's label."""
    return ", ".join("train" if m else "eval" for m in modes)


def require_names(
    module: nn.Module, params: Sequence[str], buffers: Sequence[str] = (), shape: str = ""
) -> tuple[dict[str, nn.Parameter], dict[str, torch.Tensor]]:
    """The module's parameters and buffers by name; an AttributeError saying how to create the
    first of ``params`` / ``buffers`` it lacks (``shape``, like ``" (shape (C,))"``, is added
    to a missing parameter's message)."""
    have_p, have_b = dict(module.named_parameters()), dict(module.named_buffers())
    for name in params:
        if name not in have_p:
            raise AttributeError(
                f"no parameter named {name!r}: create it with nn.Parameter in __init__{shape}"
            )
    for name in buffers:
        if name not in have_b:
            raise AttributeError(
                f"no buffer named {name!r}: create it with self.register_buffer({name!r}, ...)"
                " so it is saved in state_dict but not trained"
            )
    return have_p, have_b


def load_parameters(params: Mapping[str, nn.Parameter], values: Mapping[str, Any]) -> None:
    """Copy ``values["weight"]`` and ``values["bias"]`` (arrays) into those of ``params`` that
    exist, so the learner's module and the reference start from the same weights."""
    with torch.no_grad():
        for name in ("weight", "bias"):
            if name in params:
                params[name].copy_(torch.from_numpy(values[name]))


def parameter_shapes(params: Mapping[str, nn.Parameter]) -> tuple[tuple[str, tuple], ...]:
    """``(name, shape)`` of each parameter, sorted by name: to compare with torch's module."""
    return tuple(sorted((k, tuple(v.shape)) for k, v in params.items()))


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


def call_sequence(
    m: nn.Module,
    meta: Mapping[str, Any],
    buffers: Mapping[str, torch.Tensor],
    stats: Sequence[str] = ("running_mean", "running_var"),
    counters: Sequence[str] = (),
) -> dict[str, Any]:
    """Call ``m`` once per mode of ``meta["modes"]`` (True: training), each on its own input
    ``meta["xs"][i]`` (shape S) with upstream gradient ``meta["gs"][i]``, and record the
    running statistics after each call.

    Returns:
        ``"call I (train|eval): KEY"`` for the keys of :func:`forward_backward` (with the
        weight's gradient), for each buffer of ``stats`` (a copy of the array) and of
        ``counters`` (an int, like ``num_batches_tracked``).
    """
    out: dict[str, Any] = {}
    for i, (x_np, g_np, training) in enumerate(zip(meta["xs"], meta["gs"], meta["modes"]), 1):
        tag = f"call {i} ({'train' if training else 'eval'})"
        m.train(training)
        step = forward_backward(m, x_np, g_np, grads=("weight",))
        out.update({f"{tag}: {k}": v for k, v in step.items()})
        for name in stats:
            out[f"{tag}: {name}"] = buffers[name].detach().numpy().copy()
        for name in counters:
            out[f"{tag}: {name}"] = int(buffers[name])
    return out
