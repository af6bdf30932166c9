"""Answers of lesson 08 (placement)."""

from __future__ import annotations

from torch import nn
from torch.nn import functional as F

from ..experiments.transformer import Block

__all__ = ["assemble_block", "residual_forward", "PreLNBlock"]


def assemble_block(layer: nn.Module, norm: nn.Module, act: nn.Module, placement: str) -> nn.Module:
    """``layer, norm, act`` ("before") or ``layer, act, norm`` ("after") as nn.Sequential."""
    if placement == "before":
        return nn.Sequential(layer, norm, act)
    if placement == "after":
        return nn.Sequential(layer, act, norm)
    raise ValueError(f"placement must be 'before' or 'after', got {placement!r}")


def residual_forward(x, fc1, bn1, fc2, bn2, variant):
    """The original (post-activation) or the pre-activation residual block on x (N, D)."""
    if variant == "original":
        return F.relu(x + bn2(fc2(F.relu(bn1(fc1(x))))))
    if variant == "preact":
        return x + fc2(F.relu(bn2(fc1(F.relu(bn1(x))))))
    raise ValueError(f"variant must be 'original' or 'preact', got {variant!r}")


class PreLNBlock(Block):
    """The Pre-LN transformer block: :class:`~course_utils.experiments.transformer.Block`, pre."""

    def __init__(self, d_model: int, n_heads: int, d_ff: int):
        super().__init__(d_model, n_heads, d_ff, norm_position="pre")
