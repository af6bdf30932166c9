"""Lesson 04 (batch norm in practice): where batch norm breaks, and the remedies.

- :func:`mnist14`: the embedded MNIST average-pooled to 14x14 (a 4x smaller input, so that
  sweeps with thousands of batch-size-2 steps stay within seconds), with a fixed validation
  split carved from the training images for tuning learning rates.
- :class:`MLPEnsemble`: K independent 2-layer MLPs (``Linear -> norm -> ReLU`` twice, then a
  linear head) trained *together* in NumPy with a hand-written backward pass and SGD with
  momentum. Each member has its own normalization (``"batch"``, ``"renorm"``, ``"layer"``,
  ``"group"`` or ``"none"``), learning rate, seed and dropout. One step of 18 members costs
  about as much as one step of one torch model, because tiny models are dominated by
  per-operation overhead. :func:`ensemble_matches_torch` checks it against ``torch.nn``.
- :func:`batch_size_sweep`: the fair small-batch experiment (same samples seen, learning
  rate tuned per arm and batch size on the validation split, several seeds).
- :func:`gradient_split_error`: how much a gradient changes when the same samples are split
  into smaller batches (zero for per-sample normalizations, not for batch norm).
- torch modules: :class:`BatchRenorm1d` (Ioffe 2017); :func:`shift_inputs`. The exercises'
  answers ``GhostBatchNorm1d`` (Hoffer et al. 2017), ``recalibrate_bn`` ('precise BN' on
  recent data) and ``evaluate_accuracy`` (the correct evaluation loop) live in
  :mod:`course_utils.answers.lesson04`; this module imports them on first use.
- :func:`finetune_frozen_bn` and :func:`regularization_experiment`: frozen statistics when
  fine-tuning, and batch-statistics noise compared with dropout.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .. import seeds as seeding
from ..data import MNISTSplit, load_mnist

__all__ = [
    "mnist14",
    "NORM_KINDS",
    "MLPEnsemble",
    "flush_denormals",
    "train_ensemble",
    "ensemble_matches_torch",
    "SweepResult",
    "batch_size_sweep",
    "ghost_sweep",
    "gradient_split_error",
    "BatchRenorm1d",
    "shift_inputs",
    "freeze_bn_statistics",
    "finetune_frozen_bn",
    "regularization_experiment",
]

NORM_KINDS = ("batch", "renorm", "layer", "group", "none")
_EPS = 1e-5


# --------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Split14:
    """MNIST at 14x14, standardized: train (7,000), validation (1,000) and test (2,000).

    ``x_*`` are float32 NumPy arrays (N, 196) (or (N, 1, 14, 14) with ``images``);
    ``y_*`` int64 arrays (N,). The validation images are the last 1,000 of the course's
    8,000 training images; the test images are the course's 2,000 test images.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    mean: float
    std: float

    def torch_split(self, validation: bool = False) -> MNISTSplit:
        """The same data as torch tensors, in :class:`~course_utils.data.MNISTSplit` form
        (``x_test`` is the validation set when ``validation=True``)."""
        xt = self.x_val if validation else self.x_test
        yt = self.y_val if validation else self.y_test
        return MNISTSplit(
            torch.tensor(self.x_train),
            torch.tensor(self.y_train),
            torch.tensor(xt),
            torch.tensor(yt),
        )


@functools.lru_cache(maxsize=2)
def mnist14(images: bool = False) -> Split14:
    """The embedded MNIST average-pooled 2x2 to 14x14 pixels and standardized.

    Args:
        images: ``True`` gives (N, 1, 14, 14) arrays for CNNs, ``False`` (N, 196) vectors.
    Returns:
        A :class:`Split14` (7,000 train / 1,000 validation / 2,000 test). Shared between
        calls: do not modify the arrays in place.
    """
    d = load_mnist(scale="unit", flatten=False)
    x_tr = F.avg_pool2d(d.x_train, 2)
    x_te = F.avg_pool2d(d.x_test, 2)
    mean, std = float(x_tr[:7000].mean()), float(x_tr[:7000].std())
    x_tr, x_te = (x_tr - mean) / std, (x_te - mean) / std
    if not images:
        x_tr, x_te = x_tr.flatten(1), x_te.flatten(1)
    x_tr, x_te = x_tr.numpy().astype(np.float32), x_te.numpy().astype(np.float32)
    y_tr, y_te = d.y_train.numpy(), d.y_test.numpy()
    out = Split14(x_tr[:7000], y_tr[:7000], x_tr[7000:], y_tr[7000:], x_te, y_te, mean, std)
    for a in (out.x_train, out.y_train, out.x_val, out.y_val, out.x_test, out.y_test):
        a.flags.writeable = False
    return out


