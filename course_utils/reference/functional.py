"""NumPy reference implementations of the normalization layers, forward and backward.

The forward functions mirror ``torch.nn.functional`` (names, argument order, defaults,
the way running statistics are updated, and the kind and wording of the errors torch
raises). The ``*_backward`` functions give the gradients for training-mode statistics
(the statistics are computed from ``x`` itself), in closed form.

Shapes use ``N`` for the batch, ``C`` for channels and ``*`` for any number of trailing
(spatial) dimensions: ``(N, C)``, ``(N, C, L)`` and ``(N, C, H, W)`` are all fine.

Conventions
-----------
* ``x`` may be any array-like; it goes through ``np.asarray``. Floating inputs
  (float16, float32, float64) keep their dtype in the outputs; any other input is
  treated as float64.
* Every computation runs in float64 and is cast back at the end. This is what makes
  float32 results agree with torch's (which accumulates carefully) to about 1e-6.
* Variances are computed in two passes, ``mean((x - mean(x))**2)``, never as
  ``mean(x**2) - mean(x)**2``, which cancels catastrophically when ``|mean| >> std``.
* Running statistics (``running_mean``, ``running_var``) are NumPy arrays updated in
  place, as torch updates its buffers in place.

Which entries share a statistic, and the formulas, come from :mod:`.stats`; the argument
checks (torch's messages) from :mod:`.checks`, shared with the torch reference modules.
None of these functions calls torch.
"""

from __future__ import annotations

import numpy as np

from . import checks
from .stats import StatLayout, normalize, normalize_backward, rms_normalize, stat_layout

__all__ = [
    "batch_norm",
    "layer_norm",
    "group_norm",
    "instance_norm",
    "rms_norm",
    "batch_norm_backward",
    "batch_norm_backward_graph",
    "layer_norm_backward",
    "group_norm_backward",
    "instance_norm_backward",
    "rms_norm_backward",
]

_ACC = np.float64  # accumulation / computation type

# --------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------


def _as_input(x) -> np.ndarray:
    """``np.asarray(x)``; non-float (or extended precision) input becomes float64."""
    x = np.asarray(x)
    if x.dtype not in (np.float16, np.float32, np.float64):
        x = x.astype(np.float64)
    return x


def _as_param(p) -> np.ndarray | None:
    return None if p is None else np.asarray(p, dtype=_ACC)


def _numel(p) -> int | None:
    return None if p is None else int(np.asarray(p).size)


def _shape(p) -> tuple[int, ...] | None:
    return None if p is None else p.shape


def _check_inplace(name: str, buf) -> None:
    if not isinstance(buf, np.ndarray):
        raise TypeError(
            f"{name} must be a numpy.ndarray so that it can be updated in place, "
            f"got {type(buf).__name__}"
        )
    if not buf.flags.writeable:
        raise ValueError(f"{name} is read-only and cannot be updated in place")


def _update_running(buf: np.ndarray, batch_stat: np.ndarray, momentum: float) -> None:
    """``buf <- (1 - momentum) * buf + momentum * batch_stat``, in place (torch's formula)."""
    old = buf.astype(_ACC).reshape(-1)
    new = momentum * batch_stat.reshape(-1) + (1.0 - momentum) * old
    buf[...] = new.reshape(buf.shape)


def _channel_shape(ndim: int, c: int) -> tuple[int, ...]:
    """Broadcast shape ``(1, C, 1, ..., 1)`` for per-channel vectors."""
    return (1, c) + (1,) * (ndim - 2)


