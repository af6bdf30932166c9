"""Lesson 02 (activations and covariate shift): the experiments behind the figures.

- :func:`depth_profile`: activation statistics layer by layer at initialization.
- ``activation_stats`` (per-layer mean, std and saturated fraction, collected with forward
  hooks) is the exercise's answer: it lives in :mod:`course_utils.answers.lesson02`.
- :func:`figure1`: Ioffe & Szegedy's (2015) Figure 1 at small scale: the 15th / 50th / 85th
  percentiles of last-hidden-layer sigmoid inputs over training, and test accuracy.
- :class:`NoisyBatchNorm` and :func:`noisy_bn`: Santurkar et al.'s (2018) experiment,
  batch norm followed by random, time-varying shifts and scales.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .. import seeds as seeding
from .. import training
from ..data import MNISTSplit
from ..models import MLP, make_mlp
from ..probes import ActivationProbe
from ..training import evaluate, train

__all__ = [
    "depth_profile",
    "Figure1",
    "figure1",
    "NoisyBatchNorm",
    "add_noise",
    "recalibrate_bn",
    "NoisyBNResult",
    "noisy_bn",
]


@torch.no_grad()
def depth_profile(
    x: torch.Tensor,
    activation: str = "tanh",
    init_scale: float = 1.0,
    depth: int = 10,
    width: int = 256,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Activation statistics of each hidden layer of a fresh MLP on one batch.

    Args:
        x: (N, 784) inputs. init_scale: weights ~ N(0, init_scale^2 / fan_in).
    Returns:
        ``{"std": (depth,), "mean": (depth,), "saturated": (depth,), "hist": (depth, bins),
        "edges": (bins + 1,)}``; ``saturated`` is the fraction of tanh outputs with
        |a| > 0.97 (or sigmoid outside [0.03, 0.97]; 0 for ReLU).
    """
    model = make_mlp(
        depth=depth, width=width, activation=activation, init_scale=init_scale, seed=seed
    )
    hist_range = {"tanh": (-1.0, 1.0), "sigmoid": (0.0, 1.0)}.get(activation, (0.0, 3.0))
    with ActivationProbe(model, track_grads=False, hist_range=hist_range) as probe:
        model.train()
        model(x)
    return {
        "std": probe.stat("std")[0],
        "mean": probe.stat("mean")[0],
        "saturated": probe.stat("saturated")[0],
        "hist": probe.histograms(),
        "edges": probe.edges.numpy(),
    }


def __getattr__(name: str):
    """``activation_stats`` is the exercise's answer: it lives in
    :mod:`course_utils.answers.lesson02` and is imported from there on first use."""
    if name == "activation_stats":
        from ..answers.lesson02 import activation_stats

        return activation_stats
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# --------------------------------------------------------------------------------------------
# Ioffe & Szegedy (2015), Figure 1
# --------------------------------------------------------------------------------------------


@dataclass
class Figure1:
    """What :func:`figure1` measured for one network.

    ``steps``: (T,) training steps at which the percentiles were recorded.
    ``pcts``: (T, 3, U) the 15th / 50th / 85th percentiles, over the probe images, of the
    input to each of the U sigmoids of the last hidden layer.
    ``eval_steps`` / ``test_acc``: test accuracy during training.
    """

    norm: str
    steps: np.ndarray
    pcts: np.ndarray
    eval_steps: np.ndarray
    test_acc: np.ndarray

    def drift(self, unit: int | None = None) -> float | np.ndarray:
        """How far the distribution moved: the mean over the three percentiles of
        (max - min over the recorded steps). One unit's value, or (U,) for all units."""
        span = self.pcts.max(axis=0) - self.pcts.min(axis=0)  # (3, U)
        d = span.mean(axis=0)
        return float(d[unit]) if unit is not None else d