def sample_order(seed: int, n: int, count: int) -> np.ndarray:
    """Indices of ``count`` samples drawn epoch by epoch from ``n`` (a fresh permutation per
    epoch), seeded: every arm that uses the same seed sees the same samples in the same order."""
    rng = seeding.rng(seed)
    reps = math.ceil(count / n)
    return np.concatenate([rng.permutation(n) for _ in range(reps)])[:count]


# --------------------------------------------------------------------------------------
# the NumPy ensemble
# --------------------------------------------------------------------------------------


def _mm(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a @ b`` through torch, which runs on the one thread the course configures.

    NumPy's OpenBLAS starts a thread per core for these small products, and on a busy
    2-core machine those threads wait for each other: measured, 3-8x slower than one thread.
    """
    if not a.flags.writeable:  # torch warns about read-only arrays (the shared data set)
        a = a.copy()
    return torch.matmul(torch.from_numpy(a), torch.from_numpy(b)).numpy()


class MLPEnsemble:
    """K independent MLPs ``D -> H -> H -> 10`` trained as one batched NumPy computation.

    Each member is ``Linear -> norm -> ReLU -> (dropout) -> Linear -> norm -> ReLU ->
    (dropout) -> Linear``. Inputs are (K, B, D): member k sees its own batch ``x[k]``.

    Args:
        kinds: the normalization of each member, one of :data:`NORM_KINDS`; members of the
            same kind must be adjacent. ``"batch"``: batch norm (torch semantics: biased
            variance to normalize, unbiased into the running variance, momentum 0.1; eval
            uses running statistics). ``"renorm"``: batch renormalization. ``"layer"``: layer
            norm over the H features. ``"group"``: ``groups`` groups of H/groups features.
        lrs: learning rate of each member. seeds: seed of each member's initial weights
            (torch's default ``nn.Linear`` initialization, U(-1/sqrt(fan_in), 1/sqrt(fan_in))).
        dropout: dropout probability of each member (0 = none), after each ReLU.
        ghost: batch norm statistics over consecutive chunks of this many samples (ghost
            batch norm); None: the whole batch.
        rmax, dmax: batch renormalization's clipping limits (callables of the training
            progress in [0, 1], or numbers).
    The hidden Linear layers have no bias where batch norm (or renorm) follows: its mean
    subtraction would remove it.
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
        rmax=3.0,
        dmax=5.0,
    ):
        self.kinds = list(kinds)
        k = len(self.kinds)
        if not (len(lrs) == len(seeds) == k):
            raise ValueError("kinds, lrs and seeds must have the same length")
        for kind in self.kinds:
            if kind not in NORM_KINDS:
                raise ValueError(f"kind must be one of {NORM_KINDS}, got {kind!r}")
        if width % groups:
            raise ValueError(f"width ({width}) must be divisible by groups ({groups})")
        self.K, self.width, self.groups, self.ghost = k, width, groups, ghost
        self.lr = np.asarray(lrs, np.float32).reshape(k, 1, 1)
        self.p_drop = (
            np.zeros(k, np.float32) if dropout is None else np.asarray(dropout, np.float32)
        )
        self.momentum, self.bn_momentum = momentum, bn_momentum
        self.rmax, self.dmax = rmax, dmax
        self.progress = 0.0
        dims = [in_features, width, width, 10]
        self.W, self.b = [], []
        for i in range(3):
            bound = 1.0 / math.sqrt(dims[i])
            ws = [
                seeding.rng([int(s), i]).uniform(-bound, bound, (dims[i], dims[i + 1]))
                for s in seeds
            ]
            self.W.append(np.stack(ws).astype(np.float32))
            bs = [
                seeding.rng([int(s), i, 1]).uniform(-bound, bound, (1, dims[i + 1])) for s in seeds
            ]
            self.b.append(np.stack(bs).astype(np.float32))
        self.has_bias = np.array(
            [kd not in ("batch", "renorm") for kd in self.kinds], np.float32
        ).reshape(k, 1, 1)
        for i in range(2):
            self.b[i] *= self.has_bias
        self.gamma = [np.ones((k, 1, width), np.float32) for _ in range(2)]
        self.beta = [np.zeros((k, 1, width), np.float32) for _ in range(2)]
        self.running_mean = [np.zeros((k, 1, width), np.float32) for _ in range(2)]
        self.running_var = [np.ones((k, 1, width), np.float32) for _ in range(2)]
        self.params = self.W + self.b + self.gamma + self.beta
        self.velocity = [np.zeros_like(p) for p in self.params]
        self.slices: dict[str, slice] = {}
        for kind in dict.fromkeys(self.kinds):
            idx = [i for i, kd in enumerate(self.kinds) if kd == kind]
            if idx != list(range(idx[0], idx[-1] + 1)):
                raise ValueError("members of the same kind must be adjacent in `kinds`")
            self.slices[kind] = slice(idx[0], idx[-1] + 1)
        self._drop_rng = seeding.rng([int(s) for s in seeds] + [7])

    # -- normalization, forward and backward ------------------------------------------
    def _limit(self, v):
        return float(v(self.progress)) if callable(v) else float(v)

    def _norm_forward(self, kind, z, i, sl, training):
        k, b, h = z.shape
        if kind == "none":
            return z, None
        if kind in ("batch", "renorm") and not training:
            inv = 1.0 / np.sqrt(self.running_var[i][sl] + _EPS)
            return (z - self.running_mean[i][sl]) * inv, None
        if kind in ("batch", "renorm"):
            g = self.ghost if (self.ghost and kind == "batch") else b
            if b % g:
                raise ValueError(f"batch size {b} is not a multiple of the ghost size {g}")
            zz, ax = z.reshape(k, b // g, g, h), 2
        elif kind == "layer":
            zz, ax = z, 2
        else:  # group
            zz, ax = z.reshape(k, b, self.groups, h // self.groups), 3
        inv_n = 1.0 / zz.shape[ax]
        mu = np.add.reduce(zz, ax, keepdims=True) * inv_n  # .mean() costs 3x more here
        c = zz - mu
        var = np.add.reduce(c * c, ax, keepdims=True) * inv_n
        inv = 1.0 / np.sqrt(var + _EPS)
        xh = c * inv
        scale = None
        if kind in ("batch", "renorm"):
            n = zz.shape[ax]
            rm, rv = self.running_mean[i][sl], self.running_var[i][sl]
            if kind == "renorm":
                sigma = np.sqrt(rv + _EPS)
                r = np.clip(
                    np.sqrt(var[:, 0] + _EPS) / sigma,
                    1 / self._limit(self.rmax),
                    self._limit(self.rmax),
                )
                d = np.clip(
                    (mu[:, 0] - rm) / sigma, -self._limit(self.dmax), self._limit(self.dmax)
                )
                xh_out = xh[:, 0] * r + d  # r and d are constants for the gradient
                scale = r[:, None]
            m = self.bn_momentum
            rm *= 1 - m
            rm += m * mu.mean(1)
            rv *= 1 - m
            rv += m * (var.mean(1) * (n / max(n - 1, 1)))
            if kind == "renorm":
                return xh_out, (zz.shape, ax, xh, inv, scale)
        return xh.reshape(k, b, h), (zz.shape, ax, xh, inv, scale)

    @staticmethod
    def _norm_backward(dxh, cache):
        if cache is None:
            return dxh
        shape, ax, xh, inv, scale = cache
        k, b, h = dxh.shape
        d = dxh.reshape(shape)
        if scale is not None:
            d = d * scale
        inv_n = 1.0 / d.shape[ax]
        dz = inv * (
            d
            - np.add.reduce(d, ax, keepdims=True) * inv_n
            - xh * (np.add.reduce(d * xh, ax, keepdims=True) * inv_n)
        )
        return dz.reshape(k, b, h)

    # -- the network ------------------------------------------------------------------
    def forward(self, x: np.ndarray, training: bool = False):
        """Logits (K, B, 10) for inputs (K, B, D), or (B, D) shared by every member; with
        ``training`` also the cache."""
        caches, h = [], x
        for i in range(2):
            if h.ndim == 2:  # one input for all members: a single large matrix product
                d_in, d_out = self.W[i].shape[1:]
                w = self.W[i].transpose(1, 0, 2).reshape(d_in, self.K * d_out)
                z = _mm(h, w).reshape(len(h), self.K, d_out).transpose(1, 0, 2) + self.b[i]
            else:
                z = _mm(h, self.W[i]) + self.b[i]
            xh = np.empty_like(z)
            ncache = {}
            for kind, sl in self.slices.items():
                xh[sl], ncache[kind] = self._norm_forward(kind, z[sl], i, sl, training)
            a = xh * self.gamma[i] + self.beta[i]
            out = np.maximum(a, 0.0)
            mask = None
            if training and self.p_drop.any():
                keep = 1.0 - self.p_drop.reshape(-1, 1, 1)
                mask = (self._drop_rng.random(out.shape, np.float32) < keep) / keep
                out = out * mask
            caches.append((h, xh, ncache, a > 0, mask))
            h = out
        logits = _mm(h, self.W[2]) + self.b[2]
        return logits, (caches, h)

    def step(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """One SGD-with-momentum step on batches x (K, B, D), y (K, B); returns the K losses."""
        k, b, _ = x.shape
        logits, (caches, h_last) = self.forward(x, training=True)
        logits -= logits.max(2, keepdims=True)
        e = np.exp(logits)
        p = e / e.sum(2, keepdims=True)
        kk, bb = np.arange(k)[:, None], np.arange(b)[None, :]
        loss = -np.log(p[kk, bb, y] + 1e-12).mean(1)
        dl = p
        dl[kk, bb, y] -= 1.0
        dl /= b
        gW, gb, gg, gbeta = [None] * 3, [None] * 3, [None] * 2, [None] * 2
        gW[2] = _mm(h_last.transpose(0, 2, 1), dl)
        gb[2] = dl.sum(1, keepdims=True)
        dh = _mm(dl, self.W[2].transpose(0, 2, 1))
        for i in (1, 0):
            h_in, xh, ncache, pos, mask = caches[i]
            if mask is not None:
                dh = dh * mask
            da = dh * pos
            gg[i] = (da * xh).sum(1, keepdims=True)
            gbeta[i] = da.sum(1, keepdims=True)
            dxh = da * self.gamma[i]
            dz = np.empty_like(dxh)
            for kind, sl in self.slices.items():
                dz[sl] = self._norm_backward(dxh[sl], ncache[kind])
            gW[i] = _mm(h_in.transpose(0, 2, 1), dz)
            gb[i] = dz.sum(1, keepdims=True) * self.has_bias
            if i:
                dh = _mm(dz, self.W[i].transpose(0, 2, 1))
        # SGD with momentum, in place (the update dominates the cost at small batch sizes):
        # v = momentum * v + lr * g; w -= v  (the same as torch's v = mv + g; w -= lr v
        # for a constant learning rate)
        for prm, vel, g in zip(self.params, self.velocity, gW + gb + gg + gbeta):
            g *= self.lr
            vel *= self.momentum
            vel += g
            prm -= vel
        return loss

    def accuracy(self, x: np.ndarray, y: np.ndarray, chunk: int = 250) -> np.ndarray:
        """Eval-mode accuracy of each member on the same (N, D) inputs: array (K,)."""
        correct = np.zeros(self.K)
        with np.errstate(all="ignore"), flush_denormals():
            for i in range(0, len(x), chunk):
                logits, _ = self.forward(x[i : i + chunk], training=False)
                correct += (logits.argmax(2) == y[i : i + chunk]).sum(1)
        return correct / len(x)

    def loss(self, x: np.ndarray, y: np.ndarray, chunk: int = 250) -> np.ndarray:
        """Eval-mode mean cross-entropy of each member on the same (N, D) inputs: (K,)."""
        total = np.zeros(self.K)
        with np.errstate(all="ignore"), flush_denormals():
            for i in range(0, len(x), chunk):
                logits, _ = self.forward(x[i : i + chunk], training=False)
                logits = logits - logits.max(2, keepdims=True)
                logp = logits - np.log(np.exp(logits).sum(2, keepdims=True))
                total -= logp[:, np.arange(len(y[i : i + chunk])), y[i : i + chunk]].sum(1)
        return total / len(x)

    def diverged(self) -> np.ndarray:
        """Members whose weights are no longer finite: bool array (K,)."""
        bad = np.zeros(self.K, bool)
        for p in self.params:
            bad |= ~np.isfinite(p.reshape(self.K, -1)).all(1)
        return bad


@contextlib.contextmanager
def flush_denormals():
    """Treat denormal floats as zero (CPU flag, also honoured by NumPy) inside the block.

    Batch norm at batch size 2 passes (almost) no gradient, so momentum buffers decay
    towards 1e-38 and below, where arithmetic on denormal numbers is about 30x slower.
    """
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(False)


def train_ensemble(
    ens: MLPEnsemble,
    x: np.ndarray,
    y: np.ndarray,
    batch_size: int,
    samples: int,
    seeds: Sequence[int],
) -> MLPEnsemble:
    """Train every member for ``samples // batch_size`` steps; member k draws its batches
    with :func:`sample_order` from ``seeds[k]`` (same seed, same samples, same order)."""
    steps = samples // batch_size
    orders = {s: sample_order(s, len(x), steps * batch_size) for s in set(seeds)}
    order = np.stack([orders[s] for s in seeds]).reshape(len(seeds), steps, batch_size)
    with np.errstate(all="ignore"), flush_denormals():
        for t in range(steps):
            ens.progress = t / max(steps - 1, 1)
            idx = order[:, t]
            ens.step(x[idx], y[idx])
    return ens


def ensemble_matches_torch(seed: int = 0) -> float:
    """Largest relative difference between one :class:`MLPEnsemble` training step and the same
    step of the equivalent ``torch.nn`` model (BatchNorm1d, LayerNorm, GroupNorm members)."""
    rng = seeding.rng(seed)
    kinds = ["batch", "layer", "group"]
    ens = MLPEnsemble(kinds, [0.1] * 3, [seed] * 3, in_features=20, width=8, groups=4)
    x = rng.normal(size=(3, 6, 20)).astype(np.float32)
    y = rng.integers(0, 10, size=(3, 6))
    worst = 0.0
    for k, kind in enumerate(kinds):
        norm = {
            "batch": lambda: nn.BatchNorm1d(8),
            "layer": lambda: nn.LayerNorm(8),
            "group": lambda: nn.GroupNorm(4, 8),
        }[kind]
        model = nn.Sequential(
            nn.Linear(20, 8, bias=kind != "batch"),
            norm(),
            nn.ReLU(),
            nn.Linear(8, 8, bias=kind != "batch"),
            norm(),
            nn.ReLU(),
            nn.Linear(8, 10),
        )
        with torch.no_grad():
            for j, li in enumerate((0, 3, 6)):
                model[li].weight.copy_(torch.from_numpy(ens.W[j][k].T.copy()))
                if model[li].bias is not None:
                    model[li].bias.copy_(torch.from_numpy(ens.b[j][k, 0].copy()))
        loss = F.cross_entropy(model(torch.from_numpy(x[k])), torch.from_numpy(y[k]))
        loss.backward()
        want = model[0].weight.grad.numpy().T
        # the ensemble's gradient of W0, from one step with lr 1 and no momentum history
        probe = MLPEnsemble([kind], [1.0], [seed], in_features=20, width=8, groups=4)
        w0 = probe.W[0].copy()
        probe.step(x[k : k + 1], y[k : k + 1])
        got = (w0 - probe.W[0])[0]
        worst = max(worst, float(np.abs(got - want).max() / (np.abs(want).max() + 1e-12)))
    return worst


# --------------------------------------------------------------------------------------
# sweeps
# --------------------------------------------------------------------------------------


@dataclass
class SweepResult:
    """Outcome of :func:`batch_size_sweep` / :func:`ghost_sweep`.

    ``test_acc[kind][b]``: test accuracy per seed (array) at the learning rate that was best
    on the validation split (mean over seeds); ``best_lr[kind][b]``; ``val_acc[kind][b]``:
    validation accuracy, array (lrs, seeds); ``lrs[b]``: the grid tried at that size.
    """

    sizes: list[int]
    kinds: list[str]
    seeds: list[int]
    samples: int
    lrs: dict[int, list[float]] = field(default_factory=dict)
    val_acc: dict[str, dict[int, np.ndarray]] = field(default_factory=dict)
    test_acc: dict[str, dict[int, np.ndarray]] = field(default_factory=dict)
    best_lr: dict[str, dict[int, float]] = field(default_factory=dict)
    seconds: float = 0.0

    def mean(self, kind: str, size: int) -> float:
        """Mean test accuracy over seeds."""
        return float(self.test_acc[kind][size].mean())

    def table(self) -> str:
        """A plain-text table of mean test accuracy (and best learning rate)."""
        head = "batch " + "".join(f"{k:>18}" for k in self.kinds)
        rows = [head]
        for b in self.sizes:
            cells = "".join(
                f"{self.mean(k, b):>9.3f} (lr {self.best_lr[k][b]:<6.3g})" for k in self.kinds
            )
            rows.append(f"{b:>5} {cells}")
        return "\n".join(rows)


def _lr_grid(batch_size: int, base: Sequence[float], ref: int = 64) -> list[float]:
    return [float(c) * batch_size / ref for c in base]


def batch_size_sweep(
    sizes: Sequence[int] = (64, 16, 4, 2),
    kinds: Sequence[str] = ("batch", "layer", "group"),
    seeds: Sequence[int] = (0, 1, 2),
    samples: int = 4000,
    base_lrs: Sequence[float] = (0.03, 0.1, 0.3),
    width: int = 64,
    ghost: int | None = None,
) -> SweepResult:
    """Train every (kind, learning rate, seed) at each batch size on the same ``samples``
    training images, pick each kind's learning rate on the validation split, report test
    accuracy.

    The learning-rate grid at batch size b is ``base_lrs * sqrt(b / 64)`` (square-root
    scaling keeps the gradient-noise scale comparable; the grid around it lets each arm find
    its own best value). Returns a :class:`SweepResult`.
    """
    import time

    t0 = time.perf_counter()
    data = mnist14()
    res = SweepResult(list(sizes), list(kinds), list(seeds), samples)
    for kind in kinds:
        res.val_acc[kind], res.test_acc[kind], res.best_lr[kind] = {}, {}, {}
    for b in sizes:
        lrs = _lr_grid(b, base_lrs)
        res.lrs[b] = lrs
        members = [(kd, lr, s) for kd in kinds for lr in lrs for s in seeds]
        ens = MLPEnsemble(
            [m[0] for m in members],
            [m[1] for m in members],
            [m[2] for m in members],
            width=width,
            ghost=ghost,
        )
        train_ensemble(ens, data.x_train, data.y_train, b, samples, [m[2] for m in members])
        with np.errstate(all="ignore"):
            bad = ens.diverged()
            val = np.where(bad, 0.0, ens.accuracy(data.x_val, data.y_val))
            test = np.where(bad, 0.0, ens.accuracy(data.x_test, data.y_test))
        shape = (len(kinds), len(lrs), len(seeds))
        val, test = val.reshape(shape), test.reshape(shape)
        for j, kind in enumerate(kinds):
            best = int(val[j].mean(1).argmax())
            res.val_acc[kind][b] = val[j]
            res.test_acc[kind][b] = test[j, best]
            res.best_lr[kind][b] = lrs[best]
    res.seconds = time.perf_counter() - t0
    return res


def ghost_sweep(
    ghost_sizes: Sequence[int] = (64, 16, 4, 2),
    batch_size: int = 64,
    seeds: Sequence[int] = (0, 1, 2),
    samples: int = 4000,
    base_lrs: Sequence[float] = (0.03, 0.1, 0.3),
    width: int = 64,
) -> SweepResult:
    """Batch norm with a fixed batch (and learning-rate grid) but statistics over ghost
    batches of each size: isolates the effect of the statistics from that of the gradient.
    ``test_acc["batch"][g]`` is indexed by the ghost size."""
    import time

    t0 = time.perf_counter()
    out = SweepResult(list(ghost_sizes), ["batch"], list(seeds), samples)
    out.val_acc["batch"], out.test_acc["batch"], out.best_lr["batch"] = {}, {}, {}
    for g in ghost_sizes:
        r = batch_size_sweep((batch_size,), ("batch",), seeds, samples, base_lrs, width, ghost=g)
        out.lrs[g] = r.lrs[batch_size]
        out.val_acc["batch"][g] = r.val_acc["batch"][batch_size]
        out.test_acc["batch"][g] = r.test_acc["batch"][batch_size]
        out.best_lr["batch"][g] = r.best_lr["batch"][batch_size]
    out.seconds = time.perf_counter() - t0
    return out


def gradient_split_error(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, sizes: Sequence[int] = (64, 16, 4, 2)
) -> dict[int, float]:
    """How much the gradient of a batch changes when it is computed in smaller batches.

    For each size b: the average of the gradients of the ``len(x) // b`` consecutive batches
    of size b, compared with the gradient of the whole batch ``x`` (all in training mode):
    ``|g_split - g_whole| / |g_whole|`` over all parameters. Per-sample normalizations give
    (numerically) zero, because the loss is a mean of per-sample terms; batch norm does not.
    Running statistics are restored afterwards.
    """
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    was_training = model.training
    model.train()

    def grad(xb, yb):
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(xb), yb).backward()
        return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])

    whole = grad(x, y)
    out = {}
    for b in sizes:
        parts = [grad(x[i : i + b], y[i : i + b]) for i in range(0, len(x) - b + 1, b)]
        split = torch.stack(parts).mean(0)
        out[b] = float((split - whole).norm() / whole.norm())
    model.zero_grad(set_to_none=True)
    model.load_state_dict(saved)
    model.train(was_training)
    return out


