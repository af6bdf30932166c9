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

None of these functions calls torch.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import numpy as np

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


def _as_grad(grad_out, x: np.ndarray) -> np.ndarray:
    g = np.asarray(grad_out, dtype=_ACC)
    if g.shape != x.shape:
        raise ValueError(
            f"grad_out has shape {_list(g.shape)} but the input x has shape {_list(x.shape)}"
        )
    return g


def _list(shape) -> str:
    """Format a shape the way torch's C++ errors do: ``[2, 4]``."""
    return "[" + ", ".join(str(int(s)) for s in shape) + "]"


def _torch_size(shape) -> str:
    """Format a shape the way ``str(torch.Size)`` does: ``torch.Size([2, 4])``."""
    return f"torch.Size({_list(shape)})"


def _verify_batch_size(size: Sequence[int], shown: str) -> None:
    """torch's ``_verify_batch_size``: more than one value per channel in training."""
    prod = int(size[0]) if len(size) else 1
    for s in size[2:]:
        prod *= int(s)
    if prod == 1:
        raise ValueError(
            f"Expected more than 1 value per channel when training, got input size {shown}"
        )


def _verify_spatial_size(size: Sequence[int]) -> None:
    """torch's ``_verify_spatial_size``: more than one spatial element per instance."""
    prod = 1
    for s in size[2:]:
        prod *= int(s)
    if prod == 1:
        raise ValueError(
            "Expected more than 1 spatial element when training, got input size "
            f"{_torch_size(size)}"
        )


def _check_numel(name: str, expected: int, p: np.ndarray) -> None:
    if p.size != expected:
        raise RuntimeError(f"{name} should contain {expected} elements not {p.size}")


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


def _mean_centered_var(xd: np.ndarray, axes: tuple[int, ...]):
    """Two-pass statistics: ``mean``, ``x - mean`` and the biased variance (keepdims)."""
    mean = xd.mean(axis=axes, keepdims=True)
    centered = xd - mean
    var = np.square(centered).mean(axis=axes, keepdims=True)
    return mean, centered, var


def _normalize_backward(dxhat, xhat, inv_std, axes):
    """Gradient through ``xhat = (x - mean(x)) / sqrt(var(x) + eps)`` over ``axes``.

    ``dx = inv_std * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat))``.
    """
    return inv_std * (
        dxhat
        - dxhat.mean(axis=axes, keepdims=True)
        - xhat * (dxhat * xhat).mean(axis=axes, keepdims=True)
    )


def _normalized_shape(normalized_shape) -> tuple[int, ...]:
    if isinstance(normalized_shape, numbers.Integral):
        return (int(normalized_shape),)
    return tuple(int(s) for s in normalized_shape)


def _check_trailing_shape(x, ns, weight, bias, *, rms: bool) -> None:
    """torch's checks for layer_norm / rms_norm, in torch's order and wording."""
    if len(ns) == 0:
        raise RuntimeError(
            "Expected normalized_shape to be at least 1-dimensional, i.e., containing at "
            "least one element, but got normalized_shape = []"
        )
    for name, p in (("weight", weight), ("bias", bias)):
        if p is not None and p.shape != ns:
            raise RuntimeError(
                f"Expected {name} to be of same shape as normalized_shape, but got {name} "
                f"of shape {_list(p.shape)} and normalized_shape = {_list(ns)}"
            )
    if rms and x.ndim < len(ns):
        raise ValueError(f"Input tensor must have at least {len(ns)} dimensions, but got {x.ndim}")
    if x.ndim < len(ns) or x.shape[x.ndim - len(ns) :] != ns:
        dims = ", ".join(str(s) for s in ns)
        expected = f"[*{dims}]" if rms else f"[*, {dims}]"
        raise RuntimeError(
            f"Given normalized_shape={_list(ns)}, expected input with shape {expected}, "
            f"but got input of size{_list(x.shape)}"
        )


def _check_bn_eps(eps: float, training: bool) -> None:
    if training and eps <= 0.0:
        raise ValueError(f"batch_norm eps must be positive during training, but got {eps}")
    if eps < 0.0:
        raise ValueError(f"batch_norm eps must be non-negative, but got {eps}")


