"""Lesson 11, section 2: conditional normalization (FiLM, adaLN, adaLN-Zero) against
concatenating the condition.

The task ("shift"): an MNIST digit d and a condition c in 0..9; the answer is (d + c) mod 10.
Averaged over c the answer is uniform for every digit, and averaged over the digits it is
uniform for every c: neither input alone says anything, only their interaction does.

:class:`ConditionedMLP` is one residual MLP with five ways to feed it c (``ARMS``):

- ``"concat at the input"``: a one-hot c concatenated to the pixels. A Linear layer on
  [x, onehot(c)] is W x + U[:, c], so this adds a condition-dependent bias to the stem; it is
  computed that way (the same function, cheaper).
- ``"concat at every block"``: the same, at the first layer of every residual branch.
- ``"FiLM"``: the branch input LN(h) is modulated, (1 + scale(c)) * LN(h) + shift(c)
  (Perez et al. 2018), modulation starting at zero (identity).
- ``"adaLN (gate at 1)"``: adaLN-Zero's modulation and gate, but the gate starts at 1.
- ``"adaLN-Zero"``: h + gate(c) * f(...), the gate starting at 0 (Peebles & Xie 2023).

The last three use :class:`course_utils.answers.lesson11.AdaLayerNorm` (the exercise's answer).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .. import seeds as seeding
from ..data import MNISTSplit
from .placement import Tuned, tune_and_confirm

__all__ = ["ARMS", "shift_targets", "ConditionedMLP", "train_shift", "Comparison", "compare_arms"]

ARMS = (
    "concat at the input",
    "concat at every block",
    "FiLM",
    "adaLN (gate at 1)",
    "adaLN-Zero",
)
N_COND = 10


def shift_targets(digits: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
    """The shift task's answers (d + c) mod 10; digits and cond (N,) int64 -> (N,) int64."""
    return (digits + cond) % 10


class ConditionedMLP(nn.Module):
    """Stem Linear(784, D), ``blocks`` residual blocks h + g * f(norm(h)) with f =
    Linear-ReLU-Linear of width D, a final LayerNorm and a 10-way head.

    forward(x, cond): x (N, 784) pixels, cond (N,) int64 in 0..9 -> logits (N, 10).
    ``arm`` (one of :data:`ARMS`) decides how cond enters (see the module docstring).
    """

    def __init__(self, arm: str, width: int = 64, blocks: int = 2, in_features: int = 784):
        super().__init__()
        if arm not in ARMS:
            raise ValueError(f"arm must be one of {ARMS}, got {arm!r}")
        from ..answers.lesson11 import AdaLayerNorm

        self.arm = arm
        self.stem = nn.Linear(in_features, width)
        # a Linear on a one-hot condition = a learned bias per condition value
        self.cond_in = nn.Embedding(N_COND, width) if arm == "concat at the input" else None
        self.norms = nn.ModuleList()
        self.cond_bias = nn.ModuleList()
        self.branches = nn.ModuleList()
        for _ in range(blocks):
            if arm in ("FiLM", "adaLN (gate at 1)", "adaLN-Zero"):
                norm = AdaLayerNorm(width, N_COND)
                if arm == "adaLN (gate at 1)":
                    with torch.no_grad():
                        norm.modulation.bias[2 * width :] = 1.0
            else:
                norm = nn.LayerNorm(width)
            self.norms.append(norm)
            if arm == "concat at every block":
                self.cond_bias.append(nn.Embedding(N_COND, width))
            self.branches.append(
                nn.Sequential(nn.Linear(width, width), nn.ReLU(), nn.Linear(width, width))
            )
        # U of W x + U onehot(c), initialised as nn.Linear initialises the concatenated layer
        if self.cond_in is not None:
            bound = (in_features + N_COND) ** -0.5
            nn.init.uniform_(self.cond_in.weight, -bound, bound)
        for emb in self.cond_bias:
            nn.init.uniform_(emb.weight, -((width + N_COND) ** -0.5), (width + N_COND) ** -0.5)
        self.final = nn.LayerNorm(width)
        self.head = nn.Linear(width, 10)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        onehot = F.one_hot(cond, N_COND).to(x.dtype)
        h = self.stem(x.flatten(1))
        if self.cond_in is not None:
            h = h + self.cond_in(cond)
        for i, (norm, f) in enumerate(zip(self.norms, self.branches)):
            if self.arm in ("concat at the input", "concat at every block"):
                z = norm(h)
                if self.arm == "concat at every block":
                    # f's first Linear on [z, onehot(c)]: W z + U[:, c]
                    h = h + f[2](f[1](f[0](z) + self.cond_bias[i](cond)))
                else:
                    h = h + f(z)
            else:
                z, gate = norm(h, onehot)
                h = h + (f(z) if self.arm == "FiLM" else gate * f(z))
        return self.head(self.final(h))


