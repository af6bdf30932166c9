"""Live widgets for the lessons (JupyterLab with ipympl; static images elsewhere).

- :class:`ActivationExplorer`: train an MLP on MNIST and watch each layer's activations,
  gradients and updates change as you switch normalization, placement, activation,
  depth, width, init scale, learning rate and batch size.
- :class:`NormalizationPlayground`: which entries of an (N, C, H, W) tensor share one mean
  and variance under batch, layer, instance and group norm (Wu & He 2018, Fig. 2).
- :class:`ScalingExplorer`: gradient descent on a badly scaled 2-D regression, raw vs
  min-max vs standardized vs robust-scaled features.

Each widget displays itself when it is the last expression of a cell, and can be driven
from Python (set its controls, ``step``) with ``plotted()`` returning what it shows.
"""

from .explorer import ActivationExplorer
from .playground import NormalizationPlayground
from .scaling import ScalingExplorer

__all__ = ["ActivationExplorer", "NormalizationPlayground", "ScalingExplorer"]
