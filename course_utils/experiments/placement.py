"""Lesson 08's experiments: where the normalization goes.

Every comparison uses the same fair protocol, :func:`tune_and_confirm`: each arm's learning
rate is tuned on a grid with one seed (the *tuning* seed), then each arm is trained again at
its own tuned rate with fresh seeds (the *confirmation* seeds), and only those runs are
compared. Tuning on one seed and reporting others keeps the comparison free of the optimism of
picking the best of several noisy runs, and costs one run per extra seed instead of a grid.

- :func:`placement_sweep`: Linear/Conv -> norm -> act ("before") against Linear/Conv -> act ->
  norm ("after") on :func:`course_utils.make_mlp` / :func:`course_utils.make_cnn`.
- :func:`residual_sweep`: residual stacks in the original ResNet order (He et al. 2015) and
  the pre-activation order (He et al. 2016), from :mod:`course_utils.experiments.residual`.
- :func:`downsample`: 14x14 MNIST, which makes a CNN run four times faster.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from torch.nn import functional as F

from ..data import MNISTSplit
from ..models import make_cnn, make_mlp
from ..training import train
from .residual import RESIDUAL_VARIANTS, ResidualMLP

__all__ = ["downsample", "Tuned", "tune_and_confirm", "placement_sweep", "residual_sweep"]


def downsample(data: MNISTSplit, factor: int = 2) -> MNISTSplit:
    """Average-pool image splits (N, 1, 28, 28) to (N, 1, 28/factor, 28/factor)."""
    pool = lambda x: F.avg_pool2d(x, factor).contiguous()  # noqa: E731
    return MNISTSplit(pool(data.x_train), data.y_train, pool(data.x_test), data.y_test)


@dataclass
class Tuned:
    """Results of :func:`tune_and_confirm`.

    ``tune_acc[arm]``: test accuracy at every lr of ``lrs`` with ``tune_seed`` (len(lrs),);
    ``best_lr[arm]``: the lr with the highest tuning accuracy; ``confirm_acc[arm]``: test
    accuracy at ``best_lr[arm]`` for each of ``confirm_seeds``.
    """

    lrs: np.ndarray
    tune_seed: int
    confirm_seeds: tuple
    tune_acc: dict
    best_lr: dict
    confirm_acc: dict

    @property
    def arms(self) -> list[str]:
        return list(self.tune_acc)

    def mean(self, arm: str) -> float:
        """Mean confirmation accuracy of ``arm``."""
        return float(np.mean(self.confirm_acc[arm]))

    def spread(self, arm: str) -> float:
        """Range (max - min) of ``arm``'s confirmation accuracies."""
        return float(np.ptp(self.confirm_acc[arm]))

    def bracketed(self, arm: str) -> bool:
        """The tuned lr is inside the grid, not at an end (so the grid brackets the optimum)."""
        i = int(np.argmax(self.tune_acc[arm]))
        return 0 < i < len(self.lrs) - 1

    def table(self) -> str:
        """Plain text: tuning accuracy per lr, the tuned lr, and the confirmation runs."""
        rows = []
        for arm in self.arms:
            grid = "  ".join(f"{lr:g}: {a:.3f}" for lr, a in zip(self.lrs, self.tune_acc[arm]))
            rows.append(f"{arm:>9}  tuning (seed {self.tune_seed})  {grid}")
            rows.append(
                f"{'':>9}  at lr {self.best_lr[arm]:g}, seeds {list(self.confirm_seeds)}: "
                f"{np.round(self.confirm_acc[arm], 3).tolist()} -> mean {self.mean(arm):.3f}"
            )
        return "\n".join(rows)


def tune_and_confirm(
    run: Callable[[str, float, int], float],
    arms: Sequence[str],
    lrs: Sequence[float],
    tune_seed: int = 0,
    confirm_seeds: Sequence[int] = (1, 2),
) -> Tuned:
    """Tune each arm's learning rate on ``lrs`` with ``tune_seed``, then rerun at it with
    ``confirm_seeds``. ``run(arm, lr, seed)`` trains one model and returns its test accuracy."""
    lrs = np.asarray(lrs, dtype=np.float64)
    tune, best, confirm = {}, {}, {}
    for arm in arms:
        tune[arm] = np.array([run(arm, float(lr), tune_seed) for lr in lrs])
        best[arm] = float(lrs[int(np.argmax(tune[arm]))])
        confirm[arm] = np.array([run(arm, best[arm], s) for s in confirm_seeds])
    return Tuned(lrs, tune_seed, tuple(confirm_seeds), tune, best, confirm)


def _train_acc(
    model, data: MNISTSplit, lr: float, seed: int, steps: int, batch_size: int, momentum: float
) -> float:
    hist = train(
        model, data, steps=steps, lr=lr, batch_size=batch_size, momentum=momentum, seed=seed
    )
    return hist.final_acc  # a diverged run is measured as it stands (about chance)


def placement_sweep(
    data: MNISTSplit,
    kind: str = "mlp",
    lrs: Sequence[float] = (0.01, 0.03, 0.1),
    tune_seed: int = 0,
    confirm_seeds: Sequence[int] = (1, 2),
    steps: int = 100,
    batch_size: int = 64,
    momentum: float = 0.9,
    norm: str = "batch",
    placements: Sequence[str] = ("before", "after"),
    **model_kwargs,
) -> Tuned:
    """:func:`tune_and_confirm` over placements (SGD with momentum; same batches per seed).

    ``kind="mlp"`` uses ``make_mlp(norm=norm, placement=p, seed=seed, **model_kwargs)``,
    ``kind="cnn"`` uses ``make_cnn`` (pass ``image_size=14`` for :func:`downsample`'d data).
    """
    factory = {"mlp": make_mlp, "cnn": make_cnn}[kind]

    def run(p: str, lr: float, seed: int) -> float:
        model = factory(norm=norm, placement=p, seed=seed, **model_kwargs)
        return _train_acc(model, data, lr, seed, steps, batch_size, momentum)

    return tune_and_confirm(run, placements, lrs, tune_seed, confirm_seeds)


def residual_sweep(
    data: MNISTSplit,
    depth: int = 6,
    width: int = 64,
    lrs: Sequence[float] = (0.003, 0.01, 0.03, 0.1, 0.3),
    tune_seed: int = 0,
    confirm_seeds: Sequence[int] = (1, 2),
    steps: int = 100,
    batch_size: int = 64,
    momentum: float = 0.9,
) -> Tuned:
    """:func:`tune_and_confirm` over :class:`ResidualMLP` variants ("original", "preact")."""

    def run(v: str, lr: float, seed: int) -> float:
        return _train_acc(
            ResidualMLP(depth, width, v, seed=seed), data, lr, seed, steps, batch_size, momentum
        )

    return tune_and_confirm(run, RESIDUAL_VARIANTS, lrs, tune_seed, confirm_seeds)
