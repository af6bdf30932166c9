"""Lesson 06 (layer norm and RMS norm): forward and backward of both, and a LayerNorm module."""

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
    train_eval_diagnosis,
)
from .drivers import forward_backward, load_parameters, module_inputs, parameter_shapes
from .forbidden import BACKWARD_BY_HAND, forbidden_except, kernels_blocked
from .mistakes import normalization_mistake
from .registry import register

GRAD_TOL = 1e-6  # largest relative error accepted for a gradient (float64 inputs)


def _reference_layer_norm():
    """course_utils.reference's LayerNorm (trusted), or None inside the grader's sandbox."""
    try:
        from ..reference.modules import LayerNorm
    except ImportError:
        return None
    return LayerNorm


def _rows(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    """(n, d) rows with their own offsets and scales (layer norm must handle each row)."""
    return rng.normal(size=(n, d)) * rng.uniform(0.2, 5, size=(n, 1)) + rng.uniform(-4, 4, (n, 1))


# ------------------------------------------------------------------------------------------
# forward exercises
# ------------------------------------------------------------------------------------------


def _forward_cases(with_beta: bool):
    def cases(rng: np.random.Generator, hidden: bool) -> list[Case]:
        if not hidden:
            shapes = [((4, 5), 1e-5), ((2, 3, 8), 1e-5), ((6, 1), 1e-3), ((1, 7), 1e-5)]
        else:
            shapes = []
            for _ in range(4):
                lead = tuple(int(v) for v in rng.integers(1, 7, size=int(rng.integers(1, 3))))
                shapes.append((lead + (int(rng.integers(1, 17)),), float(rng.choice([1e-5, 1e-3]))))
        out = []
        for shape, eps in shapes:
            d = shape[-1]
            x = _rows(rng, int(np.prod(shape[:-1])), d).reshape(shape)
            gamma = rng.uniform(0.5, 2.0, size=d)
            beta = rng.normal(size=d)
            args = (x, gamma, beta) if with_beta else (x, gamma)
            label = f"x of shape {shape}" + (", D = 1 (a single feature)" if d == 1 else "")
            out.append(Case(args=args, kwargs={"eps": eps}, label=label))
        return out

    return cases


def _forward_diagnose(kind: str):
    def diagnose(got, expected, case: Case) -> str | None:
        try:
            g = np.asarray(got, dtype=np.float64)
        except (TypeError, ValueError):
            return None
        if g.shape != np.shape(expected) or np.allclose(g, expected, rtol=1e-8, atol=1e-10):
            return None
        x = np.asarray(case.args[0], dtype=np.float64)
        gamma = case.args[1]
        beta = case.args[2] if kind == "layer" else None
        eps = case.kwargs["eps"]
        wrong_axes = {"over the batch (axis 0): that is batch norm": (0,)} if x.ndim >= 2 else {}
        if kind == "rms":
            centred = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + eps)
            if compare(g, centred * gamma) is None:
                return (
                    "your output subtracts the mean: RMS norm does not centre, it divides x "
                    "by sqrt(mean(x**2) + eps)"
                )
        # the usual slips: N - 1, eps misplaced or missing, the wrong axis
        return normalization_mistake(
            g, x, (-1,), eps, gamma, beta, center=kind == "layer", other_axes=wrong_axes
        )

    return diagnose


# ------------------------------------------------------------------------------------------
# backward exercises
# ------------------------------------------------------------------------------------------


def _backward_cases(rng: np.random.Generator, hidden: bool) -> list[Case]:
    if not hidden:
        specs = [(4, 5, 1e-5), (8, 3, 1e-5), (3, 6, 1e-3)]
    else:
        specs = [
            (int(rng.integers(1, 9)), int(rng.integers(2, 10)), float(rng.choice([1e-5, 1e-3])))
            for _ in range(3)
        ]
    out = []
    for n, d, eps in specs:
        x = _rows(rng, n, d)
        out.append(
            Case(
                args=(rng.normal(size=(n, d)), x, rng.uniform(0.5, 2.0, size=d)),
                kwargs={"eps": eps},
                label=f"x of shape ({n}, {d})",
            )
        )
    return out


def _torch_ln(x, gamma, beta, eps):
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + eps) * gamma + beta


def _torch_rms(x, weight, eps):
    return x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps) * weight


