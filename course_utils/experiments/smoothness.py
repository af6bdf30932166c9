"""Santurkar et al.'s (2018) smoothness measurements, at small scale: how much the loss and
its gradient change along the gradient direction during training, with and without batch
norm (their Figure 4: "loss landscape", "gradient predictiveness", "effective beta-smoothness").

At every probe step t of an ordinary training run, with weights w and the gradient g of the
current batch's loss L, the probe evaluates L and its gradient at w - eta * g for several step
sizes eta (multiples of the learning rate), on the same batch and without changing the model:

- loss variation: max_eta L(w - eta g) - min_eta L(w - eta g);
- gradient change: max_eta ||grad L(w - eta g) - g||;
- beta estimate: max_eta ||grad L(w - eta g) - g|| / ||eta g||, the gradient's change per unit
  of distance moved (a local Lipschitz constant of the gradient).

- :func:`landscape_probe`: one training run with the probe; a :class:`SmoothnessTrace`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ..data import batches, load_mnist
from ..models import make_mlp
from ..training import evaluate

__all__ = ["SmoothnessTrace", "landscape_probe"]


@dataclass
class SmoothnessTrace:
    """Per probe step: ``steps`` (T,), ``loss_variation`` (T,), ``grad_change`` (T,),
    ``beta`` (T,), ``grad_norm`` (T,) (||g||); ``loss`` (steps,) the training loss;
    ``test_acc`` at the end."""

    steps: np.ndarray
    loss_variation: np.ndarray
    grad_change: np.ndarray
    beta: np.ndarray
    grad_norm: np.ndarray
    loss: np.ndarray
    test_acc: float

    def summary(self) -> dict[str, float]:
        """Medians over the probe steps (the median ignores a single blown-up probe)."""
        return {
            "loss_variation": float(np.median(self.loss_variation)),
            "grad_change": float(np.median(self.grad_change)),
            "beta": float(np.median(self.beta)),
            "grad_norm": float(np.median(self.grad_norm)),
        }


def _loss_and_grad(model: nn.Module, params: list[torch.Tensor], xb, yb):
    loss = F.cross_entropy(model(xb), yb)
    grads = torch.autograd.grad(loss, params)
    return loss.item(), torch.cat([g.reshape(-1) for g in grads])


@torch.no_grad()
def _set(params: list[torch.Tensor], flat: torch.Tensor) -> None:
    offset = 0
    for p in params:
        p.copy_(flat[offset : offset + p.numel()].view_as(p))
        offset += p.numel()


def _probe(model: nn.Module, xb, yb, lr: float, multipliers: Sequence[float]) -> tuple:
    params = [p for p in model.parameters() if p.requires_grad]
    state = {k: v.clone() for k, v in model.state_dict().items()}  # running stats included
    w0 = torch.cat([p.detach().reshape(-1) for p in params])
    loss0, g0 = _loss_and_grad(model, params, xb, yb)
    losses, changes, betas = [loss0], [], []
    for m in multipliers:
        eta = lr * m
        _set(params, w0 - eta * g0)
        loss, g = _loss_and_grad(model, params, xb, yb)
        losses.append(loss)
        change = float((g - g0).norm())
        changes.append(change)
        betas.append(change / max(eta * float(g0.norm()), 1e-12))
    model.load_state_dict(state)
    finite = [v for v in losses if math.isfinite(v)]
    variation = max(finite) - min(finite) if len(finite) == len(losses) else math.inf
    return variation, max(changes), max(betas), float(g0.norm())


def landscape_probe(
    norm: str,
    depth: int = 6,
    width: int = 100,
    lr: float = 0.1,
    steps: int = 300,
    probe_every: int = 25,
    multipliers: Sequence[float] = (0.25, 0.5, 1.0, 2.0, 4.0),
    batch_size: int = 64,
    seed: int = 0,
) -> SmoothnessTrace:
    """Train a ReLU MLP (He initialisation) with plain SGD and probe the landscape along the
    gradient every ``probe_every`` steps.

    Args:
        norm: ``"none"`` or ``"batch"`` (Linear -> BN -> ReLU).
        multipliers: the probe's step sizes, as multiples of ``lr``.
        seed: seeds the weights and the batch order.
    """
    if norm not in ("none", "batch"):
        raise ValueError(f"norm must be 'none' or 'batch', got {norm!r}")
    data = load_mnist()
    model = make_mlp(depth=depth, width=width, norm=norm, init_scale=math.sqrt(2.0), seed=seed)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    stream = batches(data.x_train, data.y_train, batch_size, seed=seed)
    rows, losses = [], []
    model.train()
    for step in range(1, steps + 1):
        xb, yb = next(stream)
        if step % probe_every == 0:
            rows.append((step, *_probe(model, xb, yb, lr, multipliers)))
        loss = F.cross_entropy(model(xb), yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    _, acc = evaluate(model, data.x_test, data.y_test)
    cols = np.array(rows, dtype=np.float64).reshape(-1, 5)
    return SmoothnessTrace(
        cols[:, 0].astype(int),
        cols[:, 1],
        cols[:, 2],
        cols[:, 3],
        cols[:, 4],
        np.array(losses),
        acc,
    )
