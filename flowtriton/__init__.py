"""flowtriton: flow gradient regularization (Xia & Li 2021) with Triton warp kernels.

Conventions (see the README): images (N, C, H, W) in [0, 1]; flows (N, 2, H, W) in pixels,
channel 0 = x (along W), channel 1 = y (along H); backward bilinear warping with pixel centres
on integer coordinates.
"""

from __future__ import annotations

import importlib

from .backend import requested_backend, set_backend, use_backend
from .ops import (
    flow_gradient,
    flow_gradient_penalty,
    flow_jvp,
    flow_to_grid,
    normalized_to_pixels,
    pixel_scale,
    pixels_to_normalized,
    warp,
)

__version__ = "0.1.0"

# Higher layers load on first use, so `import flowtriton` stays light.
_LAZY = {
    "FlowGradReg": "flowtriton.regularizers",
    "InputGradReg": "flowtriton.regularizers",
    "TransformGradReg": "flowtriton.regularizers",
    "DEFAULT_FGR_LAM": "flowtriton.regularizers",
    "DEFAULT_IGR_LAM": "flowtriton.regularizers",
    "fgr_penalty": "flowtriton.regularizers",
    "fgr_random_start": "flowtriton.regularizers",
    "igr_penalty": "flowtriton.regularizers",
    "attacks": "flowtriton.attacks",
    "data": "flowtriton.data",
    "models": "flowtriton.models",
    "train": "flowtriton.train",
}


def __getattr__(name):
    if name in _LAZY:
        module = importlib.import_module(_LAZY[name])
        value = module if module.__name__.endswith("." + name) else getattr(module, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'flowtriton' has no attribute {name!r}")


__all__ = [
    "DEFAULT_FGR_LAM",
    "DEFAULT_IGR_LAM",
    "FlowGradReg",
    "InputGradReg",
    "TransformGradReg",
    "flow_gradient",
    "flow_gradient_penalty",
    "flow_jvp",
    "flow_to_grid",
    "fgr_penalty",
    "fgr_random_start",
    "igr_penalty",
    "normalized_to_pixels",
    "pixel_scale",
    "pixels_to_normalized",
    "requested_backend",
    "set_backend",
    "use_backend",
    "warp",
]
