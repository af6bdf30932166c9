"""``torch.nn`` normalization layers rebuilt from primitive tensor operations.

``BatchNorm1d``, ``BatchNorm2d``, ``LayerNorm``, ``GroupNorm``, ``InstanceNorm1d``,
``InstanceNorm2d`` and ``RMSNorm`` take the same constructor arguments as their
``torch.nn`` namesakes (including ``device``, ``dtype`` and the keyword-only ``bias``),
register the same parameters and buffers under the same names, print the same
``repr`` and raise the same errors, so a ``state_dict`` moves between the two in both
directions and ``train()`` / ``eval()`` behave identically.

Everything is built from reductions (``mean``, ``sum``, ``linalg.vector_norm`` for
sums of squares, matrix-vector products for weighted sums), ``rsqrt`` and elementwise
arithmetic. torch's fused normalization kernels (``F.batch_norm``, ``F.layer_norm``,
...) are never called. With the input's own statistics, each layer is a
``torch.autograd.Function`` whose backward is the closed-form gradient (the formulas
of ``course_utils.reference.functional``) rather than autograd through the forward's
operations: several times fewer passes over memory. Its first derivatives are exact;
differentiating twice (``create_graph=True``) raises an error. BatchNorm / InstanceNorm
with running statistics in eval mode are one affine map, left to autograd.

Numerics: statistics are computed in two passes (mean, then the mean of the squared
deviations) and, in training, the output as ``(x - mean) * scale + bias``, which keeps
float32 accurate even when ``|mean| >> std``; the backward likewise works with
``x - mean``. In eval mode BatchNorm folds its running statistics into a single
``x * scale + shift``, as torch does. float16 / bfloat16 inputs are computed in
float32 and cast back, as torch does on CPU.
"""

from __future__ import annotations

import functools
import numbers
import warnings

import torch
from torch import Tensor, nn
from torch.nn import Parameter, init

__all__ = [
    "BatchNorm1d",
    "BatchNorm2d",
    "LayerNorm",
    "GroupNorm",
    "InstanceNorm1d",
    "InstanceNorm2d",
    "RMSNorm",
]

_REDUCED = (torch.float16, torch.bfloat16)

# --------------------------------------------------------------------------------------
# functional building blocks (torch tensors, primitive ops only)
# --------------------------------------------------------------------------------------


def _opmath(x: Tensor) -> Tensor:
    """float16 / bfloat16 are computed in float32 (torch's ``opmath`` type)."""
    return x.float() if x.dtype in _REDUCED else x


def _list(shape) -> str:
    return "[" + ", ".join(str(int(s)) for s in shape) + "]"


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


def _verify_batch_size(size, shown) -> None:
    prod = int(size[0])
    for s in size[2:]:
        prod *= int(s)
    if prod == 1:
        raise ValueError(
            f"Expected more than 1 value per channel when training, got input size {shown}"
        )


def _verify_spatial_size(size: torch.Size) -> None:
    prod = 1
    for s in size[2:]:
        prod *= int(s)
    if prod == 1:
        raise ValueError(
            f"Expected more than 1 spatial element when training, got input size {size}"
        )


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


class _ChannelNormFunction(torch.autograd.Function):
    """Batch norm, instance norm and group norm with the input's own statistics.

    ``layout = (shape, param_shape, dims, group_dim)``: the input is viewed as
    ``shape`` (``None``: as it is), statistics are taken over ``dims`` of that view, and
    ``weight`` / ``bias`` are viewed as ``param_shape``:

    ============  ====================  ================  ====================
    module        view of (N, C, *)     dims              param_shape
    ============  ====================  ================  ====================
    BatchNorm     (N, C, *)             0, 2, 3, ...      (1, C, 1, ...)
    InstanceNorm  (N, C, *)             2, 3, ...         (1, C, 1, ...)
    GroupNorm     (N, G, C // G, K)     2, 3              (1, G, C // G, 1)
    ============  ====================  ================  ====================

    ``group_dim`` is group norm's dim 2, a statistics dim along which the parameters
    vary (else ``None``). Returns ``y`` and the batch ``mean`` and biased ``var`` (for
    the running statistics; not differentiable).
    """

    @staticmethod
    def forward(ctx, x, weight, bias, layout, eps):
        shape, param_shape, dims, _ = layout
        xv = x if shape is None else x.reshape(shape)
        w = _as_param(weight, param_shape, x.dtype)
        b = _as_param(bias, param_shape, x.dtype)
        y, mean, var, rstd = _channel_norm_forward(xv, w, b, dims, eps)
        ctx.save_for_backward(xv, mean, rstd, w)
        ctx.layout = layout
        ctx.x_shape = x.shape
        ctx.mark_non_differentiable(mean, var)
        return (y if shape is None else y.reshape(x.shape)), mean, var

    @staticmethod
    @_first_order_only
    def backward(ctx, grad_y, _grad_mean, _grad_var):
        xv, mean, rstd, w = ctx.saved_tensors
        shape, _, dims, group_dim = ctx.layout
        go = grad_y if shape is None else grad_y.reshape(shape)
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
            if shape is not None:
                grad_x = grad_x.reshape(ctx.x_shape)
        return grad_x, grad_w, grad_b, None, None


