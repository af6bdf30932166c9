"""Lesson 09's practice experiments: learning rates with and without normalization, weight
decay on normalization parameters, the redundant bias, stale running statistics and their
recalibration, and running statistics kept in low precision.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .. import seeds as seeding
from ..data import MNISTSplit, batches
from ..models import make_mlp
from ..training import evaluate, train

__all__ = [
    "NORM_TYPES",
    "is_norm_layer",
    "norm_lr_sweep",
    "LRSweepResult",
    "train_groups",
    "bias_before_bn",
    "stale_statistics",
    "running_mean_in",
]

NORM_TYPES = (
    nn.modules.batchnorm._BatchNorm,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.modules.instancenorm._InstanceNorm,
    nn.RMSNorm,
)


def is_norm_layer(module: nn.Module) -> bool:
    """True for torch's batch, layer, group, instance and RMS norm modules."""
    return isinstance(module, NORM_TYPES)


@dataclass
class LRSweepResult:
    """``acc[name]``: test accuracy per learning rate (len(lrs),), mean over seeds;
    ``diverged[name]``: how many seeds diverged at each learning rate."""

    lrs: np.ndarray
    acc: dict
    diverged: dict

    def best_lr(self, name: str) -> float:
        return float(self.lrs[int(np.argmax(self.acc[name]))])

    def largest_good_lr(self, name: str, threshold: float) -> float:
        """The largest learning rate at which ``name`` reached ``threshold`` (nan: none)."""
        ok = [lr for lr, a in zip(self.lrs, self.acc[name]) if a >= threshold]
        return float(max(ok)) if ok else float("nan")


def norm_lr_sweep(
    data: MNISTSplit,
    norms: Sequence[str] = ("none", "batch"),
    lrs: Sequence[float] = (0.03, 0.1, 0.3, 1.0, 3.0),
    seeds: Sequence[int] = (0,),
    steps: int = 200,
    batch_size: int = 64,
    **model_kwargs,
) -> LRSweepResult:
    """Plain SGD at every lr for ``make_mlp(norm=n, seed=seed, **model_kwargs)``; same batches."""
    lrs = np.asarray(lrs, dtype=np.float64)
    acc = {n: np.zeros(len(lrs)) for n in norms}
    div = {n: np.zeros(len(lrs), dtype=int) for n in norms}
    for n in norms:
        for i, lr in enumerate(lrs):
            accs = []
            for seed in seeds:
                model = make_mlp(norm=n, seed=seed, **model_kwargs)
                hist = train(
                    model, data, steps=steps, lr=float(lr), batch_size=batch_size, seed=seed
                )
                accs.append(hist.final_acc)
                div[n][i] += int(hist.diverged)
            acc[n][i] = float(np.mean(accs))
    return LRSweepResult(lrs, acc, div)


def train_groups(
    model: nn.Module,
    groups: list[dict],
    data: MNISTSplit,
    steps: int = 300,
    lr: float = 0.1,
    momentum: float = 0.9,
    batch_size: int = 64,
    seed: int = 0,
) -> float:
    """Train with SGD on the given parameter groups (each with its own weight_decay);
    returns the test accuracy."""
    opt = torch.optim.SGD(groups, lr=lr, momentum=momentum)
    model.train()
    for _, (xb, yb) in zip(
        range(steps), batches(data.x_train, data.y_train, batch_size, seed=seed)
    ):
        loss = nn.functional.cross_entropy(model(xb), yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return evaluate(model, data.x_test, data.y_test)[1]


def bias_before_bn(features: int = 8, batch: int = 32, seed: int = 0) -> dict[str, float]:
    """A Linear layer with a bias followed by batch norm (train mode), one batch.

    Returns the largest |gradient| of a loss with respect to the bias, the same for the weight
    (for scale), and the largest change of the BN output when the bias is shifted by 5.
    """
    g = seeding.generator(seed)
    seeding.torch_seed(seed)
    lin, bn = nn.Linear(features, features), nn.BatchNorm1d(features)
    x = torch.randn(batch, features, generator=g)
    target = torch.randn(batch, features, generator=g)
    out = bn(lin(x))
    ((out - target) ** 2).mean().backward()
    with torch.no_grad():
        lin.bias.add_(5.0)
        shifted = bn(lin(x))
    return {
        "bias_grad": float(lin.bias.grad.abs().max()),
        "weight_grad": float(lin.weight.grad.abs().max()),
        "output_change": float((shifted - out.detach()).abs().max()),
    }


def stale_statistics(
    data: MNISTSplit,
    recalibrate: Callable[[nn.Module, torch.Tensor], object],
    momentum: float = 0.01,
    steps: int = 50,
    seeds: Sequence[int] = (0, 1),
    lr: float = 0.1,
    calib_samples: int = 2048,
) -> dict[str, np.ndarray]:
    """Train a BN MLP briefly with a small BN ``momentum``, evaluate, recalibrate, evaluate.

    ``recalibrate(model, x)`` recomputes the running statistics from training inputs x
    (``calib_samples`` of them). Returns per-seed test accuracies ``{"stale", "recalibrated"}``
    and the reference ``{"default_momentum"}`` (momentum 0.1, no recalibration).
    """
    out = {"stale": [], "recalibrated": [], "default_momentum": []}
    for seed in seeds:
        for mom, key in ((momentum, "stale"), (0.1, "default_momentum")):
            model = make_mlp(depth=3, width=100, norm="batch", seed=seed)
            for m in model.modules():
                if isinstance(m, nn.BatchNorm1d):
                    m.momentum = mom
            hist = train(model, data, steps=steps, lr=lr, momentum=0.9, seed=seed)
            out[key].append(hist.final_acc)
            if key == "stale":
                recalibrate(model, data.x_train[:calib_samples])
                model.eval()
                out["recalibrated"].append(evaluate(model, data.x_test, data.y_test)[1])
    return {k: np.array(v) for k, v in out.items()}


def running_mean_in(
    dtype: torch.dtype, steps: int = 200, mean: float = 5.0, features: int = 4, seed: int = 0
) -> tuple[float, float]:
    """Where a BatchNorm1d's running mean ends when the module is kept in ``dtype``.

    ``steps`` batches of 64 samples with true mean ``mean`` pass through the module in
    training mode. Returns ``(running_mean, reference)``, both averaged over the features:
    the module's running mean, and the same exponential average computed in float64 from the
    same batch means. Their difference is what the dtype's rounding costs, separated from the
    batch-to-batch noise both share.
    """
    bn = nn.BatchNorm1d(features).to(dtype)
    g = seeding.generator(seed)
    ref = torch.zeros(features, dtype=torch.float64)
    m = bn.momentum
    for _ in range(steps):
        x = torch.randn(64, features, generator=g).to(dtype) + mean
        bn(x)
        ref = (1 - m) * ref + m * x.double().mean(0)
    return float(bn.running_mean.double().mean()), float(ref.mean())
