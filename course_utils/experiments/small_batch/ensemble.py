"""Lessons 04 and 05's ensemble: K two-layer MLPs with different normalizations, learning rates and
seeds, trained at once on the course's engine (:mod:`course_utils.ensemble`).

Each member is an ordinary ``make_mlp`` network (``Linear -> norm -> ReLU`` twice, then a
linear head) with the lesson's variants: batch renormalization, ghost batch norm, dropout.
:func:`ensemble_matches_torch` checks the engine's training against the same networks
trained one by one with ``torch.optim``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from ... import seeds as seeding
from ...ensemble import Ensemble, MemberOptimizer, accuracy, matches_members, mean_loss
from ...ensemble import train_members as _train_members
from ...models import make_mlp
from .data import sample_order
from .modules import BatchRenorm1d

__all__ = [
    "NORM_KINDS",
    "mlp_member",
    "MLPEnsemble",
    "train_ensemble",
    "ensemble_matches_torch",
]

NORM_KINDS = ("batch", "renorm", "layer", "group", "none")


def mlp_member(
    kind: str,
    seed: int,
    in_features: int = 196,
    width: int = 64,
    groups: int = 4,
    dropout: float = 0.0,
    ghost: int | None = None,
    bn_momentum: float = 0.1,
    rmax: float = 3.0,
    dmax: float = 5.0,
) -> nn.Module:
    """One member: ``make_mlp(depth=2, width, norm)`` (torch's default initialization from
    ``seed``; no hidden bias where batch norm follows), then the lesson's variants.

    Args:
        kind: one of :data:`NORM_KINDS`. ``"batch"``: ``nn.BatchNorm1d`` (momentum
            ``bn_momentum``), or ghost batch norm over chunks of ``ghost`` samples
            (:class:`~course_utils.answers.lesson04.GhostBatchNorm1d`, the exercise's
            answer). ``"renorm"``: :class:`BatchRenorm1d` with limits ``rmax``, ``dmax``.
            ``"layer"``: layer norm over the ``width`` features. ``"group"``: ``groups``
            groups of ``width / groups`` features.
        dropout: dropout probability after each ReLU (0: none).
    """
    if kind not in NORM_KINDS:
        raise ValueError(f"kind must be one of {NORM_KINDS}, got {kind!r}")
    if width % groups:
        raise ValueError(f"width ({width}) must be divisible by groups ({groups})")
    norm = "batch" if kind == "renorm" else kind
    model = make_mlp(
        depth=2, width=width, in_features=in_features, norm=norm, num_groups=groups, seed=seed
    )
    for block in model.blocks:
        if kind == "renorm":
            block.norm = BatchRenorm1d(width, momentum=bn_momentum, rmax=rmax, dmax=dmax)
        elif kind == "batch" and ghost:
            from ...answers.lesson04 import GhostBatchNorm1d

            block.norm = GhostBatchNorm1d(width, ghost_size=ghost, momentum=bn_momentum)
        elif kind == "batch":
            block.norm.momentum = bn_momentum
        if dropout:
            block.add_module("drop", nn.Dropout(dropout))
    return model


class MLPEnsemble(Ensemble):
    """K independent 2-layer MLPs ``D -> H -> H -> 10`` (:func:`mlp_member`) trained as one.

    Args:
        kinds: the normalization of each member, one of :data:`NORM_KINDS`.
        lrs: learning rate of each member (SGD with momentum ``momentum``).
        seeds: seed of each member's initial weights.
        dropout: dropout probability of each member (default none).
        ghost, groups, width, in_features, bn_momentum, rmax, dmax: see :func:`mlp_member`.

    Input (K, B, D), a batch per member, or (B, D) shared by all; output logits (K, B, 10).
    Members of a kind are stacked and run together (fastest with members of a kind next
    to each other).
    """

    def __init__(
        self,
        kinds: Sequence[str],
        lrs: Sequence[float],
        seeds: Sequence[int],
        in_features: int = 196,
        width: int = 64,
        groups: int = 4,
        dropout: Sequence[float] | None = None,
        ghost: int | None = None,
        momentum: float = 0.9,
        bn_momentum: float = 0.1,
        rmax: float = 3.0,
        dmax: float = 5.0,
    ):
        k = len(kinds)
        if not (len(lrs) == len(seeds) == k):
            raise ValueError("kinds, lrs and seeds must have the same length")
        drops = [0.0] * k if dropout is None else [float(p) for p in dropout]
        models = [
            mlp_member(kd, int(s), in_features, width, groups, p, ghost, bn_momentum, rmax, dmax)
            for kd, s, p in zip(kinds, seeds, drops)
        ]
        super().__init__(models, input_dim=2)
        self.kinds, self.lrs, self.seeds = list(kinds), [float(lr) for lr in lrs], list(seeds)
        self.momentum = momentum

    def accuracy(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Eval-mode accuracy of each member on the same (N, D) inputs: array (K,), 0 for a
        diverged member."""
        return accuracy(self, torch.tensor(x), torch.tensor(y)).numpy()

    def loss(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Eval-mode mean cross-entropy of each member on the same (N, D) inputs: (K,),
        inf for a diverged member."""
        return mean_loss(self, torch.tensor(x), torch.tensor(y)).numpy()


def train_ensemble(
    ens: MLPEnsemble,
    x: np.ndarray,
    y: np.ndarray,
    batch_size: int,
    samples: int,
    seeds: Sequence[int],
) -> MLPEnsemble:
    """Train every member for ``samples // batch_size`` SGD steps; member k draws its batches
    with :func:`sample_order` from ``seeds[k]`` (same seed, same samples, same order)."""
    steps = samples // batch_size
    orders = {s: sample_order(s, len(x), steps * batch_size) for s in set(seeds)}
    order = np.stack([orders[s] for s in seeds]).reshape(len(seeds), steps, batch_size)
    xt, yt = torch.tensor(x), torch.tensor(y)
    order_t = torch.from_numpy(order)
    batches = ((xt[order_t[:, t]], yt[order_t[:, t]]) for t in range(steps))
    opt = MemberOptimizer(ens, ens.lrs, "sgd", momentum=ens.momentum)
    with torch.random.fork_rng():
        seeding.torch_seed(int(seeds[0]) + 7)  # the members' dropout masks
        _train_members(opt, batches)
    return ens


def ensemble_matches_torch(seed: int = 0) -> float:
    """Largest relative difference between the parameters of :class:`MLPEnsemble` members
    after three training steps together and those of the same ``torch.nn`` networks
    (``BatchNorm1d``, ``LayerNorm``, ``GroupNorm``, batch renormalization) trained one by one
    with ``torch.optim.SGD`` (momentum 0.9, each its own learning rate), in float64."""
    kinds, lrs = ["batch", "batch", "layer", "group", "renorm"], [0.1, 0.03, 0.1, 0.3, 0.1]
    gen = seeding.generator(seed)
    batches = [
        (
            torch.randn(len(kinds), 6, 20, generator=gen, dtype=torch.float64),
            torch.randint(0, 10, (len(kinds), 6), generator=gen),
        )
        for _ in range(3)
    ]

    def members():
        return [
            mlp_member(kd, seed + i, in_features=20, width=8).double() for i, kd in enumerate(kinds)
        ]

    return matches_members(members, 2, batches, lrs, "sgd", momentum=0.9)
