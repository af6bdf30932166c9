"""What an exercise may not call: the one list, and the in-notebook block built from it.

:data:`FORBIDDEN_CALLS` is the source every check reads: an exercise's ``forbidden`` defaults to
it, the grader's static scan (:mod:`course_utils.grading.scan`) and its call trap in the
sandbox (:mod:`course_utils.sandbox.traps`) look for these names, and :func:`kernels_blocked`
makes torch's functions of these names refuse to run while a learner's module runs in the
notebook. Enforcing it is best effort (see README "Grading"): the answers are out of reach by
isolation, not by these rules.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterable, Iterator
from types import ModuleType
from typing import Any

__all__ = [
    "FORBIDDEN_CALLS",
    "AUTOGRAD_CALLS",
    "BACKWARD_BY_HAND",
    "forbidden_except",
    "torch_functions",
    "kernels_blocked",
]

# Calls that would let an exercise hand back torch's answer instead of computing it: the
# functional forms, the nn modules, and the ATen entry points behind them, forward and
# backward, however reached (``torch.ops.aten.X``, ``torch._C._VariableFunctions.X``,
# ``torch.X``). ``torch.var_mean``, ``torch.mean`` and friends are fine: they compute
# statistics, not the normalization.
FORBIDDEN_CALLS = (
    "batch_norm",
    "layer_norm",
    "group_norm",
    "instance_norm",
    "rms_norm",
    "BatchNorm1d",
    "BatchNorm2d",
    "BatchNorm3d",
    "LayerNorm",
    "GroupNorm",
    "InstanceNorm1d",
    "InstanceNorm2d",
    "InstanceNorm3d",
    "RMSNorm",
    "SyncBatchNorm",
    "LazyBatchNorm1d",
    "LazyBatchNorm2d",
    "LazyBatchNorm3d",
    "LazyInstanceNorm1d",
    "LazyInstanceNorm2d",
    "LazyInstanceNorm3d",
    "native_batch_norm",
    "native_layer_norm",
    "native_group_norm",
    "_batch_norm_impl_index",
    "_native_batch_norm_legit",
    "_native_batch_norm_legit_no_training",
    "_fused_rms_norm",
    "batch_norm_elemt",
    "batch_norm_stats",
    "batch_norm_update_stats",
    "batch_norm_gather_stats",
    "batch_norm_gather_stats_with_counts",
    "cudnn_batch_norm",
    "miopen_batch_norm",
    "quantized_batch_norm",
    "native_batch_norm_backward",
    "native_layer_norm_backward",
    "native_group_norm_backward",
    "batch_norm_backward",
    "batch_norm_backward_elemt",
    "batch_norm_backward_reduce",
    "cudnn_batch_norm_backward",
    "miopen_batch_norm_backward",
    "_batch_norm_no_update",
    "_batch_norm_with_update",
    "_batch_norm_with_update_functional",
    "_native_batch_norm_legit_functional",
    "_fused_rms_norm_backward",
)
# Autograd, for the exercises that ask for a backward pass derived by hand: ``y.backward``,
# ``torch.autograd.backward`` / ``grad`` (and the engine entry point all of them reach),
# ``torch.func`` and ``torch.autograd.functional`` transforms.
AUTOGRAD_CALLS = (
    "backward",
    "grad",
    "_engine_run_backward",
    "run_backward",
    "vjp",
    "jvp",
    "jacrev",
    "jacfwd",
    "jacobian",
    "hessian",
)
# An exercise that asks for a backward pass derived by hand: neither torch's normalization nor
# autograd.
BACKWARD_BY_HAND = FORBIDDEN_CALLS + AUTOGRAD_CALLS


def forbidden_except(*allowed: str) -> tuple[str, ...]:
    """:data:`FORBIDDEN_CALLS` less ``allowed``: for a module exercise whose driver builds
    torch's own module of that name to compare with (``forbidden_except("LayerNorm")``)."""
    return tuple(name for name in FORBIDDEN_CALLS if name not in allowed)


def torch_functions(names: Iterable[str]) -> list[tuple[ModuleType, str, str]]:
    """The plain functions of ``torch`` and ``torch.nn.functional`` called one of ``names``.

    Returns:
        ``(module, its dotted name, function name)`` for each; classes (``nn.LayerNorm``)
        and names a module lacks are left out.
    """
    import torch
    import torch.nn.functional as F

    found = []
    for mod in (torch, F):
        for name in names:
            fn = mod.__dict__.get(name)
            if fn is not None and not isinstance(fn, type) and callable(fn):
                found.append((mod, mod.__name__, name))
    return found


@functools.cache
def _blockable() -> tuple[tuple[ModuleType, str], ...]:
    """Where :func:`kernels_blocked` acts (looked up once: a driver enters it on every case)."""
    return tuple((mod, name) for mod, _, name in torch_functions(FORBIDDEN_CALLS))


@contextlib.contextmanager
def kernels_blocked(active: bool, what: str) -> Iterator[None]:
    """While active, torch's functions named in :data:`FORBIDDEN_CALLS` (``F.layer_norm``,
    ``torch.native_batch_norm``...) raise a RuntimeError naming ``what``: the in-notebook
    check's counterpart of the grader's call trap, for a driver running a learner's module."""
    if not active:
        yield
        return

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError(
            f"build {what} from primitive tensor operations (mean, arithmetic, sqrt); "
            "calling torch's own normalization is not allowed here"
        )

    saved = [(mod, name, mod.__dict__[name]) for mod, name in _blockable()]
    for mod, name, _ in saved:
        setattr(mod, name, refuse)
    try:
        yield
    finally:
        for mod, name, fn in saved:
            setattr(mod, name, fn)
