"""Gradient regularizers for training: ``loss, parts = reg(model, images, labels)``.

* :class:`FlowGradReg` -- flow gradient regularization (Xia & Li 2021), exact (double backprop
  through the fused closed form) or by a first-order finite difference.
* :class:`InputGradReg` -- input-gradient regularization (double backpropagation), the baseline.
* :class:`TransformGradReg` -- the unified form: any differentiable transformation's parameters.
* :func:`fgr_penalty`, :func:`igr_penalty`, :func:`fgr_random_start` -- the functional
  primitives under the first two, for loops that compute their own loss.
"""

from .common import REDUCTIONS
from .flow import DEFAULT_FGR_LAM, FlowGradReg
from .functional import fgr_penalty, fgr_random_start, igr_penalty
from .input import DEFAULT_IGR_LAM, InputGradReg
from .transform import TransformGradReg, affine_flow

__all__ = ["DEFAULT_FGR_LAM", "DEFAULT_IGR_LAM", "REDUCTIONS", "FlowGradReg", "InputGradReg", "TransformGradReg",
           "affine_flow", "fgr_penalty", "fgr_random_start", "igr_penalty"]
