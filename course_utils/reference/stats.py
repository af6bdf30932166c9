"""Which entries share one mean and variance, and the formulas computed over them.

Batch, layer, instance, group and RMS norm compute the same thing and differ only in *which*
entries one statistic pools (Wu & He 2018, Fig. 2). A :class:`StatLayout` says it as array
operations: view the input as ``layout.view`` and reduce over ``layout.dims``; ``weight`` and
``bias`` broadcast against the view as ``layout.param_shape``.

============  ========================  ============  =====================
kind          view of an (N, C, *)       dims          param_shape
============  ========================  ============  =====================
batch         (N, C, *)                 0, 2, 3, ...  (1, C, 1, ...)
instance      (N, C, *)                 2, 3, ...     (1, C, 1, ...)
group         (N, G, C // G, prod(*))   2, 3          (1, G, C // G, 1)
layer, rms    (rows, d)                 1             (1, d)
============  ========================  ============  =====================

(layer and RMS norm pool the trailing ``normalized_ndim`` dims, ``d`` values, of each of the
``rows`` leading positions; by default every dim but the first: one statistic per sample.)

The formulas (:func:`moments`, :func:`normalize`, :func:`rms_normalize`,
:func:`normalize_backward`) are written
once for NumPy arrays and torch tensors alike (both take ``axis=`` / ``keepdims=``).
:mod:`.functional` computes with them in float64; :mod:`.fused` uses the layouts for its
autograd Functions; the playground widget and lesson 07's cube figure use
:func:`stat_groups`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

__all__ = [
    "KINDS",
    "StatLayout",
    "stat_layout",
    "stat_groups",
    "Moments",
    "moments",
    "normalize",
    "rms_normalize",
    "normalize_backward",
]

KINDS = ("batch", "layer", "instance", "group", "rms")


class StatLayout(NamedTuple):
    """How to reduce an input so that each mean and variance pools the right entries.

    ``view``: the input reshaped to this shape (a view: no data moves); ``dims``: the dims
    of the view reduced for one statistic; ``param_shape``: ``weight`` / ``bias`` reshaped
    to this to broadcast against the view; ``group_dim``: a reduced dim along which the
    parameters vary (group norm's channels within a group), else ``None``.
    """

    view: tuple[int, ...]
    dims: tuple[int, ...]
    param_shape: tuple[int, ...]
    group_dim: int | None = None

    @property
    def param_sum_dims(self) -> tuple[int, ...]:
        """The view's dims along which the parameters are constant: a parameter's gradient
        sums over them."""
        return tuple(d for d, s in enumerate(self.param_shape) if s == 1)


def _prod(shape: Sequence[int]) -> int:
    out = 1
    for s in shape:
        out *= int(s)
    return out


def stat_layout(
    kind: str,
    shape: Sequence[int],
    num_groups: int = 1,
    normalized_ndim: int | None = None,
) -> StatLayout:
    """The :class:`StatLayout` of normalization ``kind`` for an input of ``shape``.

    Args:
        kind: one of :data:`KINDS`.
        shape: ``(N, C, *)`` for batch, instance and group norm; ``(*, *normalized)`` for
            layer and RMS norm.
        num_groups: ``G`` for group norm (must divide ``C``).
        normalized_ndim: layer / RMS norm: how many trailing dims one statistic pools
            (default: all but the first).
    """
    shape = tuple(int(s) for s in shape)
    if kind in ("layer", "rms"):
        k = len(shape) - 1 if normalized_ndim is None else int(normalized_ndim)
        d = _prod(shape[len(shape) - k :])
        return StatLayout((_prod(shape[: len(shape) - k]), d), (1,), (1, d))
    if len(shape) < 2:
        raise ValueError(f"{kind} norm needs an (N, C, *) input, got shape {shape}")
    n, c, rest = shape[0], shape[1], shape[2:]
    channel = (1, c) + (1,) * len(rest)
    if kind == "batch":
        return StatLayout(shape, (0,) + tuple(range(2, len(shape))), channel)
    if kind == "instance":
        return StatLayout(shape, tuple(range(2, len(shape))), channel)
    if kind == "group":
        if num_groups < 1 or c % num_groups:
            raise ValueError(f"groups must divide C={c}, got {num_groups}")
        g = num_groups
        return StatLayout((n, g, c // g, _prod(rest)), (2, 3), (1, g, c // g, 1), group_dim=2)
    raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")


def stat_groups(
    kind: str, shape: Sequence[int], groups: int = 2, normalized_ndim: int | None = None
) -> np.ndarray:
    """Which statistic each entry of an input of ``shape`` is normalized with.

    Returns an int array of ``shape``: entries with the same id share one mean and variance.
    For an (N, C, H, W) input the ids run over C (batch), N (layer), N*C (instance) or N*G
    (group) values. ``groups``: ``G`` for group norm.
    """
    layout = stat_layout(kind, shape, groups, normalized_ndim)
    index = np.indices(layout.view)
    kept = [d for d in range(len(layout.view)) if d not in layout.dims]
    ids = np.ravel_multi_index(tuple(index[d] for d in kept), tuple(layout.view[d] for d in kept))
    return ids.reshape(tuple(shape))


class Moments(NamedTuple):
    """Statistics over a layout's dims, kept for broadcasting: ``mean``, ``centered = x -
    mean`` and the biased variance ``var`` (arrays or tensors)."""

    mean: Any
    centered: Any
    var: Any


def moments(x, dims: tuple[int, ...]) -> Moments:
    """Two-pass statistics of ``x`` over ``dims``: the mean, then the mean of the squared
    deviations from it. Never ``mean(x**2) - mean(x)**2``, which cancels catastrophically
    when ``|mean| >> std``."""
    mean = x.mean(axis=dims, keepdims=True)
    centered = x - mean
    var = (centered * centered).mean(axis=dims, keepdims=True)
    return Moments(mean, centered, var)


def normalize(x, layout: StatLayout, eps: float):
    """``(x - mean) / sqrt(var + eps)`` with the statistics ``layout`` pools.

    Returns ``(xhat, inv_std, stats)``: ``xhat`` in the view's shape (reshape it back with
    ``.reshape(x.shape)``), ``inv_std = 1 / sqrt(var + eps)`` and the :class:`Moments`, all
    with the view's dims kept.
    """
    stats = moments(x.reshape(layout.view), layout.dims)
    inv_std = 1.0 / (stats.var + eps) ** 0.5
    return stats.centered * inv_std, inv_std, stats


def rms_normalize(x, layout: StatLayout, eps: float):
    """``x / sqrt(mean(x**2) + eps)`` over the entries ``layout`` pools (no centring).

    Returns ``(y, inv_rms)``: ``y`` in the view's shape and ``inv_rms = 1 / sqrt(mean(x**2)
    + eps)`` with the view's dims kept.
    """
    xv = x.reshape(layout.view)
    inv_rms = 1.0 / ((xv * xv).mean(axis=layout.dims, keepdims=True) + eps) ** 0.5
    return xv * inv_rms, inv_rms


def normalize_backward(dxhat, xhat, inv_std, dims: tuple[int, ...]):
    """Gradient through ``xhat = (x - mean(x)) / sqrt(var(x) + eps)`` over ``dims``::

        dx = inv_std * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat))

    (all in the layout's view). The two means are the gradient flowing through the mean
    and through the variance.
    """
    return inv_std * (
        dxhat
        - dxhat.mean(axis=dims, keepdims=True)
        - xhat * (dxhat * xhat).mean(axis=dims, keepdims=True)
    )