# --------------------------------------------------------------------------------------
# torch modules and helpers
# --------------------------------------------------------------------------------------


def __getattr__(name: str):
    """``GhostBatchNorm1d``, ``recalibrate_bn`` and ``evaluate_accuracy`` are the exercises'
    answers: they live in :mod:`course_utils.answers.lesson04` and are imported from there on
    first use (importing this module never imports an answer)."""
    if name in ("GhostBatchNorm1d", "recalibrate_bn", "evaluate_accuracy"):
        from ..answers import lesson04

        return getattr(lesson04, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class BatchRenorm1d(nn.Module):
    """Batch renormalization (Ioffe 2017) for (N, C) inputs.

    Training: ``x_hat = (x - mu_B) / sigma_B * r + d`` with ``r = clip(sigma_B / sigma,
    1/rmax, rmax)`` and ``d = clip((mu_B - mu) / sigma, -dmax, dmax)`` treated as constants
    in the backward pass (``sigma = sqrt(running_var + eps)``, ``mu = running_mean``). With
    ``rmax = 1, dmax = 0`` it is batch norm; as the limits open, training uses the running
    statistics' scale and shift, like inference. Running statistics as in ``nn.BatchNorm1d``.
    ``rmax`` and ``dmax`` are attributes: raise them during training (the paper: plain BN
    for a while, then up to 3 and 5).
    """

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float = 0.1,
        rmax: float = 3.0,
        dmax: float = 5.0,
    ):
        super().__init__()
        self.num_features, self.eps, self.momentum = num_features, eps, momentum
        self.rmax, self.dmax = rmax, dmax
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            xh = (x - self.running_mean) / torch.sqrt(self.running_var + self.eps)
            return xh * self.weight + self.bias
        n = x.shape[0]
        mean = x.mean(0)
        var = ((x - mean) ** 2).mean(0)
        std = torch.sqrt(var + self.eps)
        with torch.no_grad():
            sigma = torch.sqrt(self.running_var + self.eps)
            r = (std / sigma).clamp(1 / self.rmax, self.rmax)
            d = ((mean - self.running_mean) / sigma).clamp(-self.dmax, self.dmax)
            m = self.momentum
            self.running_mean.mul_(1 - m).add_(m * mean)
            self.running_var.mul_(1 - m).add_(m * var * n / max(n - 1, 1))
        xh = (x - mean) / std * r + d
        return xh * self.weight + self.bias


