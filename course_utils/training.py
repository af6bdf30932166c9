"""A short, seeded training loop and evaluation, so lessons run an experiment in one line."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from .data import MNISTSplit, batches
from .seeds import set_seed

__all__ = [
    "set_seed",
    "evaluate",
    "History",
    "steps_to",
    "train",
    "make_optimizer",
    "recalibrate_bn",
]


@torch.no_grad()
def evaluate(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    batch_size: int = 1000,
    train_mode: bool = False,
) -> tuple[float, float]:
    """Mean cross-entropy loss and accuracy of ``model`` on (x, y).

    Args:
        x: (N, ...) inputs; y: (N,) class labels.
        train_mode: evaluate in training mode (batch statistics) instead of eval mode;
            the model's own mode is restored afterwards either way. Running statistics
            are not changed.
    Returns:
        (loss, accuracy), accuracy in [0, 1].
    """
    was_training = model.training
    saved = None
    if train_mode:
        # train mode would also update the running statistics: keep a copy to restore
        saved = {k: v.clone() for k, v in model.state_dict().items()}
    model.train(train_mode)
    try:
        loss_sum, correct = 0.0, 0
        for i in range(0, len(x), batch_size):
            out = model(x[i : i + batch_size])
            loss_sum += float(
                nn.functional.cross_entropy(out, y[i : i + batch_size], reduction="sum")
            )
            correct += int((out.argmax(1) == y[i : i + batch_size]).sum())
        n = max(len(x), 1)
        return loss_sum / n, correct / n
    finally:
        if saved is not None:
            model.load_state_dict(saved)
        model.train(was_training)


def make_optimizer(
    model: nn.Module,
    name: str = "sgd",
    lr: float = 0.1,
    momentum: float = 0.0,
    weight_decay: float = 0.0,
) -> torch.optim.Optimizer:
    """``torch.optim.SGD`` (with optional momentum) or ``Adam``/``AdamW`` by name."""
    if name == "sgd":
        return torch.optim.SGD(
            model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay
        )
    if name == "adam":
        return torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    raise ValueError(f"optimizer must be 'sgd', 'adam' or 'adamw', got {name!r}")


@dataclass
class History:
    """What :func:`train` measured.

    ``loss``: training loss per step (T,). ``eval_steps``: steps at which the test set was
    evaluated; ``test_loss`` / ``test_acc``: the results there. ``diverged``: the loss became
    NaN or inf (training stopped there).
    """

    loss: list[float] = field(default_factory=list)
    eval_steps: list[int] = field(default_factory=list)
    test_loss: list[float] = field(default_factory=list)
    test_acc: list[float] = field(default_factory=list)
    diverged: bool = False

    @property
    def final_acc(self) -> float:
        """The last measured test accuracy."""
        return self.test_acc[-1] if self.test_acc else 0.0

    def steps_to(self, acc: float) -> int | None:
        """First evaluated step at which test accuracy reached ``acc``, or None."""
        return steps_to(self.eval_steps, self.test_acc, acc)


def steps_to(eval_steps: Sequence[int], accuracies: Sequence[float], acc: float) -> int | None:
    """The first of ``eval_steps`` whose accuracy (``accuracies``, same length) is at least
    ``acc``; None if none is."""
    for step, a in zip(eval_steps, accuracies, strict=True):
        if a >= acc:
            return step
    return None


def train(
    model: nn.Module,
    data: MNISTSplit,
    steps: int = 500,
    lr: float = 0.1,
    batch_size: int = 64,
    optimizer: str = "sgd",
    momentum: float = 0.0,
    weight_decay: float = 0.0,
    seed: int = 0,
    eval_every: int | None = None,
    lr_schedule: Callable[[int], float] | None = None,
    callback: Callable[[int, float], None] | None = None,
) -> History:
    """Train ``model`` on ``data`` with cross-entropy for ``steps`` mini-batch steps.

    Args:
        data: an :class:`~course_utils.data.MNISTSplit` (or any object with x_train,
            y_train, x_test, y_test tensors).
        seed: seeds the batch order, so runs that differ only in the model see the
            same samples in the same order.
        eval_every: evaluate on the test split every this many steps (and always at the end).
        lr_schedule: step -> multiplier of ``lr`` (for warm-up or decay).
        callback: called as ``callback(step, loss)`` after every step.
    Returns:
        A :class:`History`. A NaN or inf loss stops training and sets ``diverged``.
    """
    opt = make_optimizer(model, optimizer, lr, momentum, weight_decay)
    hist = History()
    stream = batches(data.x_train, data.y_train, batch_size, seed=seed)
    model.train()
    for step in range(1, steps + 1):
        if lr_schedule is not None:
            for g in opt.param_groups:
                g["lr"] = lr * lr_schedule(step)
        xb, yb = next(stream)
        loss = nn.functional.cross_entropy(model(xb), yb)
        value = loss.item()
        hist.loss.append(value)
        if not np.isfinite(value):
            hist.diverged = True
            break
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if callback is not None:
            callback(step, value)
        if (eval_every and step % eval_every == 0) or step == steps:
            tl, ta = evaluate(model, data.x_test, data.y_test)
            model.train()
            hist.eval_steps.append(step)
            hist.test_loss.append(tl)
            hist.test_acc.append(ta)
    if hist.diverged:
        # measure the broken model rather than assume a number for it
        tl, ta = evaluate(model, data.x_test, data.y_test)
        hist.eval_steps.append(len(hist.loss))
        hist.test_loss.append(tl)
        hist.test_acc.append(ta)
    return hist


@torch.no_grad()
def recalibrate_bn(model: nn.Module, x: torch.Tensor, batch_size: int = 500) -> nn.Module:
    """Re-estimate every batch-norm layer's running statistics on the inputs ``x``
    ("precise BN"): their plain average over the batches ``x[i : i + batch_size]``.

    Each layer's running statistics are reset, then the batches pass through in training
    mode, without gradients, each batch counting equally (what ``momentum=None`` does:
    here a momentum of ``1 / (i + 1)`` for batch ``i``, which also works on an
    :class:`~course_utils.ensemble.Ensemble`). A last batch shorter than ``batch_size``
    is left out when there is a full one, so that no batch counts more than its samples
    justify. Only the layers with running statistics switch to training mode; every other
    module keeps its mode, so a model in eval mode is recalibrated on what eval mode
    computes (dropout off: no variance shift). Afterwards every layer's momentum and every
    module's mode are as they were (a batch norm frozen in eval mode stays frozen); weights
    are not changed.

    Args:
        model: any module, in any mode; every layer that keeps running statistics
            (``torch.nn``'s and :mod:`course_utils.reference`'s batch norms, instance
            norms with ``track_running_stats=True``) is recalibrated.
        x: (N, ...) inputs the model accepts; no labels needed.
        batch_size: samples per batch.
    Returns:
        ``model``, with its new running statistics.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    layers = [
        m
        for m in model.modules()
        if getattr(m, "track_running_stats", False) and hasattr(m, "reset_running_stats")
    ]
    momenta = [m.momentum for m in layers]
    modes = [(m, m.training) for m in model.modules()]
    n = len(x)
    stop = n - n % batch_size if n >= batch_size else n
    try:
        for m in layers:
            m.reset_running_stats()
            m.train()
        for i, start in enumerate(range(0, stop, batch_size)):
            for m in layers:
                m.momentum = 1.0 / (i + 1)  # cumulative average: every batch counts equally
            model(x[start : start + batch_size])
    finally:
        for m, momentum in zip(layers, momenta):
            m.momentum = momentum
        for m, training in modes:
            m.training = training
    return model
