"""Lessons 04 and 05's experiments: the fair batch-size sweep and ghost batches (04); fine-tuning
with frozen statistics and batch norm's noise compared with dropout (05)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from ... import seeds as seeding
from ...models import make_mlp
from ...training import evaluate, recalibrate_bn
from .data import mnist14
from .ensemble import MLPEnsemble, train_ensemble
from .modules import freeze_bn_statistics

__all__ = [
    "SweepResult",
    "batch_size_sweep",
    "ghost_sweep",
    "finetune_frozen_bn",
    "regularization_experiment",
]


# --------------------------------------------------------------------------------------
# sweeps
# --------------------------------------------------------------------------------------


@dataclass
class SweepResult:
    """Outcome of :func:`batch_size_sweep` / :func:`ghost_sweep`.

    ``test_acc[kind][b]``: test accuracy per seed (array) at the learning rate that was best
    on the validation split (mean over seeds); ``best_lr[kind][b]``; ``val_acc[kind][b]``:
    validation accuracy, array (lrs, seeds); ``lrs[b]``: the grid tried at that size.
    """

    sizes: list[int]
    kinds: list[str]
    seeds: list[int]
    samples: int
    lrs: dict[int, list[float]] = field(default_factory=dict)
    val_acc: dict[str, dict[int, np.ndarray]] = field(default_factory=dict)
    test_acc: dict[str, dict[int, np.ndarray]] = field(default_factory=dict)
    best_lr: dict[str, dict[int, float]] = field(default_factory=dict)
    seconds: float = 0.0

    def mean(self, kind: str, size: int) -> float:
        """Mean test accuracy over seeds."""
        return float(self.test_acc[kind][size].mean())

    def table(self) -> str:
        """A plain-text table of mean test accuracy (and best learning rate)."""
        head = "batch " + "".join(f"{k:>18}" for k in self.kinds)
        rows = [head]
        for b in self.sizes:
            cells = "".join(
                f"{self.mean(k, b):>9.3f} (lr {self.best_lr[k][b]:<6.3g})" for k in self.kinds
            )
            rows.append(f"{b:>5} {cells}")
        return "\n".join(rows)


def _lr_grid(batch_size: int, base: Sequence[float], ref: int = 64) -> list[float]:
    return [float(c) * batch_size / ref for c in base]


def batch_size_sweep(
    sizes: Sequence[int] = (64, 16, 4, 2),
    kinds: Sequence[str] = ("batch", "layer", "group"),
    seeds: Sequence[int] = (0, 1, 2),
    samples: int = 4000,
    base_lrs: Sequence[float] = (0.03, 0.1, 0.3),
    width: int = 64,
    ghost: int | None = None,
) -> SweepResult:
    """Train every (kind, learning rate, seed) at each batch size on the same ``samples``
    training images, pick each kind's learning rate on the validation split, report test
    accuracy.

    The learning-rate grid at batch size b is ``base_lrs * b / 64`` (linear scaling keeps
    the grid in the useful range; the grid around it lets each arm find its own best
    value). All members of one batch size train together (:class:`MLPEnsemble`). Returns a
    :class:`SweepResult`.
    """
    t0 = time.perf_counter()
    data = mnist14()
    res = SweepResult(list(sizes), list(kinds), list(seeds), samples)
    for kind in kinds:
        res.val_acc[kind], res.test_acc[kind], res.best_lr[kind] = {}, {}, {}
    for b in sizes:
        lrs = _lr_grid(b, base_lrs)
        res.lrs[b] = lrs
        member_kinds, member_lrs, member_seeds = zip(
            *[(kd, lr, s) for kd in kinds for lr in lrs for s in seeds]
        )
        ens = MLPEnsemble(member_kinds, member_lrs, member_seeds, width=width, ghost=ghost)
        train_ensemble(ens, data.x_train, data.y_train, b, samples, member_seeds)
        val = ens.accuracy(data.x_val, data.y_val)  # 0 for a diverged member
        test = ens.accuracy(data.x_test, data.y_test)
        shape = (len(kinds), len(lrs), len(seeds))
        val, test = val.reshape(shape), test.reshape(shape)
        for j, kind in enumerate(kinds):
            best = int(val[j].mean(1).argmax())
            res.val_acc[kind][b] = val[j]
            res.test_acc[kind][b] = test[j, best]
            res.best_lr[kind][b] = lrs[best]
    res.seconds = time.perf_counter() - t0
    return res


def ghost_sweep(
    ghost_sizes: Sequence[int] = (64, 16, 4, 2),
    batch_size: int = 64,
    seeds: Sequence[int] = (0, 1, 2),
    samples: int = 4000,
    base_lrs: Sequence[float] = (0.03, 0.1, 0.3),
    width: int = 64,
) -> SweepResult:
    """Batch norm with a fixed batch (and learning-rate grid) but statistics over ghost
    batches of each size: isolates the effect of the statistics from that of the gradient.
    ``test_acc["batch"][g]`` is indexed by the ghost size."""
    t0 = time.perf_counter()
    out = SweepResult(list(ghost_sizes), ["batch"], list(seeds), samples)
    out.val_acc["batch"], out.test_acc["batch"], out.best_lr["batch"] = {}, {}, {}
    for g in ghost_sizes:
        r = batch_size_sweep((batch_size,), ("batch",), seeds, samples, base_lrs, width, ghost=g)
        out.lrs[g] = r.lrs[batch_size]
        out.val_acc["batch"][g] = r.val_acc["batch"][batch_size]
        out.test_acc["batch"][g] = r.test_acc["batch"][batch_size]
        out.best_lr["batch"][g] = r.best_lr["batch"][batch_size]
    out.seconds = time.perf_counter() - t0
    return out


# --------------------------------------------------------------------------------------
# fine-tuning and regularization
# --------------------------------------------------------------------------------------


def _subset(x, y, digits):
    keep = torch.isin(y, torch.tensor(list(digits)))
    return x[keep], y[keep]


def finetune_frozen_bn(
    seeds: Sequence[int] = (0, 1),
    n_finetune: int = 200,
    batch_size: int = 2,
    steps: int = 150,
    lrs: Sequence[float] = (0.003, 0.01),
    pretrain_steps: int = 200,
) -> dict[str, dict]:
    """Pre-train a batch-norm MLP (14x14 MNIST, 2x64) on digits 0-4, then give it a fresh
    head and fine-tune it on ``n_finetune`` labelled images of digits 5-9 in batches of
    ``batch_size``, three ways:

    - ``"train-mode BN"``: the usual loop, batch norm uses (and updates) batch statistics;
    - ``"frozen BN"``: :func:`freeze_bn_statistics` (pre-trained statistics, not updated);
    - ``"recalibrated, frozen"``: statistics first re-estimated on the fine-tuning images
      (:func:`recalibrate_bn`), then frozen.

    Each arm's learning rate is picked from ``lrs`` on validation images of digits 5-9.
    Returns ``{arm: {"test": accuracy per seed on test digits 5-9, "lr": best lr}}``.
    """
    data = mnist14().torch_split()
    val = mnist14().torch_split(validation=True)
    x_pre, y_pre = _subset(data.x_train, data.y_train, range(5))
    x_ft_all, y_ft_all = _subset(data.x_train, data.y_train, range(5, 10))
    x_va, y_va = _subset(val.x_test, val.y_test, range(5, 10))
    x_te, y_te = _subset(data.x_test, data.y_test, range(5, 10))
    arms = ("train-mode BN", "frozen BN", "recalibrated, frozen")
    val_acc = np.zeros((len(arms), len(lrs), len(seeds)))
    test_acc = np.zeros_like(val_acc)
    for si, seed in enumerate(seeds):
        base = make_mlp(depth=2, width=64, in_features=196, norm="batch", seed=seed)
        opt = torch.optim.SGD(base.parameters(), lr=0.1, momentum=0.9)
        g = seeding.generator(seed)
        base.train()
        for _ in range(pretrain_steps):
            idx = torch.randint(len(x_pre), (64,), generator=g)
            loss = F.cross_entropy(base(x_pre[idx]), y_pre[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        pick = torch.randperm(len(x_ft_all), generator=g)[:n_finetune]
        x_ft, y_ft = x_ft_all[pick], y_ft_all[pick]
        state = {k: v.clone() for k, v in base.state_dict().items()}
        for ai, arm in enumerate(arms):
            for li, lr in enumerate(lrs):
                model = make_mlp(depth=2, width=64, in_features=196, norm="batch", seed=seed)
                model.load_state_dict(state)
                with torch.no_grad():  # a new task: a fresh, zero-initialized head
                    model.head.weight.zero_()
                    model.head.bias.zero_()
                if arm == "recalibrated, frozen":
                    recalibrate_bn(model, x_ft, batch_size=50)
                opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
                gen = seeding.generator(100 + seed)
                model.train()
                if arm != "train-mode BN":
                    freeze_bn_statistics(model)
                for _ in range(steps):
                    idx = torch.randint(len(x_ft), (batch_size,), generator=gen)
                    loss = F.cross_entropy(model(x_ft[idx]), y_ft[idx])
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
                val_acc[ai, li, si] = evaluate(model, x_va, y_va)[1]
                test_acc[ai, li, si] = evaluate(model, x_te, y_te)[1]
    out = {}
    for ai, arm in enumerate(arms):
        best = int(val_acc[ai].mean(1).argmax())
        out[arm] = {"test": test_acc[ai, best], "lr": float(lrs[best])}
    return out


def regularization_experiment(
    n_train: int = 500,
    epochs: int = 40,
    batch_size: int = 32,
    seeds: Sequence[int] = (0, 1, 2),
    base_lrs: Sequence[float] = (0.03, 0.1, 0.3),
    dropout: float = 0.3,
    width: int = 64,
) -> dict[str, dict]:
    """Does batch norm's noise regularize like dropout? Train on only ``n_train`` images for
    many epochs, so that an unregularized network overfits, with four arms:
    ``"none"``, ``"dropout"`` (no normalization, dropout ``dropout`` after each ReLU),
    ``"layer"`` (layer norm: normalized, but no batch noise) and ``"batch"``.
    The learning rate is tuned per arm on the validation split, by its cross-entropy: the
    quantity a regularizer is meant to improve (the accuracies of the arms differ by less
    than the seed-to-seed noise, so choosing by accuracy would choose at random).

    Returns ``{arm: {"train": accuracy per seed on the training images, "test": test
    accuracy per seed, "test_loss": test cross-entropy per seed, "lr": best lr}}``.
    """
    data = mnist14()
    x, y = data.x_train[:n_train], data.y_train[:n_train]
    arms = [("none", 0.0), ("dropout", dropout), ("layer", 0.0), ("batch", 0.0)]
    kinds = {"none": "none", "dropout": "none", "layer": "layer", "batch": "batch"}
    member_arms, member_lrs, member_seeds = zip(
        *[(a, lr, s) for a, _ in arms for lr in base_lrs for s in seeds]
    )
    ens = MLPEnsemble(
        [kinds[a] for a in member_arms],
        member_lrs,
        member_seeds,
        width=width,
        dropout=[dict(arms)[a] for a in member_arms],
    )
    train_ensemble(ens, x, y, batch_size, n_train * epochs, member_seeds)
    tr, te = ens.accuracy(x, y), ens.accuracy(data.x_test, data.y_test)  # 0 when diverged
    vl, tl = ens.loss(data.x_val, data.y_val), ens.loss(data.x_test, data.y_test)  # inf then
    shape = (len(arms), len(base_lrs), len(seeds))
    tr, te, vl, tl = (a.reshape(shape) for a in (tr, te, vl, tl))
    out = {}
    for j, (arm, _) in enumerate(arms):
        best = int(vl[j].mean(1).argmin())
        out[arm] = {
            "train": tr[j, best],
            "test": te[j, best],
            "test_loss": tl[j, best],
            "lr": float(base_lrs[best]),
        }
    return out
