"""Lesson 03 (batch norm): forward with running statistics, two backward passes, a module."""

from __future__ import annotations

import copy

import numpy as np
import torch

from .core import (
    Case,
    Exercise,
    answer,
    load_answer,
    numerical_gradient,
    reference_functional,
    rel_error,
)
from .drivers import call_sequence, load_parameters, modes_text, random_modes, require_names
from .forbidden import BACKWARD_BY_HAND, forbidden_except, kernels_blocked
from .mistakes import normalization_mistake
from .registry import register

GRAD_TOL = 1e-6  # largest relative error accepted for a gradient (float64 inputs)


# ------------------------------------------------------------------------------------------
# 03.batch_norm_forward: a sequence of train / eval calls threading the running statistics
# ------------------------------------------------------------------------------------------


def _forward_cases(rng: np.random.Generator, hidden: bool) -> list[Case]:
    if not hidden:
        specs = [
            (4, 3, 0.1, 1e-5, (True, True, False, True, False), False),
            (16, 5, 0.2, 1e-3, (True, False, True, True, False), True),
            (2, 1, 0.5, 1e-5, (True, False), False),
        ]
    else:
        specs = []
        for _ in range(4):
            k = int(rng.integers(2, 6))
            modes = random_modes(rng, k, 0.5)
            specs.append(
                (
                    int(rng.integers(2, 40)),
                    int(rng.integers(1, 9)),
                    float(rng.choice([0.1, 0.01, 0.3, float(rng.uniform(0.05, 0.9))])),
                    float(rng.choice([1e-5, 1e-3])),
                    modes,
                    bool(rng.random() < 0.7),
                )
            )
    cases = []
    for n, d, momentum, eps, modes, random_start in specs:
        shift = rng.uniform(-5.0, 5.0, size=d)
        scale = rng.uniform(0.2, 4.0, size=d)
        xs = [rng.normal(size=(n, d)) * scale + shift for _ in modes]
        gamma = rng.uniform(0.5, 2.0, size=d)
        beta = rng.normal(size=d)
        rm = rng.normal(size=d) if random_start else np.zeros(d)
        rv = rng.uniform(0.5, 2.0, size=d) if random_start else np.ones(d)
        seq = modes_text(modes)
        cases.append(
            Case(
                args=(xs, gamma, beta, rm, rv),
                kwargs={"momentum": momentum, "eps": eps},
                label=f"x of shape ({n}, {d}), calls: {seq}",
                meta={"modes": modes},
            )
        )
    return cases


def _forward_run(fn, case: Case) -> dict:
    xs, gamma, beta, rm, rv = copy.deepcopy(case.args)
    out = {}
    for i, (x, training) in enumerate(zip(xs, case.meta["modes"]), 1):
        tag = f"call {i} ({'train' if training else 'eval'})"
        res = fn(x, gamma, beta, rm, rv, training, **case.kwargs)
        if not isinstance(res, (tuple, list)) or len(res) != 3:
            raise TypeError("return a tuple (out, running_mean, running_var)")
        y, rm, rv = (np.array(r, dtype=np.float64) for r in res)
        out[f"{tag}: out"] = y
        out[f"{tag}: running_mean"] = rm
        out[f"{tag}: running_var"] = rv
    return out


def _forward_variant(**flaws):
    """The reference forward with one typical mistake switched on (for diagnosis)."""

    def fn(x, gamma, beta, rm, rv, training, momentum=0.1, eps=1e-5):
        x = np.asarray(x, dtype=np.float64)
        n = len(x)
        mu, var = x.mean(0), x.var(0)
        use_batch = training or flaws.get("eval_uses_batch")
        if training and flaws.get("train_uses_running"):
            use_batch = False
        m, v = (mu, var) if use_batch else (np.asarray(rm), np.asarray(rv))
        if use_batch and flaws.get("unbiased_norm") and n > 1:
            v = var * n / (n - 1)
        if flaws.get("eps_outside"):
            y = (x - m) / (np.sqrt(v) + eps)
        else:
            y = (x - m) / np.sqrt(v + eps)
        y = y * gamma + beta
        rm, rv = np.array(rm, dtype=np.float64), np.array(rv, dtype=np.float64)
        if (training and not flaws.get("no_update")) or (
            not training and flaws.get("update_in_eval")
        ):
            bv = var if flaws.get("biased_running") or n == 1 else var * n / (n - 1)
            a = 1 - momentum if flaws.get("momentum_reversed") else momentum
            rm = (1 - a) * rm + a * mu
            rv = (1 - a) * rv + a * bv
        return y, rm, rv

    return fn


