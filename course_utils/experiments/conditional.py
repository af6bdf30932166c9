"""Lesson 10, section 2: conditional normalization (FiLM, adaLN, adaLN-Zero) against
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

The last three use :class:`course_utils.answers.lesson10.AdaLayerNorm` (the exercise's answer).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ..data import MNISTSplit

__all__ = ["ARMS", "shift_targets", "ConditionedMLP", "train_shift", "Sweep", "arm_sweep"]

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
        from ..answers.lesson10 import AdaLayerNorm

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
    g = torch.Generator().manual_seed(10_000 + seed)
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
    g = torch.Generator().manual_seed(seed)
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
class Sweep:
    """:func:`arm_sweep`'s results: ``acc[arm]`` (seeds,) test accuracies and ``loss[arm]``
    (seeds, steps) training losses, at ``lr[arm]``."""

    seeds: tuple
    lr: dict
    acc: dict
    loss: dict

    def table(self) -> str:
        """Plain text: each arm's learning rate, accuracy per seed and mean."""
        return "\n".join(
            f"{arm:<22} lr {self.lr[arm]:g}: accuracy per seed "
            f"{np.round(self.acc[arm], 3).tolist()}, mean {self.acc[arm].mean():.3f}"
            for arm in self.acc
        )


def arm_sweep(
    data: MNISTSplit,
    lrs: dict[str, float] | float = 3e-3,
    seeds: Sequence[int] = (0, 1),
    arms: Sequence[str] = ARMS,
    steps: int = 300,
    width: int = 64,
    blocks: int = 2,
) -> Sweep:
    """Train every arm with every seed (model init and batches from the seed); ``lrs`` is one
    learning rate for all arms or one per arm."""
    lr = {arm: float(lrs[arm] if isinstance(lrs, dict) else lrs) for arm in arms}
    acc, loss = {}, {}
    for arm in arms:
        runs = []
        for s in seeds:
            torch.manual_seed(s)
            runs.append(
                train_shift(ConditionedMLP(arm, width, blocks), data, lr[arm], steps, seed=s)
            )
        loss[arm] = np.array([r[0] for r in runs])
        acc[arm] = np.array([r[1] for r in runs])
    return Sweep(tuple(seeds), lr, acc, loss)
