"""Lesson 04 (batch norm in practice): a ghost-batch-norm module, recalibrating running
statistics on recent data, and fixing an evaluation loop that forgets eval mode."""

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


# ------------------------------------------------------------------------------------------
# 04.recalibrate_bn
# ------------------------------------------------------------------------------------------


def _recal_model(kind: str, seed: int, momentum: float) -> nn.Module:
    torch.manual_seed(seed)
    if kind == "mlp":
        model = nn.Sequential(
            nn.Linear(6, 5),
            nn.BatchNorm1d(5, momentum=momentum),
            nn.ReLU(),
            nn.Linear(5, 4),
            nn.BatchNorm1d(4, momentum=momentum),
        )
    else:
        model = nn.Sequential(
            nn.Conv2d(2, 3, 3, padding=1),
            nn.BatchNorm2d(3, momentum=momentum),
            nn.ReLU(),
            nn.Conv2d(3, 2, 1),
            nn.BatchNorm2d(2, momentum=momentum),
        )
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():  # statistics from "old" data, far from the new data's
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 2)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) * 3 + 0.2)
                m.num_batches_tracked.fill_(500)
                m.weight.uniform_(0.5, 1.5, generator=g)
                m.bias.uniform_(-0.5, 0.5, generator=g)
    return model


def _recal_cases(rng: np.random.Generator, hidden: bool) -> list[Case]:
    if not hidden:
        specs = [
            ("mlp", 40, 16, "eval", 0.1),
            ("cnn", 12, 4, "train", 0.1),
            ("mlp", 30, 10, "eval", 0.3),
        ]
    else:
        specs = []
        for _ in range(4):
            bs = int(rng.integers(2, 12))
            rest = int(rng.integers(2, bs)) if bs > 2 and rng.random() < 0.5 else 0
            n = bs * int(rng.integers(1, 5)) + rest  # a last, smaller batch of >= 2 samples
            specs.append(
                (
                    str(rng.choice(["mlp", "cnn"])),
                    n,
                    bs,
                    str(rng.choice(["train", "eval"])),
                    float(rng.choice([0.1, 0.01, 0.3])),
                )
            )
    cases = []
    for kind, n, bs, mode, momentum in specs:
        shape = (n, 6) if kind == "mlp" else (n, 2, 4, 4)
        x = (rng.normal(size=shape) * rng.uniform(0.5, 3) + rng.uniform(-2, 2)).astype(np.float32)
        cases.append(
            Case(
                label=f"{'MLP with BatchNorm1d' if kind == 'mlp' else 'CNN with BatchNorm2d'}, "
                f"x of shape {shape}, batch_size={bs}, model in {mode} mode",
                meta={
                    "kind": kind,
                    "seed": int(rng.integers(1 << 30)),
                    "x": x,
                    "batch_size": bs,
                    "mode": mode,
                    "momentum": momentum,
                },
            )
        )
    return cases


def _recal_run(fn, case: Case) -> dict:
    meta = case.meta
    model = _recal_model(meta["kind"], meta["seed"], meta["momentum"])
    model.train(meta["mode"] == "train")
    weights = [p.detach().clone() for p in model.parameters()]
    fn(model, torch.from_numpy(meta["x"].copy()), meta["batch_size"])
    out: dict = {}
    layers = [
        (name, m)
        for name, m in model.named_modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm)
    ]
    for name, m in layers:
        out[f"layer {name}: running_mean"] = m.running_mean.detach().numpy().copy()
        out[f"layer {name}: running_var"] = m.running_var.detach().numpy().copy()
    out["the model is back in the mode it was in"] = model.training == (meta["mode"] == "train")
    out["each layer's momentum is restored"] = all(
        m.momentum == meta["momentum"] for _, m in layers
    )
    out["the weights are unchanged"] = all(
        torch.equal(a, b.detach()) for a, b in zip(weights, model.parameters())
    )
    return out


