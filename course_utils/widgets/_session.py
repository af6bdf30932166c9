"""One training run for the :class:`~course_utils.widgets.ActivationExplorer`, UI-free.

A :class:`Session` builds the MLP for a :class:`Config`, attaches the probes, and trains in
chunks of steps that the explorer interleaves with redraws. It records, per step, the loss
and the batch accuracy, and every ``probe_every`` steps the update-to-data ratio; the
activation statistics live in its :class:`~course_utils.probes.ActivationProbe`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..data import MNISTSplit, batches
from ..models import make_mlp
from ..probes import ActivationProbe, UpdateRatio

__all__ = ["Config", "Session", "HIST_RANGES"]

# histogram ranges per activation: the whole output range of tanh / sigmoid; ReLU's outputs
# from a unit-variance pre-activation lie almost all below 4
HIST_RANGES = {"tanh": (-1.0, 1.0), "sigmoid": (0.0, 1.0), "relu": (0.0, 4.0)}


@dataclass(frozen=True)
class Config:
    """What the explorer's controls set. ``init_scale``: weights ~ N(0, (init_scale /
    sqrt(fan_in))^2), so 1.0 is LeCun's initialisation."""

    norm: str = "none"
    placement: str = "before"
    activation: str = "tanh"
    depth: int = 4
    width: int = 100
    init_scale: float = 1.0
    lr: float = 0.1
    batch_size: int = 64
    seed: int = 0


class Session:
    """The model, optimizer, data stream and probes of one run, and what it measured.

    Args:
        config: the run's :class:`Config`.
        data: flattened MNIST (x_train (N, 784), ...).
        probe_every: histograms, gradient statistics and update ratios every this many
            steps (the cheap statistics every step).
        bins: histogram bins.
        eval_size: test images used for the test accuracy.
    Step 0 is a forward and backward pass at initialisation, without an update, so the
    plots show the initial state before any training.
    """

    def __init__(
        self,
        config: Config,
        data: MNISTSplit,
        probe_every: int = 5,
        bins: int = 40,
        eval_size: int = 1000,
    ):
        self.config = config
        c = config
        self.model = make_mlp(
            depth=c.depth,
            width=c.width,
            norm=c.norm,
            placement=c.placement,
            activation=c.activation,
            init_scale=c.init_scale,
            seed=c.seed,
        )
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=c.lr)
        self.probe_every = probe_every
        self.probe = ActivationProbe(
            self.model,
            bins=bins,
            hist_range=HIST_RANGES.get(c.activation, (-3.0, 3.0)),
            hist_every=probe_every,
            grad_every=probe_every,
            inputs=True,
        )
        self.ratio = UpdateRatio(self.model)
        self.ratio_names = list(self.ratio.params)
        self._stream = batches(data.x_train, data.y_train, c.batch_size, seed=c.seed)
        self._x_test = data.x_test[:eval_size]
        self._y_test = data.y_test[:eval_size]
        self.step = 0  # optimizer updates so far
        self.loss: list[float] = []  # per forward pass: index 0 is the initial state
        self.correct: list[float] = []  # batch accuracy per forward pass, in [0, 1]
        self.ratio_steps: list[int] = []
        self.ratios: list[list[float]] = []  # per measurement: one ratio per weight matrix
        self.test_steps: list[int] = []
        self.test_acc: list[float] = []
        self.diverged = False
        self.model.train()
        self._forward_backward(*next(self._stream))
        self.evaluate()

    def _forward_backward(self, xb: torch.Tensor, yb: torch.Tensor) -> bool:
        out = self.model(xb)
        loss = nn.functional.cross_entropy(out, yb)
        value = loss.item()
        self.loss.append(value)
        self.correct.append(float((out.argmax(1) == yb).sum()) / len(yb))
        if not math.isfinite(value):
            self.diverged = True
            return False
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        return True

    def train(self, steps: int) -> int:
        """Take up to ``steps`` SGD steps (fewer if the loss becomes NaN or inf); returns
        how many were taken."""
        done = 0
        for _ in range(steps):
            if self.diverged:
                break
            if not self._forward_backward(*next(self._stream)):
                break
            measure = (self.step + 1) % self.probe_every == 0
            if measure:
                self.ratio.before_step()
            self.optimizer.step()
            self.step += 1
            done += 1
            if measure:
                self.ratio_steps.append(self.step)
                self.ratios.append(list(self.ratio.after_step().values()))
                self.ratio.history.clear()  # the session keeps its own copy
        return done

    def maybe_evaluate(self, every: int = 50) -> None:
        """Evaluate if ``every`` steps passed since the last test accuracy (a test pass costs
        as much as a few training steps: not at every redraw)."""
        if self.step - self.test_steps[-1] >= every or (
            self.diverged and self.test_steps[-1] != self.step
        ):
            self.evaluate()

    @torch.no_grad()
    def evaluate(self) -> float:
        """Accuracy on the first ``eval_size`` test images (eval mode); recorded."""
        was = self.model.training
        self.model.eval()
        try:
            acc = float((self.model(self._x_test).argmax(1) == self._y_test).float().mean())
        finally:
            self.model.train(was)
        if self.test_steps and self.test_steps[-1] == self.step:
            self.test_acc[-1] = acc
        else:
            self.test_steps.append(self.step)
            self.test_acc.append(acc)
        return acc

    def recent(self, key: str, window: int) -> np.ndarray:
        """Per-layer mean of a probe statistic over the last ``window`` recorded steps that
        have it (NaN-skipping): (layers,)."""
        values = self.probe.stat(key)[-window:]
        values = values[~np.isnan(values).all(axis=1)]
        if len(values) == 0:
            return np.full(len(self.probe.names), np.nan)
        return np.nanmean(values, axis=0)

    def close(self) -> None:
        """Detach the probe's hooks from the model."""
        self.probe.remove()
