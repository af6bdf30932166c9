"""Lesson 05 (batch norm at inference): recalibrating running statistics on recent data, and
fixing an evaluation loop that forgets eval mode."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .core import Case, Exercise, answer, compare
from .registry import register

# ------------------------------------------------------------------------------------------
# 05.recalibrate_bn
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
# 05.evaluate_accuracy
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
        id="05.recalibrate_bn",
        name="recalibrate_bn",
        points=2,
        title="Re-estimate every batch-norm layer's running statistics on recent data",
        reference=answer("05", "recalibrate_bn"),
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
        id="05.evaluate_accuracy",
        name="evaluate_accuracy",
        points=2,
        title="Fix the evaluation function that forgets eval mode",
        reference=answer("05", "evaluate_accuracy"),
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
