"""Normalization on torch tensors from primitive operations, with closed-form backward passes.

The functions :func:`batch_norm`, :func:`layer_norm`, :func:`group_norm`,
:func:`instance_norm` and :func:`rms_norm` take the arguments of their
``torch.nn.functional`` namesakes, raise the same errors (:mod:`.checks`) and compute the
same results, from reductions (``mean``, ``sum``, ``linalg.vector_norm`` for sums of
squares, matrix-vector products for weighted sums), ``rsqrt`` and elementwise arithmetic:
torch's fused normalization kernels are never called. :mod:`.modules` wraps them in
``nn.Module`` classes, as ``torch.nn`` wraps ``torch.nn.functional``.

With the input's own statistics each is a ``torch.autograd.Function``
(:class:`ChannelNormFunction`, :class:`LayerNormFunction`, :class:`RMSNormFunction`) whose
backward is the closed-form gradient (the formulas of :mod:`.functional` and
:func:`.stats.normalize_backward`) rather than autograd through the forward's operations:
several times fewer passes over memory. Its first derivatives are exact; differentiating
twice (``create_graph=True``) raises an error. Normalization with running statistics (eval
mode) is one affine map, left to autograd.

Numerics: statistics are computed in two passes (mean, then the mean of the squared
deviations) and, in training, the output as ``(x - mean) * scale + bias``, which keeps
float32 accurate even when ``|mean| >> std``; the backward likewise works with
``x - mean``. With running statistics, batch norm folds them into a single
``x * scale + shift``, as torch does. float16 / bfloat16 inputs are computed in float32 and
cast back, as torch does on CPU.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

from . import checks
from .stats import StatLayout, stat_layout

__all__ = [
    "batch_norm",
    "layer_norm",
    "group_norm",
    "instance_norm",
    "rms_norm",
    "ChannelNormFunction",
    "LayerNormFunction",
    "RMSNormFunction",
    "update_running",
]

_REDUCED = (torch.float16, torch.bfloat16)

# --------------------------------------------------------------------------------------
# functional building blocks (torch tensors, primitive ops only)
# --------------------------------------------------------------------------------------


def _opmath(x: Tensor) -> Tensor:
    """float16 / bfloat16 are computed in float32 (torch's ``opmath`` type)."""
    return x.float() if x.dtype in _REDUCED else x


def _check_mixed_dtype(input: Tensor, *params: Tensor | None) -> None:
    """torch's CPU rule: parameters share the input's dtype, or the input is
    float16/bfloat16 and every parameter is float32."""
    defined = [p for p in params if p is not None]
    if not defined or input.device.type != "cpu" or defined[0].dtype == input.dtype:
        return
    if any(p.dtype != torch.float32 for p in defined):
        raise RuntimeError("mixed dtype (CPU): expect parameter to have scalar type of Float")
    if input.dtype not in _REDUCED:
        raise RuntimeError("mixed dtype (CPU): all inputs must share same datatype.")


def _channel_view(p: Tensor | None, ndim: int) -> Tensor | None:
    """``(C,)`` -> ``(1, C, 1, ..., 1)`` for broadcasting against ``(N, C, *)``."""
    return None if p is None else p.reshape((1, -1) + (1,) * (ndim - 2))


def _affine(
    y: Tensor, w: Tensor | None, b: Tensor | None, inplace: bool = False, fused: bool = False
) -> Tensor:
    """``y * w + b`` with either part optional (``w``, ``b`` already broadcastable).

    ``inplace`` overwrites ``y``, a temporary of ours. ``fused`` uses one
    ``torch.addcmul`` instead of a multiplication and an addition: faster when ``w``
    and ``b`` vary along the last dimension (LayerNorm's per-column parameters), slower
    when both are constant along it (per-channel parameters of ``(N, C, H, W)`` input),
    where torch's vectorized CPU loop takes one broadcast operand but not two.
    """
    if w is None and b is None:
        return y
    if w is None:
        return y.add_(b) if inplace else y + b
    if b is None:
        return y.mul_(w) if inplace else y * w
    if fused:
        return torch.addcmul(b, y, w, out=y) if inplace else torch.addcmul(b, y, w)
    return y.mul_(w).add_(b) if inplace else (y * w).add_(b)


def _empty_output(input: Tensor, w: Tensor | None, b: Tensor | None) -> Tensor:
    """Output for an input with no elements: nothing to normalize, but the result is a
    new tensor connected to ``weight`` and ``bias`` (whose gradients are then zeros)."""
    return _affine(_opmath(input).clone(), w, b).to(input.dtype)


# --------------------------------------------------------------------------------------
# normalization with the input's own statistics: forward and closed-form backward
# --------------------------------------------------------------------------------------
#
# Autograd through the forward's reductions and elementwise operations would record a
# node per operation, and its backward would make a full-size pass per node. The
# gradient has a closed form instead (the one ``course_utils.reference.functional``
# derives): over each group of ``n`` values normalized together,
#
#     xhat = (x - mean) * rstd,   rstd = 1 / sqrt(var + eps),   g = grad_out * weight
#     grad_x      = rstd * (g - mean(g) - xhat * mean(g * xhat))
#     grad_weight = sum(grad_out * xhat),   grad_bias = sum(grad_out)
#
# with ``grad_weight`` / ``grad_bias`` summed over everything but the parameter's own
# dims. The ``torch.autograd.Function`` classes below compute exactly that, each in a
# handful of passes over memory.
#
# Cost model (CPU): every pass over a full-size tensor costs about the same, except
# that a *new* full-size tensor costs two or three passes more (fresh memory from the
# OS is zeroed page by page on first touch); on small inputs each operation's fixed
# cost (a few microseconds) dominates instead. So: as few new full-size tensors as
# possible (the forward allocates only its output, the backward only ``grad_x``),
# in-place operations on them, and few operations overall. Like torch's own kernels,
# the forward saves its input and the small ``mean`` / ``rstd``, not ``x - mean``;
# the backward recomputes ``x - mean`` into the buffer that becomes ``grad_x``.
#
# Numerics: ``x - mean`` is always formed before it is scaled or squared (the two-pass
# variance, and the backward's ``sum(grad_out * (x - mean))``), never expanded into
# ``x * a - mean * a``, whose two terms cancel in float32 when ``|mean| >> std``.
#
# Double backward is not supported: the backward is made of in-place operations on
# tensors autograd does not track, so its result cannot be differentiated again. It
# raises when a graph of it is asked for (``create_graph=True``), rather than return
# gradients that would silently treat it as a constant. First-order gradients are
# exact (``gradcheck``).


def _first_order_only(backward):
    """Decorator for the ``backward`` of the Functions below: refuse ``create_graph``."""

    @functools.wraps(backward)
    def wrapper(ctx, *grads):
        if torch.is_grad_enabled():  # the engine enables grad mode iff create_graph=True
            raise RuntimeError(
                "double backward (create_graph=True) through the normalization layers of "
                "course_utils.reference.modules is not supported: their backward is "
                "written for first-order gradients only. Use the torch.nn layer for "
                "higher-order gradients."
            )
        return backward(ctx, *grads)

    return wrapper


class _NoGraph:
    """Stands in for autograd's ``ctx`` when no graph is recorded: nothing is saved."""

    def save_for_backward(self, *tensors):
        pass

    def mark_non_differentiable(self, *tensors):
        pass


def _run(function, *args):
    """``function.apply(*args)``, or, when autograd will record nothing (``no_grad``,
    or no input requires grad), just its forward computation: autograd.Function's
    bookkeeping costs more than the arithmetic on small inputs."""
    if torch.is_grad_enabled() and any(isinstance(a, Tensor) and a.requires_grad for a in args):
        return function.apply(*args)
    return function.forward(_NoGraph(), *args)


def _numel(x: Tensor, dims) -> int:
    n = 1
    for d in dims:
        n *= x.size(d)
    return n


def _numel_or_none(p: Tensor | None) -> int | None:
    return None if p is None else p.numel()


def _shape(p: Tensor | None) -> tuple[int, ...] | None:
    return None if p is None else tuple(p.shape)


def _as_param(p: Tensor | None, shape, dtype: torch.dtype) -> Tensor | None:
    """``p`` viewed as ``shape`` (broadcastable to the input) in the computation dtype."""
    if p is None:
        return None
    if p.shape != shape:
        p = p.reshape(shape)
    return p if p.dtype == dtype else p.to(dtype)


def _mean_of_squares(t: Tensor, dims: list[int]) -> Tensor:
    """``(t * t).mean(dims, keepdim=True)``, in one read without a temporary where possible.

    ``torch.linalg.vector_norm`` over the trailing dims is a single fast pass with no
    full-size temporary; over a leading dim (batch norm's ``N``) torch's CPU kernel is
    several times slower than a ``sum``, so that dim is summed after the squaring.
    """
    trailing = []
    d = t.dim() - 1
    while d in dims:
        trailing.append(d)
        d -= 1
    if _numel(t, trailing) == 1:  # (N, C) batch norm: the statistics' dim is the leading one
        return (t * t).mean(dims, keepdim=True)
    sumsq = torch.linalg.vector_norm(t, 2, trailing, keepdim=True).square_()
    if len(trailing) < len(dims):
        sumsq = sumsq.sum([d for d in dims if d not in trailing], keepdim=True)
    return sumsq.mul_(1.0 / _numel(t, dims))


def _innermost_varies(shape, param_shape) -> bool:
    """Whether the parameters vary along the innermost non-trivial dim of ``shape``:
    then ``_affine(..., fused=True)`` is the faster form."""
    inner = [d for d, s in enumerate(shape) if s > 1]
    return bool(inner) and param_shape[inner[-1]] > 1


def _channel_norm_forward(x, w, b, dims, eps):
    """``y = (x - mean) * (rstd * w) + b`` with statistics over ``dims`` of ``x``.

    ``w`` and ``b`` are broadcastable to ``x`` and constant along the statistics' dims,
    except group norm's channels-within-a-group (``rstd * w`` then varies per channel).
    Returns ``y``, ``mean``, the biased ``var`` and ``rstd`` (all keepdim).
    """
    mean = x.mean(dims, keepdim=True)
    y = x - mean  # the output's only full-size buffer; centred values for now
    var = _mean_of_squares(y, dims)  # second pass, over the centred values: stable
    rstd = (var + eps).rsqrt_()
    # the per-channel factors are combined before they touch the full-size tensor
    scale = rstd if w is None else rstd * w
    fused = b is not None and _innermost_varies(y.shape, scale.shape)
    return _affine(y, scale, b, inplace=True, fused=fused), mean, var, rstd


class ChannelNormFunction(torch.autograd.Function):
    """Batch norm, instance norm and group norm with the input's own statistics.

    ``layout``: a :class:`~.stats.StatLayout` (batch, instance or group): the input is
    viewed as ``layout.view``, statistics are taken over ``layout.dims`` of that view, and
    ``weight`` / ``bias`` are viewed as ``layout.param_shape``; ``layout.group_dim`` is
    group norm's dim 2, a statistics dim along which the parameters vary. Returns ``y``
    and the batch ``mean`` and biased ``var`` (for the running statistics; not
    differentiable).
    """

    @staticmethod
    def forward(ctx, x, weight, bias, layout: StatLayout, eps):
        xv = x.reshape(layout.view)
        w = _as_param(weight, layout.param_shape, x.dtype)
        b = _as_param(bias, layout.param_shape, x.dtype)
        y, mean, var, rstd = _channel_norm_forward(xv, w, b, layout.dims, eps)
        ctx.save_for_backward(xv, mean, rstd, w)
        ctx.layout = layout
        ctx.x_shape = x.shape
        ctx.mark_non_differentiable(mean, var)
        return y.reshape(x.shape), mean, var

    @staticmethod
    @_first_order_only
    def backward(ctx, grad_y, _grad_mean, _grad_var):
        xv, mean, rstd, w = ctx.saved_tensors
        layout: StatLayout = ctx.layout
        dims, group_dim = layout.dims, layout.group_dim
        go = grad_y.reshape(layout.view)
        # sums over the dims along which the parameters are constant: per channel, and
        # per sample as well when the statistics are (instance norm, group norm)
        inner = [d for d in dims if d != group_dim]
        per_sample = 0 not in dims
        sum_go = go.sum(inner, keepdim=True)
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[2]:
            grad_b = (sum_go.sum(0) if per_sample else sum_go).view(-1)
        if not (ctx.needs_input_grad[0] or ctx.needs_input_grad[1]):
            return grad_x, grad_w, grad_b, None, None
        buf = xv - mean  # the one new full-size tensor: centred x now, grad_x at the end
        sum_go_xhat = buf.mul_(go).sum(inner, keepdim=True).mul_(rstd)
        if ctx.needs_input_grad[1]:
            grad_w = (sum_go_xhat.sum(0) if per_sample else sum_go_xhat).view(-1)
        if ctx.needs_input_grad[0]:
            # sum(g) and sum(g * xhat) over each group, g = grad_out * weight
            sum_g, sum_g_xhat = sum_go, sum_go_xhat
            if w is not None:
                sum_g, sum_g_xhat = sum_g * w, sum_g_xhat * w
            if group_dim is not None:
                sum_g = sum_g.sum(group_dim, keepdim=True)
                sum_g_xhat = sum_g_xhat.sum(group_dim, keepdim=True)
            # grad_x = rstd * (g - mean(g) - xhat * mean(g * xhat))
            #        = k1 * grad_out + k2 * (x - mean) + k3, with k1 = rstd * weight
            c = rstd * (-1.0 / _numel(xv, dims))
            k2 = (c * rstd).mul_(sum_g_xhat)
            k3 = c.mul_(sum_g)
            k1 = rstd if w is None else rstd * w
            # (x - mean) * k2 + k3, recomputed into buf, then + k1 * grad_out
            grad_x = torch.sub(xv, mean, out=buf)
            fused = _innermost_varies(xv.shape, k2.shape)
            grad_x = _affine(grad_x, k2, k3, inplace=True, fused=fused).addcmul_(go, k1)
            grad_x = grad_x.reshape(ctx.x_shape)
        return grad_x, grad_w, grad_b, None, None


def _layer_norm_forward(x2, w, b, eps):
    """Layer norm of the rows of ``x2``; returns ``y``, ``mean`` and ``rstd`` (per row)."""
    mean = x2.mean(1, keepdim=True)
    y = x2 - mean  # the output's only full-size buffer; centred values for now
    rstd = (_mean_of_squares(y, [1]) + eps).rsqrt_()  # second pass: stable
    # a per-row factor, then the per-column parameters: one in-place pass each
    return _affine(y.mul_(rstd), w, b, inplace=True, fused=True), mean, rstd


class LayerNormFunction(torch.autograd.Function):
    """Layer norm: statistics per row of the ``(rows, d)`` view (``d`` values are
    normalized together), ``weight`` / ``bias`` per column.

    The parameters vary *within* each row, unlike batch norm's, so ``g = grad_out *
    weight`` does not factor out of the row sums; those are matrix-vector products
    instead (``grad_out @ weight``), which read ``grad_out`` once and allocate nothing.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, d, eps):
        x2 = x.reshape(-1, d)
        w = _as_param(weight, (d,), x.dtype)
        b = _as_param(bias, (d,), x.dtype)
        y, mean, rstd = _layer_norm_forward(x2, w, b, eps)
        ctx.save_for_backward(x2, mean, rstd, w)
        ctx.x_shape, ctx.weight_shape = x.shape, None if weight is None else weight.shape
        return y.reshape(x.shape)

    @staticmethod
    @_first_order_only
    def backward(ctx, grad_y):
        x2, mean, rstd, w = ctx.saved_tensors
        x_shape, p_shape = ctx.x_shape, ctx.weight_shape
        d = x2.size(1)
        go = grad_y.reshape(x2.shape)
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[2]:
            grad_b = go.sum(0).view(p_shape)
        if not (ctx.needs_input_grad[0] or ctx.needs_input_grad[1]):
            return grad_x, grad_w, grad_b, None, None
        buf = x2 - mean  # the one new full-size tensor: centred x now, grad_x at the end
        go_xc = buf.mul_(go)  # grad_out * (x - mean)
        if ctx.needs_input_grad[1]:
            # sum over the rows of grad_out * xhat = (grad_out * (x - mean))^T @ rstd
            grad_w = go_xc.t().mv(rstd.view(-1)).view(p_shape)
        if ctx.needs_input_grad[0]:
            # per row: -mean(g) and -mean(g * (x - mean)), g = grad_out * weight
            if w is None:
                k3 = go.sum(1, keepdim=True).mul_(-1.0 / d)
                k2 = go_xc.sum(1, keepdim=True).mul_(-1.0 / d)
            else:
                w_col = (w * (-1.0 / d)).unsqueeze(1)
                k3, k2 = go @ w_col, go_xc @ w_col
            # grad_x = rstd * (g - mean(g) - xhat * mean(g * xhat))
            #        = rstd * (g + k2 * rstd**2 * (x - mean) + k3)
            k2 = k2.mul_(rstd).mul_(rstd)
            grad_x = torch.sub(x2, mean, out=buf).mul_(k2).add_(k3)
            grad_x = grad_x.add_(go) if w is None else grad_x.addcmul_(go, w)
            grad_x = grad_x.mul_(rstd).reshape(x_shape)
        return grad_x, grad_w, grad_b, None, None


def _rms_norm_forward(x2, w, eps, round_to):
    """RMS norm of the rows of ``x2``; returns ``y`` and ``rstd`` (per row).

    ``round_to``: float16/bfloat16 input is computed in float32 and, as torch does,
    rounded to the input's dtype before the weight is applied (and again after).
    """
    rstd = (_mean_of_squares(x2, [1]) + eps).rsqrt_()
    y = x2 * rstd
    if round_to is not None:
        y = y.to(round_to).to(x2.dtype)
    return (y if w is None else y.mul_(w)), rstd


class RMSNormFunction(torch.autograd.Function):
    """RMS norm: ``y = x * rstd * weight`` per row of the ``(rows, d)`` view, with
    ``rstd = 1 / sqrt(mean(x ** 2) + eps)`` and ``weight`` per column. The gradient is
    layer norm's without the centring: ``grad_x = rstd * (g - xhat * mean(g * xhat))``
    with ``xhat = x * rstd``."""

    @staticmethod
    def forward(ctx, x, weight, d, eps, round_to):
        x2 = x.reshape(-1, d)
        w = _as_param(weight, (d,), x.dtype)
        y, rstd = _rms_norm_forward(x2, w, eps, round_to)
        ctx.save_for_backward(x2, rstd, w)
        ctx.x_shape, ctx.weight_shape = x.shape, None if weight is None else weight.shape
        return y.reshape(x.shape)

    @staticmethod
    @_first_order_only
    def backward(ctx, grad_y):
        x2, rstd, w = ctx.saved_tensors
        x_shape, p_shape = ctx.x_shape, ctx.weight_shape
        d = x2.size(1)
        go = grad_y.reshape(x2.shape)
        grad_x = grad_w = None
        buf = x2 * go  # the one new full-size tensor: grad_out * x now, grad_x at the end
        if ctx.needs_input_grad[1]:
            grad_w = buf.t().mv(rstd.view(-1)).view(p_shape)  # sum(grad_out * xhat)
        if ctx.needs_input_grad[0]:
            # k = -rstd**3 * mean(g * x) per row, g = grad_out * weight
            if w is None:
                k = buf.sum(1, keepdim=True).mul_(-1.0 / d)
            else:
                k = buf @ (w * (-1.0 / d)).unsqueeze(1)
            k = k.mul_(rstd.pow(3))
            # grad_x = rstd * g - x * rstd**3 * mean(g * x)
            grad_x = torch.mul(go, rstd, out=buf)
            if w is not None:
                grad_x = grad_x.mul_(w)
            grad_x = grad_x.addcmul_(x2, k).reshape(x_shape)
        return grad_x, grad_w, None, None, None


def _running_stats_affine(xf, running_mean, running_var, w, b, eps):
    """Normalization with fixed statistics, folded into one map ``x * scale + shift``
    (what torch does in eval mode: a single pass over ``x``)."""
    ndim = xf.dim()
    scale = torch.rsqrt(_channel_view(running_var, ndim).to(xf.dtype) + eps)
    if w is not None:
        scale = scale * w
    shift = -_channel_view(running_mean, ndim).to(xf.dtype) * scale
    if b is not None:
        shift = shift + b
    return _affine(xf, scale, shift)


def update_running(buf: Tensor, stat: Tensor, momentum: float, correction: float = 1.0) -> None:
    """``buf <- momentum * correction * stat + (1 - momentum) * buf``, in place.

    ``stat`` is a non-differentiable output of the normalization, so autograd records
    nothing; ``correction`` turns a biased variance into the unbiased one.
    """
    stat = stat.reshape(buf.shape)
    if stat.dtype == buf.dtype:
        buf.mul_(1.0 - momentum).add_(stat, alpha=momentum * correction)
    else:  # float16 / bfloat16 buffers: combine in the statistics' float32, round once
        buf.copy_(stat * (momentum * correction) + (1.0 - momentum) * buf)


def batch_norm(
    input: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    training: bool = False,
    momentum: float = 0.1,
    eps: float = 1e-5,
) -> Tensor:
    """``F.batch_norm`` from primitives; ``input`` is ``(N, C, *)``."""
    checks.check_batch_norm_input(input.shape, training, _numel_or_none(running_mean))
    checks.check_eps(eps, training)
    ndim = input.dim()
    w, b = _channel_view(weight, ndim), _channel_view(bias, ndim)
    if input.numel() == 0:
        return _empty_output(input, w, b)
    c = input.size(1)
    vectors = {"running_mean": running_mean, "running_var": running_var}
    vectors.update(weight=weight, bias=bias)
    checks.check_channel_vectors(c, {k: _numel_or_none(v) for k, v in vectors.items()}, training)
    _check_mixed_dtype(input, weight, bias, running_mean, running_var)

    xf = _opmath(input)
    if not training:
        return _running_stats_affine(xf, running_mean, running_var, w, b, eps).to(input.dtype)
    layout = stat_layout("batch", input.shape)
    y, mean, var = _run(ChannelNormFunction, xf, weight, bias, layout, eps)
    if running_mean is not None:
        n = input.numel() // c
        update_running(running_mean, mean, momentum)
        update_running(running_var, var, momentum, n / (n - 1))
    return y.to(input.dtype)


def layer_norm(
    input: Tensor,
    normalized_shape,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    eps: float = 1e-5,
) -> Tensor:
    """``F.layer_norm`` from primitives; normalizes over the trailing dims."""
    ns = checks.as_normalized_shape(normalized_shape)
    checks.check_trailing_shape(input.shape, ns, _shape(weight), _shape(bias), rms=False)
    _check_mixed_dtype(input, weight, bias)
    xf = _opmath(input)
    if input.numel() == 0:
        return _empty_output(input, weight, bias)
    d = 1
    for s in ns:
        d *= s
    return _run(LayerNormFunction, xf, weight, bias, d, eps).to(input.dtype)


def group_norm(
    input: Tensor,
    num_groups: int,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    eps: float = 1e-5,
) -> Tensor:
    """``F.group_norm`` from primitives; ``input`` is ``(N, C, *)``."""
    checks.check_group_norm_input(input.shape, num_groups, _shape(weight), _shape(bias))
    _check_mixed_dtype(input, weight, bias)
    ndim = input.dim()
    w, b = _channel_view(weight, ndim), _channel_view(bias, ndim)
    xf = _opmath(input)
    if input.numel() == 0:
        return _empty_output(input, w, b)
    # statistics per (sample, group) over dims 2 and 3 of the (N, G, C // G, *) view;
    # the parameters vary along dim 2, the channels of a group
    layout = stat_layout("group", input.shape, num_groups)
    y, _, _ = _run(ChannelNormFunction, xf, weight, bias, layout, eps)
    return y.to(input.dtype)


def instance_norm(
    input: Tensor,
    running_mean: Tensor | None = None,
    running_var: Tensor | None = None,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    use_input_stats: bool = True,
    momentum: float = 0.1,
    eps: float = 1e-5,
) -> Tensor:
    """``F.instance_norm`` from primitives; ``input`` is ``(N, C, *)``."""
    have_stats = running_mean is not None and running_var is not None
    checks.check_instance_norm_input(input.shape, use_input_stats, have_stats)
    ndim = input.dim()
    w, b = _channel_view(weight, ndim), _channel_view(bias, ndim)
    if input.numel() == 0:
        return _empty_output(input, w, b)
    n, c = input.shape[:2]
    vectors = {"running_mean": running_mean, "running_var": running_var}
    vectors.update(weight=weight, bias=bias)
    # torch repeats the per-channel vectors once per sample before checking their sizes
    checks.check_channel_vectors(c, {k: _numel_or_none(v) for k, v in vectors.items()}, repeat=n)
    _check_mixed_dtype(input, weight, bias)

    xf = _opmath(input)
    if not use_input_stats:
        return _running_stats_affine(xf, running_mean, running_var, w, b, eps).to(input.dtype)
    # statistics per (sample, channel), over the spatial dims
    layout = stat_layout("instance", input.shape)
    y, mean, var = _run(ChannelNormFunction, xf, weight, bias, layout, eps)
    if running_mean is not None:
        m = input[0, 0].numel()
        update_running(running_mean, mean.mean(0), momentum)
        update_running(running_var, var.mean(0), momentum, m / (m - 1))
    return y.to(input.dtype)


def rms_norm(
    input: Tensor,
    normalized_shape,
    weight: Tensor | None = None,
    eps: float | None = None,
) -> Tensor:
    """``F.rms_norm`` from primitives: ``x * rsqrt(mean(x**2) + eps) * weight``."""
    ns = checks.as_normalized_shape(normalized_shape)
    checks.check_trailing_shape(input.shape, ns, _shape(weight), None, rms=True)
    xf = _opmath(input)
    if eps is None:
        eps = torch.finfo(xf.dtype).eps
    if input.numel() == 0:
        return _empty_output(input, weight, None)
    d = 1
    for s in ns:
        d *= s
    round_to = input.dtype if input.dtype in _REDUCED else None
    return _run(RMSNormFunction, xf, weight, d, eps, round_to).to(input.dtype)