_FORWARD_FLAWS = (
    (
        {"no_update": True},
        "running statistics not updated: in training mode, update them with "
        "running = (1 - momentum) * running + momentum * batch_statistic and return them",
    ),
    (
        {"update_in_eval": True},
        "running statistics changed in eval mode: only training-mode calls "
        "update them; eval mode returns them unchanged",
    ),
    (
        {"eval_uses_batch": True},
        "wrong train/eval behaviour: train and eval give the same output. "
        "In eval mode normalize with running_mean and running_var, not with the batch statistics",
    ),
    (
        {"train_uses_running": True},
        "wrong train/eval behaviour: in training mode normalize with "
        "the batch's own mean and variance, not with the running statistics",
    ),
    (
        {"biased_running": True},
        "running_var is updated with the biased variance; torch stores "
        "the unbiased one, var * n / (n - 1), in running_var (normalizing still uses the "
        "biased one)",
    ),
    (
        {"momentum_reversed": True},
        "momentum is reversed: it is the weight of the NEW batch "
        "statistic, running = (1 - momentum) * running + momentum * batch (Keras uses the opposite "
        "convention)",
    ),
    (
        {"unbiased_norm": True},
        "training output uses the unbiased variance; normalize with the "
        "biased variance (divide by N), as torch does",
    ),
    ({"eps_outside": True}, "eps belongs inside the square root: (x - mean) / sqrt(var + eps)"),
)


def _matches(got: dict, other: dict) -> bool:
    for k, v in other.items():
        g = got.get(k)
        if g is None or np.shape(g) != np.shape(v):
            return False
        if not np.allclose(np.asarray(g, dtype=np.float64), v, rtol=1e-5, atol=1e-6):
            return False
    return True


def _forward_diagnose(got, expected, case: Case) -> str | None:
    if not isinstance(got, dict) or _matches(got, expected):
        return None
    for flaws, message in _FORWARD_FLAWS:
        if _matches(got, _forward_run(_forward_variant(**flaws), case)):
            return message
    xs, gamma, beta = case.args[:3]
    msg = normalization_mistake(
        got.get("call 1 (train): out"), xs[0], (0,), case.kwargs["eps"], gamma, beta
    )
    return f"call 1 (train): {msg}" if msg else None


# ------------------------------------------------------------------------------------------
# 03.batch_norm_backward and 03.batch_norm_backward_simple
# ------------------------------------------------------------------------------------------


def _backward_cases(rng: np.random.Generator, hidden: bool) -> list[Case]:
    if not hidden:
        specs = [(4, 3, 1e-5), (10, 5, 1e-5), (2, 2, 1e-3)]
    else:
        specs = [
            (int(rng.integers(2, 24)), int(rng.integers(1, 8)), float(rng.choice([1e-5, 1e-3])))
            for _ in range(4)
        ]
    cases = []
    for n, d, eps in specs:
        x = rng.normal(size=(n, d)) * rng.uniform(0.5, 3.0, size=d) + rng.uniform(-3.0, 3.0, size=d)
        gamma = rng.uniform(0.5, 2.0, size=d)
        dout = rng.normal(size=(n, d))
        cases.append(
            Case(args=(dout, x, gamma), kwargs={"eps": eps}, label=f"x of shape ({n}, {d})")
        )
    return cases


def _backward_run(fn, case: Case):
    dout, x, gamma = copy.deepcopy(case.args)
    res = fn(dout, x, gamma, **case.kwargs)
    if not isinstance(res, (tuple, list)) or len(res) != 3:
        raise TypeError("return a tuple (dx, dgamma, dbeta)")
    return tuple(np.asarray(r, dtype=np.float64) for r in res)


def _numerical_dx(case: Case) -> np.ndarray:
    dout, x, gamma = case.args
    eps = case.kwargs.get("eps", 1e-5)
    F = reference_functional()
    return numerical_gradient(
        lambda z: F.batch_norm(z, None, None, gamma, None, True, 0.1, eps), x, dout
    )


