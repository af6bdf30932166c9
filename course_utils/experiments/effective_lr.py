"""Scale invariance and the effective learning rate (van Laarhoven 2017; Hoffer et al. 2018;
Wan et al. 2021): with batch norm right after a layer, the loss does not depend on the norm of
that layer's weight W, so its gradient is orthogonal to W and shrinks as 1 / ||W||. An SGD
step then turns W by an angle of about lr * ||g|| / ||W|| ~ lr / ||W||^2: the weight norm sets
the *effective* learning rate.

Without weight decay every step lengthens W (the step is orthogonal to it), so the effective
step size only falls. Weight decay shrinks W until the two balance; at that equilibrium the
angular update per step of SGD with momentum m is sqrt(2 * lr * wd / (1 + m)) (Wan et al.
2021), whatever the initial norm.

- :func:`track_weight_norm`: train an MLP and record ||W|| and the angular update of its
  scale-invariant hidden layer.
- :func:`equilibrium_angular_update`: the predicted equilibrium.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional as F

from ..data import batches, load_mnist
from ..models import make_mlp
from ..training import evaluate

__all__ = ["NormTrace", "track_weight_norm", "equilibrium_angular_update"]


def equilibrium_angular_update(lr: float, weight_decay: float, momentum: float = 0.0) -> float:
    """sqrt(2 lr wd / (1 + momentum)): the angle (radians) a scale-invariant weight turns per
    step once weight decay and gradient growth balance."""
    return math.sqrt(2.0 * lr * weight_decay / (1.0 + momentum))


@dataclass
class NormTrace:
    """What :func:`track_weight_norm` recorded, every ``record_every`` steps.

    ``steps``: (T,); ``norm``: (T,) ||W|| of the probed layer; ``angle``: (T,) mean angle
    (radians) between W before and after a step, over the last ``record_every`` steps;
    ``grad_norm``: (T,) mean ||dL/dW|| over the same steps; ``test_acc``: at the end.
    """

    steps: np.ndarray
    norm: np.ndarray
    angle: np.ndarray
    grad_norm: np.ndarray
    test_acc: float

    def late_angle(self, fraction: float = 0.25) -> float:
        """Mean angular update over the last ``fraction`` of training."""
        k = max(1, int(len(self.angle) * fraction))
        return float(np.mean(self.angle[-k:]))


def _angle(a: torch.Tensor, b: torch.Tensor) -> float:
    cos = float((a * b).sum() / (a.norm() * b.norm()))
    return math.acos(max(-1.0, min(1.0, cos)))


def track_weight_norm(
    weight_decay: float,
    lr: float = 0.1,
    momentum: float = 0.9,
    steps: int = 1000,
    batch_size: int = 64,
    width: int = 256,
    init_scale: float = 1.0,
    record_every: int = 20,
    seed: int = 0,
) -> NormTrace:
    """Train Linear(784, D) -> BN -> ReLU -> Linear(D, D, no bias) -> BN -> ReLU -> Linear(D, 10)
    with SGD (``weight_decay`` on every parameter) and follow the second Linear's weight W
    (D, D), which the batch norm after it makes scale-invariant.

    Args:
        init_scale: W starts as init_scale times its LeCun-initialised value (the loss is the
            same for every init_scale; only the effective learning rate differs).
        seed: seeds the weights and the batch order.
    """
    data = load_mnist()
    model = make_mlp(depth=2, width=width, norm="batch", init_scale=1.0, seed=seed)
    w = model.blocks[1].linear.weight
    with torch.no_grad():
        w.mul_(init_scale)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    stream = batches(data.x_train, data.y_train, batch_size, seed=seed)
    rec_steps, norms, angles, grads = [], [], [], []
    window_angle, window_grad = [], []
    for step in range(1, steps + 1):
        xb, yb = next(stream)
        loss = F.cross_entropy(model(xb), yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        before = w.detach().clone()
        window_grad.append(float(w.grad.norm()))
        opt.step()
        window_angle.append(_angle(before, w.detach()))
        if step % record_every == 0:
            rec_steps.append(step)
            norms.append(float(w.detach().norm()))
            angles.append(float(np.mean(window_angle)))
            grads.append(float(np.mean(window_grad)))
            window_angle, window_grad = [], []
    _, acc = evaluate(model, data.x_test, data.y_test)
    return NormTrace(
        np.array(rec_steps), np.array(norms), np.array(angles), np.array(grads), float(acc)
    )
