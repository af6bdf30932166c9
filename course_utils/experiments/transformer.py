"""A tiny hand-written transformer for lessons 08 and 11: Post-LN vs Pre-LN (Xiong et al. 2020),
and the pieces lesson 11 adds (a causal mask, a query-key logit hook, residual scaling).

The stack is written out by hand because ``nn.TransformerEncoder`` is several times slower at
this size on a CPU (its fast paths target large batches and GPUs). Shapes: tokens (N, T) int64,
hidden states (N, T, D), logits (N, T, V).

- :class:`SelfAttention` and :class:`FeedForward`: the two sub-layers of a block.
  ``SelfAttention.project`` splits the heads (a subclass can normalize q and k there: QK-norm)
  and ``SelfAttention.logits`` returns the pre-softmax logits q·k/sqrt(d_head).
- :class:`Block`: one block with ``norm_position="post"`` (the original transformer,
  ``x = LN(x + f(x))``) or ``"pre"`` (``x = x + f(LN(x))``); optional causal mask, attention
  class, LayerScale (``x + diag(λ) f(LN(x))``) and DeepNorm's residual weight
  (``LN(α x + f(x))``).
- :class:`TinyTransformer`: embeddings, blocks, a final LayerNorm for Pre-LN, a linear head.
- :func:`reversal_batch`, :func:`train_reversal`: the sequence-reversal task and its training
  loop with an optional linear learning-rate warm-up.
- :func:`grad_norms_at_init`: per-layer gradient norms of a freshly initialised stack.
- :func:`residual_stream_std`: the standard deviation of the hidden states after each block.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .. import seeds as seeding

__all__ = [
    "SelfAttention",
    "FeedForward",
    "Block",
    "TinyTransformer",
    "reversal_batch",
    "train_reversal",
    "ReversalRun",
    "grad_norms_at_init",
    "residual_stream_std",
    "NORM_POSITIONS",
]

NORM_POSITIONS = ("post", "pre")


class SelfAttention(nn.Module):
    """Multi-head self-attention: (N, T, D) -> (N, T, D); no mask unless ``causal``.

    Parameters: ``qkv`` (a Linear D -> 3D) and ``out`` (a Linear D -> D). ``causal=True``
    lets position t attend only to positions <= t (a decoder, as in GPT).
    """

    def __init__(self, d_model: int, n_heads: int, causal: bool = False):
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model ({d_model}) must be divisible by n_heads ({n_heads})")
        self.n_heads = n_heads
        self.causal = causal
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out = nn.Linear(d_model, d_model)

    def project(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Queries, keys and values per head: x (N, T, D) -> 3 tensors (N, H, T, D/H).

        Subclasses override this to change q and k before attention (QK-norm).
        """
        n, t, d = x.shape
        h = self.n_heads
        q, k, v = self.qkv(x).view(n, t, 3, h, d // h).permute(2, 0, 3, 1, 4)
        return q, k, v

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """The attention logits q·k / sqrt(D/H) before the mask and softmax: (N, H, T, T)."""
        q, k, _ = self.project(x)
        return q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, t, d = x.shape
        q, k, v = self.project(x)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)
        return self.out(y.transpose(1, 2).reshape(n, t, d))


class FeedForward(nn.Sequential):
    """Position-wise feed-forward (N, T, D) -> (N, T, D): Linear, ReLU, Linear (width d_ff)."""

    def __init__(self, d_model: int, d_ff: int):
        super().__init__(nn.Linear(d_model, d_ff), nn.ReLU(), nn.Linear(d_ff, d_model))


