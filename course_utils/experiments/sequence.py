"""Lesson 06 (layer norm and RMS norm): invariances, speed, and a small sequence model.

- :func:`batch_dependence`: how much one sample's output changes when its batch-mates change,
  for batch norm, layer norm and RMS norm.
- :func:`invariance_table`: Ba et al.'s (2016) Table 1 measured: which re-scalings and shifts
  leave batch norm's, layer norm's and RMS norm's outputs unchanged.
- :func:`time_norms`: layer norm against RMS norm, in torch (fused vs composite kernels) and in
  NumPy, forward and forward + backward.
- The sequence model: a vanilla RNN ``h_t = tanh(norm(W_x x_t + W_h h_{t-1} + b))`` (the
  normalization on the summed inputs, as in Ba et al.) on a delayed-recall task
  (:func:`recall_batch`: output, at every step, the token seen ``delay`` steps earlier).
  :class:`NormRNN` is the torch module; :func:`rnn_sweep` trains many of them at once (norm x
  recurrent-weight scale x learning rate x seed) with Adam, on the course's engine
  (:mod:`course_utils.ensemble`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .. import seeds as seeding
from ..ensemble import Ensemble, MemberOptimizer, train_members
from .timing import median_times

__all__ = [
    "batch_dependence",
    "invariance_table",
    "INVARIANCES",
    "time_norms",
    "recall_batch",
    "NormRNN",
    "RNNMember",
    "RNNSweep",
    "rnn_sweep",
    "sweep_matches_module",
    "RNN_NORMS",
]

RNN_NORMS = ("none", "layer", "rms")


# --------------------------------------------------------------------------------------
# batch dependence and invariances
# --------------------------------------------------------------------------------------


def _norms(d: int) -> dict[str, nn.Module]:
    return {"batch": nn.BatchNorm1d(d), "layer": nn.LayerNorm(d), "rms": nn.RMSNorm(d)}


@torch.no_grad()
def batch_dependence(n: int = 16, d: int = 32, trials: int = 5, seed: int = 0) -> dict[str, float]:
    """Largest change of sample 0's output (training mode) when the other n - 1 samples of
    its (n, d) batch are redrawn, over ``trials`` redraws, per normalization."""
    g = seeding.generator(seed)
    x0 = torch.randn(1, d, generator=g) * 2 + 1
    out = {}
    for name, norm in _norms(d).items():
        norm.train()
        ref = norm(torch.cat([x0, torch.randn(n - 1, d, generator=g)]))[0]
        worst = 0.0
        for _ in range(trials):
            mates = torch.randn(n - 1, d, generator=g) * float(torch.rand(1, generator=g) * 3 + 0.2)
            worst = max(worst, float((norm(torch.cat([x0, mates]))[0] - ref).abs().max()))
        out[name] = worst
    return out


#: Ba et al.'s (2016, Table 1) transformations, and which normalizations they leave unchanged
#: (True: invariant up to eps and float32 rounding).
INVARIANCES = {
    "weight matrix W x 3": {"batch": True, "layer": True, "rms": True},
    "weight matrix re-centred: W + 1 v^T": {"batch": False, "layer": True, "rms": False},
    "each weight vector (row of W) x its own c_j": {"batch": True, "layer": False, "rms": False},
    "whole data set x 3": {"batch": True, "layer": True, "rms": True},
    "whole data set + a constant vector u": {"batch": True, "layer": False, "rms": False},
    "each input feature (column of x) x its own c_k": {
        "batch": False,
        "layer": False,
        "rms": False,
    },
    "one sample x 3": {"batch": False, "layer": True, "rms": True},
}


@torch.no_grad()
def invariance_table(n: int = 32, d_in: int = 16, d: int = 24, seed: int = 0) -> dict[str, dict]:
    """Which transformations of the weights or the data leave ``norm(x @ W.T)`` unchanged?

    ``x`` is (n, d_in), ``W`` is (d, d_in); training mode. The rows are the keys of
    :data:`INVARIANCES`: re-scale the weight matrix; re-centre it (add the same vector
    ``v`` to every row, so every output feature of a sample moves by the same ``v . x``);
    re-scale each row differently; re-scale or shift the whole data set; re-scale each input
    feature (column of x) differently; re-scale one sample. Values: the largest absolute
    change of the output (for "one sample", of that sample's output), per normalization.
    """
    g = seeding.generator(seed)
    x = torch.randn(n, d_in, generator=g)
    w = torch.randn(d, d_in, generator=g) / math.sqrt(d_in)
    norms = _norms(d)
    row_scale = torch.rand(d, generator=g) * 2.5 + 0.5
    col_scale = torch.rand(d_in, generator=g) * 2.5 + 0.5
    v = torch.randn(d_in, generator=g)
    u = torch.randn(d_in, generator=g) * 2
    transforms = {
        "weight matrix W x 3": lambda x, w: (x, 3 * w),
        "weight matrix re-centred: W + 1 v^T": lambda x, w: (x, w + v[None, :]),
        "each weight vector (row of W) x its own c_j": lambda x, w: (x, w * row_scale[:, None]),
        "whole data set x 3": lambda x, w: (3 * x, w),
        "whole data set + a constant vector u": lambda x, w: (x + u, w),
        "each input feature (column of x) x its own c_k": lambda x, w: (x * col_scale, w),
        "one sample x 3": lambda x, w: (torch.cat([3 * x[:1], x[1:]]), w),
    }
    table = {}
    for tname, f in transforms.items():
        row = {}
        for nname, norm in norms.items():
            norm.train()
            x2, w2 = f(x, w)
            before, after = norm(x @ w.T), norm(x2 @ w2.T)
            if tname.startswith("one sample"):
                before, after = before[:1], after[:1]  # the sample that was changed
            row[nname] = float((after - before).abs().max())
        table[tname] = row
    return table


def time_norms(
    n: int = 2048, d: int = 512, repeats: int = 15, number: int = 3, seed: int = 0
) -> dict[str, float]:
    """Median seconds per call of layer norm and RMS norm on an (n, d) float32 input.

    The six versions run in turn, ``repeats`` rounds of ``number`` calls each
    (:func:`~course_utils.experiments.timing.median_times`), so a busy moment slows all alike.
    Keys: ``"torch LN forward"``, ``"torch RMS forward"``, ``"torch LN fwd+bwd"``,
    ``"torch RMS fwd+bwd"`` (``nn.LayerNorm`` / ``nn.RMSNorm``), ``"numpy LN forward"``,
    ``"numpy RMS forward"`` (the NumPy formulas of :mod:`course_utils.reference.stats`).
    """
    g = seeding.generator(seed)
    x = torch.randn(n, d, generator=g)
    ln, rms = nn.LayerNorm(d), nn.RMSNorm(d)
    xg = x.clone().requires_grad_(True)
    grad = torch.randn(n, d, generator=g)

    def forward(m):
        with torch.no_grad():
            return m(x)

    def fwd_bwd(m):
        xg.grad = None
        m(xg).backward(grad)

    from ..reference.stats import normalize, rms_normalize, stat_layout  # not in the sandbox

    xn = x.numpy()
    rows = stat_layout("layer", xn.shape)  # one statistic per row: the same for RMS norm

    def np_ln():
        return normalize(xn, rows, 1e-5)[0]

    def np_rms():
        return rms_normalize(xn, rows, 1e-6)[0]

    return median_times(
        {
            "torch LN forward": lambda: forward(ln),
            "torch RMS forward": lambda: forward(rms),
            "torch LN fwd+bwd": lambda: fwd_bwd(ln),
            "torch RMS fwd+bwd": lambda: fwd_bwd(rms),
            "numpy LN forward": np_ln,
            "numpy RMS forward": np_rms,
        },
        repeat=repeats,
        number=number,
    )


# --------------------------------------------------------------------------------------
# the sequence model
# --------------------------------------------------------------------------------------


def recall_batch(
    batch_size: int,
    seq_len: int = 12,
    vocab: int = 8,
    delay: int = 5,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random tokens (N, T) and targets (N, T - delay): target[:, t] = tokens[:, t], to be
    output at step t + delay (the model must remember ``delay`` steps back)."""
    x = torch.randint(0, vocab, (batch_size, seq_len), generator=generator)
    return x, x[:, : seq_len - delay]


class NormRNN(nn.Module):
    """A vanilla RNN with optional normalization of the summed inputs (Ba et al. 2016).

    ``a_t = W_x[x_t] + h_{t-1} W_h + b``, ``h_t = tanh(norm(a_t))``, logits ``h_t W_o + b_o``.
    ``norm``: ``"none"``, ``"layer"`` (``nn.LayerNorm(H)``: mean and variance of the H summed
    inputs of each sample at each step) or ``"rms"`` (``nn.RMSNorm(H, eps=1e-5)``).
    ``gain`` scales the recurrent weights: W_h ~ U(-a, a) with a = gain * sqrt(3 / H), so the
    entries have standard deviation gain / sqrt(H); gain 1 is the usual scale.

    Input tokens (N, T) int64; output logits (N, T - delay, V) for the steps that have a target.
    """

    def __init__(
        self,
        vocab: int = 8,
        hidden: int = 32,
        norm: str = "layer",
        gain: float = 1.0,
        delay: int = 5,
        seed: int = 0,
    ):
        super().__init__()
        if norm not in RNN_NORMS:
            raise ValueError(f"norm must be one of {RNN_NORMS}, got {norm!r}")
        self.delay = delay
        w_x, w_h, w_o = _rnn_init(vocab, hidden, gain, seed)
        self.w_x = nn.Parameter(w_x)
        self.w_h = nn.Parameter(w_h)
        self.b = nn.Parameter(torch.zeros(hidden))
        self.norm = {
            "none": nn.Identity(),
            "layer": nn.LayerNorm(hidden),
            "rms": nn.RMSNorm(hidden, eps=1e-5),
        }[norm]
        self.w_o = nn.Parameter(w_o)
        self.b_o = nn.Parameter(torch.zeros(vocab))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        n, t = tokens.shape
        xin = self.w_x[tokens]  # (N, T, H)
        h = xin.new_zeros(n, xin.shape[2])
        outs = []
        for step in range(t):
            h = torch.tanh(self.norm(xin[:, step] + h @ self.w_h + self.b))
            if step >= self.delay:
                outs.append(h)
        return torch.stack(outs, 1) @ self.w_o + self.b_o


def _rnn_init(vocab: int, hidden: int, gain: float, seed: int):
    g = seeding.generator(int(seed))
    w_x = (torch.rand(vocab, hidden, generator=g) * 2 - 1) * math.sqrt(3.0)  # std 1
    w_h = (torch.rand(hidden, hidden, generator=g) * 2 - 1) * gain * math.sqrt(3.0 / hidden)
    w_o = (torch.rand(hidden, vocab, generator=g) * 2 - 1) / math.sqrt(hidden)
    return w_x, w_h, w_o


class RNNMember(NamedTuple):
    """The settings of one network of :func:`rnn_sweep`."""

    norm: str
    gain: float
    lr: float
    seed: int


@dataclass
class RNNSweep:
    """What :func:`rnn_sweep` measured.

    ``members``: a :class:`RNNMember` (norm, gain, lr, seed) per trained network;
    ``loss``: training loss per step, array (steps, K) (every batch is fresh random data,
    so it is also the loss on unseen sequences); ``accuracy``: recall accuracy per step on
    that batch, (steps, K).
    """

    members: list[RNNMember]
    loss: np.ndarray
    accuracy: np.ndarray
    seconds: float = 0.0
    final_window: int = 20
    best: dict = field(default_factory=dict)

    def final(self) -> np.ndarray:
        """Mean loss over the last ``final_window`` steps, per member: (K,)."""
        return self.loss[-self.final_window :].mean(0)

    def select(self, norm: str, gain: float) -> tuple[float, np.ndarray]:
        """The learning rate with the lowest final loss (mean over seeds) for this norm and
        gain, and the member indices of that learning rate's seeds."""
        fin = self.final()
        lrs = sorted({m.lr for m in self.members if (m.norm, m.gain) == (norm, gain)})
        scores = []
        for lr in lrs:
            idx = [
                i for i, m in enumerate(self.members) if (m.norm, m.gain, m.lr) == (norm, gain, lr)
            ]
            scores.append((float(np.mean(fin[idx])), lr, np.array(idx)))
        _, lr, idx = min(scores, key=lambda s: s[0])
        return lr, idx

    def best_final(self, norm: str, gain: float) -> float:
        """Final loss (mean over seeds) at the best learning rate."""
        _, idx = self.select(norm, gain)
        return float(self.final()[idx].mean())

    def best_curve(self, norm: str, gain: float) -> np.ndarray:
        """Loss per step (mean over seeds) at the best learning rate: (steps,)."""
        _, idx = self.select(norm, gain)
        return self.loss[:, idx].mean(1)

    def steps_to(self, norm: str, gain: float, threshold: float, smooth: int = 10) -> int | None:
        """First step at which the (running-mean smoothed) best curve is below ``threshold``."""
        c = np.convolve(self.best_curve(norm, gain), np.ones(smooth) / smooth, mode="valid")
        hit = np.flatnonzero(c < threshold)
        return int(hit[0] + smooth) if hit.size else None


def rnn_sweep(
    norms: Sequence[str] = RNN_NORMS,
    gains: Sequence[float] = (1.0, 3.0),
    lrs: Sequence[float] = (0.003, 0.01, 0.03, 0.1),
    seeds: Sequence[int] = (0, 1),
    steps: int = 200,
    batch_size: int = 16,
    seq_len: int = 12,
    vocab: int = 8,
    hidden: int = 32,
    delay: int = 5,
    data_seed: int = 7,
) -> RNNSweep:
    """Train one :class:`NormRNN` per (norm, gain, lr, seed) with Adam, all at once.

    The K networks train together on the course's engine (:mod:`course_utils.ensemble`),
    each with its own learning rate; :func:`sweep_matches_module` checks the result against
    separately trained modules. Every member sees the same fresh random batches. Returns an
    :class:`RNNSweep`.
    """
    t0 = time.perf_counter()
    members = [
        RNNMember(nm, float(g), float(lr), int(s))
        for nm in norms
        for g in gains
        for lr in lrs
        for s in seeds
    ]
    nets = [NormRNN(vocab, hidden, m.norm, m.gain, delay, m.seed) for m in members]
    opt = MemberOptimizer(Ensemble(nets, input_dim=2), [m.lr for m in members], "adam")
    gen = seeding.generator(data_seed)
    batches = (recall_batch(batch_size, seq_len, vocab, delay, gen) for _ in range(steps))
    losses, accs = train_members(opt, batches, batch_accuracy=True)
    return RNNSweep(members, losses.numpy(), accs.numpy(), seconds=time.perf_counter() - t0)


def sweep_matches_module(steps: int = 3) -> float:
    """Largest difference between :func:`rnn_sweep`'s losses and those of separately trained
    :class:`NormRNN` modules with ``torch.optim.Adam`` (same data), over a few steps."""
    sweep = rnn_sweep(
        norms=RNN_NORMS,
        gains=(1.5,),
        lrs=(0.01,),
        seeds=(3,),
        steps=steps,
        batch_size=4,
        seq_len=10,
        delay=3,
        hidden=8,
        vocab=5,
    )
    worst = 0.0
    for j, norm in enumerate(RNN_NORMS):
        model = NormRNN(vocab=5, hidden=8, norm=norm, gain=1.5, delay=3, seed=3)
        opt = torch.optim.Adam(model.parameters(), lr=0.01)
        gen = seeding.generator(7)
        for s in range(steps):
            x, y = recall_batch(4, 10, 5, 3, gen)
            loss = F.cross_entropy(model(x).reshape(-1, 5), y.reshape(-1))
            worst = max(worst, abs(loss.detach().item() - float(sweep.loss[s, j])))
            opt.zero_grad()
            loss.backward()
            opt.step()
    return worst