def _layer_norm_forward(x2, w, b, eps):
    """Layer norm of the rows of ``x2``; returns ``y``, ``mean`` and ``rstd`` (per row)."""
    mean = x2.mean(1, keepdim=True)
    y = x2 - mean  # the output's only full-size buffer; centred values for now
    rstd = (_mean_of_squares(y, [1]) + eps).rsqrt_()  # second pass: stable
    # a per-row factor, then the per-column parameters: one in-place pass each
    return _affine(y.mul_(rstd), w, b, inplace=True, fused=True), mean, rstd


class _LayerNormFunction(torch.autograd.Function):
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
        ctx.shapes = (x.shape, None if weight is None else weight.shape)
        return y.reshape(x.shape)

    @staticmethod
    @_first_order_only
    def backward(ctx, grad_y):
        x2, mean, rstd, w = ctx.saved_tensors
        x_shape, p_shape = ctx.shapes
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


class _RMSNormFunction(torch.autograd.Function):
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
        ctx.shapes = (x.shape, None if weight is None else weight.shape)
        return y.reshape(x.shape)

    @staticmethod
    @_first_order_only
    def backward(ctx, grad_y):
        x2, rstd, w = ctx.saved_tensors
        x_shape, p_shape = ctx.shapes
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


def _update_running(buf: Tensor, stat: Tensor, momentum: float, correction: float = 1.0):
    """``buf <- momentum * correction * stat + (1 - momentum) * buf``, in place.

    ``stat`` is a non-differentiable output of the normalization, so autograd records
    nothing; ``correction`` turns a biased variance into the unbiased one.
    """
    stat = stat.reshape(buf.shape)
    if stat.dtype == buf.dtype:
        buf.mul_(1.0 - momentum).add_(stat, alpha=momentum * correction)
    else:  # float16 / bfloat16 buffers: combine in the statistics' float32, round once
        buf.copy_(stat * (momentum * correction) + (1.0 - momentum) * buf)


