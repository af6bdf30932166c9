"""torch's argument checks for the normalization functions, in torch's order and wording.

The NumPy reference (:mod:`.functional`) and the torch reference (:mod:`.fused`, behind
:mod:`.modules`) raise the same exceptions with the same messages as ``torch.nn.functional``
for the same bad input. Both call these functions, which look only at shapes and sizes
(tuples of ints and element counts), never at values, so they serve NumPy arrays and torch
tensors alike.

Each ``check_*`` function raises what torch raises first for that argument list; the
functional code calls them in torch's order (for example, ``F.batch_norm`` returns early on
an empty input after its first checks and before it looks at the running statistics).
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence

__all__ = [
    "shape_text",
    "torch_size_text",
    "as_normalized_shape",
    "check_eps",
    "check_batch_norm_input",
    "check_instance_norm_input",
    "check_channel_vectors",
    "check_group_norm_input",
    "check_trailing_shape",
    "verify_batch_size",
    "verify_spatial_size",
]


def shape_text(shape: Sequence[int]) -> str:
    """A shape the way torch's C++ errors print it: ``[2, 4]``."""
    return "[" + ", ".join(str(int(s)) for s in shape) + "]"


def torch_size_text(shape: Sequence[int]) -> str:
    """A shape the way ``str(torch.Size)`` prints it: ``torch.Size([2, 4])``."""
    return f"torch.Size({shape_text(shape)})"


def as_normalized_shape(normalized_shape) -> tuple[int, ...]:
    """``normalized_shape`` (an int or a sequence of ints) as a tuple of ints."""
    if isinstance(normalized_shape, numbers.Integral):
        return (int(normalized_shape),)
    return tuple(int(s) for s in normalized_shape)


def _dimension_out_of_range(ndim: int) -> IndexError:
    """torch's error for indexing dim 1 (the channels) of a tensor with fewer dims."""
    hi = max(ndim, 1)
    return IndexError(
        f"Dimension out of range (expected to be in range of [{-hi}, {hi - 1}], but got 1)"
    )


def verify_batch_size(size: Sequence[int], shown: str) -> None:
    """torch's ``_verify_batch_size``: more than one value per channel in training.

    ``shown`` is how torch prints ``size`` in the message (a ``torch.Size`` for batch
    norm, a plain list for group norm's grouped view).
    """
    prod = int(size[0]) if len(size) else 1
    for s in size[2:]:
        prod *= int(s)
    if prod == 1:
        raise ValueError(
            f"Expected more than 1 value per channel when training, got input size {shown}"
        )


def verify_spatial_size(size: Sequence[int]) -> None:
    """torch's ``_verify_spatial_size``: more than one spatial element per instance."""
    prod = 1
    for s in size[2:]:
        prod *= int(s)
    if prod == 1:
        raise ValueError(
            "Expected more than 1 spatial element when training, got input size "
            f"{torch_size_text(size)}"
        )


def check_eps(eps: float, training: bool) -> None:
    """``F.batch_norm``'s checks of ``eps``."""
    if training and eps <= 0.0:
        raise ValueError(f"batch_norm eps must be positive during training, but got {eps}")
    if eps < 0.0:
        raise ValueError(f"batch_norm eps must be non-negative, but got {eps}")


def check_batch_norm_input(
    shape: Sequence[int], training: bool, running_mean_numel: int | None
) -> None:
    """``F.batch_norm``'s checks of the input: rank, then one value per channel.

    ``running_mean_numel``: the number of elements of ``running_mean`` (``None``: not
    given); torch names it when a 1-D input meets running statistics.
    """
    if len(shape) < 2:
        if training:
            raise _dimension_out_of_range(len(shape))
        if running_mean_numel is None:
            raise RuntimeError("running_mean must be defined in evaluation mode")
        raise RuntimeError(f"running_mean should contain 0 elements not {running_mean_numel}")
    if training:
        verify_batch_size(shape, torch_size_text(shape))


