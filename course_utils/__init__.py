"""course_utils: the helper package of the course on normalization in deep learning.

The small public API the notebooks use:

- data: :func:`load_mnist` (the embedded MNIST, split 8,000 / 2,000), :func:`batches`
- models: :func:`make_mlp`, :func:`make_cnn` (``norm=`` and ``placement=`` choices)
- training: :func:`train`, :func:`evaluate`, :func:`set_seed`
- probes: :class:`ActivationProbe`, :class:`UpdateRatio`
- exercises: :func:`check`, :func:`hint`
- claims: :func:`claim` (a claim check's one-line assertion, with its margin); every seed
  passes through :mod:`course_utils.seeds` (``seeds.rng``, ``seeds.generator``)
- reference implementations: :mod:`course_utils.reference` (``functional`` in NumPy,
  ``modules`` in torch), matching ``torch.nn`` exactly
- widgets: :mod:`course_utils.widgets` (imported on first use)

Importing the package sets torch to one intra-op thread (see :mod:`course_utils.config`).
"""

from . import seeds
from .claim_check import claim
from .config import configure_torch
from .data import batches, load_mnist
from .exercises import check, hint
from .models import make_cnn, make_mlp
from .probes import ActivationProbe, UpdateRatio
from .training import evaluate, set_seed, train

__all__ = [
    "configure_torch",
    "load_mnist",
    "batches",
    "make_mlp",
    "make_cnn",
    "train",
    "evaluate",
    "set_seed",
    "ActivationProbe",
    "UpdateRatio",
    "check",
    "hint",
    "claim",
    "seeds",
]
__version__ = "0.1.0"

configure_torch()
