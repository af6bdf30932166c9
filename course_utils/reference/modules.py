"""``torch.nn`` normalization layers rebuilt from primitive tensor operations.

``BatchNorm1d``, ``BatchNorm2d``, ``LayerNorm``, ``GroupNorm``, ``InstanceNorm1d``,
``InstanceNorm2d`` and ``RMSNorm`` take the same constructor arguments as their
``torch.nn`` namesakes (including ``device``, ``dtype`` and the keyword-only ``bias``),
register the same parameters and buffers under the same names, print the same
``repr`` and raise the same errors, so a ``state_dict`` moves between the two in both
directions and ``train()`` / ``eval()`` behave identically.

The forward passes use only reductions (``mean``, ``sum``, ``linalg.vector_norm`` for
sums of squares), ``rsqrt`` and elementwise arithmetic; autograd derives the backward
pass. torch's fused normalization kernels (``F.batch_norm``, ``F.layer_norm``, ...)
are never called.

Numerics: statistics are computed in two passes (mean, then the mean of the squared
deviations) and, in training, the output as ``(x - mean) * scale + bias``, which keeps
float32 accurate even when ``|mean| >> std``. In eval mode BatchNorm folds its running
statistics into a single ``x * scale + shift``, as torch does. float16 / bfloat16
inputs are computed in float32 and cast back, as torch does on CPU.
"""

from __future__ import annotations

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


def _autograd_off(*tensors: Tensor | None) -> bool:
    """True when no autograd graph will be recorded, so temporaries may be reused."""
    return not torch.is_grad_enabled() or not any(
        t is not None and t.requires_grad for t in tensors
    )


def _affine(
    y: Tensor, w: Tensor | None, b: Tensor | None, inplace: bool = False, fused: bool = False
) -> Tensor:
    """``y * w + b`` with either part optional (``w``, ``b`` already broadcastable).

    ``inplace`` writes into ``y``, a temporary of ours, when autograd is off. Otherwise
    ``(y * w).add_(b)`` (the in-place add is on the fresh product, which autograd
    allows); ``fused`` uses ``torch.addcmul`` instead, which is faster when ``w`` and
    ``b`` vary along the last dimension (LayerNorm) and slower when they are per row.
    """
    if w is None and b is None:
        return y
    if w is None:
        return y.add_(b) if inplace else y + b
    if b is None:
        return y.mul_(w) if inplace else y * w
    if inplace:
        return y.mul_(w).add_(b)
    if fused:
        return torch.addcmul(b, y, w)
    return (y * w).add_(b)


def _empty_output(input: Tensor, w: Tensor | None, b: Tensor | None) -> Tensor:
    """Output for an input with no elements: nothing to normalize, but the result is a
    new tensor connected to ``weight`` and ``bias`` (whose gradients are then zeros)."""
    return _affine(_opmath(input).clone(), w, b).to(input.dtype)


def _centered_stats(xf: Tensor, first: int, outer: bool = False, grad: bool = True):
    """Two-pass statistics over the dims ``first, ..., ndim - 1`` (and dim 0 if ``outer``).

    Returns ``neg_mean = -mean``, ``centered = x - mean`` and the biased variance
    ``mean(centered ** 2)``, all with ``keepdim=True``.

    Written for a cheap autograd graph: the mean is a ``sum`` times ``-1 / count`` and
    is *added* (the backward of ``sum`` is a broadcast and the backward of ``+`` passes
    the gradient through, where ``mean`` and ``-`` would each cost a full-size pass).
    The sum of squares is ``(centered * centered).sum()`` when autograd records (its
    backward is two multiplications) and ``torch.linalg.vector_norm(centered) ** 2``
    otherwise (one read, no full-size temporary; its backward would cost more).
    """
    inner = list(range(first, xf.dim()))
    dims = ([0] if outer else []) + inner
    count = 1
    for d in dims:
        count *= xf.size(d)
    neg_mean = xf.sum(dims, keepdim=True) * (-1.0 / count)
    centered = xf + neg_mean
    if grad:
        sumsq = (centered * centered).sum(dims, keepdim=True)
    elif inner:
        sumsq = torch.linalg.vector_norm(centered, 2, inner, keepdim=True).square()
        if outer:
            sumsq = sumsq.sum(0, keepdim=True)
    else:  # (N, C) batch norm: reduce over the batch only
        sumsq = centered.square().sum(0, keepdim=True)
    return neg_mean, centered, sumsq * (1.0 / count)


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


def _update_running(buf: Tensor, stat: Tensor, momentum: float) -> None:
    """``buf <- momentum * stat + (1 - momentum) * buf`` in place, outside autograd."""
    with torch.no_grad():
        buf.copy_((momentum * stat.reshape(buf.shape) + (1.0 - momentum) * buf).to(buf.dtype))


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
    inplace = _autograd_off(input, weight, bias)
    neg_mean, centered, var = _centered_stats(xf, 2, outer=True, grad=not inplace)
    if running_mean is not None:
        n = input.numel() // c
        _update_running(running_mean, -neg_mean, momentum)
        _update_running(running_var, var * (n / (n - 1)), momentum)
    # y = (x - mean) * (rsqrt(var + eps) * w) + b: the per-channel factors are combined
    # first so that the full-size tensor is touched once
    scale = torch.rsqrt(var + eps)
    return _affine(centered, _affine(scale, w, None), b, inplace).to(input.dtype)


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
    inplace = _autograd_off(input, weight, bias)
    _, centered, var = _centered_stats(xf, input.dim() - len(ns), grad=not inplace)
    # y = (x - mean) * rsqrt(var + eps) * w + b: the per-row and the per-column
    # factors need one full-size pass each
    normalized = _affine(centered, torch.rsqrt(var + eps), None, inplace)
    return _affine(normalized, weight, bias, inplace, fused=True).to(input.dtype)


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
    # statistics per (sample, group); the scale is expanded to per (sample, channel)
    # and multiplied by the per-channel weight before it touches the full-size tensor
    inplace = _autograd_off(input, weight, bias)
    _, centered, var = _centered_stats(xf.reshape(n, num_groups, -1), 2, grad=not inplace)
    scale = torch.rsqrt(var + eps).expand(n, num_groups, c // num_groups)
    scale = _affine(scale.reshape((n, c) + (1,) * (ndim - 2)), w, None)
    return _affine(centered.reshape(input.shape), scale, b, inplace).to(input.dtype)


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
    inplace = _autograd_off(input, weight, bias)
    neg_mean, centered, var = _centered_stats(xf, 2, grad=not inplace)
    if running_mean is not None:
        m = input[0, 0].numel()
        _update_running(running_mean, -neg_mean.mean(0), momentum)
        _update_running(running_var, (var * (m / (m - 1))).mean(0), momentum)
    scale = _affine(torch.rsqrt(var + eps), w, None)
    return _affine(centered, scale, b, inplace).to(input.dtype)


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
    dims = list(range(input.dim() - len(ns), input.dim()))
    y = (xf * torch.rsqrt(xf.square().mean(dims, keepdim=True) + eps)).to(input.dtype)
    if weight is not None:
        y = (y * weight).to(input.dtype)
    return y


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
