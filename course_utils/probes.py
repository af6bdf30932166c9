"""Hooks that record per-layer activation and gradient statistics at every training step.

An :class:`ActivationProbe` attaches a forward hook to each activation module (by default
every ``block.act`` of a :mod:`course_utils.models` network) and a tensor hook to its output
for the gradient. Each training-mode forward pass appends one record per layer, so after
``T`` steps ``probe.stat("std")`` is a (T, L) array.

Why it is cheap: the hooks only keep a reference to the (detached) tensors, and the
statistics of many steps and layers are computed together, as a few batched reductions on
one stacked tensor, when the pending tensors reach a size limit or when a result is asked
for (``stat``, ``histograms``, ``latest``, ...). A torch call on a tensor this small costs
more in dispatch than in arithmetic, so one call for 64 steps x 4 layers instead of one per
layer per step removes most of the cost. Histograms and percentiles are computed only every
``hist_every`` steps.

``UpdateRatio`` measures Karpathy's update-to-data ratio, std(dW) / std(W), per weight matrix.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

__all__ = ["LayerStats", "ActivationProbe", "UpdateRatio", "activation_modules", "layer_stats"]

STAT_KEYS = (
    "mean",
    "std",
    "p15",
    "p50",
    "p85",
    "saturated",
    "dead",
    "grad_mean",
    "grad_std",
    "in_mean",
    "in_std",
)
_PERCENTILES = (0.15, 0.5, 0.85)
_FLUSH_ROWS = 256  # pending (step, layer) tensors before the statistics are computed
_FLUSH_BYTES = 32 << 20  # ... or pending bytes, whichever comes first


@dataclass
class LayerStats:
    """Statistics of one layer's activations (and their gradient) at one step.

    ``saturated``: fraction of values in the flat tails (|tanh| > 0.97, sigmoid outside
    [0.03, 0.97]; 0 for other activations). ``dead``: fraction of units (features or
    channels) that are zero for every sample of the batch (ReLU), else 0.
    ``hist``: counts over ``probe.edges`` (values outside are clipped into the end bins;
    empty at steps without a histogram).
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


# ---------------------------------------------------------------------------------------------
# batched statistics: each function takes R rows (one tensor of `shape` each), stacked into a
# float32 array (R, M), and returns R results. NumPy, not torch: its calls cost ~1 us against
# torch's ~10 us, and np.sort (vectorised) is ~20x faster than torch.sort here.