def _batch_norm(
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
    if input.dim() < 2:
        if training:
            hi = max(input.dim(), 1)
            raise IndexError(
                f"Dimension out of range (expected to be in range of [{-hi}, {hi - 1}], but got 1)"
            )
        if running_mean is None:
            raise RuntimeError("running_mean must be defined in evaluation mode")
        raise RuntimeError(f"running_mean should contain 0 elements not {running_mean.numel()}")
    if training:
        _verify_batch_size(input.size(), input.size())
    if training and eps <= 0.0:
        raise ValueError(f"batch_norm eps must be positive during training, but got {eps}")
    if eps < 0.0:
        raise ValueError(f"batch_norm eps must be non-negative, but got {eps}")
    ndim = input.dim()
    w, b = _channel_view(weight, ndim), _channel_view(bias, ndim)
    if input.numel() == 0:
        return _empty_output(input, w, b)
    c = input.size(1)
    for name, p in (("running_mean", running_mean), ("running_var", running_var)):
        if p is not None:
            if p.numel() != c:
                raise RuntimeError(f"{name} should contain {c} elements not {p.numel()}")
        elif not training:
            raise RuntimeError(f"{name} must be defined in evaluation mode")
    for name, p in (("weight", weight), ("bias", bias)):
        if p is not None and p.numel() != c:
            raise RuntimeError(f"{name} should contain {c} elements not {p.numel()}")
    if (running_mean is None) != (running_var is None):
        raise ValueError("running_mean and running_var must either both be None or neither be None")
    _check_mixed_dtype(input, weight, bias, running_mean, running_var)

    xf = _opmath(input)
    if not training:
        return _running_stats_affine(xf, running_mean, running_var, w, b, eps).to(input.dtype)
    # statistics per channel, over the batch and the spatial dims
    dims = [0] + list(range(2, ndim))
    layout = (None, (1, c) + (1,) * (ndim - 2), dims, None)
    y, mean, var = _run(_ChannelNormFunction, xf, weight, bias, layout, eps)
    if running_mean is not None:
        n = input.numel() // c
        _update_running(running_mean, mean, momentum)
        _update_running(running_var, var, momentum, n / (n - 1))
    return y.to(input.dtype)


def _check_trailing_shape(input: Tensor, ns, weight, bias, *, rms: bool) -> None:
    if len(ns) == 0:
        raise RuntimeError(
            "Expected normalized_shape to be at least 1-dimensional, i.e., containing at "
            "least one element, but got normalized_shape = []"
        )
    for name, p in (("weight", weight), ("bias", bias)):
        if p is not None and tuple(p.shape) != ns:
            raise RuntimeError(
                f"Expected {name} to be of same shape as normalized_shape, but got {name} "
                f"of shape {_list(p.shape)} and normalized_shape = {_list(ns)}"
            )
    if rms and input.dim() < len(ns):
        raise ValueError(
            f"Input tensor must have at least {len(ns)} dimensions, but got {input.dim()}"
        )
    if input.dim() < len(ns) or tuple(input.shape[input.dim() - len(ns) :]) != ns:
        dims = ", ".join(str(s) for s in ns)
        expected = f"[*{dims}]" if rms else f"[*, {dims}]"
        raise RuntimeError(
            f"Given normalized_shape={_list(ns)}, expected input with shape {expected}, "
            f"but got input of size{_list(input.shape)}"
        )


def _layer_norm(
    input: Tensor,
    normalized_shape,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    eps: float = 1e-5,
) -> Tensor:
    """``F.layer_norm`` from primitives; normalizes over the trailing dims."""
    ns = _as_shape(normalized_shape)
    _check_trailing_shape(input, ns, weight, bias, rms=False)
    _check_mixed_dtype(input, weight, bias)
    xf = _opmath(input)
    if input.numel() == 0:
        return _empty_output(input, weight, bias)
    d = 1
    for s in ns:
        d *= s
    return _run(_LayerNormFunction, xf, weight, bias, d, eps).to(input.dtype)


def _group_norm(
    input: Tensor,
    num_groups: int,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    eps: float = 1e-5,
) -> Tensor:
    """``F.group_norm`` from primitives; ``input`` is ``(N, C, *)``."""
    if input.dim() < 2:
        raise RuntimeError(
            f"Expected at least 2 dimensions for input tensor but received {input.dim()}"
        )
    n, c = input.shape[:2]
    size = [n * c // num_groups, num_groups] + list(input.shape[2:])
    _verify_batch_size(size, _list(size))
    if c % num_groups != 0:
        raise RuntimeError(
            "Expected number of channels in input to be divisible by num_groups, but got "
            f"input of shape {_list(input.shape)} and num_groups={num_groups}"
        )
    for name, p in (("weight", weight), ("bias", bias)):
        if p is not None and (p.dim() != 1 or p.numel() != c):
            raise RuntimeError(
                f"Expected {name} to be a vector of size equal to the number of channels in "
                f"input, but got {name} of shape {_list(p.shape)} and input of shape "
                f"{_list(input.shape)}"
            )
    _check_mixed_dtype(input, weight, bias)
    ndim = input.dim()
    w, b = _channel_view(weight, ndim), _channel_view(bias, ndim)
    xf = _opmath(input)
    if input.numel() == 0:
        return _empty_output(input, w, b)
    # statistics per (sample, group) over dims 2 and 3 of the (N, G, C // G, *) view;
    # the parameters vary along dim 2, the channels of a group
    cg = c // num_groups
    shape = (n, num_groups, cg, input.numel() // (n * c))
    layout = (shape, (1, num_groups, cg, 1), [2, 3], 2)
    y, _, _ = _run(_ChannelNormFunction, xf, weight, bias, layout, eps)
    return y.to(input.dtype)


def _instance_norm(
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
    if use_input_stats:
        _verify_spatial_size(input.size())
    if not use_input_stats and (running_mean is None or running_var is None):
        raise RuntimeError(
            "Expected running_mean and running_var to be defined when use_input_stats is false"
        )
    if input.dim() < 2:
        hi = max(input.dim(), 1)
        raise IndexError(
            f"Dimension out of range (expected to be in range of [{-hi}, {hi - 1}], but got 1)"
        )
    ndim = input.dim()
    w, b = _channel_view(weight, ndim), _channel_view(bias, ndim)
    if input.numel() == 0:
        return _empty_output(input, w, b)
    n, c = input.shape[:2]
    for name, p in (
        ("running_mean", running_mean),
        ("running_var", running_var),
        ("weight", weight),
        ("bias", bias),
    ):
        if p is not None and p.numel() != c:
            raise RuntimeError(f"{name} should contain {n * c} elements not {n * p.numel()}")
    if (running_mean is None) != (running_var is None):
        raise ValueError("running_mean and running_var must either both be None or neither be None")
    _check_mixed_dtype(input, weight, bias)

    xf = _opmath(input)
    if not use_input_stats:
        return _running_stats_affine(xf, running_mean, running_var, w, b, eps).to(input.dtype)
    # statistics per (sample, channel), over the spatial dims
    layout = (None, (1, c) + (1,) * (ndim - 2), list(range(2, ndim)), None)
    y, mean, var = _run(_ChannelNormFunction, xf, weight, bias, layout, eps)
    if running_mean is not None:
        m = input[0, 0].numel()
        _update_running(running_mean, mean.mean(0), momentum)
        _update_running(running_var, var.mean(0), momentum, m / (m - 1))
    return y.to(input.dtype)


def _rms_norm(
    input: Tensor,
    normalized_shape,
    weight: Tensor | None = None,
    eps: float | None = None,
) -> Tensor:
    """``F.rms_norm`` from primitives: ``x * rsqrt(mean(x**2) + eps) * weight``."""
    ns = _as_shape(normalized_shape)
    _check_trailing_shape(input, ns, weight, None, rms=True)
    xf = _opmath(input)
    if eps is None:
        eps = torch.finfo(xf.dtype).eps
    if input.numel() == 0:
        return _empty_output(input, weight, None)
    d = 1
    for s in ns:
        d *= s
    round_to = input.dtype if input.dtype in _REDUCED else None
    return _run(_RMSNormFunction, xf, weight, d, eps, round_to).to(input.dtype)


def _as_shape(normalized_shape) -> tuple[int, ...]:
    if isinstance(normalized_shape, numbers.Integral):
        return (int(normalized_shape),)
    return tuple(int(s) for s in normalized_shape)


# --------------------------------------------------------------------------------------
# BatchNorm / InstanceNorm
# --------------------------------------------------------------------------------------


class _NormBase(nn.Module):
    """Parameters, buffers and state-dict handling shared by BatchNorm and InstanceNorm."""

    _version = 2

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        device=None,
        dtype=None,
        *,
        bias: bool = True,
    ) -> None:
        factory_kwargs = {"device": device, "dtype": dtype}
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.momentum = momentum
        self.affine = affine
        self.track_running_stats = track_running_stats
        if self.affine:
            self.weight = Parameter(torch.empty(num_features, **factory_kwargs))
            if bias:
                self.bias = Parameter(torch.empty(num_features, **factory_kwargs))
            else:
                self.register_parameter("bias", None)
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        if self.track_running_stats:
            self.register_buffer("running_mean", torch.zeros(num_features, **factory_kwargs))
            self.register_buffer("running_var", torch.ones(num_features, **factory_kwargs))
            self.register_buffer(
                "num_batches_tracked", torch.tensor(0, dtype=torch.long, device=device)
            )
        else:
            self.register_buffer("running_mean", None)
            self.register_buffer("running_var", None)
            self.register_buffer("num_batches_tracked", None)
        self.reset_parameters()

    def reset_running_stats(self) -> None:
        """Running mean 0, running variance 1, ``num_batches_tracked`` 0."""
        if self.track_running_stats:
            self.running_mean.zero_()
            self.running_var.fill_(1)
            self.num_batches_tracked.zero_()

    def reset_parameters(self) -> None:
        """Reset the running statistics, weight to 1 and bias to 0."""
        self.reset_running_stats()
        if self.affine:
            init.ones_(self.weight)
            if self.bias is not None:
                init.zeros_(self.bias)

    def _check_input_dim(self, input: Tensor) -> None:
        raise NotImplementedError

    def extra_repr(self) -> str:
        return (
            "{num_features}, eps={eps}, momentum={momentum}, affine={affine}, "
            "bias={use_bias}, track_running_stats={track_running_stats}".format(
                **self.__dict__, use_bias=self.bias is not None
            )
        )

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ) -> None:
        version = local_metadata.get("version", None)
        if (version is None or version < 2) and self.track_running_stats:
            # version 2 added num_batches_tracked; older checkpoints default to 0
            key = prefix + "num_batches_tracked"
            if key not in state_dict:
                state_dict[key] = (
                    self.num_batches_tracked
                    if self.num_batches_tracked is not None
                    and self.num_batches_tracked.device != torch.device("meta")
                    else torch.tensor(0, dtype=torch.long)
                )
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )


class _BatchNorm(_NormBase):
    def forward(self, input: Tensor) -> Tensor:
        self._check_input_dim(input)
        factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:  # cumulative moving average
                factor = 1.0 / float(self.num_batches_tracked)
        # batch statistics in training, and in eval when there are no running buffers
        if self.training:
            use_batch_stats = True
        else:
            use_batch_stats = self.running_mean is None and self.running_var is None
        # buffers are passed only when they are to be updated or used
        pass_buffers = not self.training or self.track_running_stats
        return _batch_norm(
            input,
            self.running_mean if pass_buffers else None,
            self.running_var if pass_buffers else None,
            self.weight,
            self.bias,
            use_batch_stats,
            factor,
            self.eps,
        )


class BatchNorm1d(_BatchNorm):
    r"""Batch normalization over ``(N, C)`` or ``(N, C, L)`` input, like ``nn.BatchNorm1d``.

    ``y = (x - E[x]) / sqrt(Var[x] + eps) * weight + bias`` per channel, with statistics
    over ``N`` (and ``L``). Training uses the batch's mean and biased variance and
    updates ``running_mean`` / ``running_var`` (unbiased) with ``momentum`` (``None``:
    cumulative average); eval uses the running statistics, or the batch's when
    ``track_running_stats=False``.

    Args:
        num_features: ``C``.
        eps: added to the variance inside the square root. Default 1e-5.
        momentum: running-average factor, or ``None`` for a cumulative average.
        affine: learnable ``weight`` (init 1) and ``bias`` (init 0) of shape ``(C,)``.
        track_running_stats: keep ``running_mean``, ``running_var`` and
            ``num_batches_tracked`` buffers.
        device, dtype: of the parameters and buffers.
        bias: keyword-only; ``False`` drops the bias (when ``affine``).

    Shape: input ``(N, C)`` or ``(N, C, L)``; output the same.
    """

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() != 2 and input.dim() != 3:
            raise ValueError(f"expected 2D or 3D input (got {input.dim()}D input)")


class BatchNorm2d(_BatchNorm):
    r"""Batch normalization over ``(N, C, H, W)`` input, like ``nn.BatchNorm2d``.

    Same arguments and behaviour as :class:`BatchNorm1d`; statistics per channel over
    ``N``, ``H`` and ``W``.

    Shape: input ``(N, C, H, W)``; output the same.
    """

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() != 4:
            raise ValueError(f"expected 4D input (got {input.dim()}D input)")


class _InstanceNorm(_NormBase):
    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float = 0.1,
        affine: bool = False,
        track_running_stats: bool = False,
        device=None,
        dtype=None,
        *,
        bias: bool = True,
    ) -> None:
        super().__init__(
            num_features,
            eps,
            momentum,
            affine,
            track_running_stats,
            device=device,
            dtype=dtype,
            bias=bias,
        )

    def _get_no_batch_dim(self) -> int:
        raise NotImplementedError

    def _handle_no_batch_input(self, input: Tensor) -> Tensor:
        return self._apply_instance_norm(input.unsqueeze(0)).squeeze(0)

    def _apply_instance_norm(self, input: Tensor) -> Tensor:
        return _instance_norm(
            input,
            self.running_mean,
            self.running_var,
            self.weight,
            self.bias,
            self.training or not self.track_running_stats,
            self.momentum if self.momentum is not None else 0.0,
            self.eps,
        )

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ) -> None:
        version = local_metadata.get("version", None)
        # version 1 removed running_mean / running_var when track_running_stats=False
        if version is None and not self.track_running_stats:
            keys = [prefix + k for k in ("running_mean", "running_var") if prefix + k in state_dict]
            if keys:
                klass = self.__class__.__name__
                error_msgs.append(
                    "Unexpected running stats buffer(s) {names} for {klass} "
                    "with track_running_stats=False. If state_dict is a "
                    "checkpoint saved before 0.4.0, this may be expected "
                    "because {klass} does not track running stats by default "
                    "since 0.4.0. Please remove these keys from state_dict. If "
                    "the running stats are actually needed, instead set "
                    "track_running_stats=True in {klass} to enable them. See "
                    "the documentation of {klass} for details.".format(
                        names=" and ".join(f'"{k}"' for k in keys), klass=klass
                    )
                )
                for key in keys:
                    state_dict.pop(key)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    def forward(self, input: Tensor) -> Tensor:
        self._check_input_dim(input)
        feature_dim = input.dim() - self._get_no_batch_dim()
        if input.size(feature_dim) != self.num_features:
            if self.affine:
                raise ValueError(
                    f"expected input's size at dim={feature_dim} to match num_features"
                    f" ({self.num_features}), but got: {input.size(feature_dim)}."
                )
            warnings.warn(
                f"input's size at dim={feature_dim} does not match num_features. "
                "You can silence this warning by not passing in num_features, "
                "which is not used because affine=False",
                stacklevel=2,
            )
        if input.dim() == self._get_no_batch_dim():
            return self._handle_no_batch_input(input)
        return self._apply_instance_norm(input)


