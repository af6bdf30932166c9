"""Hooks that record per-layer activation and gradient statistics at every training step.

An :class:`ActivationProbe` attaches a forward hook to each activation module (by default
every ``block.act`` of a :mod:`course_utils.models` network) and a tensor hook to its output
for the gradient. Each training-mode forward pass appends one record per layer, so after
``T`` steps ``probe.stat("std")`` is a (T, L) array. The statistics are a handful of
reductions on tensors that already exist, so recording costs a small fraction of a step.

``UpdateRatio`` measures Karpathy's update-to-data ratio, std(dW) / std(W), per weight matrix.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

__all__ = ["LayerStats", "ActivationProbe", "UpdateRatio", "activation_modules", "layer_stats"]

STAT_KEYS = ("mean", "std", "p15", "p50", "p85", "saturated", "dead", "grad_mean", "grad_std")


@dataclass
class LayerStats:
    """Statistics of one layer's activations (and their gradient) at one step.

    ``saturated``: fraction of values in the flat tails (|tanh| > 0.97, sigmoid outside
    [0.03, 0.97]; 0 for other activations). ``dead``: fraction of units (features or
    channels) that are zero for every sample of the batch (ReLU), else 0.
    ``hist``: counts over ``probe.edges`` (values outside are clipped into the end bins).
    """

    mean: float
    std: float
    p15: float
    p50: float
    p85: float
    saturated: float
    dead: float
    hist: np.ndarray
    grad_mean: float = float("nan")
    grad_std: float = float("nan")
    grad_hist: np.ndarray | None = field(default=None, repr=False)


def activation_modules(model: nn.Module) -> dict[str, nn.Module]:
    """The activation modules of a course model, by name (``"block0"``, ``"block1"``, ...).

    Falls back to every ReLU / Tanh / Sigmoid / GELU module for other models.
    """
    blocks = getattr(model, "blocks", None)
    if blocks is not None and all(hasattr(b, "act") for b in blocks):
        return {f"block{i}": b.act for i, b in enumerate(blocks)}
    kinds = (nn.ReLU, nn.Tanh, nn.Sigmoid, nn.GELU)
    return {name: m for name, m in model.named_modules() if isinstance(m, kinds)}


def _kind(module: nn.Module) -> str:
    if isinstance(module, nn.Tanh):
        return "tanh"
    if isinstance(module, nn.Sigmoid):
        return "sigmoid"
    if isinstance(module, nn.ReLU):
        return "relu"
    return "other"


def layer_stats(a: torch.Tensor, kind: str = "other", edges: torch.Tensor | None = None,
                percentiles: bool = True) -> LayerStats:
    """Statistics of one activation tensor.

    Args:
        a: activations, (N, D) or (N, C, H, W).
        kind: ``"tanh"``, ``"sigmoid"``, ``"relu"`` or ``"other"`` (decides saturation / dead).
        edges: histogram bin edges, a 1-D tensor of B+1 evenly spaced values (None: no
            histogram).
        percentiles: also compute the 15th / 50th / 85th percentiles (NaN otherwise).
    Returns:
        A :class:`LayerStats`.
    """
    # NumPy on the tensor's own memory: each torch op costs ~20 us of dispatch on tensors
    # this small, which would make the probe slower than the training step it watches
    x = a.detach().float().numpy().reshape(-1)
    n = x.size
    if n == 0:
        nan = float("nan")
        return LayerStats(nan, nan, nan, nan, nan, 0.0, 0.0, np.zeros(0))
    mean = float(x.mean(dtype=np.float64))
    var = float(np.dot(x, x)) / n - mean * mean
    std = float(np.sqrt(max(var, 0.0) * n / max(n - 1, 1)))
    if percentiles:
        # an evenly strided subsample of at most ~1k values: exact enough, 50x cheaper
        sample = x[:: max(1, n // 1024)]
        k = [int(q * (sample.size - 1)) for q in (0.15, 0.5, 0.85)]
        p15, p50, p85 = (float(v) for v in np.partition(sample, k)[k])
    else:
        p15 = p50 = p85 = float("nan")
    if kind == "tanh":
        saturated = np.count_nonzero(np.abs(x) > 0.97) / n
    elif kind == "sigmoid":
        saturated = (np.count_nonzero(x < 0.03) + np.count_nonzero(x > 0.97)) / n
    else:
        saturated = 0.0
    dead = 0.0
    if kind == "relu" and a.dim() >= 2:
        per_unit = x.reshape(a.shape[0], a.shape[1], -1)
        dead = float(np.mean(per_unit.max(axis=(0, 2)) <= 0))
    hist = np.zeros(0)
    if edges is not None:
        hist = _hist(x, float(edges[0]), float(edges[-1]), len(edges) - 1)
    return LayerStats(mean, std, p15, p50, p85, float(saturated), dead, hist)


def _hist(x: np.ndarray, lo: float, hi: float, bins: int) -> np.ndarray:
    idx = ((x - lo) * (bins / (hi - lo))).astype(np.int64)
    np.clip(idx, 0, bins - 1, out=idx)
    return np.bincount(idx, minlength=bins)


class ActivationProbe:
    """Record activation and gradient statistics of each layer at every training step.

    Args:
        model: a network; ``modules`` defaults to :func:`activation_modules` (model).
        modules: ``{name: module}`` whose outputs to record.
        bins: histogram bins; ``hist_range``: (low, high) of the histogram, by default
            (-1, 1) for tanh, (0, 1) for sigmoid and (-3, 3) otherwise.
        grad_range: (low, high) for gradient histograms (None: no gradient histograms).
        track_grads: also record the gradient of the loss with respect to each output.
        record_eval: also record forward passes in eval mode (off: evaluation passes
            on test data do not pollute the training history).
        hist_every: compute histograms and percentiles only every this many steps (the
            other statistics every step); steps in between hold an empty histogram and NaN
            percentiles.

    Use as a context manager, or call :meth:`remove` to detach the hooks.
    ``records[name]`` is a list of :class:`LayerStats`, one per recorded step.
    """

    def __init__(self, model: nn.Module, modules: dict[str, nn.Module] | None = None, bins: int = 40,
                 hist_range: tuple[float, float] | None = None,
                 grad_range: tuple[float, float] | None = None, track_grads: bool = True,
                 record_eval: bool = False, hist_every: int = 1):
        self.model = model
        self.modules = dict(modules) if modules is not None else activation_modules(model)
        if not self.modules:
            raise ValueError("the model has no activation modules to probe")
        kinds = {_kind(m) for m in self.modules.values()}
        if hist_range is None:
            hist_range = {"tanh": (-1.0, 1.0), "sigmoid": (0.0, 1.0)}.get(next(iter(kinds)), (-3.0, 3.0)) \
                if len(kinds) == 1 else (-3.0, 3.0)
        self.edges = torch.linspace(hist_range[0], hist_range[1], bins + 1)
        self.grad_edges = None if grad_range is None else torch.linspace(grad_range[0], grad_range[1],
                                                                          bins + 1)
        self.track_grads = track_grads
        self.record_eval = record_eval
        self.enabled = True
        self.hist_every = max(1, int(hist_every))
        self._count = {name: 0 for name in self.modules}
        self.records: dict[str, list[LayerStats]] = {name: [] for name in self.modules}
        self._handles = []
        for name, module in self.modules.items():
            self._handles.append(module.register_forward_hook(self._make_hook(name, _kind(module))))

    def _make_hook(self, name: str, kind: str):
        def hook(module, inputs, output):
            if not self.enabled or (not module.training and not self.record_eval):
                return
            heavy = self._count[name] % self.hist_every == 0
            self._count[name] += 1
            st = layer_stats(output, kind, self.edges if heavy else None, percentiles=heavy)
            self.records[name].append(st)
            if self.track_grads and output.requires_grad:
                def grad_hook(g, st=st):
                    x = g.detach().float().numpy().reshape(-1)
                    n = x.size
                    if n == 0:
                        return
                    st.grad_mean = float(x.mean(dtype=np.float64))
                    var = float(np.dot(x, x)) / n - st.grad_mean**2
                    st.grad_std = float(np.sqrt(max(var, 0.0) * n / max(n - 1, 1)))
                    if self.grad_edges is not None:
                        st.grad_hist = _hist(x, float(self.grad_edges[0]),
                                             float(self.grad_edges[-1]), len(self.grad_edges) - 1)
                output.register_hook(grad_hook)
        return hook

    @property
    def names(self) -> list[str]:
        """Layer names in network order."""
        return list(self.modules)

    @property
    def steps(self) -> int:
        """Number of recorded steps (the shortest layer's count)."""
        return min(len(r) for r in self.records.values())

    def stat(self, key: str) -> np.ndarray:
        """One statistic for every step and layer: array of shape (steps, layers)."""
        if key not in STAT_KEYS:
            raise KeyError(f"unknown statistic {key!r}; choose from {STAT_KEYS}")
        t = self.steps
        return np.array([[getattr(self.records[n][s], key) for n in self.names] for s in range(t)])

    def latest(self) -> dict[str, LayerStats]:
        """The most recent :class:`LayerStats` of each layer."""
        return {n: r[-1] for n, r in self.records.items() if r}

    def histograms(self, step: int = -1) -> np.ndarray:
        """Activation histogram counts at one step (the latest step that has them when
        ``hist_every > 1``): array (layers, bins)."""
        rows = []
        for n in self.names:
            recs = self.records[n][: len(self.records[n]) + step + 1] if step < 0 else \
                self.records[n][: step + 1]
            h = next((r.hist for r in reversed(recs) if r.hist.size), None)
            rows.append(h if h is not None else np.zeros(len(self.edges) - 1))
        return np.stack(rows)

    def clear(self) -> None:
        """Forget the recorded history (hooks stay attached)."""
        for r in self.records.values():
            r.clear()

    def remove(self) -> None:
        """Detach every hook; the probe records nothing afterwards."""
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self.enabled = False

    def __enter__(self) -> ActivationProbe:
        return self

    def __exit__(self, *exc) -> None:
        self.remove()


class UpdateRatio:
    """Update-to-data ratio std(W_after - W_before) / std(W_before) for each weight matrix.

    Call :meth:`before_step` before ``optimizer.step()`` and :meth:`after_step` after it;
    ``history`` is a list of {name: ratio}. A healthy value is near 1e-3 (Karpathy).
    """

    def __init__(self, model: nn.Module):
        self.params = {n: p for n, p in model.named_parameters() if p.dim() >= 2}
        self._before: dict[str, torch.Tensor] = {}
        self.history: list[dict[str, float]] = []

    def before_step(self) -> None:
        """Remember the weights as they are now."""
        self._before = {n: p.detach().clone() for n, p in self.params.items()}

    def after_step(self) -> dict[str, float]:
        """Ratios for the step just taken; also appended to ``history``."""
        out = {}
        for n, p in self.params.items():
            w0 = self._before[n]
            out[n] = float((p.detach() - w0).std() / (w0.std() + 1e-12))
        self.history.append(out)
        return out