def _channel_norm(x, kind, running_mean, running_var, use_input_stats, momentum, eps):
    """Batch or instance norm of ``x`` (``kind``) in float64, without the affine part.

    With the input's statistics, ``running_mean`` / ``running_var`` (when given) move
    towards them in place: the mean over samples of each statistic's mean and of its
    unbiased variance (batch norm has one statistic per channel, instance norm one per
    sample and channel). Otherwise the running statistics normalize.
    """
    xd = x.astype(_ACC)
    if not use_input_stats:
        shape = _channel_shape(x.ndim, x.shape[1])
        mean = np.asarray(running_mean, dtype=_ACC).reshape(shape)
        var = np.asarray(running_var, dtype=_ACC).reshape(shape)
        return (xd - mean) * (1.0 / np.sqrt(var + eps))
    if running_mean is not None:
        _check_inplace("running_mean", running_mean)
        _check_inplace("running_var", running_var)
    layout = stat_layout(kind, x.shape)
    y, _, stats = normalize(xd, layout, eps)
    if running_mean is not None:
        count = int(np.prod([layout.view[d] for d in layout.dims]))  # values per statistic
        unbiased = stats.var * (count / (count - 1))
        _update_running(running_mean, stats.mean.mean(axis=0), momentum)
        _update_running(running_var, unbiased.mean(axis=0), momentum)
    return y


def _affine(y: np.ndarray, w, b, shape) -> np.ndarray:
    """``y * w + b`` with either part optional, the parameters viewed as ``shape``."""
    if w is not None:
        y = y * w.reshape(shape)
    if b is not None:
        y = y + b.reshape(shape)
    return y


# --------------------------------------------------------------------------------------
# forward
# --------------------------------------------------------------------------------------


def batch_norm(
    x,
    running_mean,
    running_var,
    weight=None,
    bias=None,
    training=False,
    momentum=0.1,
    eps=1e-5,
):
    """Batch normalization, like ``torch.nn.functional.batch_norm``.

    Each channel ``c`` is normalized with statistics over the batch and all spatial
    positions: ``y = (x - mean) / sqrt(var + eps) * weight + bias``.

    Args:
        x: input of shape ``(N, C, *)``, e.g. ``(N, C)``, ``(N, C, L)``, ``(N, C, H, W)``.
        running_mean, running_var: ``(C,)`` NumPy arrays or ``None``. In training mode
            they are updated in place (when given):
            ``running = (1 - momentum) * running + momentum * batch_stat``, where the
            variance stored is the unbiased one (factor ``n / (n - 1)``,
            ``n = N * prod(*)``). In evaluation mode they are used to normalize.
        weight, bias: ``(C,)`` or ``None`` (meaning 1 and 0).
        training: use batch statistics (``True``) or the running ones (``False``).
        momentum: weight of the new batch statistic in the running average.
        eps: added to the variance inside the square root.

    Returns:
        ``y``, same shape and dtype as ``x``.

    Raises:
        ValueError: one value per channel in training mode, or ``eps`` not positive.
        RuntimeError: missing running statistics in evaluation mode, or a parameter
            with the wrong number of elements (torch's messages).
    """
    x = _as_input(x)
    checks.check_batch_norm_input(x.shape, training, _numel(running_mean))
    checks.check_eps(eps, training)
    if x.size == 0:
        return x.copy()
    c = x.shape[1]
    w, b = _as_param(weight), _as_param(bias)
    vectors = {"running_mean": running_mean, "running_var": running_var, "weight": w, "bias": b}
    checks.check_channel_vectors(c, {k: _numel(v) for k, v in vectors.items()}, training)
    y = _channel_norm(x, "batch", running_mean, running_var, training, momentum, eps)
    return _affine(y, w, b, _channel_shape(x.ndim, c)).astype(x.dtype, copy=False)


def layer_norm(x, normalized_shape, weight=None, bias=None, eps=1e-5):
    """Layer normalization, like ``torch.nn.functional.layer_norm``.

    Normalizes over the trailing ``len(normalized_shape)`` dimensions of each sample
    with their mean and biased variance: ``y = (x - mean) / sqrt(var + eps) * w + b``.

    Args:
        x: input of shape ``(*, *normalized_shape)``.
        normalized_shape: int or sequence of ints, the trailing shape of ``x``.
        weight, bias: arrays of shape ``normalized_shape`` or ``None``.
        eps: added to the variance inside the square root.

    Returns:
        ``y``, same shape and dtype as ``x``.

    Raises:
        RuntimeError: ``normalized_shape`` empty, or ``x``/``weight``/``bias`` not
            matching it (torch's messages).
    """
    x = _as_input(x)
    ns = checks.as_normalized_shape(normalized_shape)
    w, b = _as_param(weight), _as_param(bias)
    checks.check_trailing_shape(x.shape, ns, _shape(w), _shape(b), rms=False)
    if x.size == 0:
        return x.copy()
    y, _, _ = normalize(x.astype(_ACC), stat_layout("layer", x.shape, normalized_ndim=len(ns)), eps)
    return _affine(y.reshape(x.shape), w, b, ns).astype(x.dtype, copy=False)