@torch.no_grad()
def _shift_accuracy(model: nn.Module, data: MNISTSplit, seed: int) -> float:
    """Accuracy on the test digits, each with a condition drawn from ``seed``."""
    model.eval()
    g = seeding.generator(10_000 + seed)
    cond = torch.randint(0, N_COND, (len(data.y_test),), generator=g)
    pred = model(data.x_test, cond).argmax(1)
    return float((pred == shift_targets(data.y_test, cond)).float().mean())


def train_shift(
    model: nn.Module,
    data: MNISTSplit,
    lr: float = 3e-3,
    steps: int = 300,
    batch_size: int = 128,
    seed: int = 0,
) -> tuple[np.ndarray, float]:
    """Train on the shift task with Adam: each step draws ``batch_size`` training digits and a
    condition for each (from a generator seeded with ``seed``). Returns (loss per step
    (steps,), test accuracy with fresh conditions)."""
    g = seeding.generator(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    losses = np.empty(steps)
    model.train()
    n = len(data.y_train)
    for s in range(steps):
        idx = torch.randint(0, n, (batch_size,), generator=g)
        cond = torch.randint(0, N_COND, (batch_size,), generator=g)
        loss = F.cross_entropy(
            model(data.x_train[idx], cond), shift_targets(data.y_train[idx], cond)
        )
        losses[s] = loss.item()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return losses, _shift_accuracy(model, data, seed)


@dataclass
class Comparison:
    """:func:`compare_arms`' results: ``tuned``, a :class:`~.placement.Tuned` (accuracy per lr
    on the tuning seed, the tuned lr and the confirmation accuracies of every arm), and
    ``loss[arm]`` (confirmation seeds, steps): training losses at the tuned lr."""

    tuned: Tuned
    loss: dict


def compare_arms(
    data: MNISTSplit,
    arms: Sequence[str] = ARMS,
    lrs: Sequence[float] = (1e-3, 3e-3, 1e-2),
    tune_seed: int = 0,
    confirm_seeds: Sequence[int] = (1,),
    steps: int = 200,
    width: int = 64,
    blocks: int = 2,
) -> Comparison:
    """Lesson 08's protocol (:func:`~course_utils.experiments.placement.tune_and_confirm`):
    each arm's Adam learning rate tuned on ``lrs`` with ``tune_seed``, then trained again at
    it with ``confirm_seeds``. The seed draws the initial weights, batches and conditions."""
    losses: dict = {}
    in_features = data.x_train[0].numel()

    def run(arm: str, lr: float, seed: int) -> float:
        seeding.torch_seed(seed)
        model = ConditionedMLP(arm, width, blocks, in_features)
        loss, acc = train_shift(model, data, lr, steps, seed=seed)
        losses[arm, lr, seed] = loss
        return acc

    tuned = tune_and_confirm(run, arms, lrs, tune_seed, confirm_seeds)
    loss = {
        arm: np.array([losses[arm, tuned.best_lr[arm], s] for s in confirm_seeds]) for arm in arms
    }
    return Comparison(tuned, loss)