def _backward_diagnose(got, expected, case: Case) -> str | None:
    if not isinstance(got, tuple) or len(got) != 3:
        return None
    names = ("dx", "dgamma", "dbeta")
    for g, e, name in zip(got, expected, names):
        if np.shape(g) != np.shape(e):
            return f"{name} has shape {np.shape(g)}, expected {np.shape(e)}"
        if not np.all(np.isfinite(g)):
            return f"{name} contains NaN or inf"
    errs = {name: rel_error(g, e) for g, e, name in zip(got, expected, names)}
    if max(errs.values()) <= GRAD_TOL:
        return None
    dout, x, gamma = case.args
    eps = case.kwargs.get("eps", 1e-5)
    if rel_error(got[1], expected[2]) < GRAD_TOL and rel_error(got[2], expected[1]) < GRAD_TOL:
        return "dgamma and dbeta are swapped: return (dx, dgamma, dbeta)"
    if errs["dx"] > GRAD_TOL:
        num = _numerical_dx(case)
        err = rel_error(got[0], num)
        right = [n for n in ("dgamma", "dbeta") if errs[n] <= GRAD_TOL]
        tail = f"; {' and '.join(right)} {'are' if len(right) > 1 else 'is'} right" if right else ""
        inv_std = 1.0 / np.sqrt(x.var(0) + eps)
        if rel_error(got[0], dout * gamma * inv_std) < 1e-6:
            return (
                f"dx: relative error {err:.1e} against the numerical gradient (want < "
                f"{GRAD_TOL:g}). Your dx treats the mean and the variance as constants: add "
                f"the paths from x through mu and through var{tail}"
            )
        return (
            f"dx: relative error {err:.1e} against the numerical gradient (want < "
            f"{GRAD_TOL:g}){tail}"
        )
    bad = [f"{n}: relative error {errs[n]:.1e}" for n in ("dgamma", "dbeta") if errs[n] > GRAD_TOL]
    return (
        "; ".join(bad)
        + f" (want < {GRAD_TOL:g}). dbeta = dout.sum(0), dgamma = (dout * x_hat).sum(0)"
    )


# ------------------------------------------------------------------------------------------
# 03.BatchNorm2d
# ------------------------------------------------------------------------------------------


def _bn2d_cases(rng: np.random.Generator, hidden: bool) -> list[Case]:
    if not hidden:
        specs = [
            (4, 3, 5, 5, 0.1, 1e-5, (True, True, False)),
            (2, 2, 3, 4, 0.3, 1e-3, (True, False, True, False)),
        ]
    else:
        specs = []
        for _ in range(3):
            k = int(rng.integers(1, 4))
            modes = random_modes(rng, k, 0.6)
            specs.append(
                (
                    int(rng.integers(2, 9)),
                    int(rng.integers(1, 7)),
                    int(rng.integers(1, 7)),
                    int(rng.integers(2, 7)),
                    float(rng.choice([0.1, 0.01, 0.5])),
                    float(rng.choice([1e-5, 1e-3])),
                    modes,
                )
            )
    cases = []
    for n, c, h, w, momentum, eps, modes in specs:
        xs = [
            (
                rng.normal(size=(n, c, h, w)) * rng.uniform(0.5, 3.0, size=(1, c, 1, 1))
                + rng.uniform(-3.0, 3.0, size=(1, c, 1, 1))
            ).astype(np.float32)
            for _ in modes
        ]
        gs = [rng.normal(size=(n, c, h, w)).astype(np.float32) for _ in modes]
        weight = rng.uniform(0.5, 2.0, size=c).astype(np.float32)
        bias = rng.normal(size=c).astype(np.float32)
        seq = modes_text(modes)
        cases.append(
            Case(
                args=(c,),
                kwargs={"eps": eps, "momentum": momentum},
                label=f"BatchNorm2d({c}, eps={eps:g}, momentum={momentum:g}), x of shape "
                f"({n}, {c}, {h}, {w}), calls: {seq}",
                meta={"xs": xs, "gs": gs, "weight": weight, "bias": bias, "modes": modes},
            )
        )
    return cases


def _bn2d_run(cls, case: Case) -> dict:
    meta = case.meta
    c = case.args[0]
    trusted = cls is torch.nn.BatchNorm2d or cls is load_answer("03", "BatchNorm2d")
    m = cls(c, **case.kwargs)
    if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and not trusted:
        raise TypeError(
            "your BatchNorm2d subclasses torch's batch norm; subclass nn.Module and "
            "build it from primitive operations"
        )
    params, buffers = require_names(
        m,
        ("weight", "bias"),
        ("running_mean", "running_var", "num_batches_tracked"),
        shape=" (shape (C,))",
    )
    load_parameters(params, meta)
    out: dict = {"state_dict keys": tuple(sorted(m.state_dict().keys()))}
    with kernels_blocked(not trusted, "BatchNorm2d"):
        out.update(call_sequence(m, meta, buffers, counters=("num_batches_tracked",)))
    return out