class Block(nn.Module):
    """One transformer block; submodules ``ln1``, ``attn``, ``ln2``, ``ff``.

    ``norm_position="post"`` (Vaswani et al. 2017)::

        x = ln1(alpha * x + attn(x));  x = ln2(alpha * x + ff(x))

    ``norm_position="pre"`` (Xiong et al. 2020)::

        x = x + ls1 * attn(ln1(x));  x = x + ls2 * ff(ln2(x))

    Args:
        causal: mask attention to earlier positions (passed to the attention).
        attention: the attention class, called as ``attention(d_model, n_heads, causal=...)``;
            default :class:`SelfAttention` (a subclass such as a QK-norm attention fits).
        layer_scale: Pre-LN only: LayerScale (Touvron et al. 2021), learnable per-channel
            gains ``ls1``, ``ls2`` of shape (D,) that start at this value. None: no gains.
        residual_alpha: Post-LN only: DeepNorm's weight on the residual (Wang et al. 2022);
            1.0 is the plain Post-LN block.
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        d_ff: int,
        norm_position: str = "pre",
        *,
        causal: bool = False,
        attention: Callable[..., nn.Module] | None = None,
        layer_scale: float | None = None,
        residual_alpha: float = 1.0,
    ):
        super().__init__()
        if norm_position not in NORM_POSITIONS:
            raise ValueError(f"norm_position must be 'post' or 'pre', got {norm_position!r}")
        if layer_scale is not None and norm_position != "pre":
            raise ValueError("layer_scale scales the branch of a Pre-LN block: use 'pre'")
        if residual_alpha != 1.0 and norm_position != "post":
            raise ValueError("residual_alpha (DeepNorm) weights a Post-LN residual: use 'post'")
        self.norm_position = norm_position
        self.residual_alpha = float(residual_alpha)
        self.ln1 = nn.LayerNorm(d_model)
        self.attn = (attention or SelfAttention)(d_model, n_heads, causal=causal)
        self.ln2 = nn.LayerNorm(d_model)
        self.ff = FeedForward(d_model, d_ff)
        if layer_scale is not None:
            self.ls1 = nn.Parameter(torch.full((d_model,), float(layer_scale)))
            self.ls2 = nn.Parameter(torch.full((d_model,), float(layer_scale)))
        else:
            self.ls1 = self.ls2 = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.norm_position == "post":
            a = self.residual_alpha
            if a == 1.0:  # the plain Post-LN block, exactly as lesson 08 computes it
                x = self.ln1(x + self.attn(x))
                return self.ln2(x + self.ff(x))
            x = self.ln1(a * x + self.attn(x))
            return self.ln2(a * x + self.ff(x))
        if self.ls1 is None:
            x = x + self.attn(self.ln1(x))
            return x + self.ff(self.ln2(x))
        x = x + self.ls1 * self.attn(self.ln1(x))
        return x + self.ls2 * self.ff(self.ln2(x))


def _xavier(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            nn.init.zeros_(m.bias)


class TinyTransformer(nn.Module):
    """Token and position embeddings, ``n_layers`` blocks, a linear head: (N, T) -> (N, T, V).

    Pre-LN stacks end with a LayerNorm (``final_ln``) before the head, as Xiong et al. do;
    Post-LN stacks already end with one. Linear layers use Xavier-uniform init, zero biases.

    Args:
        block: ``None`` builds :class:`Block` with ``norm_position``; otherwise a callable
            ``block(d_model, n_heads, d_ff)`` returning a module (for example a learner's
            own Pre-LN block).
    """

    def __init__(
        self,
        vocab: int = 12,
        seq_len: int = 16,
        d_model: int = 64,
        n_heads: int = 4,
        n_layers: int = 6,
        d_ff: int | None = None,
        norm_position: str = "pre",
        block: Callable[[int, int, int], nn.Module] | None = None,
        seed: int | None = 0,
    ):
        super().__init__()
        if seed is not None:
            seeding.torch_seed(seed)
        d_ff = 4 * d_model if d_ff is None else d_ff
        self.norm_position = norm_position
        self.embed = nn.Embedding(vocab, d_model)
        self.pos = nn.Parameter(torch.randn(seq_len, d_model))
        make = block or (lambda d, h, f: Block(d, h, f, norm_position))
        self.blocks = nn.ModuleList(make(d_model, n_heads, d_ff) for _ in range(n_layers))
        self.final_ln = nn.LayerNorm(d_model) if norm_position == "pre" else nn.Identity()
        self.head = nn.Linear(d_model, vocab)
        _xavier(self)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens) + self.pos[: tokens.shape[1]]
        for block in self.blocks:
            x = block(x)
        return self.head(self.final_ln(x))


def reversal_batch(
    batch_size: int, seq_len: int = 16, vocab: int = 12, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random token sequences (N, T) and their reversals (N, T), int64."""
    x = torch.randint(0, vocab, (batch_size, seq_len), generator=generator)
    return x, x.flip(1)