def _bn_modules(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def shift_inputs(
    x: torch.Tensor,
    contrast: float = 1.0,
    brightness: float = 0.0,
    mean: float | None = None,
    std: float | None = None,
) -> torch.Tensor:
    """Standardized MNIST inputs as if the raw images (pixels in [0, 1]) had been changed to
    ``contrast * pixel + brightness`` before the training set's standardization.

    ``mean`` and ``std`` are that standardization's (default: the course's 28x28 MNIST).
    """
    if mean is None or std is None:
        raw = load_mnist(scale="unit").x_train
        mean, std = float(raw.mean()), float(raw.std())
    pixels = x * std + mean
    return ((contrast * pixels + brightness) - mean) / std


# --------------------------------------------------------------------------------------
# fine-tuning and regularization
# --------------------------------------------------------------------------------------


def _subset(x, y, digits):
    keep = torch.isin(y, torch.tensor(list(digits)))
    return x[keep], y[keep]


def freeze_bn_statistics(model: nn.Module) -> nn.Module:
    """Put every batch-norm layer of ``model`` in eval mode: it normalizes with its running
    statistics and stops updating them; its weight and bias still learn. Call it *after*
    ``model.train()``, which would switch the layers back."""
    for m in _bn_modules(model):
        m.eval()
    return model


def finetune_frozen_bn(
    seeds: Sequence[int] = (0, 1),
    n_finetune: int = 200,
    batch_size: int = 2,
    steps: int = 150,
    lrs: Sequence[float] = (0.003, 0.01),
    pretrain_steps: int = 200,
) -> dict[str, dict]:
    """Pre-train a batch-norm MLP (14x14 MNIST, 2x64) on digits 0-4, then give it a fresh
    head and fine-tune it on ``n_finetune`` labelled images of digits 5-9 in batches of
    ``batch_size``, three ways:

    - ``"train-mode BN"``: the usual loop, batch norm uses (and updates) batch statistics;
    - ``"frozen BN"``: :func:`freeze_bn_statistics` (pre-trained statistics, not updated);
    - ``"recalibrated, frozen"``: statistics first re-estimated on the fine-tuning images
      (:func:`recalibrate_bn`), then frozen.

    Each arm's learning rate is picked from ``lrs`` on validation images of digits 5-9.
    Returns ``{arm: {"test": accuracy per seed on test digits 5-9, "lr": best lr}}``.
    """
    from ..answers.lesson04 import evaluate_accuracy, recalibrate_bn
    from ..models import make_mlp

    data = mnist14().torch_split()
    val = mnist14().torch_split(validation=True)
    x_pre, y_pre = _subset(data.x_train, data.y_train, range(5))
    x_ft_all, y_ft_all = _subset(data.x_train, data.y_train, range(5, 10))
    x_va, y_va = _subset(val.x_test, val.y_test, range(5, 10))
    x_te, y_te = _subset(data.x_test, data.y_test, range(5, 10))
    arms = ("train-mode BN", "frozen BN", "recalibrated, frozen")
    val_acc = np.zeros((len(arms), len(lrs), len(seeds)))
    test_acc = np.zeros_like(val_acc)
    for si, seed in enumerate(seeds):
        base = make_mlp(depth=2, width=64, in_features=196, norm="batch", seed=seed)
        opt = torch.optim.SGD(base.parameters(), lr=0.1, momentum=0.9)
        g = seeding.generator(seed)
        base.train()
        for _ in range(pretrain_steps):
            idx = torch.randint(len(x_pre), (64,), generator=g)
            loss = F.cross_entropy(base(x_pre[idx]), y_pre[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        pick = torch.randperm(len(x_ft_all), generator=g)[:n_finetune]
        x_ft, y_ft = x_ft_all[pick], y_ft_all[pick]
        state = {k: v.clone() for k, v in base.state_dict().items()}
        for ai, arm in enumerate(arms):
            for li, lr in enumerate(lrs):
                model = make_mlp(depth=2, width=64, in_features=196, norm="batch", seed=seed)
                model.load_state_dict(state)
                with torch.no_grad():  # a new task: a fresh, zero-initialized head
                    model.head.weight.zero_()
                    model.head.bias.zero_()
                if arm == "recalibrated, frozen":
                    recalibrate_bn(model, x_ft, batch_size=50)
                opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
                gen = seeding.generator(100 + seed)
                model.train()
                if arm != "train-mode BN":
                    freeze_bn_statistics(model)
                for _ in range(steps):
                    idx = torch.randint(len(x_ft), (batch_size,), generator=gen)
                    loss = F.cross_entropy(model(x_ft[idx]), y_ft[idx])
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
                val_acc[ai, li, si] = evaluate_accuracy(model, x_va, y_va, batch_size=1000)
                test_acc[ai, li, si] = evaluate_accuracy(model, x_te, y_te, batch_size=1000)
    out = {}
    for ai, arm in enumerate(arms):
        best = int(val_acc[ai].mean(1).argmax())
        out[arm] = {"test": test_acc[ai, best], "lr": float(lrs[best])}
    return out


def regularization_experiment(
    n_train: int = 500,
    epochs: int = 40,
    batch_size: int = 32,
    seeds: Sequence[int] = (0, 1, 2),
    base_lrs: Sequence[float] = (0.03, 0.1, 0.3),
    dropout: float = 0.3,
    width: int = 64,
) -> dict[str, dict]:
    """Does batch norm's noise regularize like dropout? Train on only ``n_train`` images for
    many epochs, so that an unregularized network overfits, with four arms:
    ``"none"``, ``"dropout"`` (no normalization, dropout ``dropout`` after each ReLU),
    ``"layer"`` (layer norm: normalized, but no batch noise) and ``"batch"``.
    The learning rate is tuned per arm on the validation split.

    Returns ``{arm: {"train": accuracy per seed on the training images, "test": test
    accuracy per seed, "test_loss": test cross-entropy per seed, "lr": best lr}}``.
    """
    data = mnist14()
    x, y = data.x_train[:n_train], data.y_train[:n_train]
    arms = [("none", 0.0), ("dropout", dropout), ("layer", 0.0), ("batch", 0.0)]
    kinds = {"none": "none", "dropout": "none", "layer": "layer", "batch": "batch"}
    members = [(a, lr, s) for a, _ in arms for lr in base_lrs for s in seeds]
    # 'none' and 'dropout' members share a kind and are adjacent, as MLPEnsemble requires
    ens = MLPEnsemble(
        [kinds[m[0]] for m in members],
        [m[1] for m in members],
        [m[2] for m in members],
        width=width,
        dropout=[dict(arms)[m[0]] for m in members],
    )
    train_ensemble(ens, x, y, batch_size, n_train * epochs, [m[2] for m in members])
    with np.errstate(all="ignore"):
        bad = ens.diverged()
        tr = np.where(bad, 0.0, ens.accuracy(x, y))
        va = np.where(bad, 0.0, ens.accuracy(data.x_val, data.y_val))
        te = np.where(bad, 0.0, ens.accuracy(data.x_test, data.y_test))
        tl = np.where(bad, np.inf, ens.loss(data.x_test, data.y_test))
    shape = (len(arms), len(base_lrs), len(seeds))
    tr, va, te, tl = (a.reshape(shape) for a in (tr, va, te, tl))
    out = {}
    for j, (arm, _) in enumerate(arms):
        best = int(va[j].mean(1).argmax())
        out[arm] = {
            "train": tr[j, best],
            "test": te[j, best],
            "test_loss": tl[j, best],
            "lr": float(base_lrs[best]),
        }
    return out