def group_norm(x, num_groups, weight=None, bias=None, eps=1e-5):
    """Group normalization, like ``torch.nn.functional.group_norm``.

    The ``C`` channels of each sample are split into ``num_groups`` groups of
    ``C // num_groups`` consecutive channels; each group is normalized over its channels
    and spatial positions. ``weight`` and ``bias`` are per channel.

    Args:
        x: input of shape ``(N, C, *)``; ``C`` must be divisible by ``num_groups``.
        num_groups: number of groups ``G``.
        weight, bias: ``(C,)`` or ``None``.
        eps: added to the variance inside the square root.

    Returns:
        ``y``, same shape and dtype as ``x``.

    Raises:
        RuntimeError: fewer than 2 dimensions, ``C`` not divisible by ``num_groups``,
            parameters of the wrong shape (torch's messages).
        ValueError: only one value per group (torch's batch-size check).
    """
    x = _as_input(x)
    w, b = _as_param(weight), _as_param(bias)
    checks.check_group_norm_input(x.shape, num_groups, _shape(w), _shape(b))
    if x.size == 0:
        return x.copy()
    y, _, _ = normalize(x.astype(_ACC), stat_layout("group", x.shape, num_groups), eps)
    shape = _channel_shape(x.ndim, x.shape[1])
    return _affine(y.reshape(x.shape), w, b, shape).astype(x.dtype, copy=False)


def instance_norm(
    x,
    running_mean=None,
    running_var=None,
    weight=None,
    bias=None,
    use_input_stats=True,
    momentum=0.1,
    eps=1e-5,
):
    """Instance normalization, like ``torch.nn.functional.instance_norm``.

    Each channel of each sample is normalized over its spatial positions.

    Args:
        x: input of shape ``(N, C, *)`` with ``prod(*) > 1`` when ``use_input_stats``.
        running_mean, running_var: ``(C,)`` NumPy arrays or ``None``. With
            ``use_input_stats`` they are updated in place with the batch mean of the
            per-instance means and of the per-instance unbiased variances; otherwise
            they are used to normalize.
        weight, bias: ``(C,)`` or ``None``.
        use_input_stats: normalize with each instance's own statistics.
        momentum: weight of the new statistic in the running average.
        eps: added to the variance inside the square root.

    Returns:
        ``y``, same shape and dtype as ``x``.

    Raises:
        ValueError: only one spatial element while using input statistics, or only one
            of the running statistics given.
        RuntimeError: running statistics missing when ``use_input_stats=False``, or
            wrong sizes (torch checks ``N * C`` elements, as it repeats them per sample).
    """
    x = _as_input(x)
    have_stats = running_mean is not None and running_var is not None
    checks.check_instance_norm_input(x.shape, use_input_stats, have_stats)
    if x.size == 0:
        return x.copy()
    n, c = x.shape[:2]
    w, b = _as_param(weight), _as_param(bias)
    vectors = {"running_mean": running_mean, "running_var": running_var, "weight": w, "bias": b}
    # torch repeats the per-channel vectors once per sample before checking their sizes
    checks.check_channel_vectors(c, {k: _numel(v) for k, v in vectors.items()}, repeat=n)
    y = _channel_norm(x, "instance", running_mean, running_var, use_input_stats, momentum, eps)
    return _affine(y, w, b, _channel_shape(x.ndim, c)).astype(x.dtype, copy=False)


def _rms_eps(dtype, eps):
    if eps is not None:
        return eps
    return float(np.finfo(np.float64 if dtype == np.float64 else np.float32).eps)