def _backward_diagnose(kind: str):
    names = ("dx", "dgamma", "dbeta") if kind == "layer" else ("dx", "dweight")

    def diagnose(got, expected, case: Case) -> str | None:
        if not isinstance(got, (tuple, list)):
            return f"return a tuple {tuple(names)}"
        if len(got) != len(names):
            return f"return {len(names)} arrays {tuple(names)}, got {len(got)}"
        dout, x, gamma = (np.asarray(a, dtype=np.float64) for a in case.args)
        eps = case.kwargs["eps"]
        if kind == "layer":
            beta = np.zeros_like(gamma)
            auto = autograd_gradients(
                lambda x_, g_, b_: _torch_ln(x_, g_, b_, eps), (x, gamma, beta), dout
            )

            def f(x_):
                return reference_functional().layer_norm(x_, x_.shape[-1], gamma, None, eps)
        else:
            auto = autograd_gradients(lambda x_, g_: _torch_rms(x_, g_, eps), (x, gamma), dout)

            def f(x_):
                return reference_functional().rms_norm(x_, x_.shape[-1], gamma, eps)

        num = numerical_gradient(f, x, dout)
        msg = gradient_diagnosis(
            got[0], {"the numerical gradient": num, "torch.autograd": auto[0]}, "dx", GRAD_TOL
        )
        if msg:
            return msg
        for i, name in enumerate(names[1:], 1):
            msg = gradient_diagnosis(got[i], {"torch.autograd": auto[i]}, name, GRAD_TOL)
            if msg:
                return msg
        return None

    return diagnose


# ------------------------------------------------------------------------------------------
# 06.LayerNorm module
# ------------------------------------------------------------------------------------------


def _module_cases(rng: np.random.Generator, hidden: bool) -> list[Case]:
    if not hidden:
        specs = [
            ((4, 6), 6, {}),
            ((2, 3, 5), 5, {"eps": 1e-3}),
            ((3, 4, 5), (4, 5), {}),
            ((4, 6), 6, {"elementwise_affine": False}),
            ((5, 4), 4, {"bias": False}),
            ((1, 3), 3, {}),
        ]
    else:
        specs = []
        for _ in range(4):
            # d >= 2: one feature normalizes to exactly beta, its gradient is rounding noise
            d = int(rng.integers(2, 9))
            kw = dict([("eps", 1e-3)] if rng.random() < 0.3 else [])
            r = rng.random()
            if r < 0.2:
                kw["elementwise_affine"] = False
            elif r < 0.4:
                kw["bias"] = False
            if rng.random() < 0.3:
                t = int(rng.integers(2, 5))
                specs.append(((int(rng.integers(1, 5)), t, d), (t, d), kw))
            else:
                specs.append(((int(rng.integers(1, 7)), d), d, kw))
    out = []
    for shape, ns, kw in specs:
        ns_shape = (ns,) if isinstance(ns, int) else tuple(ns)
        x = (rng.normal(size=shape) * rng.uniform(0.5, 3) + rng.uniform(-3, 3)).astype(np.float32)
        out.append(
            Case(
                args=(ns,),
                kwargs=kw,
                label=f"LayerNorm({ns}{''.join(f', {k}={v}' for k, v in kw.items())}), "
                f"x of shape {shape}",
                meta=module_inputs(rng, x, ns_shape),
            )
        )
    return out


def _module_run(cls, case: Case) -> dict:
    meta = case.meta
    trusted = cls is nn.LayerNorm or cls is _reference_layer_norm()
    m = cls(*case.args, **case.kwargs)
    if isinstance(m, nn.LayerNorm) and not trusted:
        raise TypeError("subclass nn.Module, not nn.LayerNorm, and build it from tensor operations")
    params = dict(m.named_parameters())
    out: dict = {
        "parameters": parameter_shapes(params),
        "state_dict keys": tuple(sorted(m.state_dict().keys())),
    }
    load_parameters(params, meta)
    with kernels_blocked(not trusted, "LayerNorm"):
        for mode in ("train", "eval"):
            m.train(mode == "train")
            step = forward_backward(m, meta["x"], meta["g"])
            out.update({f"{mode}: {k}": v for k, v in step.items()})
    return out


def _module_diagnose(got, expected, case: Case) -> str | None:
    if not isinstance(got, dict):
        return None
    for key in ("parameters", "state_dict keys"):
        if key in got and tuple(got[key]) != tuple(expected[key]):
            return (
                f"{key} are {list(got[key])}, torch's are {list(expected[key])} (weight and bias "
                "have shape normalized_shape; elementwise_affine=False has neither, "
                "bias=False no bias)"
            )
    out = got.get("train: output")
    if out is not None and compare(out, expected["train: output"], atol=1e-4, rtol=1e-4):
        x = case.meta["x"].astype(np.float64)
        if x.ndim == 2 and x.shape[0] > 1:
            over_batch = (x - x.mean(0)) / np.sqrt(x.var(0) + case.kwargs.get("eps", 1e-5))
            if (
                compare(
                    out, over_batch * case.meta["weight"] + case.meta["bias"], atol=1e-4, rtol=1e-4
                )
                is None
            ):
                return (
                    "statistics computed over the batch (dim 0): layer norm uses each "
                    "sample's own statistics over the last len(normalized_shape) dims"
                )
        return None
    return train_eval_diagnosis(
        got.get("train: output"),
        got.get("eval: output"),
        expected["train: output"],
        expected["eval: output"],
        1e-4,
        1e-4,
    )