class InstanceNorm1d(_InstanceNorm):
    r"""Instance normalization over ``(N, C, L)`` or unbatched ``(C, L)`` input,
    like ``nn.InstanceNorm1d``.

    Each channel of each sample is normalized over ``L``. Defaults differ from
    BatchNorm: ``affine=False``, ``track_running_stats=False``. With
    ``track_running_stats=True`` the running statistics are the batch means of the
    per-instance mean and unbiased variance, and eval mode uses them.

    Shape: input ``(N, C, L)`` or ``(C, L)``; output the same.
    """

    def _get_no_batch_dim(self) -> int:
        return 2

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() not in (2, 3):
            raise ValueError(f"expected 2D or 3D input (got {input.dim()}D input)")


class InstanceNorm2d(_InstanceNorm):
    r"""Instance normalization over ``(N, C, H, W)`` or unbatched ``(C, H, W)`` input,
    like ``nn.InstanceNorm2d``. See :class:`InstanceNorm1d`.

    Shape: input ``(N, C, H, W)`` or ``(C, H, W)``; output the same.
    """

    def _get_no_batch_dim(self) -> int:
        return 3

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() not in (3, 4):
            raise ValueError(f"expected 3D or 4D input (got {input.dim()}D input)")


# --------------------------------------------------------------------------------------
# LayerNorm / GroupNorm / RMSNorm
# --------------------------------------------------------------------------------------