def rms_norm(x, normalized_shape, weight=None, eps=None):
    """Root-mean-square normalization, like ``torch.nn.functional.rms_norm``.

    ``y = x / sqrt(mean(x**2) + eps) * weight`` over the trailing
    ``len(normalized_shape)`` dimensions; no centring and no bias.

    Args:
        x: input of shape ``(*, *normalized_shape)``.
        normalized_shape: int or sequence of ints, the trailing shape of ``x``.
        weight: array of shape ``normalized_shape`` or ``None``.
        eps: ``None`` means the machine epsilon of the computation type, as in torch:
            ``np.finfo(np.float32).eps`` for float16 and float32 input,
            ``np.finfo(np.float64).eps`` for float64 input.

    Returns:
        ``y``, same shape and dtype as ``x``.

    Raises:
        RuntimeError / ValueError: shapes that do not match (torch's messages).
    """
    x = _as_input(x)
    ns = checks.as_normalized_shape(normalized_shape)
    w = _as_param(weight)
    checks.check_trailing_shape(x.shape, ns, _shape(w), None, rms=True)
    if x.size == 0:
        return x.copy()
    layout = stat_layout("rms", x.shape, normalized_ndim=len(ns))
    y, _ = rms_normalize(x.astype(_ACC), layout, _rms_eps(x.dtype, eps))
    return _affine(y.reshape(x.shape), w, None, ns).astype(x.dtype, copy=False)


# --------------------------------------------------------------------------------------
# backward (training-mode statistics)
# --------------------------------------------------------------------------------------


def _backward_inputs(grad_out, x, weight):
    """What every ``*_backward`` starts from: ``x`` (as the forward saw it), ``grad_out``
    in float64 with ``x``'s shape, and the weight in float64 (or ``None``)."""
    x = _as_input(x)
    g = np.asarray(grad_out, dtype=_ACC)
    if g.shape != x.shape:
        raise ValueError(
            f"grad_out has shape {checks.shape_text(g.shape)} but the input x has shape "
            f"{checks.shape_text(x.shape)}"
        )
    return x, g, _as_param(weight)


def _empty_grads(x, param_shape, n_params):
    zeros = np.zeros(param_shape, dtype=x.dtype)
    return (np.zeros_like(x),) + tuple(zeros.copy() for _ in range(n_params))


def _norm_backward(g, x, w, layout: StatLayout, param_shape, eps):
    """``(grad_x, grad_weight, grad_bias)`` of ``normalize(x, layout) * w + b``.

    With ``xhat`` the normalized input and ``dxhat = g * w``, everything in the layout's
    view: ``grad_bias = sum(g)`` and ``grad_weight = sum(g * xhat)`` over the dims along
    which the parameters are constant (reshaped to ``param_shape``), and ``grad_x`` from
    :func:`~.stats.normalize_backward`.
    """
    if x.size == 0:
        return _empty_grads(x, param_shape, 2)
    xhat, inv_std, _ = normalize(x.astype(_ACC), layout, eps)
    gv = g.reshape(layout.view)
    dims = layout.param_sum_dims
    grad_bias = gv.sum(axis=dims).reshape(param_shape)
    grad_weight = (gv * xhat).sum(axis=dims).reshape(param_shape)
    dxhat = gv if w is None else gv * w.reshape(layout.param_shape)
    grad_x = normalize_backward(dxhat, xhat, inv_std, layout.dims).reshape(x.shape)
    return tuple(a.astype(x.dtype, copy=False) for a in (grad_x, grad_weight, grad_bias))


def batch_norm_backward(grad_out, x, weight=None, eps=1e-5):
    """Closed-form gradients of ``batch_norm(x, None, None, weight, bias, training=True)``.

    With ``xhat = (x - mean) / sqrt(var + eps)`` per channel over ``n = N * prod(*)``
    values and ``g = grad_out * weight``::

        grad_x      = (g - mean(g) - xhat * mean(g * xhat)) / sqrt(var + eps)
        grad_weight = sum(grad_out * xhat)      # over N and *
        grad_bias   = sum(grad_out)

    Args:
        grad_out: gradient of the loss w.r.t. the output, shape ``(N, C, *)``.
        x: the forward input, shape ``(N, C, *)``.
        weight: ``(C,)`` or ``None`` (ones).
        eps: the forward's eps.

    Returns:
        ``(grad_x, grad_weight, grad_bias)`` with shapes ``(N, C, *)``, ``(C,)``,
        ``(C,)``, in ``x``'s dtype. ``grad_weight``/``grad_bias`` are what they would be
        if the forward had a weight and a bias.
    """
    x, g, w = _backward_inputs(grad_out, x, weight)
    c = _check_batch_norm_backward(x, w)
    return _norm_backward(g, x, w, stat_layout("batch", x.shape), (c,), eps)


