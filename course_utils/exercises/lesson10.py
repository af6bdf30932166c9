"""Lesson 10 (deployment and scale): folding batch norm into the layer before it, and batch norm
synchronised across processes as an autograd Function.

The answers live in :mod:`course_utils.answers.lesson10`; this module holds the cases, the run
drivers, the hints and the diagnoses. The synchronised-BN check runs several "ranks" in one
thread, kept in lockstep by replaying them
(:class:`~course_utils.experiments.distributed.ReplayGroup`), each calling the learner's
Function with an ``all_reduce`` that sums over the ranks, so it needs no network, no thread and
no process, and runs inside the grader's sandbox; the lesson runs the course's Function over
real processes.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..experiments.distributed import ReplayGroup
from .core import FORBIDDEN_CALLS, Case, Exercise, answer
from .registry import register

# torch's own folding helpers would hand back the answer
FUSE_CALLS = (
    "fuse_conv_bn_eval",
    "fuse_conv_bn_weights",
    "fuse_linear_bn_eval",
    "fuse_linear_bn_weights",
    "fuse_modules",
    "fuse_modules_qat",
    "fuse_conv_bn",
    "fuse_conv_bn_relu",
    "fuse_linear_bn",
    "fuse",
)


# ------------------------------------------------------------------------------------------
# 10.fold_bn
# ------------------------------------------------------------------------------------------

_LAYERS = {"linear": nn.Linear, "conv1d": nn.Conv1d, "conv2d": nn.Conv2d, "conv3d": nn.Conv3d}
_BNS = {"linear": nn.BatchNorm1d, "conv1d": nn.BatchNorm1d, "conv2d": nn.BatchNorm2d}
_BNS["conv3d"] = nn.BatchNorm3d


def _fold_spec(rng: np.random.Generator, kind: str, **fixed) -> dict:
    """Hyperparameters and values of one (layer, batch norm) pair, as plain data."""
    spec: dict = {"kind": kind}
    groups = int(fixed.get("groups", rng.choice([1, 1, 2, 3])))
    if kind == "linear":
        spec["args"] = dict(
            in_features=int(fixed.get("in", rng.integers(1, 9))),
            out_features=int(fixed.get("out", rng.integers(1, 9))),
            bias=bool(fixed.get("bias", rng.random() < 0.5)),
        )
        w_shape = (spec["args"]["out_features"], spec["args"]["in_features"])
        x_shape = (int(rng.integers(2, 6)), spec["args"]["in_features"])
    else:
        nd = int(kind[-2])
        k = int(fixed.get("kernel", rng.choice([1, 2, 3])))
        spec["args"] = dict(
            in_channels=groups * int(fixed.get("in_per_group", rng.integers(1, 4))),
            out_channels=groups * int(fixed.get("out_per_group", rng.integers(1, 4))),
            kernel_size=k,
            stride=int(fixed.get("stride", rng.choice([1, 2]))),
            padding=int(fixed.get("padding", rng.choice([0, 1]))),
            dilation=int(fixed.get("dilation", rng.choice([1, 2]))),
            groups=groups,
            bias=bool(fixed.get("bias", rng.random() < 0.5)),
        )
        a = spec["args"]
        w_shape = (a["out_channels"], a["in_channels"] // groups) + (k,) * nd
        size = a["dilation"] * (k - 1) + 1 + int(rng.integers(0, 4))  # the kernel always fits
        x_shape = (int(rng.integers(1, 4)), a["in_channels"]) + (size,) * nd
    c = w_shape[0]
    affine = bool(fixed.get("affine", rng.random() < 0.8))
    spec.update(
        eps=float(fixed.get("eps", rng.choice([1e-5, 1e-3, 0.1]))),
        affine=affine,
        weight=rng.normal(0.0, 0.5, size=w_shape).astype(np.float32),
        bias_values=rng.normal(0.0, 1.0, size=c).astype(np.float32),
        gamma=rng.uniform(0.5, 2.0, size=c).astype(np.float32),
        beta=rng.normal(0.0, 1.0, size=c).astype(np.float32),
        running_mean=rng.uniform(-3.0, 3.0, size=c).astype(np.float32),
        running_var=rng.uniform(0.05, 4.0, size=c).astype(np.float32),
        x=rng.normal(0.0, 1.0, size=x_shape).astype(np.float32),
    )
    return spec


def _fold_label(spec: dict) -> str:
    a = spec["args"]
    if spec["kind"] == "linear":
        layer = f"Linear({a['in_features']}, {a['out_features']}, bias={a['bias']})"
    else:
        extra = ", ".join(f"{k}={a[k]}" for k in ("stride", "padding", "dilation", "groups"))
        layer = (
            f"{_LAYERS[spec['kind']].__name__}({a['in_channels']}, {a['out_channels']}, "
            f"{a['kernel_size']}, {extra}, bias={a['bias']})"
        )
    bn = f"{_BNS[spec['kind']].__name__}(eps={spec['eps']:g}, affine={spec['affine']})"
    return f"{layer} -> {bn}"


def _fold_cases(rng: np.random.Generator, hidden: bool) -> list[Case]:
    if not hidden:
        specs = [
            _fold_spec(rng, "linear", **{"in": 5, "out": 4, "bias": True, "eps": 1e-5}),
            _fold_spec(
                rng,
                "conv2d",
                groups=1,
                in_per_group=3,
                out_per_group=4,
                kernel=3,
                stride=1,
                padding=1,
                dilation=1,
                bias=False,
                eps=1e-3,
                affine=True,
            ),
            _fold_spec(
                rng,
                "conv2d",
                groups=2,
                in_per_group=2,
                out_per_group=3,
                kernel=3,
                stride=2,
                padding=1,
                dilation=2,
                bias=True,
                eps=0.1,
                affine=True,
            ),
        ]
    else:
        kinds = ["conv2d", "conv2d", "linear", "conv1d", str(rng.choice(["conv3d", "conv2d"]))]
        specs = [_fold_spec(rng, kind) for kind in kinds]
    return [Case(label=_fold_label(s), meta={"spec": s}) for s in specs]


def _build_pair(spec: dict) -> tuple[nn.Module, nn.modules.batchnorm._BatchNorm]:
    layer = _LAYERS[spec["kind"]](**spec["args"])
    c = spec["weight"].shape[0]
    bn = _BNS[spec["kind"]](c, eps=spec["eps"], affine=spec["affine"])
    with torch.no_grad():
        layer.weight.copy_(torch.from_numpy(spec["weight"]))
        if layer.bias is not None:
            layer.bias.copy_(torch.from_numpy(spec["bias_values"]))
        if spec["affine"]:
            bn.weight.copy_(torch.from_numpy(spec["gamma"]))
            bn.bias.copy_(torch.from_numpy(spec["beta"]))
        bn.running_mean.copy_(torch.from_numpy(spec["running_mean"]))
        bn.running_var.copy_(torch.from_numpy(spec["running_var"]))
    return layer, bn.eval()


def _hyper(module: nn.Module) -> str:
    if isinstance(module, nn.Linear):
        return f"in_features={module.in_features}, out_features={module.out_features}"
    names = ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation")
    names += ("groups", "padding_mode")
    return ", ".join(f"{n}={getattr(module, n, None)}" for n in names)


def _state(*modules: nn.Module) -> list[np.ndarray]:
    return [t.detach().numpy().copy() for m in modules for t in m.state_dict().values()]


def _fold_run(fn, case: Case) -> dict:
    spec = case.meta["spec"]
    layer, bn = _build_pair(spec)
    before = _state(layer, bn)
    folded = fn(layer, bn)
    if not isinstance(folded, nn.Module):
        raise TypeError(
            f"fold_bn must return the folded layer (an nn.Module), got {type(folded).__name__}"
        )
    unchanged = all(np.array_equal(a, b) for a, b in zip(before, _state(layer, bn))) and len(
        before
    ) == len(_state(layer, bn))
    x = torch.from_numpy(spec["x"])
    with torch.no_grad():
        y = folded(x)
    if not isinstance(y, torch.Tensor):
        raise TypeError("the folded layer must return a tensor")
    return {
        "class": type(folded).__name__,
        "hyperparameters": _hyper(folded),
        "has a bias": getattr(folded, "bias", None) is not None,
        "layer and batch norm unchanged": bool(unchanged),
        "output": y.detach().double().numpy(),
    }


def _fold_variant(spec: dict, flaw: str) -> np.ndarray:
    """The output of a fold with one typical mistake (for the diagnosis)."""
    layer, bn = _build_pair(spec)
    with torch.no_grad():
        var = bn.running_var if flaw == "no_eps" else bn.running_var + bn.eps
        std = var.sqrt()
        gamma = bn.weight if bn.weight is not None else torch.ones_like(std)
        beta = bn.bias if bn.bias is not None else torch.zeros_like(std)
        s = gamma * std if flaw == "multiply_std" else gamma / std
        b = layer.bias if layer.bias is not None else torch.zeros_like(s)
        if flaw == "layer_bias_dropped":
            b = torch.zeros_like(s)
        mean = torch.zeros_like(s) if flaw == "no_mean" else bn.running_mean
        if flaw == "bias_unscaled":
            new_b = b - mean * s + beta
        else:
            new_b = (b - mean) * s + beta
        w = layer.weight
        view = [-1] + [1] * (w.dim() - 1)
        if flaw == "input_axis" and w.shape[1] == w.shape[0]:
            view = [1, -1] + [1] * (w.dim() - 2)
        layer.weight.copy_(w * s.view(view))
        layer.bias = nn.Parameter(new_b)
        return layer(torch.from_numpy(spec["x"])).double().numpy()


_FOLD_FLAWS = (
    ("no_eps", "eps is missing: batch norm divides by sqrt(running_var + eps)"),
    (
        "multiply_std",
        "the scale is inverted: each output channel is multiplied by gamma / sqrt(running_var + "
        "eps), not by gamma * sqrt(...)",
    ),
    (
        "layer_bias_dropped",
        "the layer's own bias is lost: the folded bias is (b - running_mean) * scale + beta, "
        "with b the layer's bias (0 when it has none)",
    ),
    (
        "bias_unscaled",
        "the layer's bias must be scaled too: (b - running_mean) * scale + beta, not "
        "b - running_mean * scale + beta",
    ),
    ("no_mean", "running_mean is missing from the folded bias: (b - running_mean) * scale + beta"),
    (
        "input_axis",
        "the weight is scaled along the input axis: scale output channel c, i.e. "
        "weight * scale.view(-1, 1, ...) (weight's first axis is the output)",
    ),
)


def _fold_diagnose(got, expected, case: Case) -> str | None:
    if not isinstance(got, dict):
        return None
    if got.get("class") != expected["class"]:
        return (
            f"returned a {got.get('class')}: return one {expected['class']}, the layer the "
            "batch norm was folded into (not a Sequential or a copy of the pair)"
        )
    if got.get("hyperparameters") != expected["hyperparameters"]:
        return (
            f"the folded layer has {got.get('hyperparameters')}; it must keep the original's "
            f"({expected['hyperparameters']}): start from a copy of the layer"
        )
    if not got.get("layer and batch norm unchanged", True):
        return (
            "fold_bn changed the layer or the batch norm it was given: build the folded layer "
            "from a copy (copy.deepcopy) and leave the originals as they were"
        )
    out = np.asarray(got.get("output"), dtype=np.float64)
    exp = expected["output"]
    if out.shape != exp.shape or np.allclose(out, exp, rtol=1e-4, atol=1e-4):
        return None
    spec = case.meta["spec"]
    for flaw, message in _FOLD_FLAWS:
        alt = _fold_variant(spec, flaw)
        if not np.allclose(alt, exp, rtol=1e-4, atol=1e-4) and np.allclose(
            out, alt, rtol=1e-4, atol=1e-4
        ):
            return message
    return None


# ------------------------------------------------------------------------------------------
# 10.SyncBatchNormFunction
# ------------------------------------------------------------------------------------------


def _sync_cases(rng: np.random.Generator, hidden: bool) -> list[Case]:
    if not hidden:
        specs = [
            ((2, 2), (3,), 1e-5, 0.1),
            ((3, 1, 4), (2, 3, 3), 1e-5, 0.1),
            ((2, 2), (4, 5), 1e-3, 0.3),
        ]
    else:
        specs = []
        for _ in range(4):
            world = int(rng.integers(2, 5))
            sizes = tuple(int(n) for n in rng.integers(1, 6, size=world))
            tail = [(int(rng.integers(1, 6)),), (int(rng.integers(1, 4)), int(rng.integers(1, 5)))]
            tail.append((int(rng.integers(1, 4)), int(rng.integers(1, 4)), int(rng.integers(1, 4))))
            inner = tail[int(rng.integers(0, 3))]
            if sum(sizes) * int(np.prod(inner[1:])) < 2:
                sizes = sizes[:-1] + (sizes[-1] + 1,)
            specs.append(
                (
                    sizes,
                    inner,
                    float(rng.choice([1e-5, 1e-3])),
                    float(rng.choice([0.1, 0.01, 0.5])),
                )
            )
    cases = []
    for sizes, inner, eps, momentum in specs:
        c = inner[0]
        shape_c = (1, c) + (1,) * (len(inner) - 1)
        shift = rng.uniform(-3.0, 3.0, size=shape_c)
        scale = rng.uniform(0.5, 3.0, size=shape_c)
        xs = [rng.normal(size=(n, *inner)) * scale + shift for n in sizes]
        gs = [rng.normal(size=(n, *inner)) for n in sizes]
        cases.append(
            Case(
                label=f"{len(sizes)} ranks, inputs "
                + ", ".join(str((n, *inner)) for n in sizes)
                + f", eps={eps:g}, momentum={momentum:g}",
                meta=dict(
                    xs=xs,
                    gs=gs,
                    weight=rng.uniform(0.5, 2.0, size=c),
                    bias=rng.normal(size=c),
                    running_mean=rng.normal(size=c),
                    running_var=rng.uniform(0.5, 2.0, size=c),
                    eps=eps,
                    momentum=momentum,
                ),
            )
        )
    return cases


def _sync_rank(rank: int, world_size: int, all_reduce, fn, meta: dict, calls: list) -> dict:
    t = torch.from_numpy
    x = t(meta["xs"][rank].copy()).requires_grad_(True)
    weight = t(meta["weight"].copy()).requires_grad_(True)
    bias = t(meta["bias"].copy()).requires_grad_(True)
    rm, rv = t(meta["running_mean"].copy()), t(meta["running_var"].copy())
    y = fn.apply(x, weight, bias, rm, rv, meta["eps"], meta["momentum"], all_reduce)
    if not isinstance(y, torch.Tensor) or tuple(y.shape) != tuple(x.shape):
        raise ValueError(f"forward must return a tensor shaped like x, {tuple(x.shape)}")
    after_forward = calls[rank]  # this rank's all_reduce calls so far (the group counts)
    y.backward(t(meta["gs"][rank].copy()))

    def grad(p: torch.Tensor) -> np.ndarray:
        return np.zeros(tuple(p.shape)) if p.grad is None else p.grad.detach().numpy().copy()

    return {
        "output": y.detach().numpy().copy(),
        "grad of x": grad(x),
        "grad of weight": grad(weight),
        "grad of bias": grad(bias),
        "running_mean": rm.numpy().copy(),
        "running_var": rv.numpy().copy(),
        "all_reduce in forward": after_forward > 0,
        "all_reduce in backward": calls[rank] > after_forward,
    }


def _sync_run(fn, case: Case) -> dict:
    if not (isinstance(fn, type) and issubclass(fn, torch.autograd.Function)):
        raise TypeError(
            "SyncBatchNormFunction must be a class that subclasses torch.autograd.Function "
            "(with static methods forward and backward)"
        )
    meta = case.meta
    # no threads (the grader's sandbox allows none): the ranks run in lockstep by replay
    group = ReplayGroup(len(meta["xs"]))
    per_rank = group.run(_sync_rank, fn, meta, group.calls)
    return {f"rank {r}: {k}": v for r, res in enumerate(per_rank) for k, v in res.items()}


def _bn_numpy(x, weight, bias, mean, var, eps):
    shape = (1, -1) + (1,) * (x.ndim - 2)
    x_hat = (x - mean.reshape(shape)) / np.sqrt(var.reshape(shape) + eps)
    return x_hat * weight.reshape(shape) + bias.reshape(shape), x_hat


def _sync_variant(meta: dict, flaw: str) -> dict:
    """Per-rank outputs of synchronised BN with one typical mistake, in NumPy."""
    xs, gs, eps, m = meta["xs"], meta["gs"], meta["eps"], meta["momentum"]
    axes = lambda a: (0, *range(2, a.ndim))  # noqa: E731
    cat = np.concatenate(xs)
    n_all = cat.size // cat.shape[1]
    g_mean, g_var = cat.mean(axes(cat)), cat.var(axes(cat))
    out = {}
    stats = []
    for x in xs:
        if flaw == "local_stats":
            stats.append((x.mean(axes(x)), x.var(axes(x)), x.size // x.shape[1]))
        else:
            stats.append((g_mean, g_var, n_all))
    for r, (x, g) in enumerate(zip(xs, gs)):
        mean, var, n = stats[r]
        y, x_hat = _bn_numpy(x, meta["weight"], meta["bias"], mean, var, eps)
        shape = (1, -1) + (1,) * (x.ndim - 2)
        if flaw in ("local_stats", "local_backward"):
            s_dy, s_dyx, count = g.sum(axes(g)), (g * x_hat).sum(axes(g)), x.size // x.shape[1]
        else:
            s_dy = s_dyx = 0.0
            for xx, gg in zip(xs, gs):
                _, xh = _bn_numpy(xx, meta["weight"], meta["bias"], mean, var, eps)
                s_dy = s_dy + gg.sum(axes(gg))
                s_dyx = s_dyx + (gg * xh).sum(axes(gg))
            count = n
        inv = 1.0 / np.sqrt(var + eps)
        dx = (meta["weight"] * inv).reshape(shape) * (
            g - (s_dy / count).reshape(shape) - x_hat * (s_dyx / count).reshape(shape)
        )
        gw, gb = (g * x_hat).sum(axes(g)), g.sum(axes(g))
        if flaw == "reduced_param_grads":
            gw, gb = s_dyx, s_dy
        unbiased = n / max(n - 1, 1)
        if flaw == "biased_running":
            unbiased = 1.0
        if flaw == "local_count_running":
            local = x.size // x.shape[1]
            unbiased = local / max(local - 1, 1)
        out[f"rank {r}: output"] = y
        out[f"rank {r}: grad of x"] = dx
        out[f"rank {r}: grad of weight"] = gw
        out[f"rank {r}: grad of bias"] = gb
        out[f"rank {r}: running_mean"] = (1 - m) * meta["running_mean"] + m * mean
        out[f"rank {r}: running_var"] = (1 - m) * meta["running_var"] + m * var * unbiased
    return out


def _close_parts(got: dict, other: dict, part: str) -> bool:
    keys = [k for k in other if k.endswith(part)]
    for k in keys:
        g = got.get(k)
        if g is None or np.shape(g) != np.shape(other[k]):
            return False
        if not np.allclose(np.asarray(g, dtype=np.float64), other[k], rtol=1e-6, atol=1e-8):
            return False
    return bool(keys)


_SYNC_FLAWS = (
    (
        "local_stats",
        ": output",
        "each rank normalizes with its own batch statistics: all-reduce the per-channel sum, "
        "sum of squares and count first, so every rank uses the mean and variance of the whole "
        "batch",
    ),
    (
        "local_backward",
        ": grad of x",
        "the input gradient uses this rank's sums only: all-reduce sum(dy) and sum(dy * x_hat) "
        "per channel in backward and divide by the global count",
    ),
    (
        "reduced_param_grads",
        ": grad of weight",
        "grad of weight / bias must be this rank's own share (computed before the all-reduce): "
        "data-parallel training sums them over the ranks afterwards",
    ),
    (
        "biased_running",
        ": running_var",
        "running_var takes the unbiased variance of all the values across ranks: "
        "var * n / (n - 1) with the global count n",
    ),
    (
        "local_count_running",
        ": running_var",
        "running_var's unbiased correction must use the global count n (all ranks), not this "
        "rank's count",
    ),
)


def _sync_diagnose(got, expected, case: Case) -> str | None:
    if not isinstance(got, dict):
        return None
    flags = [k for k in expected if "all_reduce in" in k]
    for part in (": output", ": grad of x", ": grad of weight", ": running_var"):
        if _close_parts(got, expected, part):
            continue
        for flaw, where, message in _SYNC_FLAWS:
            if where != part:
                continue
            if _close_parts(got, _sync_variant(case.meta, flaw), part):
                return message
        break
    missing = [k for k in flags if got.get(k) is False]
    if missing:
        phase = "forward" if "forward" in missing[0] else "backward"
        return (
            f"{missing[0].split(':')[0]} never calls all_reduce in {phase}: the other ranks' "
            f"data can only reach it through all_reduce"
        )
    return None


register(
    Exercise(
        id="10.fold_bn",
        name="fold_bn",
        points=3,
        title="Fold an eval-mode batch norm into the Linear or Conv layer before it",
        reference=answer("10", "fold_bn"),
        cases=_fold_cases,
        run=_fold_run,
        diagnose=_fold_diagnose,
        atol=1e-4,
        rtol=1e-4,
        forbidden=(*FORBIDDEN_CALLS, *FUSE_CALLS),
        hints=(
            "In evaluation mode batch norm uses fixed numbers: per output channel c it "
            "multiplies by one constant and adds another. Which two, in terms of running_mean, "
            "running_var, eps, weight (gamma) and bias (beta)? Then ask what multiplying a "
            "layer's output channel by a constant does to that layer's weight and bias.",
            "scale = gamma / sqrt(running_var + eps), shape (C_out,) (gamma = 1 when bn.weight "
            "is None). Output channel c of the layer is row c of weight (axis 0, for Linear "
            "and Conv): multiply weight by scale.view(-1, 1, ...) with weight.dim() - 1 ones.",
            "New bias = (b - running_mean) * scale + beta, with b the layer's bias or zeros. "
            "Start from copy.deepcopy(layer) (it keeps stride, padding, dilation, groups), "
            "then, under torch.no_grad(), set its weight and assign folded.bias = "
            "nn.Parameter(new_bias).",
        ),
    ),
    Exercise(
        id="10.SyncBatchNormFunction",
        name="SyncBatchNormFunction",
        points=4,
        title="Batch norm synchronised across processes: an autograd Function over all_reduce",
        reference=answer("10", "SyncBatchNormFunction"),
        cases=_sync_cases,
        run=_sync_run,
        diagnose=_sync_diagnose,
        atol=1e-8,
        rtol=1e-6,
        hints=(
            "A rank sees only its own slice, and all_reduce can only add things up. Which "
            "per-channel quantities, summed over the ranks, are enough to get the mean and the "
            "variance of the whole batch? The backward has the same problem with the two "
            "batch means that batch norm's input gradient needs.",
            "Forward: stats = torch.cat([x.sum(dims), (x * x).sum(dims), count]) with dims "
            "every axis but 1; all_reduce(stats) (in place); n = stats[-1], mean = sum / n, "
            "var = sum_sq / n - mean**2. Update running_mean / running_var in place (unbiased: "
            "var * n / (n - 1)); ctx.save_for_backward(x_hat, weight, invstd, n).",
            "Backward: sums = torch.cat([dy.sum(dims), (dy * x_hat).sum(dims)]); keep copies as "
            "grad_bias and grad_weight (this rank's share), all_reduce(sums), then dx = weight * "
            "invstd * (dy - sum_dy / n - x_hat * sum_dy_xhat / n) (reshaped to broadcast). "
            "Return dx, grad_weight, grad_bias and None for the five other inputs.",
        ),
    ),
)
