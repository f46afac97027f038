"""The names flowtriton uses, in one place (docs/conventions.md explains each in full).

* ``PADDING_MODES``: what a warp reads outside the image. 'zeros': 0; 'border': the nearest
  edge pixel (corner indices clamped); 'reflection': the coordinate reflected about the first and
  last pixel centre.
* ``SCHEMES``: the spatial differences of the flow gradient at zero flow. 'forward' (the
  paper's): ``v[j + 1] - v[j]``, 0 in the last column/row; 'central' (ADef's):
  ``(v[j + 1] - v[j - 1]) / 2``, one-sided at the borders.
* ``UNITS``: the unit of a flow or a flow budget. 'pixels'; 'normalized': the [-1, 1] grid of
  ``F.grid_sample(align_corners=True)``, 1 unit = ``(size - 1) / 2`` pixels along that axis (W for
  x, H for y).
* ``REDUCTIONS``: how a regularizer reduces its per-example squared gradients over a batch of B:
  'paper' (the FGR authors' ``mean_b ||G_b||^2`` with ``G_b`` the gradient of the batch-mean
  loss), 'mean' (``mean_b ||B G_b||^2``), 'sum' (``sum_b ||B G_b||^2``).

The kernels take a padding mode and a scheme as integer constexprs: ``PADDING_CODES`` and
``SCHEME_CODES`` map the names to them (the kernels' ``PAD`` and ``CENTRAL`` arguments).

Pure constants, no imports: every layer (reference, kernels, ops, regularizers) may import it.
"""

PADDING_MODES = ("zeros", "border", "reflection")
SCHEMES = ("forward", "central")
UNITS = ("normalized", "pixels")
REDUCTIONS = ("paper", "mean", "sum")

#: padding mode -> the warp kernels' ``PAD`` constexpr
PADDING_CODES = {"zeros": 0, "border": 1, "reflection": 2}
#: scheme -> the flow-gradient kernels' ``CENTRAL`` constexpr (as a bool: 0 forward, 1 central)
SCHEME_CODES = {"forward": 0, "central": 1}

__all__ = ["PADDING_CODES", "PADDING_MODES", "REDUCTIONS", "SCHEMES", "SCHEME_CODES", "UNITS"]
