"""Lesson 11, section 3: residual scaling in deep transformer stacks (LayerScale, DeepNorm).

Four ways to build the same deeper stack of the course's transformer blocks
(:class:`~course_utils.experiments.transformer.Block`), trained on lesson 08's reversal task:

- ``"Pre-LN"``: x + f(LN(x)), a final LN (lesson 08).
- ``"Post-LN"``: LN(x + f(x)) (lesson 08: it needs warm-up).
- ``"Post-LN + DeepNorm"`` (Wang et al. 2022): LN(alpha x + f(x)) with alpha = (2N)^(1/4) for
  N blocks, and the value, output and feed-forward weights initialised beta = (8N)^(-1/4)
  times smaller (the encoder-only constants of the paper).
- ``"Pre-LN + LayerScale"`` (Touvron et al. 2021): x + diag(lambda) f(LN(x)), lambda a learned
  per-channel gain that starts small (0.1 here).

:func:`stream_rms` measures the size of the residual stream after every block.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .. import seeds as seeding
from .transformer import Block, TinyTransformer, reversal_batch, train_reversal

__all__ = [
    "ARMS",
    "deepnorm_constants",
    "deepnorm_init_",
    "make_stack",
    "stream_rms",
    "Result",
    "compare_arms",
]

ARMS = ("Pre-LN", "Post-LN", "Post-LN + DeepNorm", "Pre-LN + LayerScale")


def deepnorm_constants(n_layers: int) -> tuple[float, float]:
    """DeepNorm's (alpha, beta) for an encoder of ``n_layers`` blocks: ((2N)^(1/4), (8N)^(-1/4))."""
    return (2 * n_layers) ** 0.25, (8 * n_layers) ** -0.25


@torch.no_grad()
def deepnorm_init_(model: TinyTransformer, beta: float) -> None:
    """Scale every block's value projection, attention output and feed-forward weights by
    ``beta`` (queries and keys keep their initialisation, as in the paper), in place."""
    for block in model.blocks:
        d = block.ln1.normalized_shape[0]
        block.attn.qkv.weight[2 * d :].mul_(beta)  # the value rows of the fused q, k, v weight
        block.attn.out.weight.mul_(beta)
        block.ff[0].weight.mul_(beta)
        block.ff[2].weight.mul_(beta)


def make_stack(
    arm: str,
    n_layers: int = 8,
    d_model: int = 32,
    n_heads: int = 4,
    layer_scale: float = 0.1,
    seed: int = 0,
    **model_kwargs,
) -> TinyTransformer:
    """A :class:`TinyTransformer` of ``n_layers`` blocks built the way ``arm`` says."""
    if arm not in ARMS:
        raise ValueError(f"arm must be one of {ARMS}, got {arm!r}")
    alpha, beta = deepnorm_constants(n_layers)
    position = "post" if arm.startswith("Post") else "pre"
    kwargs: dict = {}
    if arm == "Post-LN + DeepNorm":
        kwargs["residual_alpha"] = alpha
    if arm == "Pre-LN + LayerScale":
        kwargs["layer_scale"] = layer_scale

    def block(d: int, h: int, f: int) -> nn.Module:
        return Block(d, h, f, position, **kwargs)

    model = TinyTransformer(
        d_model=d_model,
        n_heads=n_heads,
        n_layers=n_layers,
        norm_position=position,
        block=block,
        seed=seed,
        **model_kwargs,
    )
    if arm == "Post-LN + DeepNorm":
        deepnorm_init_(model, beta)
    return model


@torch.no_grad()
def stream_rms(model: TinyTransformer, tokens: torch.Tensor) -> np.ndarray:
    """Root mean square of the residual stream after every block, (n_layers,), for tokens (N, T)."""
    out: list[float] = []
    hooks = [
        b.register_forward_hook(lambda m, i, o: out.append(float(o.pow(2).mean().sqrt())))
        for b in model.blocks
    ]
    was_training = model.training
    model.eval()
    try:
        model(tokens)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return np.array(out)


@dataclass
class Result:
    """:func:`compare_arms`' results, per arm: ``loss[arm]`` (seeds, steps) training losses,
    ``final[arm]`` (seeds,) final losses, ``rms_init[arm]`` and ``rms_trained[arm]`` (seeds,
    n_layers) residual-stream RMS after every block before and after training."""

    seeds: tuple
    loss: dict
    final: dict
    rms_init: dict
    rms_trained: dict

    def growth(self, arm: str) -> np.ndarray:
        """Trained stream RMS after the last block over that after the first, per seed."""
        r = self.rms_trained[arm]
        return r[:, -1] / r[:, 0]

    def table(self) -> str:
        """Plain text: final loss per seed and the stream growth of every arm."""
        return "\n".join(
            f"{arm:<22} final loss {np.round(self.final[arm], 4).tolist()}, stream RMS "
            f"block 1 -> {self.rms_trained[arm].shape[1]} after training "
            f"{self.rms_trained[arm][:, 0].mean():.2f} -> {self.rms_trained[arm][:, -1].mean():.2f}"
            for arm in self.final
        )


def compare_arms(
    arms: Sequence[str] = ARMS,
    seeds: Sequence[int] = (0, 1),
    n_layers: int = 8,
    steps: int = 100,
    lr: float = 5e-3,
    batch_size: int = 16,
    seq_len: int = 12,
    vocab: int = 12,
    probe_seed: int = 12345,
    **stack_kwargs,
) -> Result:
    """Train every arm with every seed on sequence reversal (Adam, no warm-up; lesson 08's
    task) and measure the residual stream on 64 sequences drawn with ``probe_seed``, before
    and after training."""
    probe, _ = reversal_batch(64, seq_len, vocab, seeding.generator(probe_seed))
    loss, final, rms0, rms1 = {}, {}, {}, {}
    for arm in arms:
        runs, r0, r1 = [], [], []
        for s in seeds:
            model = make_stack(arm, n_layers, seed=s, vocab=vocab, seq_len=seq_len, **stack_kwargs)
            r0.append(stream_rms(model, probe))
            runs.append(
                train_reversal(
                    model, steps, lr, seed=s, batch_size=batch_size, vocab=vocab, seq_len=seq_len
                )
            )
            r1.append(stream_rms(model, probe))
        loss[arm] = np.array([r.loss for r in runs])
        final[arm] = np.array([r.final_loss for r in runs])
        rms0[arm], rms1[arm] = np.array(r0), np.array(r1)
    return Result(tuple(seeds), loss, final, rms0, rms1)