class LayerNorm(nn.Module):
    r"""Layer normalization over the trailing ``normalized_shape`` dims, like
    ``nn.LayerNorm``.

    ``y = (x - E[x]) / sqrt(Var[x] + eps) * weight + bias`` with the mean and biased
    variance of each sample's trailing dims; identical in train and eval.

    Args:
        normalized_shape: int or tuple, the trailing shape of the input.
        eps: added to the variance inside the square root. Default 1e-5.
        elementwise_affine: learnable ``weight`` (1) and ``bias`` (0) of shape
            ``normalized_shape``.
        bias: ``False`` drops the bias (positional here, as in torch).
        device, dtype: of the parameters.

    Shape: input ``(*, *normalized_shape)``; output the same.
    """

    def __init__(
        self,
        normalized_shape,
        eps: float = 1e-5,
        elementwise_affine: bool = True,
        bias: bool = True,
        device=None,
        dtype=None,
    ) -> None:
        factory_kwargs = {"device": device, "dtype": dtype}
        super().__init__()
        if isinstance(normalized_shape, numbers.Integral):
            normalized_shape = (normalized_shape,)
        self.normalized_shape = tuple(normalized_shape)
        self.eps = eps
        self.elementwise_affine = elementwise_affine
        if self.elementwise_affine:
            self.weight = Parameter(torch.empty(self.normalized_shape, **factory_kwargs))
            if bias:
                self.bias = Parameter(torch.empty(self.normalized_shape, **factory_kwargs))
            else:
                self.register_parameter("bias", None)
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Weight to 1, bias to 0."""
        if self.elementwise_affine:
            init.ones_(self.weight)
            if self.bias is not None:
                init.zeros_(self.bias)

    def forward(self, input: Tensor) -> Tensor:
        return _layer_norm(input, self.normalized_shape, self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        return (
            "{normalized_shape}, eps={eps}, elementwise_affine={elementwise_affine}, "
            "bias={use_bias}".format(**self.__dict__, use_bias=self.bias is not None)
        )


class GroupNorm(nn.Module):
    r"""Group normalization, like ``nn.GroupNorm``.

    The ``num_channels`` channels are split into ``num_groups`` groups; each group of
    each sample is normalized over its channels and spatial positions; ``weight`` and
    ``bias`` are per channel. ``GroupNorm(1, C)`` is LayerNorm over ``(C, *)`` (with
    per-channel affine); ``GroupNorm(C, C)`` is InstanceNorm.

    Args:
        num_groups: ``G``, must divide ``num_channels``.
        num_channels: ``C``.
        eps: added to the variance inside the square root. Default 1e-5.
        affine: learnable per-channel ``weight`` (1) and ``bias`` (0).
        device, dtype: of the parameters.
        bias: keyword-only; ``False`` drops the bias.

    Shape: input ``(N, C, *)``; output the same.
    """

    def __init__(
        self,
        num_groups: int,
        num_channels: int,
        eps: float = 1e-5,
        affine: bool = True,
        device=None,
        dtype=None,
        *,
        bias: bool = True,
    ) -> None:
        factory_kwargs = {"device": device, "dtype": dtype}
        super().__init__()
        if num_channels % num_groups != 0:
            raise ValueError(
                f"num_channels ({num_channels}) must be divisible by num_groups ({num_groups})"
            )
        self.num_groups = num_groups
        self.num_channels = num_channels
        self.eps = eps
        self.affine = affine
        if self.affine:
            self.weight = Parameter(torch.empty(num_channels, **factory_kwargs))
            if bias:
                self.bias = Parameter(torch.empty(num_channels, **factory_kwargs))
            else:
                self.register_parameter("bias", None)
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Weight to 1, bias to 0."""
        if self.affine:
            init.ones_(self.weight)
            if self.bias is not None:
                init.zeros_(self.bias)

    def forward(self, input: Tensor) -> Tensor:
        return _group_norm(input, self.num_groups, self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        return "{num_groups}, {num_channels}, eps={eps}, affine={affine}, bias={use_bias}".format(
            **self.__dict__, use_bias=self.bias is not None
        )


class RMSNorm(nn.Module):
    r"""Root-mean-square normalization, like ``nn.RMSNorm``.

    ``y = x / sqrt(mean(x**2) + eps) * weight`` over the trailing ``normalized_shape``
    dims; no centring, no bias. ``eps=None`` means ``torch.finfo`` of the computation
    type: float32's eps for float16/bfloat16/float32 input, float64's for float64.

    Args:
        normalized_shape: int or tuple, the trailing shape of the input.
        eps: a float or ``None`` (default).
        elementwise_affine: learnable ``weight`` (1) of shape ``normalized_shape``.
        device, dtype: of the parameter.

    Shape: input ``(*, *normalized_shape)``; output the same.
    """

    def __init__(
        self,
        normalized_shape,
        eps: float | None = None,
        elementwise_affine: bool = True,
        device=None,
        dtype=None,
    ) -> None:
        factory_kwargs = {"device": device, "dtype": dtype}
        super().__init__()
        if isinstance(normalized_shape, numbers.Integral):
            normalized_shape = (normalized_shape,)
        self.normalized_shape = tuple(normalized_shape)
        self.eps = eps
        self.elementwise_affine = elementwise_affine
        if self.elementwise_affine:
            self.weight = Parameter(torch.empty(self.normalized_shape, **factory_kwargs))
        else:
            self.register_parameter("weight", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Weight to 1."""
        if self.elementwise_affine:
            init.ones_(self.weight)

    def forward(self, x: Tensor) -> Tensor:
        return _rms_norm(x, self.normalized_shape, self.weight, self.eps)

    def extra_repr(self) -> str:
        return "{normalized_shape}, eps={eps}, elementwise_affine={elementwise_affine}".format(
            **self.__dict__
        )