def _recal_variant(reset: bool, cumulative: bool):
    def fn(model, x, batch_size=64):
        layers = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        saved = [m.momentum for m in layers]
        was = model.training
        for m in layers:
            if reset:
                m.reset_running_stats()
            if cumulative:
                m.momentum = None
        model.train()
        with torch.no_grad():
            for i in range(0, len(x), batch_size):
                model(x[i : i + batch_size])
        for m, mom in zip(layers, saved):
            m.momentum = mom
        model.train(was)
        return model

    return fn


def _recal_diagnose(got, expected, case: Case) -> str | None:
    if not isinstance(got, dict):
        return None
    stats = [k for k in expected if k.startswith("layer ")]
    if all(compare(got.get(k), expected[k], atol=1e-5, rtol=1e-4) is None for k in stats):
        for key, advice in (
            (
                "the weights are unchanged",
                "recalibration must not train: run the batches under torch.no_grad(), no optimizer",
            ),
            (
                "the model is back in the mode it was in",
                "remember model.training before you start and restore it with model.train(was)",
            ),
            (
                "each layer's momentum is restored",
                "put every layer's momentum back to what it was (it was changed to None)",
            ),
        ):
            if got.get(key) is False:
                return f"{key} is False: {advice}"
        return None
    before = _recal_model(case.meta["kind"], case.meta["seed"], case.meta["momentum"])
    initial = {
        f"layer {n}: {b}": getattr(m, b).numpy().copy()
        for n, m in before.named_modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm)
        for b in ("running_mean", "running_var")
    }
    if all(compare(got.get(k), initial[k], atol=1e-6, rtol=1e-5) is None for k in stats):
        return (
            "running statistics not updated: run every batch through the model in training "
            "mode (model.train()) - eval mode only reads the statistics"
        )
    for reset, cumulative, message in (
        (
            False,
            False,
            "the old statistics still dominate: reset them first "
            "(layer.reset_running_stats()) and set layer.momentum = None so that "
            "every batch counts equally",
        ),
        (
            True,
            False,
            "the statistics are an exponential average (momentum 0.1) in which the "
            "first batches barely count: set layer.momentum = None for a plain average",
        ),
        (
            False,
            True,
            "reset the running statistics (layer.reset_running_stats()) before the "
            "passes: with momentum=None the average includes the old values",
        ),
    ):
        alt = _recal_run(_recal_variant(reset, cumulative), case)
        if all(compare(got.get(k), alt[k], atol=1e-5, rtol=1e-4) is None for k in stats):
            return message
    return None


# ------------------------------------------------------------------------------------------
# 04.evaluate_accuracy
# ------------------------------------------------------------------------------------------


def _eval_model(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Linear(5, 8, bias=False), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3)
    )
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():  # running statistics unlike any one batch's
        model[1].running_mean.copy_(torch.randn(8, generator=g))
        model[1].running_var.copy_(torch.rand(8, generator=g) * 4 + 0.1)
    return model


def _eval_cases(rng: np.random.Generator, hidden: bool) -> list[Case]:
    if not hidden:
        specs = [(60, 10, "train"), (45, 8, "eval"), (40, 40, "train")]
    else:
        specs = [
            (
                int(rng.integers(20, 80)),
                int(rng.integers(4, 20)),
                str(rng.choice(["train", "eval"])),
            )
            for _ in range(4)
        ]
    cases = []
    for n, bs, mode in specs:
        seed = int(rng.integers(1 << 30))
        x = (rng.normal(size=(n, 5)) * 2 + 0.5).astype(np.float32)
        model = _eval_model(seed).eval()
        with torch.no_grad():
            y = model(torch.from_numpy(x)).argmax(1).numpy()
        flip = rng.random(n) < 0.3
        y = np.where(flip, rng.integers(0, 3, size=n), y).astype(np.int64)
        cases.append(
            Case(
                label=f"{n} samples, batch_size={bs}, model in {mode} mode",
                meta={"seed": seed, "x": x, "y": y, "batch_size": bs, "mode": mode},
            )
        )
    return cases


