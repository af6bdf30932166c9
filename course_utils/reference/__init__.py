"""Reference implementations of the normalization layers taught in the course.

``course_utils.reference.functional``
    NumPy forward and backward passes mirroring ``torch.nn.functional``
    (``batch_norm``, ``layer_norm``, ``group_norm``, ``instance_norm``, ``rms_norm``
    and their ``*_backward`` counterparts).

``course_utils.reference.modules``
    ``torch.nn.Module`` versions (``BatchNorm1d``, ``BatchNorm2d``, ``LayerNorm``,
    ``GroupNorm``, ``InstanceNorm1d``, ``InstanceNorm2d``, ``RMSNorm``) built from
    primitive tensor operations, state-dict compatible with ``torch.nn``.

Neither module calls torch's own normalization kernels.
"""

from . import functional, modules

__all__ = ["functional", "modules"]