def _bn2d_diagnose(got, expected, case: Case) -> str | None:
    if not isinstance(got, dict):
        return None
    keys = got.get("state_dict keys")
    if keys is not None and tuple(keys) != tuple(expected["state_dict keys"]):
        return f"state_dict keys are {list(keys)}, torch's are {list(expected['state_dict keys'])}"
    meta, modes = case.meta, case.meta["modes"]
    x0 = meta["xs"][0].astype(np.float64)
    tag0 = "call 1 (train)"
    out0 = np.asarray(got[f"{tag0}: output"], dtype=np.float64)
    if not np.allclose(out0, expected[f"{tag0}: output"], rtol=1e-4, atol=1e-4):
        w = meta["weight"].reshape(1, -1, 1, 1)
        b = meta["bias"].reshape(1, -1, 1, 1)
        eps = case.kwargs["eps"]
        for axes, what in (
            ((0,), "over N only"),
            ((0, 1, 2, 3), "over all of N, C, H, W"),
            ((1, 2, 3), "per sample over C, H, W (that is layer norm)"),
            ((2, 3), "per sample and channel over H, W (that is instance norm)"),
        ):
            mu, var = x0.mean(axes, keepdims=True), x0.var(axes, keepdims=True)
            if np.allclose(out0, (x0 - mu) / np.sqrt(var + eps) * w + b, rtol=1e-4, atol=1e-4):
                return (
                    f"statistics computed {what}: batch norm uses one mean and variance per "
                    f"channel, over N, H and W: x.mean(dim=(0, 2, 3))"
                )
        return None
    for i, training in enumerate(modes, 1):
        tag = f"call {i} ({'train' if training else 'eval'})"
        prev = f"call {i - 1} ({'train' if modes[i - 2] else 'eval'})" if i > 1 else None
        rm = np.asarray(got[f"{tag}: running_mean"])
        if training:
            before = np.asarray(got[f"{prev}: running_mean"]) if prev else np.zeros_like(rm)
            if np.allclose(rm, before) and not np.allclose(
                expected[f"{tag}: running_mean"], before
            ):
                return (
                    f"{tag}: running statistics not updated in training mode "
                    "(update the buffers in place, e.g. self.running_mean.mul_(1 - m)."
                    "add_(m * mean), or assign new tensors to them under torch.no_grad())"
                )
            if not np.allclose(
                got[f"{tag}: running_var"], expected[f"{tag}: running_var"], rtol=1e-4, atol=1e-5
            ):
                return (
                    f"{tag}: running_var is wrong; it is updated with the unbiased variance "
                    "of the n = N*H*W values per channel (var * n / (n - 1))"
                )
            if got[f"{tag}: num_batches_tracked"] != expected[f"{tag}: num_batches_tracked"]:
                return (
                    f"{tag}: num_batches_tracked is {got[f'{tag}: num_batches_tracked']}, "
                    f"expected {expected[f'{tag}: num_batches_tracked']}: add 1 per "
                    "training-mode forward pass"
                )
        else:
            out = np.asarray(got[f"{tag}: output"], dtype=np.float64)
            if not np.allclose(out, expected[f"{tag}: output"], rtol=1e-4, atol=1e-4):
                x = meta["xs"][i - 1].astype(np.float64)
                mu, var = x.mean((0, 2, 3), keepdims=True), x.var((0, 2, 3), keepdims=True)
                batch = (x - mu) / np.sqrt(var + case.kwargs["eps"]) * meta["weight"].reshape(
                    1, -1, 1, 1
                ) + meta["bias"].reshape(1, -1, 1, 1)
                if np.allclose(out, batch, rtol=1e-4, atol=1e-4):
                    return (
                        f"{tag}: wrong train/eval behaviour: train and eval give the same "
                        "output. In eval mode (self.training is False) normalize with the "
                        "running statistics"
                    )
            if prev is not None and not np.allclose(rm, got[f"{prev}: running_mean"]):
                return f"{tag}: running statistics changed in eval mode; only training updates them"
    return None


