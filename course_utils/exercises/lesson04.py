"""Lesson 04 (batch norm with small batches): a ghost-batch-norm module."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .core import (
    Case,
    Exercise,
    answer,
    compare,
    load_answer,
    running_stats_diagnosis,
    train_eval_diagnosis,
)
from .drivers import call_sequence, load_parameters, modes_text, random_modes, require_names
from .forbidden import kernels_blocked
from .registry import register


def _small_batch():
    from ..experiments import small_batch

    return small_batch


# ------------------------------------------------------------------------------------------
# 04.GhostBatchNorm1d
# ------------------------------------------------------------------------------------------


def _ghost_cases(rng: np.random.Generator, hidden: bool) -> list[Case]:
    if not hidden:
        specs = [
            (8, 3, 4, 0.1, 1e-5, (True, True, False)),
            (6, 2, 2, 0.2, 1e-3, (True, False, True, False)),
            (4, 3, 16, 0.1, 1e-5, (True, False)),  # ghost_size >= N: one ghost batch
        ]
    else:
        specs = []
        for _ in range(4):
            g = int(rng.choice([2, 3, 4, 8]))
            n = g * int(rng.integers(1, 5))
            if rng.random() < 0.25:
                g = n + int(rng.integers(0, 4))  # a batch smaller than the ghost size
            k = int(rng.integers(1, 3))
            modes = random_modes(rng, k, 0.5)
            specs.append(
                (
                    n,
                    int(rng.integers(1, 7)),
                    g,
                    float(rng.choice([0.1, 0.3, 0.05])),
                    float(rng.choice([1e-5, 1e-3])),
                    modes,
                )
            )
    cases = []
    for n, c, g, momentum, eps, modes in specs:
        shift, scale = rng.uniform(-3, 3, size=c), rng.uniform(0.3, 3, size=c)
        xs = [(rng.normal(size=(n, c)) * scale + shift).astype(np.float32) for _ in modes]
        gs = [rng.normal(size=(n, c)).astype(np.float32) for _ in modes]
        seq = modes_text(modes)
        cases.append(
            Case(
                args=(c,),
                kwargs={"ghost_size": g, "eps": eps, "momentum": momentum},
                label=f"GhostBatchNorm1d({c}, ghost_size={g}), x of shape ({n}, {c}), calls: {seq}",
                meta={
                    "xs": xs,
                    "gs": gs,
                    "modes": modes,
                    "weight": rng.uniform(0.5, 2, size=c).astype(np.float32),
                    "bias": rng.normal(size=c).astype(np.float32),
                },
            )
        )
    return cases


def _ghost_run(cls, case: Case) -> dict:
    meta = case.meta
    trusted = cls is load_answer("04", "GhostBatchNorm1d")
    m = cls(*case.args, **case.kwargs)
    if isinstance(m, nn.modules.batchnorm._BatchNorm) and not trusted:
        raise TypeError("subclass nn.Module, not torch's batch norm, and build it from tensor ops")
    params, buffers = require_names(m, ("weight", "bias"), ("running_mean", "running_var"))
    load_parameters(params, meta)
    with kernels_blocked(not trusted, "GhostBatchNorm1d"):
        return call_sequence(m, meta, buffers)


def _plain_bn(x, w, b, eps):
    x = np.asarray(x, dtype=np.float64)
    return (x - x.mean(0)) / np.sqrt(x.var(0) + eps) * w + b


def _ghost_diagnose(got, expected, case: Case) -> str | None:
    if not isinstance(got, dict):
        return None
    meta, kw = case.meta, case.kwargs
    n = len(meta["xs"][0])
    g = min(kw["ghost_size"], n)
    tag = "call 1 (train)"
    out = got.get(f"{tag}: output")
    if out is not None and g < n and compare(out, expected[f"{tag}: output"], atol=1e-4, rtol=1e-4):
        whole = _plain_bn(meta["xs"][0], meta["weight"], meta["bias"], kw["eps"])
        if compare(out, whole, atol=1e-4, rtol=1e-4) is None:
            return (
                f"{tag}: you normalized the whole batch at once; split it into "
                f"{n // g} ghost batches of {g} samples (x.reshape(N // g, g, C)) and "
                "normalize each with its own mean and variance"
            )
    modes = meta["modes"]
    for i, training in enumerate(modes, 1):
        tag = f"call {i} ({'train' if training else 'eval'})"
        keys = (f"{tag}: running_mean", f"{tag}: running_var")
        if training:
            prev = f"call {i - 1} ({'train' if modes[i - 2] else 'eval'})" if i > 1 else None
            c = len(meta["weight"])
            initial = (
                {k: got[f"{prev}: {k.split(': ')[1]}"] for k in keys}
                if prev
                else {keys[0]: np.zeros(c), keys[1]: np.ones(c)}
            )
            msg = running_stats_diagnosis(
                {k: got.get(k) for k in keys},
                {k: expected[k] for k in keys},
                initial,
                atol=1e-5,
                rtol=1e-4,
                advice="average the ghost batches' means and their unbiased variances "
                "(var * g / (g - 1)), then running = (1 - momentum) * running + "
                "momentum * average, once per call",
            )
            if msg:
                return f"{tag}: {msg}"
        elif i > 1 and modes[i - 2]:
            # the same input in train mode is not available; compare eval with batch stats
            x = meta["xs"][i - 1]
            ref = _small_batch().GhostBatchNorm1d(len(meta["weight"]), **kw)
            with torch.no_grad():
                ref.weight.copy_(torch.from_numpy(meta["weight"]))
                ref.bias.copy_(torch.from_numpy(meta["bias"]))
                y_train = ref.train()(torch.from_numpy(x)).numpy()
            msg = train_eval_diagnosis(
                y_train,
                got.get(f"{tag}: output"),
                y_train,
                expected[f"{tag}: output"],
                atol=1e-4,
                rtol=1e-4,
            )
            if msg:
                return f"{tag}: {msg}"
    return None


register(
    Exercise(
        id="04.GhostBatchNorm1d",
        name="GhostBatchNorm1d",
        points=3,
        title="Ghost batch norm: normalize each ghost batch of ghost_size samples separately",
        reference=answer("04", "GhostBatchNorm1d"),
        cases=_ghost_cases,
        run=_ghost_run,
        diagnose=_ghost_diagnose,
        atol=1e-5,
        rtol=1e-4,
        hints=(
            "The gradient still sees the whole batch; only the statistics are split. "
            "How can you view an (N, C) batch as N // g chunks of g consecutive "
            "samples, so that each chunk gets its own mean and variance?",
            "Parameters and buffers as in BatchNorm1d (weight ones, bias zeros, "
            "running_mean zeros, running_var ones, with self.register_buffer). "
            "Training: g = min(self.ghost_size, N); xg = x.reshape(N // g, g, C); mean "
            "= xg.mean(1, keepdim=True); var = ((xg - mean) ** 2).mean(1, "
            "keepdim=True); normalize, reshape back to (N, C), then * weight + bias.",
            "Under torch.no_grad(): running_mean = (1 - m) * running_mean + m * (mean "
            "of the ghost batches' means); running_var likewise with their unbiased "
            "var * g / (g - 1). Eval mode: (x - running_mean) / sqrt(running_var + "
            "eps) * weight + bias.",
        ),
    ),
)
