"""Lesson 07 (instance and group norm): instance-norm and group-norm forward, group-norm
backward, and a GroupNorm module."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .core import (
    Case,
    Exercise,
    answer,
    autograd_gradients,
    compare,
    gradient_diagnosis,
    numerical_gradient,
    reference_functional,
)
from .drivers import forward_backward, load_parameters, module_inputs, parameter_shapes
from .forbidden import BACKWARD_BY_HAND, forbidden_except, kernels_blocked
from .mistakes import normalization_mistake
from .registry import register

GRAD_TOL = 1e-6


def _maps(rng: np.random.Generator, shape) -> np.ndarray:
    """(N, C, H, W) maps whose samples and channels have their own offsets and scales."""
    n, c = shape[:2]
    scale = rng.uniform(0.3, 4, size=(n, c) + (1,) * (len(shape) - 2))
    shift = rng.uniform(-3, 3, size=(n, c) + (1,) * (len(shape) - 2))
    return rng.normal(size=shape) * scale + shift


def _normalize(x, axes, eps):
    mu = x.mean(axes, keepdims=True)
    return (x - mu) / np.sqrt(((x - mu) ** 2).mean(axes, keepdims=True) + eps)


def _per_channel(v, ndim):
    return np.asarray(v).reshape((1, -1) + (1,) * (ndim - 2))


# ------------------------------------------------------------------------------------------
# 07.instance_norm_forward and 07.group_norm_forward
# ------------------------------------------------------------------------------------------


def _forward_cases(group: bool):
    def cases(rng: np.random.Generator, hidden: bool) -> list[Case]:
        if not hidden:
            specs = [
                ((2, 4, 3, 3), 2, 1e-5),
                ((3, 6, 4, 5), 3, 1e-5),
                ((1, 4, 2, 2), 4, 1e-3),
                ((2, 6, 3, 3), 1, 1e-5),
            ]
        else:
            specs = []
            for _ in range(4):
                g = int(rng.integers(1, 5))
                c = g * int(rng.integers(1, 4))
                specs.append(
                    (
                        (
                            int(rng.integers(1, 5)),
                            c,
                            int(rng.integers(2, 6)),
                            int(rng.integers(2, 6)),
                        ),
                        g,
                        float(rng.choice([1e-5, 1e-3])),
                    )
                )
        out = []
        for shape, g, eps in specs:
            c = shape[1]
            x = _maps(rng, shape)
            gamma, beta = rng.uniform(0.5, 2, size=c), rng.normal(size=c)
            if group:
                out.append(
                    Case(
                        args=(x, g, gamma, beta),
                        kwargs={"eps": eps},
                        label=f"x of shape {shape}, num_groups={g}",
                    )
                )
            else:
                out.append(
                    Case(args=(x, gamma, beta), kwargs={"eps": eps}, label=f"x of shape {shape}")
                )
        return out

    return cases


def _in_diagnose(got, expected, case: Case) -> str | None:
    try:
        g = np.asarray(got, dtype=np.float64)
    except (TypeError, ValueError):
        return None
    if g.shape != np.shape(expected) or compare(g, expected) is None:
        return None
    x, gamma, beta = (np.asarray(a, dtype=np.float64) for a in case.args)
    eps = case.kwargs["eps"]
    w, b = _per_channel(gamma, x.ndim), _per_channel(beta, x.ndim)
    for axes, what in (
        ((0, 2, 3), "over N, H and W: that is batch norm"),
        ((1, 2, 3), "over C, H and W: that is layer norm"),
    ):
        if compare(g, _normalize(x, axes, eps) * w + b) is None:
            return (
                f"statistics computed {what}. Instance norm uses one mean and variance per "
                "sample and channel, over H and W: x.mean(axis=(2, 3), keepdims=True)"
            )
    # the usual slips: N - 1, eps misplaced or missing, gamma and beta forgotten
    return normalization_mistake(g, x, (2, 3), eps, w, b, other_axes={})


def _gn_diagnose(got, expected, case: Case) -> str | None:
    try:
        g = np.asarray(got, dtype=np.float64)
    except (TypeError, ValueError):
        return None
    if g.shape != np.shape(expected) or compare(g, expected) is None:
        return None
    x, groups, gamma, beta = case.args
    x = np.asarray(x, dtype=np.float64)
    eps = case.kwargs["eps"]
    n, c = x.shape[:2]
    w, b = _per_channel(gamma, x.ndim), _per_channel(beta, x.ndim)
    if groups not in (1, c):
        strided = x.reshape(n, c // groups, groups, -1)
        wrong = _normalize(strided, (1, 3), eps).reshape(x.shape) * w + b
        if compare(g, wrong) is None:
            return (
                "your groups take every G-th channel; a group is C // G *consecutive* "
                "channels: x.reshape(N, G, C // G, H, W), statistics over axes (2, 3, 4)"
            )
    if compare(g, _normalize(x, (2, 3), eps) * w + b) is None and groups != c:
        return (
            "one mean per channel (that is instance norm): pool each group's C // G "
            "channels together with H and W"
        )
    if compare(g, _normalize(x, (1, 2, 3), eps) * w + b) is None and groups != 1:
        return (
            "one mean per sample over all channels (that is layer norm, G = 1): "
            "split C into G groups"
        )
    grouped = _normalize(x.reshape(n, groups, -1), (2,), eps).reshape(x.shape)
    if compare(g, grouped) is None:
        return "gamma and beta are missing: scale and shift per channel after normalizing"
    # the usual slips (N - 1, eps misplaced or missing), in the grouped view (N, G, C/G*H*W)
    gw, gb = (np.broadcast_to(v, x.shape).reshape(n, groups, -1) for v in (w, b))
    return normalization_mistake(
        g.reshape(n, groups, -1), x.reshape(n, groups, -1), (2,), eps, gw, gb, other_axes={}
    )


# ------------------------------------------------------------------------------------------
# 07.group_norm_backward
# ------------------------------------------------------------------------------------------


def _backward_cases(rng: np.random.Generator, hidden: bool) -> list[Case]:
    if not hidden:
        specs = [((2, 4, 2, 2), 2, 1e-5), ((2, 6, 3, 2), 3, 1e-5), ((3, 2, 2, 3), 1, 1e-3)]
    else:
        specs = []
        for _ in range(3):
            g = int(rng.integers(1, 4))
            specs.append(
                (
                    (
                        int(rng.integers(1, 4)),
                        g * int(rng.integers(1, 3)),
                        int(rng.integers(2, 4)),
                        int(rng.integers(1, 4)),
                    ),
                    g,
                    float(rng.choice([1e-5, 1e-3])),
                )
            )
    out = []
    for shape, g, eps in specs:
        x = _maps(rng, shape)
        out.append(
            Case(
                args=(rng.normal(size=shape), x, g, rng.uniform(0.5, 2, size=shape[1])),
                kwargs={"eps": eps},
                label=f"x of shape {shape}, num_groups={g}",
            )
        )
    return out


def _torch_gn(x, gamma, groups, eps):
    n, c = x.shape[:2]
    xg = x.reshape(n, groups, -1)
    mu = xg.mean(2, keepdim=True)
    var = ((xg - mu) ** 2).mean(2, keepdim=True)
    y = ((xg - mu) / torch.sqrt(var + eps)).reshape(x.shape)
    return y * gamma.reshape((1, -1) + (1,) * (x.dim() - 2))


def _gn_backward_diagnose(got, expected, case: Case) -> str | None:
    if not isinstance(got, (tuple, list)):
        return "return a tuple (dx, dgamma, dbeta)"
    if len(got) != 3:
        return f"return 3 arrays (dx, dgamma, dbeta), got {len(got)}"
    dout, x, groups, gamma = case.args
    dout, x, gamma = (np.asarray(a, dtype=np.float64) for a in (dout, x, gamma))
    eps = case.kwargs["eps"]
    auto = autograd_gradients(lambda x_, g_: _torch_gn(x_, g_, groups, eps), (x, gamma), dout)

    def f(x_):
        return reference_functional().group_norm(x_, groups, gamma, None, eps)

    num = numerical_gradient(f, x, dout)
    msg = gradient_diagnosis(
        got[0], {"the numerical gradient": num, "torch.autograd": auto[0]}, "dx", GRAD_TOL
    )
    if msg:
        return msg
    msg = gradient_diagnosis(got[1], {"torch.autograd": auto[1]}, "dgamma", GRAD_TOL)
    if msg:
        return msg
    return gradient_diagnosis(
        got[2], {"the sum of dout over N, H, W": dout.sum((0, 2, 3))}, "dbeta", GRAD_TOL
    )


# ------------------------------------------------------------------------------------------
# 07.GroupNorm module
# ------------------------------------------------------------------------------------------


def _module_cases(rng: np.random.Generator, hidden: bool) -> list[Case]:
    if not hidden:
        specs = [
            (2, 4, (3, 4, 3, 3), {}),
            (3, 6, (2, 6, 4, 4), {"eps": 1e-3}),
            (1, 4, (2, 4, 3, 3), {"affine": False}),
            (4, 4, (2, 4, 2, 3), {}),
            (2, 4, (3, 4, 5), {}),
            (3, 4, None, {}),
        ]
    else:
        specs = []
        for _ in range(4):
            g = int(rng.integers(1, 4))
            c = g * int(rng.integers(1, 4))
            kw = {"affine": False} if rng.random() < 0.25 else {}
            specs.append(
                (
                    g,
                    c,
                    (int(rng.integers(1, 4)), c, int(rng.integers(2, 5)), int(rng.integers(2, 5))),
                    kw,
                )
            )
        specs.append((int(rng.integers(2, 5)), 7, None, {}))  # 7 channels: never divisible
    out = []
    for g, c, shape, kw in specs:
        label = f"GroupNorm({g}, {c}{''.join(f', {k}={v}' for k, v in kw.items())})"
        if shape is None:
            out.append(
                Case(
                    args=(g, c), kwargs=kw, label=label + ": C not divisible by G", meta={"x": None}
                )
            )
            continue
        x = _maps(rng, shape).astype(np.float32)
        out.append(
            Case(
                args=(g, c),
                kwargs=kw,
                label=f"{label}, x of shape {shape}",
                meta=module_inputs(rng, x, c),
            )
        )
    return out


def _module_run(cls, case: Case):
    meta = case.meta
    trusted = cls is nn.GroupNorm
    try:
        m = cls(*case.args, **case.kwargs)
    except ValueError:
        return "ValueError"
    if meta["x"] is None:
        return "no error"
    if isinstance(m, nn.GroupNorm) and not trusted:
        raise TypeError("subclass nn.Module, not nn.GroupNorm, and build it from tensor operations")
    params = dict(m.named_parameters())
    out: dict = {"parameters": parameter_shapes(params)}
    load_parameters(params, meta)
    with kernels_blocked(not trusted, "GroupNorm"):
        out.update(forward_backward(m, meta["x"], meta["g"]))
    return out


def _module_diagnose(got, expected, case: Case) -> str | None:
    if expected == "ValueError" and got != "ValueError":
        g, c = case.args
        return (
            f"GroupNorm({g}, {c}) must raise ValueError('num_channels ({c}) must be divisible by "
            f"num_groups ({g})') in __init__, as torch does"
        )
    if not isinstance(got, dict) or not isinstance(expected, dict):
        return None
    if got.get("parameters") != expected["parameters"]:
        return (
            f"parameters are {list(got.get('parameters', ()))}, torch's are "
            f"{list(expected['parameters'])} (weight ones and bias zeros of shape (C,); "
            "affine=False has neither)"
        )
    if compare(got.get("output"), expected["output"], atol=1e-4, rtol=1e-4):
        x = case.meta["x"].astype(np.float64)
        g = case.args[0]
        w = _per_channel(case.meta["weight"], x.ndim)
        b = _per_channel(case.meta["bias"], x.ndim)
        if not case.kwargs.get("affine", True):
            w, b = 1.0, 0.0
        n, c = x.shape[:2]
        if g not in (1, c):
            strided = _normalize(x.reshape(n, c // g, g, -1), (1, 3), 1e-5).reshape(x.shape)
            if compare(got["output"], strided * w + b, atol=1e-4, rtol=1e-4) is None:
                return (
                    "your groups take every G-th channel; a group is C // G consecutive "
                    "channels: x.reshape(N, G, -1)"
                )
    return None


register(
    Exercise(
        id="07.instance_norm_forward",
        name="instance_norm_forward",
        points=1,
        title="Instance-norm forward: normalize each channel of each sample over H and W",
        reference=answer("07", "instance_norm_forward"),
        cases=_forward_cases(group=False),
        diagnose=_in_diagnose,
        atol=1e-7,
        rtol=1e-6,
        hints=(
            "Instance norm pools one sample and one channel at a time: which axes of "
            "(N, C, H, W) does each mean run over, and which shape should it keep for "
            "broadcasting?",
            "mu = x.mean(axis=(2, 3), keepdims=True) has shape (N, C, 1, 1); the "
            "biased variance likewise; normalize with np.sqrt(var + eps).",
            "gamma and beta have shape (C,): reshape them to (1, C, 1, 1) to broadcast.",
        ),
    ),
    Exercise(
        id="07.group_norm_forward",
        name="group_norm_forward",
        points=2,
        title="Group-norm forward: normalize groups of C // G consecutive channels with H and W",
        reference=answer("07", "group_norm_forward"),
        cases=_forward_cases(group=True),
        diagnose=_gn_diagnose,
        atol=1e-7,
        rtol=1e-6,
        hints=(
            "A group is C // G consecutive channels of one sample. Can you reshape x "
            "so that each group's values lie along one axis?",
            "xg = x.reshape(N, num_groups, -1): each row of xg is one group of one "
            "sample. mu = xg.mean(axis=2, keepdims=True), var = ((xg - mu) ** "
            "2).mean(axis=2, keepdims=True); normalize, reshape back to x.shape.",
            "Then * gamma.reshape(1, C, 1, 1) + beta.reshape(1, C, 1, 1): the scale "
            "and shift are per channel, not per group.",
        ),
    ),
    Exercise(
        id="07.group_norm_backward",
        name="group_norm_backward",
        points=3,
        title="Group-norm backward: dx, dgamma, dbeta",
        reference=answer("07", "group_norm_backward"),
        cases=_backward_cases,
        diagnose=_gn_backward_diagnose,
        atol=1e-7,
        rtol=1e-5,
        forbidden=BACKWARD_BY_HAND,
        hints=(
            "Inside one group this is layer norm's backward. Which view of the tensor "
            "makes every group one row, and which parameters stay per channel?",
            "dbeta = dout.sum(axis=(0, 2, 3)) and dgamma = (dout * x_hat).sum(axis=(0, "
            "2, 3)). For dx, work in the grouped view: g = (dout * gamma[per "
            "channel]).reshape(N, G, -1) and x_hat.reshape(N, G, -1); every mean runs "
            "over axis 2 (one group).",
            "dx = (g - g.mean(2, keepdims=True) - xh * (g * xh).mean(2, "
            "keepdims=True)) / np.sqrt(var + eps), then reshape to x.shape.",
        ),
    ),
    Exercise(
        id="07.GroupNorm",
        name="GroupNorm",
        points=2,
        title="A GroupNorm nn.Module from primitive ops that matches torch.nn.GroupNorm",
        reference=answer("07", "GroupNorm"),
        cases=_module_cases,
        run=_module_run,
        diagnose=_module_diagnose,
        atol=1e-5,
        rtol=1e-4,
        forbidden=forbidden_except("GroupNorm"),
        hints=(
            "Mirror torch: nn.GroupNorm checks its arguments when it is built and has "
            "per-channel parameters. What must happen when C is not divisible by G?",
            "In __init__, raise ValueError(f'num_channels ({C}) must be divisible by "
            "num_groups ({G})') when C % G != 0. Parameters when affine: weight = "
            "nn.Parameter(torch.ones(C)), bias = nn.Parameter(torch.zeros(C)); "
            "otherwise register_parameter('weight', None) and the same for bias.",
            "forward for (N, C, *): xg = x.reshape(N, G, -1); mean and biased variance "
            "over dim 2; normalize, reshape to x.shape, then weight and bias viewed as "
            "(1, C, 1, ...).",
        ),
    ),
)
