"""Lesson 11, section 1: attention-logit growth at high learning rates, and QK-norm.

Wortsman et al. (2023) reproduced a large-model instability in small transformers: at high
learning rates the attention logits q·k/sqrt(d_head) grow without bound, the softmax
saturates to one-hot and the loss stops improving; layer-normalizing queries and keys
(QK-norm, Dehghani et al. 2023) removes it. Here on a copy task small enough for a CPU.

- :func:`copy_batch`: the task. ``n`` random tokens, a separator, the same ``n`` tokens;
  a causal model predicts every next token, the loss counts only the copied half.
- :func:`copy_model`: a Pre-LN causal :class:`~course_utils.experiments.transformer.TinyTransformer`
  with or without QK-norm.
- :func:`train_copy`: AdamW, linear warm-up then cosine decay, gradient clipping; records the
  largest attention logit of every step.
- :func:`lr_sweep`: both arms over a learning-rate grid.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .. import seeds as seeding
from .transformer import Block, SelfAttention, TinyTransformer

__all__ = [
    "ARMS",
    "copy_batch",
    "copy_model",
    "CopyRun",
    "train_copy",
    "max_logits",
    "logit_bound",
    "Sweep",
    "lr_sweep",
]

ARMS = ("standard", "QK-norm")
SEP = 0  # the separator token; the copied tokens are 1 .. vocab - 1


def copy_batch(
    batch_size: int, n: int = 8, vocab: int = 32, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and next-token targets of the copy task, both (N, 2n) int64.

    The full sequence is ``x_1..x_n, SEP, x_1..x_n`` with x drawn uniformly from 1..vocab-1;
    inputs are its first 2n tokens, targets its last 2n. Positions n..2n-1 of the targets
    are the copy (predictable); the first n are random (not scored).
    """
    x = torch.randint(1, vocab, (batch_size, n), generator=generator)
    sep = torch.full((batch_size, 1), SEP, dtype=torch.long)
    seq = torch.cat([x, sep, x], dim=1)
    return seq[:, :-1], seq[:, 1:]


def copy_model(
    arm: str,
    n: int = 8,
    vocab: int = 32,
    d_model: int = 32,
    n_heads: int = 4,
    n_layers: int = 2,
    seed: int = 0,
) -> TinyTransformer:
    """A Pre-LN causal transformer for the copy task; ``arm`` is ``"standard"`` or ``"QK-norm"``."""
    if arm not in ARMS:
        raise ValueError(f"arm must be one of {ARMS}, got {arm!r}")
    if arm == "QK-norm":
        from ..answers.lesson11 import QKNormAttention as attention
    else:
        attention = SelfAttention

    def block(d: int, h: int, f: int) -> nn.Module:
        return Block(d, h, f, "pre", causal=True, attention=attention)

    return TinyTransformer(vocab, 2 * n, d_model, n_heads, n_layers, block=block, seed=seed)


@dataclass
class CopyRun:
    """One run: ``loss`` per step (steps,) on the copied half, ``max_logit`` per step
    (steps,): the largest |q·k|/sqrt(d_head) over layers, heads and query-key pairs."""

    loss: np.ndarray
    max_logit: np.ndarray

    @property
    def final_loss(self) -> float:
        """Mean loss over the last 10 steps (NaN if the run diverged)."""
        return float(np.mean(self.loss[-10:]))

    @property
    def peak_logit(self) -> float:
        """The largest attention logit seen during training."""
        return float(np.nanmax(self.max_logit))


def _schedule(step: int, steps: int, warmup: int) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay to 0 (step is 1-based)."""
    if step <= warmup:
        return step / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))


def train_copy(
    model: TinyTransformer,
    lr: float,
    steps: int = 100,
    batch_size: int = 32,
    seed: int = 0,
    warmup_frac: float = 0.2,
    clip: float = 1.0,
) -> CopyRun:
    """Train on the copy task with AdamW (betas 0.9, 0.95; weight decay 1e-4), a linear
    warm-up over ``warmup_frac`` of the steps then cosine decay, and gradient clipping at
    ``clip`` (Wortsman et al.'s recipe). Batches come from a generator seeded with ``seed``;
    the copy length n is half the model's sequence length."""
    vocab = model.head.out_features
    n = model.pos.shape[0] // 2
    g = seeding.generator(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=1e-4)
    warmup = max(1, round(warmup_frac * steps))
    losses, peaks = np.full(steps, np.nan), np.full(steps, np.nan)
    step_peak: list[float] = []

    def record(module: SelfAttention, inputs, output) -> None:
        with torch.no_grad():  # over every query-key pair, as the lesson's written-out loop
            step_peak.append(float(module.logits(inputs[0]).abs().max()))

    hooks = [b.attn.register_forward_hook(record) for b in model.blocks]
    model.train()
    try:
        for s in range(1, steps + 1):
            for group in opt.param_groups:
                group["lr"] = lr * _schedule(s, steps, warmup)
            x, y = copy_batch(batch_size, n, vocab, g)
            step_peak.clear()
            logits = model(x)[:, n:]  # predictions of the copied half
            loss = F.cross_entropy(logits.reshape(-1, vocab), y[:, n:].reshape(-1))
            losses[s - 1], peaks[s - 1] = loss.item(), max(step_peak)
            if not math.isfinite(losses[s - 1]):
                break
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), clip)
            opt.step()
    finally:
        for h in hooks:
            h.remove()
    return CopyRun(losses, peaks)