register(
    Exercise(
        id="03.batch_norm_forward",
        name="batch_norm_forward",
        points=3,
        title="Batch-norm forward for (N, D) inputs, train and eval mode, with running statistics",
        reference=answer("03", "batch_norm_forward"),
        cases=_forward_cases,
        run=_forward_run,
        diagnose=_forward_diagnose,
        atol=1e-6,
        rtol=1e-5,
        hints=(
            "Two modes: in training the statistics come from this batch, one mean and "
            "one variance per feature, and the running statistics move towards them; "
            "in eval the running statistics normalize and come back unchanged.",
            "Training: mu = x.mean(axis=0), var = x.var(axis=0) (biased, ddof=0), "
            "x_hat = (x - mu) / np.sqrt(var + eps), out = gamma * x_hat + beta. Eval: "
            "the same formula with running_mean and running_var, which are returned "
            "unchanged.",
            "The new running statistics in training: (1 - momentum) * running_mean + "
            "momentum * mu, and the same for the variance with the unbiased var * N / "
            "(N - 1).",
        ),
    ),
    Exercise(
        id="03.batch_norm_backward",
        name="batch_norm_backward",
        points=3,
        title="Batch-norm backward, node by node through the computational graph",
        reference=answer("03", "batch_norm_backward"),
        cases=_backward_cases,
        run=_backward_run,
        diagnose=_backward_diagnose,
        atol=1e-7,
        rtol=1e-5,
        forbidden=BACKWARD_BY_HAND,
        hints=(
            "Recompute every forward node of the table from x, then walk the table "
            "from the last row (node 8) back to the first, one local derivative per "
            "node. Where a value feeds two nodes, the two gradients add.",
            "Forward nodes: mu, xmu = x - mu, var = (xmu**2).mean(0), sqrtvar = "
            "np.sqrt(var + eps), ivar = 1 / sqrtvar, x_hat = xmu * ivar. Backward from "
            "the top: dbeta = dout.sum(0), dgamma = (dout * x_hat).sum(0), dx_hat = "
            "dout * gamma, divar = (dx_hat * xmu).sum(0), dxmu = dx_hat * ivar.",
            "dvar = -divar / sqrtvar**2 / (2 * sqrtvar); the second path into xmu adds "
            "2 * xmu * dvar / N to dxmu; finally dx = dxmu - dxmu.mean(0) (the path "
            "through mu).",
        ),
    ),
    Exercise(
        id="03.batch_norm_backward_simple",
        name="batch_norm_backward_simple",
        points=2,
        title="Batch-norm backward in the simplified closed form",
        reference=answer("03", "batch_norm_backward_simple"),
        cases=_backward_cases,
        run=_backward_run,
        diagnose=_backward_diagnose,
        atol=1e-7,
        rtol=1e-5,
        forbidden=BACKWARD_BY_HAND,
        hints=(
            "The closed form in the text needs three ingredients: the upstream "
            "gradient times gamma, x_hat, and the inverse standard deviation. Which "
            "two batch means does it take away from the first one?",
            "dgamma = (dout * x_hat).sum(0) and dbeta = dout.sum(0), as in the staged version.",
            "dx = (g - g.mean(0) - x_hat * (g * x_hat).mean(0)) / np.sqrt(var + eps).",
        ),
    ),
    Exercise(
        id="03.BatchNorm2d",
        name="BatchNorm2d",
        points=3,
        title="A BatchNorm2d nn.Module from primitive ops that matches torch.nn.BatchNorm2d",
        reference=answer("03", "BatchNorm2d"),
        cases=_bn2d_cases,
        run=_bn2d_run,
        diagnose=_bn2d_diagnose,
        atol=1e-5,
        rtol=1e-4,
        forbidden=forbidden_except("BatchNorm2d"),
        hints=(
            "Start from what the module holds: two parameters and three buffers, with "
            "torch's names (listed above the exercise). The statistics are per "
            "channel: over which three axes of (N, C, H, W)?",
            "__init__: self.weight = nn.Parameter(torch.ones(C)), self.bias = "
            "nn.Parameter(torch.zeros(C)); register_buffer('running_mean', "
            "torch.zeros(C)), 'running_var' (ones) and 'num_batches_tracked' "
            "(torch.tensor(0, dtype=torch.long)). Training: mean = x.mean(dim=(0, 2, "
            "3)), var = x.var(dim=(0, 2, 3), unbiased=False); reshape (C,) vectors to "
            "(1, C, 1, 1) to broadcast.",
            "Update the buffers under torch.no_grad() with the unbiased variance var * "
            "n / (n - 1), n = N * H * W, and add 1 to num_batches_tracked. Eval mode "
            "(not self.training) normalizes with the running statistics.",
        ),
    ),
)
