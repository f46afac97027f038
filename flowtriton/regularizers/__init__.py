"""Gradient regularizers for training: ``loss, parts = reg(model, images, labels)``.

* :class:`FlowGradReg` -- flow gradient regularization (Xia & Li 2021), exact (double backprop
  through the fused closed form) or by a first-order finite difference.
* :class:`InputGradReg` -- input-gradient regularization (double backpropagation), the baseline.
* :class:`TransformGradReg` -- the unified form: any differentiable transformation's parameters.
"""

from .common import REDUCTIONS
from .flow import FlowGradReg
from .input import InputGradReg
from .transform import TransformGradReg, affine_flow

__all__ = ["REDUCTIONS", "FlowGradReg", "InputGradReg", "TransformGradReg", "affine_flow"]
