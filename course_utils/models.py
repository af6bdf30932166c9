"""Small MLP and CNN factories with a ``norm=`` and a ``placement=`` choice.

Every hidden layer is a :class:`Block`, an ``nn.Sequential`` whose children are named
``linear`` (or ``conv``), ``norm`` and ``act`` in the order they run, so probes and widgets
can find the activations by name: ``model.blocks[i].act``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from . import seeds as seeding

__all__ = [
    "NORMS",
    "PLACEMENTS",
    "ACTIVATIONS",
    "make_norm",
    "make_activation",
    "Block",
    "MLP",
    "CNN",
    "make_mlp",
    "make_cnn",
]

NORMS = ("none", "batch", "layer", "group", "instance", "rms")
PLACEMENTS = ("before", "after")
ACTIVATIONS = ("relu", "tanh", "sigmoid", "gelu", "identity")


def make_norm(norm: str, features: int, kind: str = "mlp", num_groups: int = 8) -> nn.Module:
    """One normalization layer for ``features`` units or channels.

    Args:
        norm: one of :data:`NORMS`.
        features: D for an MLP's (N, D) activations, C for a CNN's (N, C, H, W).
        kind: ``"mlp"`` or ``"cnn"``; decides which axes batch / layer / RMS norm use.
        num_groups: groups for ``norm="group"`` (reduced to a divisor of ``features``).
    """
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    if kind not in ("mlp", "cnn"):
        raise ValueError(f"kind must be 'mlp' or 'cnn', got {kind!r}")
    if norm == "none":
        return nn.Identity()
    if norm == "batch":
        return nn.BatchNorm1d(features) if kind == "mlp" else nn.BatchNorm2d(features)
    if norm == "group":
        g = math.gcd(int(num_groups), features) or 1
        return nn.GroupNorm(g, features)
    if norm == "instance":
        if kind == "mlp":
            raise ValueError("instance norm needs spatial positions: use it in a CNN, not an MLP")
        return nn.InstanceNorm2d(features, affine=True)
    if norm == "layer":
        # for images, layer norm pools C, H, W of one sample: GroupNorm(1, C) does exactly that
        return nn.LayerNorm(features) if kind == "mlp" else nn.GroupNorm(1, features)
    # rms
    if kind == "mlp":
        return nn.RMSNorm(features)
    return _ChannelRMSNorm(features)


class _ChannelRMSNorm(nn.Module):
    """RMS norm over (C, H, W) of each sample, with a per-channel gain."""

    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rms = x.pow(2).mean(dim=(1, 2, 3), keepdim=True).add(self.eps).rsqrt()
        return x * rms * self.weight.view(1, -1, 1, 1)


def make_activation(name: str) -> nn.Module:
    """``nn.ReLU``, ``nn.Tanh``, ``nn.Sigmoid``, ``nn.GELU`` or ``nn.Identity`` by name."""
    table = {
        "relu": nn.ReLU,
        "tanh": nn.Tanh,
        "sigmoid": nn.Sigmoid,
        "gelu": nn.GELU,
        "identity": nn.Identity,
    }
    if name not in table:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {name!r}")
    return table[name]()


class Block(nn.Sequential):
    """Linear/Conv, normalization and activation, in the order ``placement`` gives.

    ``placement="before"``: layer -> norm -> act (Ioffe & Szegedy's choice);
    ``placement="after"``: layer -> act -> norm.
    """

    def __init__(
        self,
        layer: nn.Module,
        norm: nn.Module,
        act: nn.Module,
        placement: str = "before",
        layer_name: str = "linear",
    ):
        if placement not in PLACEMENTS:
            raise ValueError(f"placement must be 'before' or 'after', got {placement!r}")
        order = [(layer_name, layer), ("norm", norm), ("act", act)]
        if placement == "after":
            order = [order[0], order[2], order[1]]
        super().__init__()
        for name, mod in order:
            self.add_module(name, mod)
        self.placement = placement


def _init_weights(layers: Sequence[nn.Module], init_scale: float | None, init_std: float | None):
    for layer in layers:
        fan_in = layer.weight[0].numel()
        if init_std is not None:
            std = float(init_std)
        elif init_scale is not None:
            std = float(init_scale) / math.sqrt(fan_in)
        else:
            continue
        with torch.no_grad():
            layer.weight.normal_(0.0, std)
            if layer.bias is not None:
                layer.bias.zero_()


class MLP(nn.Module):
    """A multi-layer perceptron: ``blocks`` (a ModuleList of :class:`Block`) then ``head``.

    Input (N, in_features) or anything that flattens to it; output logits (N, out_features).
    """

    def __init__(
        self,
        in_features: int = 784,
        hidden: Sequence[int] = (100, 100, 100),
        out_features: int = 10,
        norm: str = "none",
        placement: str = "before",
        activation: str = "relu",
        init_scale: float | None = None,
        init_std: float | None = None,
        bias: bool | None = None,
        num_groups: int = 8,
    ):
        super().__init__()
        self.norm, self.placement, self.activation = norm, placement, activation
        if bias is None:
            # a bias right before batch norm is removed by its mean subtraction
            bias = not (norm == "batch" and placement == "before")
        blocks, width = [], in_features
        for h in hidden:
            blocks.append(
                Block(
                    nn.Linear(width, h, bias=bias),
                    make_norm(norm, h, "mlp", num_groups),
                    make_activation(activation),
                    placement,
                )
            )
            width = h
        self.blocks = nn.ModuleList(blocks)
        self.head = nn.Linear(width, out_features)
        _init_weights([b.linear for b in self.blocks] + [self.head], init_scale, init_std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        for block in self.blocks:
            x = block(x)
        return self.head(x)


class CNN(nn.Module):
    """A small CNN: per stage a 3x3 conv :class:`Block` and 2x2 max pooling, then a linear head.

    Input (N, in_channels, 28, 28); output logits (N, num_classes).
    """

    def __init__(
        self,
        in_channels: int = 1,
        channels: Sequence[int] = (8, 16),
        num_classes: int = 10,
        norm: str = "none",
        placement: str = "before",
        activation: str = "relu",
        init_scale: float | None = None,
        init_std: float | None = None,
        bias: bool | None = None,
        num_groups: int = 4,
        image_size: int = 28,
    ):
        super().__init__()
        self.norm, self.placement, self.activation = norm, placement, activation
        if bias is None:
            bias = not (norm == "batch" and placement == "before")
        blocks, c, size = [], in_channels, image_size
        for out in channels:
            blocks.append(
                Block(
                    nn.Conv2d(c, out, 3, padding=1, bias=bias),
                    make_norm(norm, out, "cnn", num_groups),
                    make_activation(activation),
                    placement,
                    layer_name="conv",
                )
            )
            c, size = out, size // 2
        self.blocks = nn.ModuleList(blocks)
        self.pool = nn.MaxPool2d(2)
        self.head = nn.Linear(c * size * size, num_classes)
        _init_weights([b.conv for b in self.blocks] + [self.head], init_scale, init_std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = self.pool(block(x))
        return self.head(x.flatten(1))


def make_mlp(
    depth: int = 3,
    width: int = 100,
    norm: str = "none",
    placement: str = "before",
    activation: str = "relu",
    in_features: int = 784,
    out_features: int = 10,
    init_scale: float | None = None,
    init_std: float | None = None,
    bias: bool | None = None,
    num_groups: int = 8,
    seed: int | None = 0,
) -> MLP:
    """An :class:`MLP` with ``depth`` hidden layers of ``width`` units, seeded.

    Args:
        norm: ``"none"``, ``"batch"``, ``"layer"``, ``"group"`` or ``"rms"``.
        placement: ``"before"`` (Linear -> norm -> act) or ``"after"`` (Linear -> act -> norm).
        init_scale: weights ~ N(0, (init_scale / sqrt(fan_in))^2); 1.0 is LeCun init.
        init_std: weights ~ N(0, init_std^2), an absolute scale (overrides init_scale).
            Neither given: torch's default init.
        bias: None drops the bias only where batch norm follows (it would be redundant).
        seed: seeds torch's generator before the weights are drawn (None: don't seed).
    """
    if depth < 1 or width < 1:
        raise ValueError(f"depth and width must be >= 1, got depth={depth}, width={width}")
    if seed is not None:
        seeding.torch_seed(seed)
    return MLP(
        in_features,
        [width] * depth,
        out_features,
        norm,
        placement,
        activation,
        init_scale,
        init_std,
        bias,
        num_groups,
    )


def make_cnn(
    channels: Sequence[int] = (8, 16),
    norm: str = "none",
    placement: str = "before",
    activation: str = "relu",
    in_channels: int = 1,
    num_classes: int = 10,
    init_scale: float | None = None,
    init_std: float | None = None,
    bias: bool | None = None,
    num_groups: int = 4,
    image_size: int = 28,
    seed: int | None = 0,
) -> CNN:
    """A :class:`CNN` with one 3x3 conv block and a 2x2 max-pool per entry of ``channels``, seeded.

    Input (N, in_channels, image_size, image_size). ``norm`` may also be ``"instance"``.
    Other arguments as in :func:`make_mlp`.
    """
    if seed is not None:
        seeding.torch_seed(seed)
    return CNN(
        in_channels,
        channels,
        num_classes,
        norm,
        placement,
        activation,
        init_scale,
        init_std,
        bias,
        num_groups,
        image_size,
    )
