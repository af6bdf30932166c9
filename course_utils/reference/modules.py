"""``torch.nn`` normalization layers rebuilt from primitive tensor operations.

``BatchNorm1d``, ``BatchNorm2d``, ``LayerNorm``, ``GroupNorm``, ``InstanceNorm1d``,
``InstanceNorm2d`` and ``RMSNorm`` take the same constructor arguments as their
``torch.nn`` namesakes (including ``device``, ``dtype`` and the keyword-only ``bias``),
register the same parameters and buffers under the same names, print the same
``repr`` and raise the same errors, so a ``state_dict`` moves between the two in both
directions and ``train()`` / ``eval()`` behave identically.

Like ``torch.nn``'s ``batchnorm.py`` and ``normalization.py``, this file holds only the
modules: parameters, buffers, modes and state-dict handling. Each ``forward`` calls a
function of :mod:`.fused` (our ``torch.nn.functional``), which checks its arguments
(:mod:`.checks`, torch's messages) and runs the normalization as an autograd Function with
a closed-form backward.
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor, nn
from torch.nn import Parameter, init

from . import fused
from .checks import as_normalized_shape

__all__ = [
    "BatchNorm1d",
    "BatchNorm2d",
    "LayerNorm",
    "GroupNorm",
    "InstanceNorm1d",
    "InstanceNorm2d",
    "RMSNorm",
]


# --------------------------------------------------------------------------------------
# BatchNorm / InstanceNorm
# --------------------------------------------------------------------------------------


def _affine_parameters(
    module: nn.Module, shape, affine: bool, bias: bool | None, factory_kwargs: dict
) -> None:
    """Register ``weight`` (and ``bias`` when ``bias``) of ``shape`` if ``affine``, else
    ``None``, as torch's normalization layers do (``bias=None``: the layer has no bias at
    all, like ``RMSNorm``); the values come from :func:`_reset_affine`."""
    module.register_parameter(
        "weight", Parameter(torch.empty(shape, **factory_kwargs)) if affine else None
    )
    if bias is not None:
        with_bias = affine and bias
        module.register_parameter(
            "bias", Parameter(torch.empty(shape, **factory_kwargs)) if with_bias else None
        )


def _reset_affine(module: nn.Module) -> None:
    """Weight to 1, bias to 0 (those that exist)."""
    if module.weight is not None:
        init.ones_(module.weight)
    if getattr(module, "bias", None) is not None:
        init.zeros_(module.bias)


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
        _affine_parameters(self, num_features, affine, bias, factory_kwargs)
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
        _reset_affine(self)

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
        return fused.batch_norm(
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

    Example::

        >>> bn = BatchNorm1d(4)
        >>> x = torch.randn(16, 4) * 3 + 2
        >>> y = bn(x)  # training mode: the batch's statistics, running ones updated
        >>> torch.allclose(y, nn.BatchNorm1d(4)(x), atol=1e-5)
        True
        >>> bn.running_mean.shape, bn.eval()(x[:1]).shape  # eval: the running statistics
        (torch.Size([4]), torch.Size([1, 4]))
    """

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() != 2 and input.dim() != 3:
            raise ValueError(f"expected 2D or 3D input (got {input.dim()}D input)")


class BatchNorm2d(_BatchNorm):
    r"""Batch normalization over ``(N, C, H, W)`` input, like ``nn.BatchNorm2d``.

    Same arguments and behaviour as :class:`BatchNorm1d`; statistics per channel over
    ``N``, ``H`` and ``W``.

    Shape: input ``(N, C, H, W)``; output the same.

    Example::

        >>> x = torch.randn(8, 3, 5, 5)
        >>> torch.allclose(BatchNorm2d(3)(x), nn.BatchNorm2d(3)(x), atol=1e-5)
        True
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
        return fused.instance_norm(
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

    Example::

        >>> x = torch.randn(4, 3, 10)
        >>> torch.allclose(InstanceNorm1d(3)(x), nn.InstanceNorm1d(3)(x), atol=1e-5)
        True
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

    Example::

        >>> x = torch.randn(4, 3, 6, 6)
        >>> torch.allclose(InstanceNorm2d(3, affine=True)(x), nn.InstanceNorm2d(3)(x), atol=1e-5)
        True
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

    Example::

        >>> x = torch.randn(2, 7, 16)  # (batch, tokens, features)
        >>> torch.allclose(LayerNorm(16)(x), nn.LayerNorm(16)(x), atol=1e-5)
        True
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
        self.normalized_shape = as_normalized_shape(normalized_shape)
        self.eps = eps
        self.elementwise_affine = elementwise_affine
        _affine_parameters(self, self.normalized_shape, elementwise_affine, bias, factory_kwargs)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Weight to 1, bias to 0."""
        _reset_affine(self)

    def forward(self, input: Tensor) -> Tensor:
        return fused.layer_norm(input, self.normalized_shape, self.weight, self.bias, self.eps)

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

    Example::

        >>> x = torch.randn(4, 6, 5, 5)
        >>> torch.allclose(GroupNorm(3, 6)(x), nn.GroupNorm(3, 6)(x), atol=1e-5)
        True
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
        _affine_parameters(self, num_channels, affine, bias, factory_kwargs)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Weight to 1, bias to 0."""
        _reset_affine(self)

    def forward(self, input: Tensor) -> Tensor:
        return fused.group_norm(input, self.num_groups, self.weight, self.bias, self.eps)

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

    Example::

        >>> x = torch.randn(2, 7, 16)
        >>> torch.allclose(RMSNorm(16)(x), nn.RMSNorm(16)(x), atol=1e-5)
        True
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
        self.normalized_shape = as_normalized_shape(normalized_shape)
        self.eps = eps
        self.elementwise_affine = elementwise_affine
        _affine_parameters(self, self.normalized_shape, elementwise_affine, None, factory_kwargs)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Weight to 1."""
        _reset_affine(self)

    def forward(self, x: Tensor) -> Tensor:
        return fused.rms_norm(x, self.normalized_shape, self.weight, self.eps)

    def extra_repr(self) -> str:
        return "{normalized_shape}, eps={eps}, elementwise_affine={elementwise_affine}".format(
            **self.__dict__
        )