def figure1(
    data: MNISTSplit,
    norm: str = "none",
    steps: int = 2000,
    lr: float = 1.0,
    batch_size: int = 60,
    init_std: float = 0.05,
    record_every: int = 50,
    eval_every: int = 100,
    n_probe: int = 1000,
    seed: int = 0,
) -> Figure1:
    """Train Ioffe & Szegedy's MNIST network and record its last layer's sigmoid inputs.

    The network: 3 fully connected hidden layers of 100 sigmoid units (``norm="batch"`` puts
    batch norm before each sigmoid), weights ~ N(0, init_std^2), plain SGD. Every
    ``record_every`` steps the first ``n_probe`` test images are passed through the network in
    eval mode and the percentiles of each last-layer sigmoid input are stored.
    """
    model = make_mlp(
        depth=3, width=100, norm=norm, activation="sigmoid", init_std=init_std, seed=seed
    )
    target = model.blocks[-1].norm  # its output is the sigmoid's input (Identity without BN)
    x_probe = data.x_test[:n_probe]
    steps_rec, pcts = [], []

    def record(step: int, loss: float) -> None:
        if step % record_every:
            return
        out = {}
        handle = target.register_forward_hook(lambda m, i, o: out.__setitem__("z", o.detach()))
        model.eval()
        try:
            with torch.no_grad():
                model(x_probe)
        finally:
            handle.remove()
            model.train()
        steps_rec.append(step)
        pcts.append(np.percentile(out["z"].numpy(), [15, 50, 85], axis=0))

    hist = train(
        model,
        data,
        steps=steps,
        lr=lr,
        batch_size=batch_size,
        seed=seed,
        eval_every=eval_every,
        callback=record,
    )
    return Figure1(
        norm,
        np.array(steps_rec),
        np.array(pcts),
        np.array(hist.eval_steps),
        np.array(hist.test_acc),
    )


# --------------------------------------------------------------------------------------------
# Santurkar et al. (2018): noisy batch norm
# --------------------------------------------------------------------------------------------


class NoisyBatchNorm(nn.Module):
    """Batch norm followed, in training mode, by Santurkar et al.'s injected noise.

    Every activation (each sample i and unit j) gets its own random scale and shift,
    ``y_ij = s_ij * bn(x)_ij + b_ij``, drawn i.i.d. from a distribution that itself moves at
    every forward pass: at step t each unit draws a centre ``c_tj ~ U(1, 1 + scale_noise)``
    and ``m_tj ~ U(-shift_noise, shift_noise)``, then ``s_ij ~ U(c_tj - jitter, c_tj +
    jitter)`` and ``b_ij ~ U(m_tj - jitter, m_tj + jitter)``. The next layer's input thus has a
    non-zero mean and a non-unit variance that change every step (deliberate covariate shift),
    on top of per-sample noise. Eval mode (and ``noise=False``) is plain batch norm.
    """

    def __init__(
        self,
        bn: nn.Module,
        scale_noise: float = 0.5,
        shift_noise: float = 0.5,
        jitter: float = 0.25,
    ):
        super().__init__()
        self.bn = bn
        self.scale_noise, self.shift_noise = float(scale_noise), float(shift_noise)
        self.jitter = float(jitter)
        self.noise = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn(x)
        if self.training and self.noise:
            unit = (1, y.shape[1]) + (1,) * (y.dim() - 2)  # one centre per unit, this step
            c = 1.0 + self.scale_noise * torch.rand(unit)
            m = self.shift_noise * (2.0 * torch.rand(unit) - 1.0)
            s = c + self.jitter * (2.0 * torch.rand(y.shape) - 1.0)  # per sample and unit
            b = m + self.jitter * (2.0 * torch.rand(y.shape) - 1.0)
            y = y * s + b
        return y


def add_noise(
    model: MLP, scale_noise: float = 0.5, shift_noise: float = 0.5, jitter: float = 0.25
) -> MLP:
    """Wrap every ``block.norm`` of a batch-norm MLP in :class:`NoisyBatchNorm` (in place)."""
    for block in model.blocks:
        block.norm = NoisyBatchNorm(block.norm, scale_noise, shift_noise, jitter)
    return model