def check_instance_norm_input(
    shape: Sequence[int], use_input_stats: bool, have_running_stats: bool
) -> None:
    """``F.instance_norm``'s checks before it looks at any sizes."""
    if use_input_stats:
        verify_spatial_size(shape)
    if not use_input_stats and not have_running_stats:
        raise RuntimeError(
            "Expected running_mean and running_var to be defined when use_input_stats is false"
        )
    if len(shape) < 2:
        raise _dimension_out_of_range(len(shape))


def check_channel_vectors(
    c: int,
    numels: dict[str, int | None],
    training: bool = True,
    repeat: int = 1,
) -> None:
    """Sizes of the per-channel vectors, as ``F.batch_norm`` / ``F.instance_norm`` check them.

    Args:
        c: the number of channels ``C``.
        numels: ``{"running_mean": n, "running_var": n, "weight": n, "bias": n}`` in
            that order, ``None`` for a vector not given.
        training: without it, missing running statistics are an error (batch norm).
        repeat: instance norm repeats each vector once per sample (``N``) before torch
            checks it, so its message counts ``N * C`` elements.
    """
    for name, n in numels.items():
        if n is None:
            if name.startswith("running_") and not training:
                raise RuntimeError(f"{name} must be defined in evaluation mode")
        elif n != c:
            raise RuntimeError(f"{name} should contain {repeat * c} elements not {repeat * n}")
    if (numels.get("running_mean") is None) != (numels.get("running_var") is None):
        raise ValueError("running_mean and running_var must either both be None or neither be None")


def check_group_norm_input(
    shape: Sequence[int],
    num_groups: int,
    weight_shape: Sequence[int] | None = None,
    bias_shape: Sequence[int] | None = None,
) -> None:
    """``F.group_norm``'s checks: rank, one value per group, divisibility, parameter shapes."""
    if len(shape) < 2:
        raise RuntimeError(
            f"Expected at least 2 dimensions for input tensor but received {len(shape)}"
        )
    n, c = int(shape[0]), int(shape[1])
    size = [n * c // num_groups, num_groups] + [int(s) for s in shape[2:]]
    verify_batch_size(size, shape_text(size))
    if c % num_groups != 0:
        raise RuntimeError(
            "Expected number of channels in input to be divisible by num_groups, but got "
            f"input of shape {shape_text(shape)} and num_groups={num_groups}"
        )
    for name, p in (("weight", weight_shape), ("bias", bias_shape)):
        if p is None:
            continue
        numel = 1
        for s in p:
            numel *= int(s)
        if len(p) != 1 or numel != c:
            raise RuntimeError(
                f"Expected {name} to be a vector of size equal to the number of channels in "
                f"input, but got {name} of shape {shape_text(p)} and input of shape "
                f"{shape_text(shape)}"
            )


def check_trailing_shape(
    shape: Sequence[int],
    normalized_shape: tuple[int, ...],
    weight_shape: Sequence[int] | None,
    bias_shape: Sequence[int] | None,
    *,
    rms: bool,
) -> None:
    """``F.layer_norm`` / ``F.rms_norm``'s checks of ``normalized_shape`` against the
    parameters and the input's trailing dims."""
    ns = normalized_shape
    if len(ns) == 0:
        raise RuntimeError(
            "Expected normalized_shape to be at least 1-dimensional, i.e., containing at "
            "least one element, but got normalized_shape = []"
        )
    for name, p in (("weight", weight_shape), ("bias", bias_shape)):
        if p is not None and tuple(int(s) for s in p) != ns:
            raise RuntimeError(
                f"Expected {name} to be of same shape as normalized_shape, but got {name} "
                f"of shape {shape_text(p)} and normalized_shape = {shape_text(ns)}"
            )
    ndim = len(shape)
    if rms and ndim < len(ns):
        raise ValueError(f"Input tensor must have at least {len(ns)} dimensions, but got {ndim}")
    if ndim < len(ns) or tuple(int(s) for s in shape[ndim - len(ns) :]) != ns:
        dims = ", ".join(str(s) for s in ns)
        expected = f"[*{dims}]" if rms else f"[*, {dims}]"
        raise RuntimeError(
            f"Given normalized_shape={shape_text(ns)}, expected input with shape {expected}, "
            f"but got input of size{shape_text(shape)}"
        )
