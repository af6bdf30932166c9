"""Lesson 11, section 4: a residual CNN without normalization (NF-ResNet ingredients) against
the same CNN with batch norm, as the batch each batch-norm layer sees shrinks.

- :class:`ResidualCNN`: stem, ``blocks`` pre-activation residual blocks, global average pool,
  head; input (N, 1, 14, 14). ``norm="batch"``: BN-ReLU-conv-BN-ReLU-conv branches (He et al.
  2016), BN statistics over groups of ``bn_group`` samples (ghost batches: what one device
  sees when a batch is split over devices). ``norm="nf"``: no normalization; the NF-ResNet
  recipe (Brock et al. 2021a): scaled weight standardization (:class:`ScaledWSConv2d`, the
  exercise's answer from :mod:`course_utils.answers.lesson11`) with the ReLU gain, branch
  input divided by the expected std beta of the residual stream, branch output scaled by
  alpha and by a learnable gain that starts at 0 (SkipInit, De & Smith 2020).
- :class:`GhostBatchNorm2d`: batch norm whose training statistics come from groups of
  ``group`` samples.
- :func:`adaptive_grad_clip_`: NFNets' adaptive gradient clipping (Brock et al. 2021b).
- :func:`relu_gain`: 1 / std(relu(z)) for z ~ N(0, 1), measured or exact.
- :func:`train_cnn`: SGD with momentum, optional AGC; test accuracy in eval mode.
- :func:`lr_sweep`: the arms of :data:`ARMS` (batch norm at 64, 4 and 1 samples per device,
  normalization-free) over a learning-rate grid.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .. import seeds as seeding
from ..data import MNISTSplit, batches
from .small_batch import flush_denormals

__all__ = [
    "RELU_GAIN",
    "relu_gain",
    "GhostBatchNorm2d",
    "ResidualCNN",
    "adaptive_grad_clip_",
    "train_cnn",
    "ARMS",
    "Sweep",
    "lr_sweep",
]


def __getattr__(name: str):
    """``norm_free.ScaledWSConv2d``: the exercise's answer, imported when first asked for, so
    that importing this module never imports an answer (the grader's sandbox has none)."""
    if name == "ScaledWSConv2d":
        return _scaled_ws_conv()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _scaled_ws_conv() -> type[nn.Conv2d]:
    from ..answers.lesson11 import ScaledWSConv2d

    return ScaledWSConv2d


# 1 / std(relu(z)), z ~ N(0, 1): E[relu(z)] = 1/sqrt(2 pi), E[relu(z)^2] = 1/2
RELU_GAIN = math.sqrt(2 / (1 - 1 / math.pi))


def relu_gain(samples: int | None = None, seed: int = 0) -> float:
    """The gain gamma that gives relu(z) unit variance: 1 / std(relu(z)) for z ~ N(0, 1).

    ``samples=None`` returns the exact value sqrt(2 / (1 - 1/pi)); otherwise the estimate
    from that many Gaussian draws (seeded)."""
    if samples is None:
        return RELU_GAIN
    z = torch.randn(samples, generator=seeding.generator(seed), dtype=torch.float64)
    return float(1 / F.relu(z).std())


class GhostBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics come from groups of ``group`` consecutive samples
    ("ghost batches": what each device computes when a batch is split over N / group devices);
    (N, C, H, W) -> (N, C, H, W), N a multiple of ``group``. ``group=None``: plain batch norm.

    In training each group is normalized with its own mean and biased variance over
    (group, H, W); the running statistics move towards the average of the groups' means and
    unbiased variances, one momentum step per call (as if every device kept the average).
    Eval mode uses the running statistics.
    """

    def __init__(self, num_features: int, group: int | None = None, **kwargs):
        super().__init__(num_features, **kwargs)
        if group is not None and group < 1:
            raise ValueError(f"group must be a positive number of samples, got {group}")
        self.group = group

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.group is None or x.shape[0] == self.group:
            return super().forward(x)
        n, c, h, w = x.shape
        if n % self.group:
            raise ValueError(f"batch of {n} does not split into groups of {self.group}")
        k = n // self.group
        # (k groups, group, C, HW) -> (group, k*C, HW): torch's batch norm then normalizes each
        # (group, channel) pair over its group x H x W values, in one fused call
        xg = x.reshape(k, self.group, c, h * w).transpose(0, 1).reshape(self.group, k * c, h * w)
        # with momentum 1 these buffers receive each pair's batch mean and unbiased variance
        mean, var = x.new_zeros(k * c), x.new_ones(k * c)
        y = F.batch_norm(xg, mean, var, training=True, momentum=1.0, eps=self.eps)
        y = y.view(self.group, k, c, h, w).transpose(0, 1).reshape(n, c, h, w)
        with torch.no_grad():
            m = self.momentum
            self.running_mean.mul_(1 - m).add_(m * mean.view(k, c).mean(0))
            self.running_var.mul_(1 - m).add_(m * var.view(k, c).mean(0))
            self.num_batches_tracked += 1
        return y * self.weight.view(1, c, 1, 1) + self.bias.view(1, c, 1, 1)


class _Block(nn.Module):
    """One pre-activation residual block of ``channels`` 3x3 convolutions."""

    def __init__(self, channels: int, norm: str, bn_group: int | None, alpha: float, beta: float):
        super().__init__()
        self.norm = norm
        if norm == "batch":
            self.bn1 = GhostBatchNorm2d(channels, bn_group)
            self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
            self.bn2 = GhostBatchNorm2d(channels, bn_group)
            self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        else:
            self.alpha, self.beta = alpha, beta
            ScaledWSConv2d = _scaled_ws_conv()
            self.conv1 = ScaledWSConv2d(channels, channels, 3, padding=1, gamma=RELU_GAIN)
            self.conv2 = ScaledWSConv2d(channels, channels, 3, padding=1, gamma=RELU_GAIN)
            self.skip_gain = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.norm == "batch":
            return x + self.conv2(F.relu(self.bn2(self.conv1(F.relu(self.bn1(x))))))
        branch = self.conv2(F.relu(self.conv1(F.relu(x / self.beta))))
        return x + self.alpha * self.skip_gain * branch


class ResidualCNN(nn.Module):
    """A small pre-activation residual CNN: (N, 1, 14, 14) -> logits (N, 10).

    Stem: 3x3 conv, stride 2, 1 -> ``channels`` (7x7 maps); ``blocks`` residual blocks; ReLU
    (after BN in the batch-norm net); global average pool; Linear head.

    Args:
        norm: ``"batch"`` or ``"nf"`` (see the module docstring).
        bn_group: samples per batch-norm statistics group (None: the whole batch).
        alpha: NF only: the residual branch scale; block l divides its input by
            beta_l = sqrt(1 + l * alpha^2), the expected std of the stream there.
    """

    def __init__(
        self,
        norm: str = "batch",
        channels: int = 16,
        blocks: int = 3,
        bn_group: int | None = None,
        alpha: float = 0.2,
        seed: int | None = 0,
    ):
        super().__init__()
        if norm not in ("batch", "nf"):
            raise ValueError(f"norm must be 'batch' or 'nf', got {norm!r}")
        if seed is not None:
            seeding.torch_seed(seed)
        self.norm = norm
        if norm == "nf":
            # gamma 1: the input is not an activation's output
            self.stem = _scaled_ws_conv()(1, channels, 3, stride=2, padding=1)
        else:
            self.stem = nn.Conv2d(1, channels, 3, stride=2, padding=1)
        self.blocks = nn.Sequential(
            *(
                _Block(channels, norm, bn_group, alpha, math.sqrt(1 + i * alpha**2))
                for i in range(blocks)
            )
        )
        self.final = GhostBatchNorm2d(channels, bn_group) if norm == "batch" else nn.Identity()
        self.head = nn.Linear(channels, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.final(self.blocks(self.stem(x))))
        return self.head(h.mean(dim=(2, 3)))


@torch.no_grad()
def adaptive_grad_clip_(
    parameters: Iterable[nn.Parameter], clipping: float = 0.01, eps: float = 1e-3
) -> None:
    """Adaptive gradient clipping (Brock et al. 2021b), in place.

    For every output unit i of a weight (row i of a matrix, filter i of a convolution; a
    scalar or vector parameter counts as one unit), the gradient G_i is rescaled to norm
    ``clipping * max(||W_i||, eps)`` when it is longer than that: the step is bounded
    relative to the weight it changes.
    """
    for p in parameters:
        if p.grad is None:
            continue
        dims = tuple(range(1, p.dim())) if p.dim() > 1 else None
        w_norm = torch.linalg.vector_norm(p.detach(), dim=dims, keepdim=dims is not None)
        g_norm = torch.linalg.vector_norm(p.grad, dim=dims, keepdim=dims is not None)
        limit = clipping * w_norm.clamp(min=eps)
        scale = torch.where(g_norm > limit, limit / g_norm.clamp(min=1e-6), torch.ones_like(g_norm))
        p.grad.mul_(scale)


@torch.no_grad()
def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    return float((model(x).argmax(1) == y).float().mean())


def train_cnn(
    model: nn.Module,
    data: MNISTSplit,
    lr: float,
    steps: int = 200,
    batch_size: int = 64,
    seed: int = 0,
    momentum: float = 0.9,
    agc: float | None = None,
) -> tuple[np.ndarray, float]:
    """SGD with momentum on (N, 1, 14, 14) images, batches seeded with ``seed``; ``agc`` clips
    every parameter but the head's with :func:`adaptive_grad_clip_` (NFNets leave the
    classifier unclipped). Returns (loss per step (steps,), NaN after a divergence; test
    accuracy in eval mode)."""
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    head = {id(p) for p in getattr(model, "head", nn.Identity()).parameters()}
    clipped = [p for p in model.parameters() if id(p) not in head]
    stream = batches(data.x_train, data.y_train, batch_size, seed=seed)
    losses = np.full(steps, np.nan)
    model.train()
    # the NF branches start at gain 0: tiny gradients would otherwise make slow denormal floats
    with flush_denormals():
        for s in range(steps):
            xb, yb = next(stream)
            loss = F.cross_entropy(model(xb), yb)
            if not torch.isfinite(loss):
                break  # diverged: the accuracy below is measured as the model stands
            losses[s] = loss.item()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if agc is not None:
                adaptive_grad_clip_(clipped, agc)
            opt.step()
        return losses, _accuracy(model, data.x_test, data.y_test)


ARMS = {
    "batch norm, 64 per device": dict(norm="batch", bn_group=None),
    "batch norm, 4 per device": dict(norm="batch", bn_group=4),
    "batch norm, 1 per device": dict(norm="batch", bn_group=1),
    "normalization-free": dict(norm="nf"),
}


@dataclass
class Sweep:
    """:func:`lr_sweep`'s results: ``acc[arm]`` (lrs,) test accuracies and ``loss[arm]``
    (lrs, steps) training losses, all with one ``seed``."""

    lrs: np.ndarray
    seed: int
    acc: dict
    loss: dict

    def best_lr(self, arm: str) -> float:
        """The learning rate with the highest test accuracy (the arm's tuned rate)."""
        return float(self.lrs[int(np.argmax(self.acc[arm]))])

    def best(self, arm: str) -> float:
        """The arm's test accuracy at its tuned learning rate."""
        return float(np.max(self.acc[arm]))

    def table(self) -> str:
        """Plain text: accuracy per learning rate and the tuned rate of every arm."""
        return "\n".join(
            f"{arm:<27}"
            + "  ".join(f"lr {lr:g}: {a:.3f}" for lr, a in zip(self.lrs, self.acc[arm]))
            + f"  -> best {self.best(arm):.3f} at lr {self.best_lr(arm):g}"
            for arm in self.acc
        )


def lr_sweep(
    data: MNISTSplit,
    arms: Sequence[str] = tuple(ARMS),
    lrs: Sequence[float] = (0.1, 0.3),
    seed: int = 0,
    steps: int = 200,
    batch_size: int = 64,
    agc: float | None = None,
    **model_kwargs,
) -> Sweep:
    """Train :class:`ResidualCNN` for every arm of :data:`ARMS` at every learning rate (SGD,
    momentum 0.9; the same seed for weights and batches in every run)."""
    lrs_a = np.asarray(lrs, dtype=np.float64)
    acc, loss = {}, {}
    for arm in arms:
        runs = [
            train_cnn(
                ResidualCNN(seed=seed, **ARMS[arm], **model_kwargs),
                data,
                float(lr),
                steps,
                batch_size,
                seed,
                agc=agc,
            )
            for lr in lrs_a
        ]
        loss[arm] = np.array([r[0] for r in runs])
        acc[arm] = np.array([r[1] for r in runs])
    return Sweep(lrs_a, seed, acc, loss)