def recalibrate_bn(model: nn.Module, x: torch.Tensor, batch_size: int = 500) -> nn.Module:
    """Recompute every batch norm's running statistics from ``x`` without injected noise:
    :func:`course_utils.training.recalibrate_bn` with every :class:`NoisyBatchNorm`'s noise
    switched off meanwhile. Needed after noisy training: the running statistics of later
    layers were collected on noisy inputs that eval mode no longer produces. Returns the
    model."""
    noisy = [m for m in model.modules() if isinstance(m, NoisyBatchNorm)]
    saved = [m.noise for m in noisy]
    for m in noisy:
        m.noise = False
    try:
        return training.recalibrate_bn(model, x, batch_size)
    finally:
        for m, noise in zip(noisy, saved):
            m.noise = noise


@dataclass
class NoisyBNResult:
    """What :func:`noisy_bn` measured, per arm (``"none"``, ``"batch"``, ``"noisy"``).

    ``acc[arm]``: test accuracy per seed; ``diverged[arm]``: per seed.
    ``shift[arm]``: how much the inputs of the layer after the probed block moved from step
    to step: the std over training steps of each unit's batch mean, averaged over units, per
    seed (NaN for "none").
    """

    acc: dict[str, list[float]]
    diverged: dict[str, list[bool]]
    shift: dict[str, list[float]]

    def mean_acc(self, arm: str) -> float:
        return float(np.mean(self.acc[arm]))

    def mean_shift(self, arm: str) -> float:
        return float(np.mean(self.shift[arm]))


def _batch_mean_hook(store: list):
    def hook(module, inputs, output):
        if module.training:
            store.append(output.detach().mean(0))

    return hook


def noisy_bn(
    data: MNISTSplit,
    arms: Sequence[str] = ("none", "batch", "noisy"),
    seeds: Sequence[int] = (0, 1),
    depth: int = 6,
    width: int = 100,
    steps: int = 500,
    lr: float = 0.5,
    momentum: float = 0.9,
    batch_size: int = 64,
    probe_layer: int = 2,
) -> NoisyBNResult:
    """Santurkar et al.'s noisy-BN experiment: the same ReLU MLP (He init) trained by SGD with
    momentum at one learning rate without normalization, with batch norm, and with noisy
    batch norm. Batch-norm arms are recalibrated (:func:`recalibrate_bn`) before the test.
    """
    if not 0 <= probe_layer < depth:
        raise ValueError(f"probe_layer must be in [0, {depth}), got {probe_layer}")
    acc: dict[str, list[float]] = {a: [] for a in arms}
    div: dict[str, list[bool]] = {a: [] for a in arms}
    shift: dict[str, list[float]] = {a: [] for a in arms}
    for arm in arms:
        for seed in seeds:
            model = make_mlp(
                depth=depth,
                width=width,
                norm="none" if arm == "none" else "batch",
                activation="relu",
                init_scale=math.sqrt(2.0),
                seed=seed,
            )
            if arm == "noisy":
                add_noise(model)
            means: list[torch.Tensor] = []
            handle = model.blocks[probe_layer].act.register_forward_hook(_batch_mean_hook(means))
            seeding.torch_seed(1000 + seed)  # the noise draws
            try:
                hist = train(
                    model,
                    data,
                    steps=steps,
                    lr=lr,
                    momentum=momentum,
                    batch_size=batch_size,
                    seed=seed,
                )
            finally:
                handle.remove()
            if arm != "none" and not hist.diverged:
                recalibrate_bn(model, data.x_train[:2000])
            a = (
                evaluate(model, data.x_test, data.y_test)[1]
                if not hist.diverged
                else hist.final_acc
            )
            acc[arm].append(float(a))
            div[arm].append(bool(hist.diverged))
            s = float(torch.stack(means).std(0).mean()) if arm != "none" and means else math.nan
            shift[arm].append(s)
    return NoisyBNResult(acc, div, shift)
