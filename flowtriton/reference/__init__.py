"""Pure-PyTorch implementations of every kernel: the test oracle and the CPU path."""

from .flow_gradient import SCHEMES, flow_gradient, flow_gradient_penalty, flow_jvp, spatial_differences
from .warp import PADDING_MODES, warp

__all__ = ["PADDING_MODES", "SCHEMES", "flow_gradient", "flow_gradient_penalty", "flow_jvp", "spatial_differences",
           "warp"]