register(
    Exercise(
        id="06.layer_norm_forward",
        name="layer_norm_forward",
        points=1,
        title="Layer-norm forward: normalize each sample over its last (feature) axis",
        reference=answer("06", "layer_norm_forward"),
        cases=_forward_cases(with_beta=True),
        diagnose=_forward_diagnose("layer"),
        atol=1e-7,
        rtol=1e-6,
        hints=(
            "The same formula as batch norm, along the other axis: the statistics "
            "belong to one sample (one row of (N, D), one token of (N, T, D)). Which "
            "axis index works for every shape (..., D)?",
            "mu = x.mean(axis=-1, keepdims=True) and var = ((x - mu) ** "
            "2).mean(axis=-1, keepdims=True) (biased); keepdims keeps them "
            "broadcastable against x.",
            "Return (x - mu) / np.sqrt(var + eps) * gamma + beta.",
        ),
    ),
    Exercise(
        id="06.layer_norm_backward",
        name="layer_norm_backward",
        points=3,
        title="Layer-norm backward for (N, D) inputs: dx, dgamma, dbeta",
        reference=answer("06", "layer_norm_backward"),
        cases=_backward_cases,
        diagnose=_backward_diagnose("layer"),
        atol=1e-7,
        rtol=1e-5,
        forbidden=BACKWARD_BY_HAND,
        hints=(
            "Layer norm is batch norm applied to the transposed matrix. Over which "
            "axis do the means of the closed form run now, and over which axis do "
            "dgamma and dbeta sum?",
            "Every mean in the formula is over axis=1, keepdims=True; dbeta = "
            "dout.sum(axis=0) and dgamma = (dout * x_hat).sum(axis=0): gamma and beta "
            "are shared by all samples.",
            "With g = dout * gamma: dx = (g - g.mean(1, keepdims=True) - x_hat * (g * "
            "x_hat).mean(1, keepdims=True)) / np.sqrt(var + eps).",
        ),
    ),
    Exercise(
        id="06.rms_norm_forward",
        name="rms_norm_forward",
        points=1,
        title="RMS-norm forward: divide each sample by its root mean square",
        reference=answer("06", "rms_norm_forward"),
        cases=_forward_cases(with_beta=False),
        diagnose=_forward_diagnose("rms"),
        atol=1e-7,
        rtol=1e-6,
        hints=(
            "Layer norm without the centring: which statistic of each row is left, and "
            "is there still a bias?",
            "rms = np.sqrt((x ** 2).mean(axis=-1, keepdims=True) + eps); no mean is subtracted.",
            "Return x / rms * weight.",
        ),
    ),
    Exercise(
        id="06.rms_norm_backward",
        name="rms_norm_backward",
        points=2,
        title="RMS-norm backward for (N, D) inputs: dx and dweight",
        reference=answer("06", "rms_norm_backward"),
        cases=_backward_cases,
        diagnose=_backward_diagnose("rms"),
        atol=1e-7,
        rtol=1e-5,
        forbidden=BACKWARD_BY_HAND,
        hints=(
            "Besides the direct path from x to y, every x of a row also changes y "
            "through the row's inverse RMS, r. Write y as x times r times the weight "
            "and apply the product rule.",
            "dweight = (dout * x * r).sum(axis=0); r depends on every x of its row: "
            "dr/dx_j = -r**3 * x_j / D.",
            "With g = dout * w: dx = r * g - x * r**3 * (g * x).mean(axis=1, keepdims=True).",
        ),
    ),
    Exercise(
        id="06.LayerNorm",
        name="LayerNorm",
        points=2,
        title="A LayerNorm nn.Module from primitive ops that matches torch.nn.LayerNorm",
        reference=answer("06", "LayerNorm"),
        cases=_module_cases,
        run=_module_run,
        diagnose=_module_diagnose,
        atol=1e-5,
        rtol=1e-4,
        forbidden=forbidden_except("LayerNorm"),
        hints=(
            "Mirror torch: nn.LayerNorm's documentation lists the constructor "
            "arguments and the parameters they create. Over which dimensions of the "
            "input does it normalize, given normalized_shape?",
            "normalized_shape may be an int: store self.normalized_shape = (n,) if "
            "isinstance(n, int) else tuple(n); the statistics run over dims = "
            "tuple(range(-len(self.normalized_shape), 0)). Parameters: weight = "
            "nn.Parameter(torch.ones(normalized_shape)) and bias (zeros) when "
            "elementwise_affine; bias=False keeps only the weight; "
            "self.register_parameter('bias', None) for a missing one.",
            "forward: mean = x.mean(dims, keepdim=True), var = ((x - mean) ** "
            "2).mean(dims, keepdim=True); y = (x - mean) / torch.sqrt(var + eps), then "
            "* weight and + bias if present. Train and eval mode are the same.",
        ),
    ),
)
