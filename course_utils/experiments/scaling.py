"""Lesson 01 (input scaling): scalers, gradient descent on a quadratic, and the MNIST sweep.

- :class:`RobustScaler`: a per-feature scaler on (N, D) NumPy arrays with ``fit`` /
  ``transform`` / ``inverse_transform``; ``Standardizer``, ``MinMaxScaler``, ``SCALERS`` and
  ``recommend_scaler`` are the exercises' answers, which live in
  :mod:`course_utils.answers.lesson01` and are imported from there on first use.
- Gradient descent on the least-squares loss ``L(w) = mean((X w - y)^2) / 2`` of a 2-D data
  set: :func:`gradient_descent` (the plain loop, for paths), :func:`steps_to_converge`
  (closed form, for sweeps), :func:`condition_number`, :func:`loss_surface`.
- :func:`mnist_lr_sweep`: logistic regression on MNIST under a given input scaling, a learning
  rate grid and several seeds, reporting the final training loss.
- :func:`refit_accuracy`: what happens when statistics are re-fitted on each incoming batch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .. import seeds as seeding
from ..data import MNISTSplit
from ..training import evaluate, train

__all__ = [
    "RobustScaler",
    "hessian",
    "condition_number",
    "gradient_descent",
    "steps_to_converge",
    "tune_steps",
    "loss_surface",
    "plot_path",
    "scaled_split",
    "LRSweep",
    "mnist_lr_sweep",
    "refit_accuracy",
]


def _as_2d(X) -> np.ndarray:
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2:
        raise ValueError(f"expected an (N, D) array, got shape {X.shape}")
    return X


class RobustScaler:
    """Per-feature robust scaling ``(x - median) / IQR`` (IQR = 75th - 25th percentile).

    A feature with IQR 0 gets scale 1. Attributes after ``fit``: ``center_``, ``scale_`` (D,).
    """

    def fit(self, X) -> RobustScaler:
        """Learn ``center_`` and ``scale_`` from X (N, D); returns self."""
        X = _as_2d(X)
        q25, q50, q75 = np.percentile(X, [25, 50, 75], axis=0)
        self.center_ = q50
        iqr = q75 - q25
        self.scale_ = np.where(iqr > 0, iqr, 1.0)
        return self

    def transform(self, X) -> np.ndarray:
        """(N, D) -> (N, D) with the statistics learned by ``fit``."""
        return (_as_2d(X) - self.center_) / self.scale_

    def inverse_transform(self, Z) -> np.ndarray:
        """Undo ``transform``: (N, D) -> (N, D)."""
        return _as_2d(Z) * self.scale_ + self.center_


_ANSWERS = {
    "Standardizer": "Standardizer",
    "MinMaxScaler": "MinMaxScaler",
    "recommend_scaler": "choose_scaler",
}


def __getattr__(name: str):
    """``Standardizer``, ``MinMaxScaler``, ``recommend_scaler`` and ``SCALERS`` come from
    :mod:`course_utils.answers.lesson01` (the one home of the exercises' answers), imported on
    first use so that importing this module never imports an answer."""
    if name in _ANSWERS:
        from ..answers import lesson01

        return getattr(lesson01, _ANSWERS[name])
    if name == "SCALERS":
        from ..answers import lesson01

        return {
            "standard": lesson01.Standardizer,
            "minmax": lesson01.MinMaxScaler,
            "robust": RobustScaler,
        }
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# --------------------------------------------------------------------------------------------
# gradient descent on a 2-D least-squares problem
# --------------------------------------------------------------------------------------------


def hessian(X) -> np.ndarray:
    """The Hessian ``X^T X / N`` of ``L(w) = mean((X w - y)^2) / 2``: shape (D, D)."""
    X = _as_2d(X)
    return X.T @ X / len(X)


def condition_number(X) -> float:
    """Largest over smallest eigenvalue of :func:`hessian` (1 is perfectly round)."""
    ev = np.linalg.eigvalsh(hessian(X))
    return float(ev[-1] / ev[0])


def _loss(X, y, w) -> np.ndarray:
    r = X @ np.asarray(w).T - y[:, None] if np.ndim(w) == 2 else X @ w - y
    return 0.5 * np.mean(r**2, axis=0)


def gradient_descent(X, y, lr: float, steps: int, w0=None) -> tuple[np.ndarray, np.ndarray]:
    """Plain full-batch gradient descent on ``L(w) = mean((X w - y)^2) / 2``.

    Args:
        X: (N, D) features; y: (N,) targets; lr: step size; steps: number of updates.
        w0: (D,) start (zeros by default).
    Returns:
        ``(path, losses)``: path (steps + 1, D), the weights after each update (row 0 is
        w0), and the loss at each of them, (steps + 1,). Stops early (shorter arrays) if the
        loss overflows.
    """
    X, y = _as_2d(X), np.asarray(y, dtype=np.float64)
    w = np.zeros(X.shape[1]) if w0 is None else np.array(w0, dtype=np.float64)
    path, losses = [w.copy()], [float(_loss(X, y, w))]
    for _ in range(steps):
        grad = X.T @ (X @ w - y) / len(X)
        w = w - lr * grad
        loss = float(_loss(X, y, w))
        if not np.isfinite(loss):
            break
        path.append(w.copy())
        losses.append(loss)
    return np.array(path), np.array(losses)


def steps_to_converge(
    X, y, lr: float, tol: float = 1e-6, w0=None, max_steps: int = 10**7
) -> int | None:
    """Steps gradient descent needs until ``L(w) - L* <= tol * (L(w0) - L*)``.

    Computed in closed form (no loop): in the Hessian's eigenbasis the error along
    eigenvector i shrinks by ``(1 - lr * lambda_i)`` per step. Agrees with
    :func:`gradient_descent` (see the tests). Returns None if it diverges
    (``|1 - lr * lambda| >= 1`` for a direction that needs to move) or needs more than
    ``max_steps``.
    """
    X, y = _as_2d(X), np.asarray(y, dtype=np.float64)
    H = hessian(X)
    lam, V = np.linalg.eigh(H)
    w_star = np.linalg.lstsq(X, y, rcond=None)[0]
    w = np.zeros(X.shape[1]) if w0 is None else np.asarray(w0, dtype=np.float64)
    c = V.T @ (w - w_star)
    weight = 0.5 * lam * c**2  # suboptimality contributed by each direction at step 0
    total = weight.sum()
    if total <= 0:
        return 0
    active = weight > 1e-300
    rate = np.abs(1.0 - lr * lam[active])
    weight = weight[active]

    def ratio(k: int) -> float:
        return float(np.sum(weight * rate ** (2 * k)) / total)

    if np.any(rate >= 1.0):
        return None
    if ratio(max_steps) > tol:
        return None
    lo, hi = 0, max_steps  # ratio(hi) <= tol; ratio is non-increasing in k
    while lo < hi:
        mid = (lo + hi) // 2
        if ratio(mid) <= tol:
            hi = mid
        else:
            lo = mid + 1
    return lo


def tune_steps(X, y, lrs: Sequence[float], tol: float = 1e-6) -> tuple[float, int | None, dict]:
    """Steps to converge at each learning rate of a grid, and the best one.

    Returns:
        ``(best_lr, best_steps, table)`` where ``table`` maps lr -> steps (None: diverged or
        too slow). ``best_steps`` is None when no lr of the grid converged.
    """
    table = {float(lr): steps_to_converge(X, y, lr, tol) for lr in lrs}
    ok = {lr: s for lr, s in table.items() if s is not None}
    if not ok:
        return float("nan"), None, table
    best = min(ok, key=ok.get)
    return best, ok[best], table


def loss_surface(X, y, w1: np.ndarray, w2: np.ndarray) -> np.ndarray:
    """The loss on a grid: ``L[i, j] = L((w1[j], w2[i]))`` for 1-D arrays w1, w2 (2-D X)."""
    X, y = _as_2d(X), np.asarray(y, dtype=np.float64)
    W1, W2 = np.meshgrid(w1, w2)
    W = np.stack([W1.ravel(), W2.ravel()], axis=1)
    return _loss(X, y, W).reshape(W1.shape)


def plot_path(ax, X, y, lr: float, steps: int = 40, color: str = "#D55E00") -> np.ndarray:
    """Draw the loss contours of a 2-D least-squares problem and a gradient-descent path.

    The view frames the path and the minimum; contour levels are log-spaced in
    ``L(w) - L*``. Returns the path, (steps + 1, 2).
    """
    X, y = _as_2d(X), np.asarray(y, dtype=np.float64)
    path, _ = gradient_descent(X, y, lr, steps)
    w_star = np.linalg.lstsq(X, y, rcond=None)[0]
    pts = np.vstack([path, w_star])
    lo, hi = pts.min(axis=0), pts.max(axis=0)
    pad = 0.15 * np.maximum(hi - lo, 1e-3)
    w1 = np.linspace(lo[0] - pad[0], hi[0] + pad[0], 200)
    w2 = np.linspace(lo[1] - pad[1], hi[1] + pad[1], 200)
    L = loss_surface(X, y, w1, w2) - float(_loss(X, y, w_star))
    levels = np.logspace(np.log10(max(L.max(), 1e-12)) - 6, np.log10(max(L.max(), 1e-12)), 16)
    ax.contour(w1, w2, np.maximum(L, 1e-300), levels=levels, cmap="cividis", linewidths=0.8)
    ax.plot(
        path[:, 0], path[:, 1], "o-", color=color, ms=3, lw=1, label=f"{steps} steps, lr {lr:.2g}"
    )
    ax.plot(*w_star, marker="*", color="black", ms=12, ls="none", label="minimum")
    ax.set_xlabel("$w_1$")
    ax.set_ylabel("$w_2$")
    return path


# --------------------------------------------------------------------------------------------
# MNIST: logistic regression under different input scalings
# --------------------------------------------------------------------------------------------


def scaled_split(raw: MNISTSplit, scaler) -> MNISTSplit:
    """Fit ``scaler`` on the training images only, then transform both splits.

    Args:
        raw: a flattened split (x_train (N, 784)), typically ``load_mnist("raw")``.
        scaler: an object with ``fit`` and ``transform`` (a class from this module), or None
            to keep the values.
    Returns:
        A new :class:`MNISTSplit` with float32 inputs.
    """
    if scaler is None:
        return raw
    xtr = raw.x_train.numpy().astype(np.float64)
    scaler.fit(xtr)
    to_t = lambda a: torch.from_numpy(np.asarray(a, dtype=np.float32))  # noqa: E731
    return MNISTSplit(
        to_t(scaler.transform(xtr)),
        raw.y_train,
        to_t(scaler.transform(raw.x_test.numpy())),
        raw.y_test,
    )


def logistic_regression(seed: int) -> nn.Module:
    """A 784 -> 10 linear classifier (softmax regression) with torch's default init, seeded."""
    seeding.torch_seed(seed)
    return nn.Linear(784, 10)


@dataclass
class LRSweep:
    """Results of :func:`mnist_lr_sweep` for one input scaling.

    ``loss[i, s]``: final training-set loss at ``lrs[i]``, seed ``seeds[s]`` (inf if
    diverged); ``acc[i, s]``: test accuracy. ``best``: index of the lr with the lowest
    mean loss over seeds.
    """

    lrs: np.ndarray
    seeds: tuple
    loss: np.ndarray
    acc: np.ndarray

    @property
    def mean_loss(self) -> np.ndarray:
        return self.loss.mean(axis=1)

    @property
    def best(self) -> int:
        return int(np.argmin(self.mean_loss))

    @property
    def best_lr(self) -> float:
        return float(self.lrs[self.best])

    @property
    def best_loss(self) -> float:
        return float(self.mean_loss[self.best])

    @property
    def best_acc(self) -> float:
        return float(self.acc[self.best].mean())

    @property
    def best_is_interior(self) -> bool:
        """The best lr is not at either end of the grid (so the grid brackets the optimum)."""
        return 0 < self.best < len(self.lrs) - 1


def mnist_lr_sweep(
    data: MNISTSplit,
    lrs: Sequence[float],
    steps: int = 300,
    batch_size: int = 64,
    seeds: Sequence[int] = (0, 1),
    model_fn: Callable[[int], nn.Module] = logistic_regression,
) -> LRSweep:
    """Train ``model_fn(seed)`` with SGD at every lr of the grid and every seed.

    Every run sees the same batches for a given seed (the batch order depends only on the
    seed), so arms that differ only in the input scaling see the same samples.
    """
    lrs = np.asarray(lrs, dtype=np.float64)
    loss = np.zeros((len(lrs), len(seeds)))
    acc = np.zeros_like(loss)
    for i, lr in enumerate(lrs):
        for s, seed in enumerate(seeds):
            model = model_fn(seed)
            hist = train(model, data, steps=steps, lr=float(lr), batch_size=batch_size, seed=seed)
            tl, _ = evaluate(model, data.x_train, data.y_train, batch_size=4000)
            loss[i, s] = tl if (np.isfinite(tl) and not hist.diverged) else np.inf
            acc[i, s] = hist.final_acc
    return LRSweep(lrs, tuple(seeds), loss, acc)


@torch.no_grad()
def refit_accuracy(
    model: nn.Module,
    scaler_cls,
    x_train: np.ndarray,
    x_test: np.ndarray,
    y_test: torch.Tensor,
    batch_size: int | None,
) -> float:
    """Test accuracy when the inputs are scaled per incoming batch instead of with stored
    training statistics.

    Args:
        model: trained on ``scaler_cls().fit(x_train)``-scaled inputs.
        scaler_cls: the scaler class.
        x_train, x_test: raw (N, D) arrays.
        batch_size: None uses the statistics fitted on ``x_train`` (the right way); an int
            re-fits a new scaler on every test batch of that size (the mistake).
    """
    x_test = np.asarray(x_test, dtype=np.float64)
    if batch_size is None:
        z = scaler_cls().fit(x_train).transform(x_test)
    else:
        parts = [
            scaler_cls().fit(x_test[i : i + batch_size]).transform(x_test[i : i + batch_size])
            for i in range(0, len(x_test), batch_size)
        ]
        z = np.concatenate(parts)
    model.eval()
    pred = model(torch.from_numpy(z.astype(np.float32))).argmax(1)
    return float((pred == y_test[: len(pred)]).float().mean())