def _moments(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and unbiased standard deviation of each row of ``x`` (R, M), float64 (R,)."""
    m = x.shape[1]
    # einsum's row sum is ~2x faster than x.mean(1); it does not call BLAS, whose threads
    # would compete with torch for the cores
    with np.errstate(over="ignore", invalid="ignore"):
        mean = np.einsum("ij->i", x).astype(np.float64) / m
    if m < 2:
        return mean, np.zeros(len(x))
    # a diverged run has inf / NaN activations: its statistics are NaN, without warnings
    with np.errstate(over="ignore", invalid="ignore"):
        # one pass, E[x^2] - mean^2, in float32 (5x faster than float64 here) ...
        sq = np.einsum("ij,ij->i", x, x).astype(np.float64)
        var = (sq - m * mean * mean) / (m - 1)
        # ... which loses the variance where |mean| >> std: redo those rows centred
        bad = var < 1e-4 * mean * mean
        if bad.any():
            c = x[bad] - x[bad].mean(axis=1, keepdims=True)
            var[bad] = np.einsum("ij,ij->i", c, c, dtype=np.float64) / (m - 1)
        return mean, np.sqrt(np.maximum(var, 0.0))


def _saturated(x: np.ndarray, kind: str) -> np.ndarray:
    """Fraction of each row in the flat tails: |tanh| > 0.97, sigmoid outside [0.03, 0.97]."""
    if kind == "tanh":
        tail = np.abs(x) > 0.97
    elif kind == "sigmoid":
        # outside [0.03, 0.97] is the same as |x - 0.5| > 0.47
        tail = np.abs(x - 0.5) > 0.47
    else:
        return np.zeros(len(x))
    return np.add.reduce(tail, axis=1, dtype=np.int32) / x.shape[1]


def _dead(x: np.ndarray, shape: tuple[int, ...], kind: str) -> np.ndarray:
    """Fraction of units (dim 1 of ``shape``) that are <= 0 for every sample and position."""
    if kind != "relu" or len(shape) < 2:
        return np.zeros(len(x))
    per_unit = x.reshape(len(x), shape[0], shape[1], -1).max(axis=(1, 3))  # (R, units)
    return np.count_nonzero(per_unit <= 0, axis=1) / shape[1]


_TAILS = {"tanh": (-0.97, 0.97), "sigmoid": (0.03, 0.97)}


def _sorted_stats(
    s: np.ndarray, edges: np.ndarray | None, kind: str = "other"
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Statistics of rows that are sorted, by binary search, for ``s`` (R, M) float32.

    Returns:
        pct: exact 15th / 50th / 85th percentiles (R, 3);
        counts: histogram counts (R, B) over ``edges`` (B+1 increasing values; outside
            values clipped into the end bins, NaN into the last bin), or None;
        saturated: :func:`_saturated` (R,) for tanh / sigmoid, or None.
    """
    m = s.shape[1]
    pct = s[:, [int(q * (m - 1)) for q in _PERCENTILES]].astype(np.float64)
    inner = np.zeros(0, np.float32) if edges is None else edges[1:-1].astype(np.float32)
    tails = _TAILS.get(kind)
    points = inner
    if tails is not None:
        # x < lo, and x <= hi as x < the next float after hi: one search for everything
        hi = np.nextafter(np.float32(tails[1]), np.float32(np.inf))
        points = np.concatenate([inner, np.array([tails[0], hi], np.float32)])
    if len(points) == 0:
        return pct, None, None
    below = np.stack([np.searchsorted(row, points) for row in s])  # values below each point
    counts = None
    if edges is not None:
        counts = np.diff(below[:, : len(inner)], prepend=0, append=m, axis=1)
    saturated = None
    if tails is not None:
        saturated = (below[:, -2] + m - below[:, -1]) / m
    return pct, counts, saturated


def layer_stats(
    a: torch.Tensor,
    kind: str = "other",
    edges: torch.Tensor | None = None,
    percentiles: bool = True,
) -> LayerStats:
    """Statistics of one activation tensor.

    Args:
        a: activations, (N, D) or (N, C, H, W).
        kind: ``"tanh"``, ``"sigmoid"``, ``"relu"`` or ``"other"`` (decides saturation / dead).
        edges: histogram bin edges, a 1-D tensor of B+1 increasing values (None: no
            histogram).
        percentiles: also compute the 15th / 50th / 85th percentiles (NaN otherwise).
    Returns:
        A :class:`LayerStats`; the same numbers :class:`ActivationProbe` records.
    """
    x = a.detach().float().reshape(1, -1).numpy()
    if x.shape[1] == 0:
        nan = float("nan")
        return LayerStats(nan, nan, nan, nan, nan, 0.0, 0.0, np.zeros(0))
    mean, std = _moments(x)
    sat, dead = _saturated(x, kind), _dead(x, tuple(a.shape), kind)
    p15 = p50 = p85 = float("nan")
    hist = np.zeros(0)
    if percentiles or edges is not None:
        e = None if edges is None else edges.float().numpy()
        pct, counts, _ = _sorted_stats(np.sort(x, axis=1), e)
        if percentiles:
            p15, p50, p85 = pct[0].tolist()
        if counts is not None:
            hist = counts[0]
    return LayerStats(
        float(mean[0]), float(std[0]), p15, p50, p85, float(sat[0]), float(dead[0]), hist
    )


class _Table:
    """Growable (steps, layers) float64 columns, NaN where nothing was recorded."""

    def __init__(self, keys: tuple[str, ...], layers: int):
        self.layers = layers
        self.cap = 0
        self.cols = {k: np.zeros((0, layers)) for k in keys}

    def reserve(self, steps: int) -> None:
        if steps <= self.cap:
            return
        cap = max(256, 2 * self.cap, steps)
        for k, old in self.cols.items():
            new = np.full((cap, self.layers), np.nan)
            new[: self.cap] = old
            self.cols[k] = new
        self.cap = cap


class _Hists:
    """Growable (heavy steps, layers, bins) int64 histogram counts."""

    def __init__(self, layers: int, bins: int):
        self.data = np.zeros((0, layers, bins), dtype=np.int64)

    def reserve(self, n: int) -> None:
        if n <= len(self.data):
            return
        new = np.zeros((max(64, 2 * len(self.data), n), *self.data.shape[1:]), dtype=np.int64)
        new[: len(self.data)] = self.data
        self.data = new


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
        inputs: also record the mean and std of each module's *input* (for activation
            modules: the pre-activation), as the statistics ``"in_mean"`` / ``"in_std"``.
        grad_every: record the gradient statistics (and the input statistics) only every
            this many steps, NaN at the steps in between: a gradient hook is the dearest
            part of a recording.

    Use as a context manager, or call :meth:`remove` to detach the hooks.
    ``stat(key)`` gives a (steps, layers) array for any key of ``STAT_KEYS``;
    ``records[name]`` is a list of :class:`LayerStats`, one per recorded step.
    """

    def __init__(
        self,
        model: nn.Module,
        modules: dict[str, nn.Module] | None = None,
        bins: int = 40,
        hist_range: tuple[float, float] | None = None,
        grad_range: tuple[float, float] | None = None,
        track_grads: bool = True,
        record_eval: bool = False,
        hist_every: int = 1,
        inputs: bool = False,
        grad_every: int = 1,
    ):
        self.model = model
        self.modules = dict(modules) if modules is not None else activation_modules(model)
        if not self.modules:
            raise ValueError("the model has no activation modules to probe")
        self._kinds = [_kind(m) for m in self.modules.values()]
        if hist_range is None:
            kinds = set(self._kinds)
            default = {"tanh": (-1.0, 1.0), "sigmoid": (0.0, 1.0)}
            hist_range = default.get(kinds.pop(), (-3.0, 3.0)) if len(kinds) == 1 else (-3.0, 3.0)
        self.edges = torch.linspace(hist_range[0], hist_range[1], bins + 1)
        self.grad_edges = (
            None if grad_range is None else torch.linspace(grad_range[0], grad_range[1], bins + 1)
        )
        self.track_grads = track_grads
        self.record_eval = record_eval
        self.record_inputs = inputs
        self.enabled = True
        self.hist_every = max(1, int(hist_every))
        self.grad_every = max(1, int(grad_every))
        self._bins = bins
        n = len(self.modules)
        self._count = [0] * n  # forward passes recorded per layer (pending included)
        self._gen = 0  # bumped by clear(): gradients of an older generation are dropped
        self._pending: list[tuple[int, int, torch.Tensor]] = []  # (layer, step, output)
        self._pending_in: list[tuple[int, int, torch.Tensor]] = []
        self._pending_grad: list[tuple[int, int, torch.Tensor]] = []
        self._pending_bytes = 0
        self._table = _Table(STAT_KEYS, n)
        self._hists = _Hists(n, bins)
        self._grad_hists = _Hists(n, bins)
        self._records_cache: dict[str, list[LayerStats]] | None = None
        self._handles = [
            module.register_forward_hook(self._make_hook(i))
            for i, module in enumerate(self.modules.values())
        ]

    # -- recording (runs inside the forward and backward passes: keep it minimal) ----------

    def _make_hook(self, i: int):
        def hook(module, inputs, output):
            if not self.enabled or (not module.training and not self.record_eval):
                return
            step = self._count[i]
            self._count[i] = step + 1
            self._pending.append((i, step, output.detach()))
            if self.record_inputs and inputs and step % self.grad_every == 0:
                self._pending_in.append((i, step, inputs[0].detach()))
            if self.track_grads and output.requires_grad and step % self.grad_every == 0:
                node = output.grad_fn
                if node is None:
                    output.register_hook(functools.partial(self._on_grad, self._gen, i, step))
                else:
                    # a pre-hook on the node that made the output sees the same gradient
                    # as a tensor hook, for a fraction of Tensor.register_hook's cost
                    node.register_prehook(
                        functools.partial(self._on_node_grad, self._gen, i, step, output.output_nr)
                    )
            self._pending_bytes += output.numel() * output.element_size()
            if len(self._pending) >= _FLUSH_ROWS or self._pending_bytes >= _FLUSH_BYTES:
                self._flush()

        return hook

    def _on_grad(self, gen: int, i: int, step: int, grad: torch.Tensor | None) -> None:
        # returns None, so the gradient flows on unchanged
        if gen == self._gen and grad is not None:
            self._pending_grad.append((i, step, grad))

    def _on_node_grad(self, gen: int, i: int, step: int, index: int, grad_outputs: tuple) -> None:
        grad = grad_outputs[index]
        if gen == self._gen and grad is not None:
            self._pending_grad.append((i, step, grad))

    # -- the batched statistics ----------------------------------------------------------

    def _flush(self) -> None:
        """Compute the statistics of everything pending and store them."""
        self._records_cache = None
        pending, self._pending = self._pending, []
        pending_in, self._pending_in = self._pending_in, []
        pending_grad, self._pending_grad = self._pending_grad, []
        self._pending_bytes = 0
        if not (pending or pending_in or pending_grad):
            return
        self._table.reserve(max(self._count))
        cols = self._table.cols
        edges = self.edges.numpy()
        for (shape, kind), (layers, steps, x) in _groups(pending, self._kinds):
            cols["mean"][steps, layers], cols["std"][steps, layers] = _moments(x)
            cols["dead"][steps, layers] = _dead(x, shape, kind)
            heavy = steps % self.hist_every == 0
            if not heavy.all():
                light = ~heavy
                cols["saturated"][steps[light], layers[light]] = _saturated(x[light], kind)
            if heavy.any():
                # one sort of each row gives exact percentiles, histogram and saturation; x is
                # this flush's own copy, so when every row needs it, sort it in place
                lh, sh = layers[heavy], steps[heavy]
                if heavy.all():
                    x.sort(axis=1)
                    s = x
                else:
                    s = np.sort(x[heavy], axis=1)
                pct, counts, saturated = _sorted_stats(s, edges, kind)
                for j, name in enumerate(("p15", "p50", "p85")):
                    cols[name][sh, lh] = pct[:, j]
                cols["saturated"][sh, lh] = 0.0 if saturated is None else saturated
                self._store_hist(self._hists, counts, lh, sh)
        for _, (layers, steps, x) in _groups(pending_in, self._kinds):
            cols["in_mean"][steps, layers], cols["in_std"][steps, layers] = _moments(x)
        for _, (layers, steps, x) in _groups(pending_grad, self._kinds):
            cols["grad_mean"][steps, layers], cols["grad_std"][steps, layers] = _moments(x)
            heavy = steps % self.hist_every == 0
            if self.grad_edges is not None and heavy.any():
                s = np.sort(x[heavy], axis=1)
                _, counts, _ = _sorted_stats(s, self.grad_edges.numpy())
                self._store_hist(self._grad_hists, counts, layers[heavy], steps[heavy])

    def _store_hist(self, store: _Hists, counts: np.ndarray, layers, steps) -> None:
        slots = steps // self.hist_every
        store.reserve(int(slots.max()) + 1)
        store.data[slots, layers] = counts

    # -- results -------------------------------------------------------------------------

    @property
    def names(self) -> list[str]:
        """Layer names in network order."""
        return list(self.modules)

    @property
    def steps(self) -> int:
        """Number of recorded steps (the smallest count over the layers)."""
        return min(self._count)

    def stat(self, key: str) -> np.ndarray:
        """One statistic for every step and layer: float array of shape (steps, layers).

        Keys: ``mean``, ``std``, ``p15``, ``p50``, ``p85`` (percentiles: NaN at steps
        without a histogram), ``saturated``, ``dead`` (fractions in [0, 1]), ``grad_mean``,
        ``grad_std`` (NaN until the backward pass ran), ``in_mean``, ``in_std`` (NaN unless
        ``inputs=True``).
        """
        if key not in STAT_KEYS:
            raise KeyError(f"unknown statistic {key!r}; choose from {STAT_KEYS}")
        self._flush()
        t = self.steps
        if t == 0:
            return np.zeros((0, len(self.modules)))
        return self._table.cols[key][:t].copy()

    def latest(self) -> dict[str, LayerStats]:
        """The most recent :class:`LayerStats` of each layer (``hist`` is empty unless that
        step computed a histogram)."""
        self._flush()
        return {
            n: self._record(i, self._count[i] - 1)
            for i, n in enumerate(self.names)
            if self._count[i]
        }

    def _record(self, i: int, step: int) -> LayerStats:
        c = self._table.cols
        heavy = step % self.hist_every == 0
        slot = step // self.hist_every
        heavy = heavy and slot < len(self._hists.data)
        hist = self._hists.data[slot, i].copy() if heavy else np.zeros(0)
        grad_hist = None
        if heavy and self.grad_edges is not None and slot < len(self._grad_hists.data):
            grad_hist = self._grad_hists.data[slot, i].copy()
        return LayerStats(
            *(
                float(c[k][step, i])
                for k in ("mean", "std", "p15", "p50", "p85", "saturated", "dead")
            ),
            hist=hist,
            grad_mean=float(c["grad_mean"][step, i]),
            grad_std=float(c["grad_std"][step, i]),
            grad_hist=grad_hist,
        )

    @property
    def records(self) -> dict[str, list[LayerStats]]:
        """``{name: [LayerStats per step]}``, built on demand from the stored statistics."""
        self._flush()
        if self._records_cache is None:
            self._records_cache = {
                n: [self._record(i, s) for s in range(self._count[i])]
                for i, n in enumerate(self.names)
            }
        return self._records_cache

    def histograms(self, step: int = -1) -> np.ndarray:
        """Activation histogram counts at one step (the latest step at or before it that has
        one when ``hist_every > 1``): int array (layers, bins)."""
        return self._hist_at(self._hists, step)

    def grad_histograms(self, step: int = -1) -> np.ndarray:
        """Gradient histogram counts over ``grad_edges`` like :meth:`histograms`:
        (layers, bins); zeros when ``grad_range`` was not given."""
        return self._hist_at(self._grad_hists, step)

    def _hist_at(self, store: _Hists, step: int) -> np.ndarray:
        self._flush()
        out = np.zeros((len(self.modules), self._bins), dtype=np.int64)
        for i, n in enumerate(self._count):
            s = n + step if step < 0 else min(step, n - 1)
            slot = s // self.hist_every
            if s >= 0 and slot < len(store.data):
                out[i] = store.data[slot, i]
        return out

    def histograms_over_time(self) -> tuple[np.ndarray, np.ndarray]:
        """Every stored activation histogram, for a layer-by-step ('colorful dimension') plot.

        Returns:
            steps: int array (H,), the steps that have a histogram (multiples of hist_every).
            counts: int array (H, layers, bins).
        """
        self._flush()
        h = (self.steps + self.hist_every - 1) // self.hist_every
        h = min(h, len(self._hists.data))
        return np.arange(h) * self.hist_every, self._hists.data[:h].copy()

    def clear(self) -> None:
        """Forget the recorded history, pending statistics included (hooks stay attached)."""
        self._gen += 1
        self._pending, self._pending_in, self._pending_grad = [], [], []
        self._pending_bytes = 0
        self._count = [0] * len(self.modules)
        self._table = _Table(STAT_KEYS, len(self.modules))
        self._hists = _Hists(len(self.modules), self._bins)
        self._grad_hists = _Hists(len(self.modules), self._bins)
        self._records_cache = None

    def remove(self) -> None:
        """Detach every hook; the probe records nothing afterwards (what it recorded stays)."""
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self.enabled = False
        self._flush()

    def __enter__(self) -> ActivationProbe:
        return self

    def __exit__(self, *exc) -> None:
        self.remove()


def _groups(pending: list[tuple[int, int, torch.Tensor]], kinds: list[str]):
    """Group pending (layer, step, tensor) entries that can be stacked into one array.

    Yields ``(shape, kind), (layers, steps, x)``: ``layers`` and ``steps`` int arrays (R,),
    ``x`` a float32 array (R, numel) of the tensors, each flattened.
    """
    groups: dict[tuple, list[tuple[int, int, torch.Tensor]]] = {}
    for entry in pending:
        t = entry[2]
        groups.setdefault((tuple(t.shape), t.dtype, kinds[entry[0]]), []).append(entry)
    with torch.no_grad():
        for (shape, _dtype, kind), entries in groups.items():
            if math.prod(shape) == 0:
                continue
            layers = np.fromiter((e[0] for e in entries), dtype=np.int64, count=len(entries))
            steps = np.fromiter((e[1] for e in entries), dtype=np.int64, count=len(entries))
            x = torch.stack([e[2] for e in entries]).reshape(len(entries), -1).float().numpy()
            yield (shape, kind), (layers, steps, x)


class UpdateRatio:
    """Update-to-data ratio std(W_after - W_before) / std(W_before) for each weight matrix.

    Call :meth:`before_step` before ``optimizer.step()`` and :meth:`after_step` after it;
    ``history`` is a list of {name: ratio}. A healthy value is near 1e-3 (Karpathy).
    The weights are copied into one flat buffer and the per-matrix standard deviations come
    from segment sums, so a measurement is a few calls however many matrices there are.
    """

    def __init__(self, model: nn.Module):
        self.params = {n: p for n, p in model.named_parameters() if p.dim() >= 2}
        self._names = list(self.params)
        sizes = np.array([p.numel() for p in self.params.values()])
        self._starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        self._sizes = sizes.astype(np.float64)
        self._before: np.ndarray | None = None
        self.history: list[dict[str, float]] = []

    def _flat(self) -> np.ndarray:
        with torch.no_grad():
            return torch.cat([p.detach().reshape(-1) for p in self.params.values()]).float().numpy()

    def _std(self, x: np.ndarray) -> np.ndarray:
        # unbiased std per weight matrix from the segment sums of x and x^2, in float64
        s1 = np.add.reduceat(x, self._starts, dtype=np.float64)
        s2 = np.add.reduceat(x * x, self._starts, dtype=np.float64)
        n = self._sizes
        var = (s2 - s1 * s1 / n) / np.maximum(n - 1, 1)
        return np.sqrt(np.maximum(var, 0.0))

    def before_step(self) -> None:
        """Remember the weights as they are now."""
        self._before = self._flat()

    def after_step(self) -> dict[str, float]:
        """Ratios for the step just taken; also appended to ``history``."""
        if self._before is None:
            raise RuntimeError("call before_step() before optimizer.step(), then after_step()")
        w0 = self._before
        ratio = self._std(self._flat() - w0) / (self._std(w0) + 1e-12)
        out = dict(zip(self._names, ratio.tolist()))
        self.history.append(out)
        return out