def _check_batch_norm_backward(x, w) -> int:
    checks.check_batch_norm_input(x.shape, True, None)
    c = x.shape[1]
    checks.check_channel_vectors(c, {"weight": _numel(w)})
    return c


def batch_norm_backward_graph(grad_out, x, weight=None, eps=1e-5):
    """Batch-norm gradients by staged backpropagation through the computational graph.

    Same result as :func:`batch_norm_backward`, computed node by node (CS231n style).
    Forward graph, per channel, over the ``n = N * prod(*)`` values::

        mu      = mean(x)                 # 1
        xmu     = x - mu                  # 2
        sq      = xmu ** 2                # 3
        var     = mean(sq)                # 4
        sqrtvar = sqrt(var + eps)         # 5
        ivar    = 1 / sqrtvar             # 6
        xhat    = xmu * ivar              # 7
        out     = weight * xhat + bias    # 8

    The backward pass walks the nodes in reverse, summing the two paths into ``xmu``
    (via ``xhat`` and via ``var``) and into ``x`` (directly and via ``mu``).

    Args:
        grad_out: ``(N, C, *)``.
        x: ``(N, C, *)``.
        weight: ``(C,)`` or ``None`` (ones).
        eps: the forward's eps.

    Returns:
        ``(grad_x, grad_weight, grad_bias)``: ``(N, C, *)``, ``(C,)``, ``(C,)``.
    """
    x, g, w = _backward_inputs(grad_out, x, weight)
    c = _check_batch_norm_backward(x, w)
    if x.size == 0:
        return _empty_grads(x, (c,), 2)
    shape = _channel_shape(x.ndim, c)
    axes = (0,) + tuple(range(2, x.ndim))
    n = x.size // c
    gamma = np.ones(shape) if w is None else w.reshape(shape)
    xd = x.astype(_ACC)

    # forward, keeping every intermediate
    mu = xd.mean(axis=axes, keepdims=True)  # 1
    xmu = xd - mu  # 2
    sq = xmu**2  # 3
    var = sq.mean(axis=axes, keepdims=True)  # 4
    sqrtvar = np.sqrt(var + eps)  # 5
    ivar = 1.0 / sqrtvar  # 6
    xhat = xmu * ivar  # 7

    # backward, node by node
    dbias = g.sum(axis=axes)  # 8: out = gammax + bias
    dgammax = g
    dgamma = (dgammax * xhat).sum(axis=axes)  # 8: gammax = gamma * xhat
    dxhat = dgammax * gamma
    divar = (dxhat * xmu).sum(axis=axes, keepdims=True)  # 7: xhat = xmu * ivar
    dxmu1 = dxhat * ivar
    dsqrtvar = -1.0 / sqrtvar**2 * divar  # 6: ivar = 1 / sqrtvar
    dvar = 0.5 / np.sqrt(var + eps) * dsqrtvar  # 5: sqrtvar = sqrt(var + eps)
    dsq = np.ones_like(sq) / n * dvar  # 4: var = mean(sq)
    dxmu2 = 2.0 * xmu * dsq  # 3: sq = xmu ** 2
    dx1 = dxmu1 + dxmu2  # 2: xmu = x - mu
    dmu = -dx1.sum(axis=axes, keepdims=True)
    dx2 = np.ones_like(xd) / n * dmu  # 1: mu = mean(x)
    dx = dx1 + dx2
    return tuple(a.astype(x.dtype, copy=False) for a in (dx, dgamma, dbias))


