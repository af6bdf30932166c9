"""Lesson 08's capstone: a training run with planted faults, the probes that find them, the
measurements the grader makes on a learner's fixed run. (The trusted fix lives with the
exercise, in :mod:`course_utils.exercises.lesson08`.)

The contract of the exercise: ``train_fixed(data, seed) -> nn.Module`` receives the *raw*
MNIST split (:func:`load_data`: pixel values 0-255, (N, 784)) and returns a trained model that
maps raw (N, 784) pixels to (N, 10) logits, ready to serve predictions. :func:`measure` runs it
under hooks and reports, for one seed:

- ``accuracy``: test accuracy of the returned model, evaluated on a copy put in eval mode;
- ``in_eval_mode``: every module of the returned model is in eval mode, as served;
- ``first_layer_input``: mean and std of what the first Linear/Conv layer receives when the
  model is given raw test pixels (scaled inputs give values of order 1, raw pixels ~100);
- ``min_bn_batch``: the fewest values per channel any batch-norm layer normalized over while
  training (None when the model has no batch norm).
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn import functional as F

from .. import seeds as seeding
from ..data import MNISTSplit, batches, load_mnist

__all__ = [
    "Standardize",
    "load_data",
    "train_broken",
    "CapstoneReport",
    "measure",
    "serve_one_at_a_time",
    "TARGET_ACCURACY",
    "MIN_BN_VALUES",
    "INPUT_MEAN_LIMIT",
    "INPUT_STD_RANGE",
]

TARGET_ACCURACY = 0.90
MIN_BN_VALUES = 16  # fewer values per channel than this make batch statistics too noisy
INPUT_MEAN_LIMIT = 3.0
INPUT_STD_RANGE = (0.2, 5.0)


class Standardize(nn.Module):
    """``(x - mean) / std`` with statistics fitted on the training split, stored as buffers
    (so they move with the model and are saved in its state dict); any input shape."""

    def __init__(self, mean: torch.Tensor | float, std: torch.Tensor | float):
        super().__init__()
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32))
        self.register_buffer("std", torch.as_tensor(std, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def load_data() -> MNISTSplit:
    """The capstone's data: MNIST as raw pixels 0-255, flattened (8000 / 2000 x 784)."""
    return load_mnist("raw", flatten=True)


def train_broken(data: MNISTSplit, seed: int) -> nn.Module:
    """The run the learner is asked to fix (it has several faults; do not copy it)."""
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Linear(784, 128),
        nn.Tanh(),
        nn.BatchNorm1d(128),
        nn.Linear(128, 128),
        nn.Tanh(),
        nn.BatchNorm1d(128),
        nn.Linear(128, 10),
    )
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    stream = batches(data.x_train, data.y_train, batch_size=2, seed=seed)
    for _, (xb, yb) in zip(range(300), stream):
        loss = F.cross_entropy(model(xb), yb)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model


@dataclass
class CapstoneReport:
    """What :func:`measure` found (see the module docstring); ``seconds``: training time;
    ``model``: the returned model, as returned (None when training failed)."""

    accuracy: float
    in_eval_mode: bool
    first_layer_input: tuple[float, float]
    min_bn_batch: int | None
    seconds: float
    error: str = ""
    model: nn.Module | None = field(default=None, repr=False, compare=False)

    @property
    def reaches_target(self) -> bool:
        return self.accuracy >= TARGET_ACCURACY

    @property
    def inputs_scaled(self) -> bool:
        mean, std = self.first_layer_input
        return (
            math.isfinite(mean)
            and abs(mean) <= INPUT_MEAN_LIMIT
            and INPUT_STD_RANGE[0] <= std <= INPUT_STD_RANGE[1]
        )

    @property
    def batch_stats_ok(self) -> bool:
        return self.min_bn_batch is None or self.min_bn_batch >= MIN_BN_VALUES


_BN_TYPES = (nn.modules.batchnorm._BatchNorm,)
_WEIGHT_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d)


@torch.no_grad()
def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    out = model(x)
    return float((out.argmax(1) == y).float().mean())


@torch.no_grad()
def _first_layer_input(model: nn.Module, x: torch.Tensor) -> tuple[float, float]:
    seen: list[torch.Tensor] = []

    def hook(module, inputs):
        if isinstance(module, _WEIGHT_TYPES) and not seen:
            seen.append(inputs[0].detach().float())

    handle = nn.modules.module.register_module_forward_pre_hook(hook)
    try:
        model(x)
    finally:
        handle.remove()
    if not seen:
        return (float("nan"), float("nan"))
    return (float(seen[0].mean()), float(seen[0].std()))


def measure(train_fn, seed: int, data: MNISTSplit | None = None) -> CapstoneReport:
    """Run ``train_fn(data, seed)`` under hooks and measure the returned model."""
    data = load_data() if data is None else data
    counts: list[int] = []

    def bn_hook(module, inputs):
        if isinstance(module, _BN_TYPES) and module.training and inputs:
            x = inputs[0]
            if x.dim() >= 2 and x.shape[1]:
                counts.append(x.numel() // x.shape[1])

    handle = nn.modules.module.register_module_forward_pre_hook(bn_hook)
    start = time.perf_counter()
    try:
        # the claims audit's seed offset reaches train_fn through its seed argument
        model = train_fn(data, seeding.shifted(seed))
    finally:
        handle.remove()
    seconds = time.perf_counter() - start
    if not isinstance(model, nn.Module):
        return CapstoneReport(
            0.0,
            False,
            (float("nan"), float("nan")),
            None,
            seconds,
            error=f"train_fixed returned {type(model).__name__}, not an nn.Module",
        )
    in_eval = not any(m.training for m in model.modules())
    served = copy.deepcopy(model).eval()
    try:
        acc = _accuracy(served, data.x_test, data.y_test)
        first = _first_layer_input(served, data.x_test[:500])
    except Exception as e:  # a model that cannot take raw (N, 784) pixels
        return CapstoneReport(
            0.0,
            in_eval,
            (float("nan"), float("nan")),
            min(counts) if counts else None,
            seconds,
            error=f"the returned model failed on raw (N, 784) test pixels: {type(e).__name__}: {e}",
            model=model,
        )
    return CapstoneReport(
        acc, in_eval, first, min(counts) if counts else None, seconds, model=model
    )


@torch.no_grad()
def serve_one_at_a_time(model: nn.Module, x: torch.Tensor, y: torch.Tensor, limit: int = 200):
    """Predict ``limit`` test images one request at a time, with the model *as it is* (no
    ``.eval()`` call), as a server would. Returns (accuracy, error message or "")."""
    correct = 0
    for i in range(min(limit, len(x))):
        try:
            out = model(x[i : i + 1])
        except Exception as e:  # noqa: BLE001 - the point is to show the failure
            return float("nan"), f"{type(e).__name__}: {e}"
        correct += int(out.argmax(1).item() == int(y[i]))
    return correct / min(limit, len(x)), ""