def _check_bn_input(x: np.ndarray, training: bool, running_mean) -> None:
    """Rank and batch-size checks of ``F.batch_norm``."""
    if x.ndim < 2:
        if training:
            hi = max(x.ndim, 1)
            raise IndexError(
                f"Dimension out of range (expected to be in range of [{-hi}, {hi - 1}], but got 1)"
            )
        if running_mean is None:
            raise RuntimeError("running_mean must be defined in evaluation mode")
        raise RuntimeError(
            f"running_mean should contain 0 elements not {np.asarray(running_mean).size}"
        )
    if training:
        _verify_batch_size(x.shape, _torch_size(x.shape))


def _check_gn_input(x: np.ndarray, num_groups: int, weight, bias) -> None:
    """Checks of ``F.group_norm``, in torch's order and wording."""
    if x.ndim < 2:
        raise RuntimeError(f"Expected at least 2 dimensions for input tensor but received {x.ndim}")
    n, c = x.shape[:2]
    size = [n * c // num_groups, num_groups] + list(x.shape[2:])
    _verify_batch_size(size, _list(size))
    if c % num_groups != 0:
        raise RuntimeError(
            "Expected number of channels in input to be divisible by num_groups, but got "
            f"input of shape {_list(x.shape)} and num_groups={num_groups}"
        )
    for name, p in (("weight", weight), ("bias", bias)):
        if p is not None and (p.ndim != 1 or p.size != c):
            raise RuntimeError(
                f"Expected {name} to be a vector of size equal to the number of channels in "
                f"input, but got {name} of shape {_list(p.shape)} and input of shape "
                f"{_list(x.shape)}"
            )


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
    _check_bn_input(x, training, running_mean)
    _check_bn_eps(eps, training)
    if x.size == 0:
        return x.copy()
    c = x.shape[1]
    for name, p in (("running_mean", running_mean), ("running_var", running_var)):
        if p is not None:
            _check_numel(name, c, np.asarray(p))
        elif not training:
            raise RuntimeError(f"{name} must be defined in evaluation mode")
    w, b = _as_param(weight), _as_param(bias)
    for name, p in (("weight", w), ("bias", b)):
        if p is not None:
            _check_numel(name, c, p)
    if (running_mean is None) != (running_var is None):
        raise ValueError("running_mean and running_var must either both be None or neither be None")

    shape = _channel_shape(x.ndim, c)
    axes = (0,) + tuple(range(2, x.ndim))
    xd = x.astype(_ACC)
    if training:
        if running_mean is not None:
            _check_inplace("running_mean", running_mean)
            _check_inplace("running_var", running_var)
        mean, centered, var = _mean_centered_var(xd, axes)
        if running_mean is not None:
            n = x.size // c
            _update_running(running_mean, mean, momentum)
            _update_running(running_var, var * (n / (n - 1)), momentum)
    else:
        mean = np.asarray(running_mean, dtype=_ACC).reshape(shape)
        var = np.asarray(running_var, dtype=_ACC).reshape(shape)
        centered = xd - mean
    y = centered * (1.0 / np.sqrt(var + eps))
    if w is not None:
        y = y * w.reshape(shape)
    if b is not None:
        y = y + b.reshape(shape)
    return y.astype(x.dtype, copy=False)


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
    ns = _normalized_shape(normalized_shape)
    w, b = _as_param(weight), _as_param(bias)
    _check_trailing_shape(x, ns, w, b, rms=False)
    if x.size == 0:
        return x.copy()
    axes = tuple(range(x.ndim - len(ns), x.ndim))
    _, centered, var = _mean_centered_var(x.astype(_ACC), axes)
    y = centered * (1.0 / np.sqrt(var + eps))
    if w is not None:
        y = y * w
    if b is not None:
        y = y + b
    return y.astype(x.dtype, copy=False)


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
    _check_gn_input(x, num_groups, w, b)
    if x.size == 0:
        return x.copy()
    n, c = x.shape[:2]
    grouped = x.astype(_ACC).reshape(n, num_groups, -1)
    _, centered, var = _mean_centered_var(grouped, (2,))
    y = (centered * (1.0 / np.sqrt(var + eps))).reshape(x.shape)
    shape = _channel_shape(x.ndim, c)
    if w is not None:
        y = y * w.reshape(shape)
    if b is not None:
        y = y + b.reshape(shape)
    return y.astype(x.dtype, copy=False)


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
    if use_input_stats:
        _verify_spatial_size(x.shape)
    if not use_input_stats and (running_mean is None or running_var is None):
        raise RuntimeError(
            "Expected running_mean and running_var to be defined when use_input_stats is false"
        )
    if x.ndim < 2:
        raise IndexError(
            f"Dimension out of range (expected to be in range of [{-max(x.ndim, 1)}, "
            f"{max(x.ndim, 1) - 1}], but got 1)"
        )
    if x.size == 0:
        return x.copy()
    n, c = x.shape[:2]
    w, b = _as_param(weight), _as_param(bias)
    for name, p in (
        ("running_mean", running_mean),
        ("running_var", running_var),
        ("weight", w),
        ("bias", b),
    ):
        if p is not None and np.asarray(p).size != c:
            # torch repeats the per-channel vectors once per sample before checking
            raise RuntimeError(
                f"{name} should contain {n * c} elements not {n * np.asarray(p).size}"
            )
    if (running_mean is None) != (running_var is None):
        raise ValueError("running_mean and running_var must either both be None or neither be None")

    shape = _channel_shape(x.ndim, c)
    axes = tuple(range(2, x.ndim))
    xd = x.astype(_ACC)
    if use_input_stats:
        if running_mean is not None:
            _check_inplace("running_mean", running_mean)
            _check_inplace("running_var", running_var)
        mean, centered, var = _mean_centered_var(xd, axes)
        if running_mean is not None:
            m = x[0, 0].size
            _update_running(running_mean, mean.mean(axis=0), momentum)
            _update_running(running_var, (var * (m / (m - 1))).mean(axis=0), momentum)
    else:
        var = np.asarray(running_var, dtype=_ACC).reshape(shape)
        centered = xd - np.asarray(running_mean, dtype=_ACC).reshape(shape)
    y = centered * (1.0 / np.sqrt(var + eps))
    if w is not None:
        y = y * w.reshape(shape)
    if b is not None:
        y = y + b.reshape(shape)
    return y.astype(x.dtype, copy=False)


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
    ns = _normalized_shape(normalized_shape)
    w = _as_param(weight)
    _check_trailing_shape(x, ns, w, None, rms=True)
    if x.size == 0:
        return x.copy()
    eps = _rms_eps(x.dtype, eps)
    axes = tuple(range(x.ndim - len(ns), x.ndim))
    xd = x.astype(_ACC)
    y = xd * (1.0 / np.sqrt(np.square(xd).mean(axis=axes, keepdims=True) + eps))
    if w is not None:
        y = y * w
    return y.astype(x.dtype, copy=False)


# --------------------------------------------------------------------------------------
# backward (training-mode statistics)
# --------------------------------------------------------------------------------------


def _empty_grads(x, param_shape, n_params):
    zeros = np.zeros(param_shape, dtype=x.dtype)
    return (np.zeros_like(x),) + tuple(zeros.copy() for _ in range(n_params))


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
    x = _as_input(x)
    g = _as_grad(grad_out, x)
    _check_bn_input(x, True, None)
    w = _as_param(weight)
    c = x.shape[1]
    if w is not None:
        _check_numel("weight", c, w)
    if x.size == 0:
        return _empty_grads(x, (c,), 2)
    shape = _channel_shape(x.ndim, c)
    axes = (0,) + tuple(range(2, x.ndim))
    _, centered, var = _mean_centered_var(x.astype(_ACC), axes)
    inv_std = 1.0 / np.sqrt(var + eps)
    xhat = centered * inv_std
    grad_bias = g.sum(axis=axes)
    grad_weight = (g * xhat).sum(axis=axes)
    dxhat = g if w is None else g * w.reshape(shape)
    grad_x = _normalize_backward(dxhat, xhat, inv_std, axes)
    return tuple(a.astype(x.dtype, copy=False) for a in (grad_x, grad_weight, grad_bias))


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
    x = _as_input(x)
    g = _as_grad(grad_out, x)
    _check_bn_input(x, True, None)
    w = _as_param(weight)
    c = x.shape[1]
    if w is not None:
        _check_numel("weight", c, w)
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
    x = _as_input(x)
    g = _as_grad(grad_out, x)
    ns = _normalized_shape(normalized_shape)
    w = _as_param(weight)
    _check_trailing_shape(x, ns, w, None, rms=False)
    if x.size == 0:
        return _empty_grads(x, ns, 2)
    k = len(ns)
    axes = tuple(range(x.ndim - k, x.ndim))
    lead = tuple(range(x.ndim - k))
    _, centered, var = _mean_centered_var(x.astype(_ACC), axes)
    inv_std = 1.0 / np.sqrt(var + eps)
    xhat = centered * inv_std
    grad_bias = g.sum(axis=lead)
    grad_weight = (g * xhat).sum(axis=lead)
    dxhat = g if w is None else g * w
    grad_x = _normalize_backward(dxhat, xhat, inv_std, axes)
    return tuple(a.astype(x.dtype, copy=False) for a in (grad_x, grad_weight, grad_bias))


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
    x = _as_input(x)
    g = _as_grad(grad_out, x)
    w = _as_param(weight)
    _check_gn_input(x, num_groups, w, None)
    n, c = x.shape[:2]
    if x.size == 0:
        return _empty_grads(x, (c,), 2)
    shape = _channel_shape(x.ndim, c)
    red = (0,) + tuple(range(2, x.ndim))
    grouped = x.astype(_ACC).reshape(n, num_groups, -1)
    _, centered, var = _mean_centered_var(grouped, (2,))
    inv_std = 1.0 / np.sqrt(var + eps)
    xhat_g = centered * inv_std
    xhat = xhat_g.reshape(x.shape)
    grad_bias = g.sum(axis=red)
    grad_weight = (g * xhat).sum(axis=red)
    dxhat = g if w is None else g * w.reshape(shape)
    grad_x = _normalize_backward(dxhat.reshape(n, num_groups, -1), xhat_g, inv_std, (2,))
    grad_x = grad_x.reshape(x.shape)
    return tuple(a.astype(x.dtype, copy=False) for a in (grad_x, grad_weight, grad_bias))


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
    x = _as_input(x)
    g = _as_grad(grad_out, x)
    _verify_spatial_size(x.shape)
    w = _as_param(weight)
    if x.ndim < 2:
        raise IndexError("Dimension out of range (expected to be in range of [-1, 0], but got 1)")
    n, c = x.shape[:2]
    if w is not None and w.size != c:
        raise RuntimeError(f"weight should contain {n * c} elements not {n * w.size}")
    if x.size == 0:
        return _empty_grads(x, (c,), 2)
    shape = _channel_shape(x.ndim, c)
    axes = tuple(range(2, x.ndim))
    red = (0,) + axes
    _, centered, var = _mean_centered_var(x.astype(_ACC), axes)
    inv_std = 1.0 / np.sqrt(var + eps)
    xhat = centered * inv_std
    grad_bias = g.sum(axis=red)
    grad_weight = (g * xhat).sum(axis=red)
    dxhat = g if w is None else g * w.reshape(shape)
    grad_x = _normalize_backward(dxhat, xhat, inv_std, axes)
    return tuple(a.astype(x.dtype, copy=False) for a in (grad_x, grad_weight, grad_bias))


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
    x = _as_input(x)
    g = _as_grad(grad_out, x)
    ns = _normalized_shape(normalized_shape)
    w = _as_param(weight)
    _check_trailing_shape(x, ns, w, None, rms=True)
    if x.size == 0:
        return _empty_grads(x, ns, 1)
    eps = _rms_eps(x.dtype, eps)
    k = len(ns)
    axes = tuple(range(x.ndim - k, x.ndim))
    lead = tuple(range(x.ndim - k))
    xd = x.astype(_ACC)
    r = 1.0 / np.sqrt(np.square(xd).mean(axis=axes, keepdims=True) + eps)
    grad_weight = (g * xd * r).sum(axis=lead)
    gw = g if w is None else g * w
    grad_x = r * gw - xd * r**3 * (gw * xd).mean(axis=axes, keepdims=True)
    return grad_x.astype(x.dtype, copy=False), grad_weight.astype(x.dtype, copy=False)