def _eval_run(fn, case: Case) -> dict:
    meta = case.meta
    model = _eval_model(meta["seed"])
    model.train(meta["mode"] == "train")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    acc = fn(
        model,
        torch.from_numpy(meta["x"].copy()),
        torch.from_numpy(meta["y"].copy()),
        batch_size=meta["batch_size"],
    )
    if isinstance(acc, torch.Tensor):
        acc = acc.item()
    return {
        "accuracy": float(acc),
        "the model is back in the mode it was in": model.training == (meta["mode"] == "train"),
        "the running statistics are unchanged": all(
            torch.equal(before[k], v) for k, v in model.state_dict().items()
        ),
    }


def _train_mode_accuracy(case: Case) -> float:
    meta = case.meta
    model = _eval_model(meta["seed"]).train()
    x, y, bs = torch.from_numpy(meta["x"]), torch.from_numpy(meta["y"]), meta["batch_size"]
    correct = 0
    with torch.no_grad():
        for i in range(0, len(x), bs):
            correct += int((model(x[i : i + bs]).argmax(1) == y[i : i + bs]).sum())
    return correct / len(x)


def _eval_diagnose(got, expected, case: Case) -> str | None:
    if not isinstance(got, dict) or "accuracy" not in got:
        return None
    acc = got["accuracy"]
    if abs(acc - expected["accuracy"]) > 1e-9:
        if abs(acc - _train_mode_accuracy(case)) < 1e-9:
            return (
                "the accuracy is the training-mode one: batch norm normalized each "
                "evaluation batch with its own statistics. Call model.eval() first"
            )
        if acc > 1.0:
            return "the accuracy must be a fraction in [0, 1]: divide by the number of samples"
        return None
    if got.get("the running statistics are unchanged") is False:
        return (
            "evaluation changed the running statistics (training-mode passes update them "
            "with the evaluation data): evaluate in eval mode"
        )
    if got.get("the model is back in the mode it was in") is False:
        return (
            "the model is not back in the mode it was in: a training loop that calls your "
            "function would go on training in eval mode, where batch norm stops learning "
            "its statistics. Remember model.training and restore it with model.train(was)"
        )
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
    Exercise(
        id="04.recalibrate_bn",
        name="recalibrate_bn",
        points=2,
        title="Re-estimate every batch-norm layer's running statistics on recent data",
        reference=answer("04", "recalibrate_bn"),
        cases=_recal_cases,
        run=_recal_run,
        diagnose=_recal_diagnose,
        atol=1e-5,
        rtol=1e-4,
        forbidden=(),  # the learner's function runs the model, whose layers are torch's
        hints=(
            "Recalibration forgets the old running statistics and averages new ones "
            "over the given batches, every batch counting equally. Which mode updates "
            "the running statistics, and which attribute of a batch-norm layer decides "
            "how they are averaged?",
            "Find the layers with [m for m in model.modules() if isinstance(m, "
            "nn.modules.batchnorm._BatchNorm)]. For each: remember m.momentum, call "
            "m.reset_running_stats(), set m.momentum = None (a plain average over the "
            "batches).",
            "Then model.train() and, under torch.no_grad(), model(x[i:i + batch_size]) "
            "for i in range(0, len(x), batch_size). Finally restore every momentum and "
            "the model's mode (was = model.training at the start, model.train(was) at "
            "the end).",
        ),
    ),
    Exercise(
        id="04.evaluate_accuracy",
        name="evaluate_accuracy",
        points=2,
        title="Fix the evaluation function that forgets eval mode",
        reference=answer("04", "evaluate_accuracy"),
        cases=_eval_cases,
        run=_eval_run,
        diagnose=_eval_diagnose,
        atol=1e-9,
        rtol=0.0,
        forbidden=(),
        hints=(
            "Batch norm behaves differently in the two modes. Which mode gives the "
            "accuracy the model will have at inference, and what must the function "
            "leave as it found it?",
            "The training loop calls this function in the middle of training: remember "
            "was = model.training, call model.eval() to evaluate, and model.train(was) "
            "before returning.",
            "Wrap the forward passes in torch.no_grad(): no graph is needed to count "
            "correct predictions.",
        ),
    ),
)
