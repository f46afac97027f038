"""Pure-PyTorch implementations of every kernel: the test oracle and the CPU path."""

from ..conventions import PADDING_MODES, SCHEMES
from .flow_gradient import flow_gradient, flow_gradient_penalty, flow_jvp, spatial_differences
from .warp import warp

__all__ = ["PADDING_MODES", "SCHEMES", "flow_gradient", "flow_gradient_penalty", "flow_jvp", "spatial_differences",
           "warp"]
