"""Lesson 02 (activations and covariate shift): per-layer activation statistics with hooks."""

from __future__ import annotations

import numpy as np
import torch

from .core import Case, Exercise, answer
from .registry import register


def _cases(rng: np.random.Generator, hidden: bool) -> list[Case]:
    if not hidden:
        specs = [
            dict(depth=3, width=16, init_scale=1.0, n=32, d_in=10, threshold=0.97, seed=0),
            dict(depth=5, width=32, init_scale=3.0, n=64, d_in=20, threshold=0.97, seed=1),
            dict(depth=2, width=8, init_scale=0.5, n=5, d_in=4, threshold=0.9, seed=2),
        ]
    else:
        specs = [
            dict(
                depth=int(rng.integers(1, 7)),
                width=int(rng.integers(4, 65)),
                init_scale=float(np.exp(rng.uniform(np.log(0.3), np.log(5.0)))),
                n=int(rng.integers(2, 100)),
                d_in=int(rng.integers(2, 30)),
                threshold=float(rng.uniform(0.8, 0.99)),
                seed=int(rng.integers(0, 2**31 - 1)),
            )
            for _ in range(4)
        ]
    cases = []
    for s in specs:
        x = rng.normal(size=(s["n"], s["d_in"])) * rng.uniform(0.5, 2.0)
        cases.append(
            Case(
                args=(x.astype(np.float32),),
                kwargs={"threshold": s["threshold"]},
                label=f"{s['depth']} tanh layers of width {s['width']}, init scale "
                f"{s['init_scale']:.2g}, x of shape ({s['n']}, {s['d_in']})",
                meta=s,
            )
        )
    return cases


def _run(fn, case: Case) -> dict:
    from ..models import make_mlp

    s = case.meta
    model = make_mlp(
        depth=s["depth"],
        width=s["width"],
        activation="tanh",
        in_features=s["d_in"],
        init_scale=s["init_scale"],
        seed=s["seed"],
    )
    x = torch.from_numpy(np.array(case.args[0]))
    out = fn(model, x, **case.kwargs)
    if isinstance(out, dict):
        out = {
            k: (v.detach().numpy() if isinstance(v, torch.Tensor) else v) for k, v in out.items()
        }
    left = sum(len(b.act._forward_hooks) for b in model.blocks)
    return {"stats": out, "hooks left attached": left}


def _diagnose(got, expected, case: Case) -> str | None:
    if not isinstance(got, dict):
        return None
    stats, exp = got.get("stats"), expected["stats"]
    if not isinstance(stats, dict):
        return f"return a dict with keys 'mean', 'std' and 'saturated', got {type(stats).__name__}"
    for key in exp:
        if key not in stats:
            return f"the dict has no key {key!r} (it needs 'mean', 'std' and 'saturated')"
        try:
            v = np.asarray(stats[key], dtype=np.float64)
        except (TypeError, ValueError):
            return f"{key!r} should be a sequence of numbers, one per layer"
        if v.shape != exp[key].shape:
            return (
                f"{key!r} has shape {v.shape}, expected {exp[key].shape}: one value per hidden "
                f"layer (hook every block's activation, in order, once per forward pass)"
            )
    std = np.asarray(stats["std"], dtype=np.float64)
    n = case.meta["n"] * case.meta["width"]
    if n > 1 and np.allclose(std, exp["std"] * np.sqrt((n - 1) / n), rtol=1e-4, atol=1e-7):
        if not np.allclose(std, exp["std"], rtol=1e-4, atol=1e-7):
            return "std is the biased (population) one; use torch's default tensor.std() here"
    if got.get("hooks left attached"):
        return (
            f"{got['hooks left attached']} hook(s) are still attached after your function "
            "returned: keep the handles from register_forward_hook and call handle.remove()"
        )
    return None


register(
    Exercise(
        id="02.activation_stats",
        name="activation_stats",
        points=2,
        title="Per-layer mean, std and saturated fraction of a network's activations, via hooks",
        reference=answer("02", "activation_stats"),
        cases=_cases,
        run=_run,
        diagnose=_diagnose,
        atol=1e-6,
        rtol=1e-4,
        hints=(
            "A forward hook sees a module's output every time the module runs. Which "
            "modules' outputs are the activations, and how do you make sure no hook "
            "stays attached when the function returns, even if something fails?",
            "For each block in model.blocks, block.act.register_forward_hook(hook) "
            "returns a handle; the hook is called as hook(module, inputs, output) and "
            "can append output.detach() to a list. Run model(x) once under "
            "torch.no_grad(), then call handle.remove() for every handle (in a finally "
            "block).",
            "Per layer: a.mean(), a.std() (unbiased, torch's default) and (a.abs() > "
            "threshold).float().mean(); return each as a NumPy array of length L "
            "(np.array([...])).",
        ),
    ),
)
