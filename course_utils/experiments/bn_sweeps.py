"""Lesson 03 (batch norm): learning-rate and init-scale sweeps with and without batch norm.

- :func:`run`: one seeded MLP training run that stops early once it has clearly diverged.
- :func:`lr_sweep` / :func:`init_sweep`: grids of runs, one arm per ``norm``.
- :func:`cnn_with_norm`: the course's small CNN with a batch-norm class of your choice
  (for training the lesson's from-scratch ``BatchNorm2d``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from torch import nn

from ..data import MNISTSplit
from ..models import CNN, make_cnn, make_mlp
from ..training import evaluate, steps_to, train

__all__ = [
    "Run",
    "run",
    "lr_sweep",
    "init_sweep",
    "largest_stable_lr",
    "best_lr",
    "fastest_lr",
    "steps_to_target",
    "cnn_with_norm",
    "table",
    "BLOWUP_LOSS",
    "STABLE_ACC",
]

BLOWUP_LOSS = 10.0  # mean loss over 20 steps above this (ln 10 = 2.3 at the start): diverged
STABLE_ACC = 0.85  # a run "trains stably" when it does not diverge and reaches this accuracy


class _Diverged(Exception):
    pass


@dataclass
class Run:
    """One training run: its settings and what it measured.

    ``final_acc``: test accuracy at the end (or when it was stopped). ``diverged``: the
    loss became NaN / inf or its 20-step mean exceeded :data:`BLOWUP_LOSS` (training stops
    there). ``eval_steps`` / ``test_acc``: the accuracy curve.
    """

    norm: str
    lr: float
    init_scale: float | None
    seed: int
    final_acc: float
    final_loss: float
    diverged: bool
    eval_steps: list[int] = field(default_factory=list)
    test_acc: list[float] = field(default_factory=list)

    @property
    def stable(self) -> bool:
        """Did not diverge and reached :data:`STABLE_ACC` test accuracy."""
        return not self.diverged and self.final_acc >= STABLE_ACC

    def steps_to(self, acc: float) -> int | None:
        """First evaluated step with test accuracy >= acc (None: never)."""
        return steps_to(self.eval_steps, self.test_acc, acc)


def run(
    data: MNISTSplit,
    norm: str = "none",
    lr: float = 0.1,
    init_scale: float | None = 1.0,
    depth: int = 4,
    width: int = 128,
    activation: str = "tanh",
    steps: int = 400,
    batch_size: int = 64,
    seed: int = 0,
    eval_every: int = 25,
) -> Run:
    """Train ``make_mlp(depth, width, norm, activation, init_scale)`` with plain SGD.

    Same seed, same batches, same initial weights (up to the norm layers) for every arm.
    """
    model = make_mlp(
        depth=depth, width=width, norm=norm, activation=activation, init_scale=init_scale, seed=seed
    )
    recent: list[float] = []

    def watch(step: int, loss: float) -> None:
        recent.append(loss)
        if len(recent) > 20:
            recent.pop(0)
        if len(recent) == 20 and sum(recent) / 20 > BLOWUP_LOSS:
            raise _Diverged

    try:
        hist = train(
            model,
            data,
            steps=steps,
            lr=lr,
            batch_size=batch_size,
            seed=seed,
            eval_every=eval_every,
            callback=watch,
        )
    except _Diverged:
        loss, acc = evaluate(model, data.x_test, data.y_test)
        return Run(norm, lr, init_scale, seed, acc, loss, True)
    loss = hist.test_loss[-1] if hist.test_loss else math.nan
    return Run(
        norm,
        lr,
        init_scale,
        seed,
        hist.final_acc,
        loss,
        hist.diverged,
        list(hist.eval_steps),
        list(hist.test_acc),
    )


def lr_sweep(
    data: MNISTSplit, lrs: Sequence[float], norms: Sequence[str] = ("none", "batch"), **kwargs
) -> dict[str, list[Run]]:
    """One :func:`run` per norm and learning rate (other settings from ``kwargs``)."""
    return {norm: [run(data, norm=norm, lr=float(lr), **kwargs) for lr in lrs] for norm in norms}


def init_sweep(
    data: MNISTSplit, scales: Sequence[float], lr: dict[str, float], **kwargs
) -> dict[str, list[Run]]:
    """One :func:`run` per norm and init scale, each norm at its own learning rate ``lr[norm]``."""
    return {
        norm: [run(data, norm=norm, lr=lr[norm], init_scale=float(s), **kwargs) for s in scales]
        for norm in lr
    }


def largest_stable_lr(runs: Sequence[Run]) -> float:
    """The largest learning rate among runs that trained stably (NaN if none did)."""
    ok = [r.lr for r in runs if r.stable]
    return max(ok) if ok else math.nan


def best_lr(runs: Sequence[Run]) -> float:
    """The learning rate of the run with the highest final accuracy that did not diverge."""
    ok = [r for r in runs if not r.diverged]
    return max(ok, key=lambda r: r.final_acc).lr if ok else math.nan


def fastest_lr(runs: Sequence[Run], target: float) -> float:
    """The learning rate whose run first reached ``target`` test accuracy (NaN if none did);
    ties go to the smaller learning rate."""
    reached = [(r.steps_to(target), r.lr) for r in runs if r.steps_to(target) is not None]
    return min(reached)[1] if reached else math.nan


def steps_to_target(runs: Sequence[Run], target: float, budget: int) -> list[float]:
    """Steps each run needed to reach ``target``; a run that never did counts as ``budget``
    plus one evaluation interval (a lower bound: it had not got there yet)."""
    out = []
    for r in runs:
        s = r.steps_to(target)
        interval = r.eval_steps[0] if r.eval_steps else 1
        out.append(float(s) if s is not None else float(budget + interval))
    return out


def cnn_with_norm(
    norm_cls: Callable[[int], nn.Module], channels: Sequence[int] = (8, 16), seed: int = 0
) -> CNN:
    """The course's small CNN (conv -> norm -> ReLU -> max-pool per stage, no conv bias) with
    ``norm_cls(C)`` as every norm layer. Initial weights depend only on ``seed``."""
    model = make_cnn(channels=channels, norm="batch", seed=seed)
    for block in model.blocks:
        block.norm = norm_cls(block.conv.out_channels)
    return model


def table(runs: dict[str, list[Run]], key: str = "lr") -> str:
    """A plain-text table of final accuracies: one row per setting, one column per norm."""
    norms = list(runs)
    values = [getattr(r, key) for r in runs[norms[0]]]
    lines = [f"{key:>10} " + " ".join(f"{n:>16}" for n in norms)]
    for i, v in enumerate(values):
        cells = []
        for n in norms:
            r = runs[n][i]
            cells.append(f"{r.final_acc:6.3f}{' diverged' if r.diverged else '         '}")
        lines.append(f"{v:>10g} " + " ".join(f"{c:>16}" for c in cells))
    return "\n".join(lines)