@dataclass
class ReversalRun:
    """One training run: ``loss`` per step (steps,), the final ``test_loss`` and the
    per-token ``test_acc`` on fresh sequences; ``diverged`` when the loss became NaN."""

    loss: np.ndarray
    test_loss: float
    test_acc: float
    diverged: bool

    @property
    def final_loss(self) -> float:
        """Mean training loss over the last 10 steps."""
        return float(np.mean(self.loss[-10:]))


def train_reversal(
    model: nn.Module,
    steps: int = 200,
    lr: float = 5e-3,
    warmup: int = 0,
    batch_size: int = 32,
    seed: int = 0,
    vocab: int = 12,
    seq_len: int = 16,
    test_size: int = 256,
) -> ReversalRun:
    """Train on sequence reversal with Adam and a linear warm-up of ``warmup`` steps.

    The learning rate at step s (1-based) is ``lr * min(1, s / warmup)`` (constant ``lr``
    when ``warmup`` is 0). Batches come from a generator seeded with ``seed``, so runs that
    differ only in the model see the same sequences.
    """
    g = seeding.generator(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    losses = np.full(steps, np.nan)
    diverged = False
    model.train()
    for s in range(1, steps + 1):
        if warmup:
            for group in opt.param_groups:
                group["lr"] = lr * min(1.0, s / warmup)
        x, y = reversal_batch(batch_size, seq_len, vocab, g)
        loss = F.cross_entropy(model(x).reshape(-1, vocab), y.reshape(-1))
        value = loss.item()
        losses[s - 1] = value
        if not math.isfinite(value):
            diverged = True
            break
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        x, y = reversal_batch(test_size, seq_len, vocab, seeding.generator(10_000 + seed))
        logits = model(x)
        test_loss = float(F.cross_entropy(logits.reshape(-1, vocab), y.reshape(-1)))
        test_acc = float((logits.argmax(-1) == y).float().mean())
    return ReversalRun(losses, test_loss, test_acc, diverged)


def grad_norms_at_init(
    norm_position: str, seeds: Sequence[int] = (0, 1, 2), batch_size: int = 32, **model_kwargs
) -> dict[str, np.ndarray]:
    """Gradient norms of each block's attention and feed-forward weights at initialisation.

    Returns ``{"attn": (seeds, layers), "ff": (seeds, layers)}``: the Frobenius norm of the
    gradient of the reversal loss with respect to ``attn.qkv.weight`` and ``ff[2].weight``
    (the second FFN matrix, the one Xiong et al. plot) for one batch.
    """
    out = {"attn": [], "ff": []}
    for seed in seeds:
        model = TinyTransformer(norm_position=norm_position, seed=seed, **model_kwargs)
        vocab = model.head.out_features
        x, y = reversal_batch(batch_size, model.pos.shape[0], vocab, seeding.generator(seed))
        loss = F.cross_entropy(model(x).reshape(-1, vocab), y.reshape(-1))
        loss.backward()
        out["attn"].append([float(b.attn.qkv.weight.grad.norm()) for b in model.blocks])
        out["ff"].append([float(b.ff[2].weight.grad.norm()) for b in model.blocks])
    return {k: np.array(v) for k, v in out.items()}


@torch.no_grad()
def residual_stream_std(model: TinyTransformer, tokens: torch.Tensor) -> np.ndarray:
    """Standard deviation of the hidden states ``x`` (N, T, D) after each block: (n_layers,).

    In a Pre-LN stack this is the residual stream, which no layer norm touches until the
    final one, so every block adds to it; in a Post-LN stack each block ends with a layer norm.
    """
    x = model.embed(tokens) + model.pos[: tokens.shape[1]]
    out = []
    for block in model.blocks:
        x = block(x)
        out.append(float(x.std()))
    return np.array(out)