@torch.no_grad()
def max_logits(model: TinyTransformer, tokens: torch.Tensor) -> np.ndarray:
    """The largest |q·k|/sqrt(d_head) of every block's attention for tokens (N, T): (blocks,)."""
    out: list[float] = []
    hooks = [
        b.attn.register_forward_hook(
            lambda m, inputs, output: out.append(float(m.logits(inputs[0]).abs().max()))
        )
        for b in model.blocks
    ]
    try:
        model(tokens)
    finally:
        for h in hooks:
            h.remove()
    return np.array(out)


@torch.no_grad()
def logit_bound(attn: nn.Module) -> float:
    """The largest |logit| a QK-norm attention can produce, from its LayerNorms' parameters.

    A layer-normalized vector of d_head features has norm at most sqrt(d_head) (equal when its
    variance is much larger than eps); after the gain and bias its norm is at most
    sqrt(d_head) max|gain| + ||bias||. Cauchy-Schwarz then bounds |q·k| / sqrt(d_head) by
    the product of the two norms divided by sqrt(d_head).
    """
    d_head = attn.q_norm.normalized_shape[0]

    def norm_bound(ln: nn.LayerNorm) -> float:
        return math.sqrt(d_head) * float(ln.weight.abs().max()) + float(ln.bias.norm())

    return norm_bound(attn.q_norm) * norm_bound(attn.k_norm) / math.sqrt(d_head)


@dataclass
class Sweep:
    """:func:`lr_sweep`'s results: ``final_loss[arm]`` and ``peak_logit[arm]`` of shape
    (seeds, lrs); ``runs[arm][i][j]`` the :class:`CopyRun` of seed i at lr j and
    ``models[arm][i][j]`` the trained model."""

    lrs: np.ndarray
    seeds: tuple
    final_loss: dict
    peak_logit: dict
    runs: dict
    models: dict

    def table(self) -> str:
        """Plain text: per arm and lr, the final loss and peak logit (mean over seeds)."""
        head = "".join(f"{arm + ' loss':>16}{arm + ' max logit':>20}" for arm in self.final_loss)
        rows = [f"{'lr':>8}{head}"]
        for j, lr in enumerate(self.lrs):
            cells = "".join(
                f"{self.final_loss[a][:, j].mean():>16.3f}{self.peak_logit[a][:, j].mean():>20.1f}"
                for a in self.final_loss
            )
            rows.append(f"{lr:>8g}{cells}")
        return "\n".join(rows)


def lr_sweep(
    lrs: Sequence[float],
    seeds: Sequence[int] = (0,),
    arms: Sequence[str] = ARMS,
    steps: int = 100,
    batch_size: int = 32,
    **model_kwargs,
) -> Sweep:
    """Train every arm at every learning rate and seed (model and batches seeded alike);
    ``model_kwargs`` go to :func:`copy_model`."""
    lrs_a = np.asarray(lrs, dtype=np.float64)
    loss, peak, runs, models = {}, {}, {}, {}
    for arm in arms:
        models[arm] = [[copy_model(arm, seed=s, **model_kwargs) for _ in lrs_a] for s in seeds]
        runs[arm] = [
            [
                train_copy(model, float(lr), steps, batch_size, s)
                for model, lr in zip(models[arm][i], lrs_a)
            ]
            for i, s in enumerate(seeds)
        ]
        loss[arm] = np.array([[r.final_loss for r in row] for row in runs[arm]])
        peak[arm] = np.array([[r.peak_logit for r in row] for row in runs[arm]])
    return Sweep(lrs_a, tuple(seeds), loss, peak, runs, models)
