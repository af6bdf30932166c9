"""Reference implementations of the normalization layers taught in the course.

``course_utils.reference.functional``
    NumPy forward and backward passes mirroring ``torch.nn.functional``
    (``batch_norm``, ``layer_norm``, ``group_norm``, ``instance_norm``, ``rms_norm``
    and their ``*_backward`` counterparts).

``course_utils.reference.modules``
    ``torch.nn.Module`` versions (``BatchNorm1d``, ``BatchNorm2d``, ``LayerNorm``,
    ``GroupNorm``, ``InstanceNorm1d``, ``InstanceNorm2d``, ``RMSNorm``), state-dict
    compatible with ``torch.nn``, over ``course_utils.reference.fused``: the same
    functions on torch tensors, built from primitive operations as autograd Functions
    with closed-form backward passes.

Shared by both: ``stats`` (which entries share a mean and variance, and the formulas) and
``checks`` (torch's argument checks and error messages). None of them calls torch's own
normalization kernels.
"""

from . import checks, functional, fused, modules, stats

__all__ = ["checks", "functional", "fused", "modules", "stats"]
