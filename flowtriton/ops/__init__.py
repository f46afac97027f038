"""Functional layer: validation, dispatch and autograd for every op."""

from .flow_gradient import flow_gradient, flow_gradient_penalty, flow_jvp
from .units import flow_to_grid, identity_grid, normalized_to_pixels, pixel_scale, pixels_to_normalized
from .warp import warp

__all__ = [
    "flow_gradient",
    "flow_gradient_penalty",
    "flow_jvp",
    "flow_to_grid",
    "identity_grid",
    "normalized_to_pixels",
    "pixel_scale",
    "pixels_to_normalized",
    "warp",
]