def layer_norm_backward(grad_out, x, normalized_shape, weight=None, eps=1e-5):
    """Gradients of ``layer_norm(x, normalized_shape, weight, bias, eps)``.

    Args:
        grad_out: ``(*, *normalized_shape)``.
        x: ``(*, *normalized_shape)``.
        normalized_shape: int or sequence of ints.
        weight: array of shape ``normalized_shape`` or ``None`` (ones).
        eps: the forward's eps.

    Returns:
        ``(grad_x, grad_weight, grad_bias)``: ``x.shape``, ``normalized_shape``,
        ``normalized_shape``.
    """
    x, g, w = _backward_inputs(grad_out, x, weight)
    ns = checks.as_normalized_shape(normalized_shape)
    checks.check_trailing_shape(x.shape, ns, _shape(w), None, rms=False)
    layout = stat_layout("layer", x.shape, normalized_ndim=len(ns))
    return _norm_backward(g, x, w, layout, ns, eps)


def group_norm_backward(grad_out, x, num_groups, weight=None, eps=1e-5):
    """Gradients of ``group_norm(x, num_groups, weight, bias, eps)``.

    Args:
        grad_out: ``(N, C, *)``.
        x: ``(N, C, *)``.
        num_groups: ``G``, dividing ``C``.
        weight: ``(C,)`` or ``None`` (ones).
        eps: the forward's eps.

    Returns:
        ``(grad_x, grad_weight, grad_bias)``: ``(N, C, *)``, ``(C,)``, ``(C,)``.
    """
    x, g, w = _backward_inputs(grad_out, x, weight)
    checks.check_group_norm_input(x.shape, num_groups, _shape(w), None)
    layout = stat_layout("group", x.shape, num_groups)
    return _norm_backward(g, x, w, layout, (x.shape[1],), eps)


def instance_norm_backward(grad_out, x, weight=None, eps=1e-5):
    """Gradients of ``instance_norm(x, weight=weight, bias=bias, eps=eps)`` (input stats).

    Args:
        grad_out: ``(N, C, *)``.
        x: ``(N, C, *)`` with ``prod(*) > 1``.
        weight: ``(C,)`` or ``None`` (ones).
        eps: the forward's eps.

    Returns:
        ``(grad_x, grad_weight, grad_bias)``: ``(N, C, *)``, ``(C,)``, ``(C,)``.
    """
    x, g, w = _backward_inputs(grad_out, x, weight)
    checks.check_instance_norm_input(x.shape, True, False)
    n, c = x.shape[:2]
    checks.check_channel_vectors(c, {"weight": _numel(w)}, repeat=n)
    return _norm_backward(g, x, w, stat_layout("instance", x.shape), (c,), eps)


def rms_norm_backward(grad_out, x, normalized_shape, weight=None, eps=None):
    """Gradients of ``rms_norm(x, normalized_shape, weight, eps)``.

    With ``r = 1 / sqrt(mean(x**2) + eps)`` over the normalized dims and
    ``g = grad_out * weight``::

        grad_x      = r * g - x * r**3 * mean(g * x)
        grad_weight = sum(grad_out * x * r)     # over the leading dims

    Args:
        grad_out: ``(*, *normalized_shape)``.
        x: ``(*, *normalized_shape)``.
        normalized_shape: int or sequence of ints.
        weight: array of shape ``normalized_shape`` or ``None`` (ones).
        eps: as in :func:`rms_norm` (``None``: machine epsilon of the computation type).

    Returns:
        ``(grad_x, grad_weight)``: ``x.shape`` and ``normalized_shape``.
    """
    x, g, w = _backward_inputs(grad_out, x, weight)
    ns = checks.as_normalized_shape(normalized_shape)
    checks.check_trailing_shape(x.shape, ns, _shape(w), None, rms=True)
    if x.size == 0:
        return _empty_grads(x, ns, 1)
    layout = stat_layout("rms", x.shape, normalized_ndim=len(ns))
    xv, gv = x.astype(_ACC).reshape(layout.view), g.reshape(layout.view)
    _, r = rms_normalize(xv, layout, _rms_eps(x.dtype, eps))
    grad_weight = (gv * xv * r).sum(axis=0).reshape(ns)
    gw = gv if w is None else gv * w.reshape(layout.param_shape)
    grad_x = (r * gw - xv * r**3 * (gw * xv).mean(axis=1, keepdims=True)).reshape(x.shape)
    return grad_x.astype(x.dtype, copy=False), grad_weight.astype(x.dtype, copy=False)
