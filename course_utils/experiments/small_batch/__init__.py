"""Lessons 04 and 05 (batch norm with small batches; batch norm at inference): where batch norm
breaks, and the remedies.

One module per job; every name is importable from here (``small_batch as sb``):

- :mod:`.data`: :func:`mnist14`, the embedded MNIST average-pooled to 14x14 (a 4x smaller
  input, so that sweeps with thousands of batch-size-2 steps stay within seconds), with a
  fixed validation split for tuning learning rates; :func:`sample_order`;
  :func:`shift_inputs` (contrast and brightness changed).
- :mod:`.ensemble`: :class:`MLPEnsemble`, K 2-layer MLPs with their own normalization
  (``"batch"``, ``"renorm"``, ``"layer"``, ``"group"`` or ``"none"``), learning rate, seed
  and dropout, trained together on the course's engine (:mod:`course_utils.ensemble`);
  :func:`ensemble_matches_torch` checks it against the same networks trained one by one.
- :mod:`.modules`: :class:`BatchRenorm1d` (Ioffe 2017), :func:`freeze_bn_statistics`.
- :mod:`.evaluation`: :func:`gradient_split_error` (how much a gradient changes when the
  same samples are split into smaller batches).
- :mod:`.sweeps`: :func:`batch_size_sweep` (the fair small-batch experiment: same samples
  seen, learning rate tuned per arm and batch size, several seeds), :func:`ghost_sweep`,
  :func:`finetune_frozen_bn` (frozen statistics when fine-tuning) and
  :func:`regularization_experiment` (batch-statistics noise compared with dropout).

The exercises' answers ``GhostBatchNorm1d`` (Hoffer et al. 2017; in
:mod:`course_utils.answers.lesson04`), ``recalibrate_bn`` ('precise BN' on recent data) and
``evaluate_accuracy`` (the correct evaluation loop; both in :mod:`course_utils.answers.lesson05`)
live with the answers; this package imports them on first use.
"""

from __future__ import annotations

from ...ensemble import flush_denormals
from .data import Split14, mnist14, sample_order, shift_inputs
from .ensemble import NORM_KINDS, MLPEnsemble, ensemble_matches_torch, mlp_member, train_ensemble
from .evaluation import gradient_split_error
from .modules import BatchRenorm1d, freeze_bn_statistics
from .sweeps import (
    SweepResult,
    batch_size_sweep,
    finetune_frozen_bn,
    ghost_sweep,
    regularization_experiment,
)

__all__ = [
    "mnist14",
    "Split14",
    "sample_order",
    "shift_inputs",
    "NORM_KINDS",
    "mlp_member",
    "MLPEnsemble",
    "flush_denormals",
    "train_ensemble",
    "ensemble_matches_torch",
    "SweepResult",
    "batch_size_sweep",
    "ghost_sweep",
    "gradient_split_error",
    "BatchRenorm1d",
    "freeze_bn_statistics",
    "finetune_frozen_bn",
    "regularization_experiment",
]


def __getattr__(name: str):
    """``GhostBatchNorm1d``, ``recalibrate_bn`` and ``evaluate_accuracy`` are the exercises'
    answers: they live in :mod:`course_utils.answers.lesson04` (the first) and
    :mod:`course_utils.answers.lesson05` (the other two) and are imported from there on first
    use (importing this package never imports an answer)."""
    if name == "GhostBatchNorm1d":
        from ...answers import lesson04

        return getattr(lesson04, name)
    if name in ("recalibrate_bn", "evaluate_accuracy"):
        from ...answers import lesson05

        return getattr(lesson05, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
