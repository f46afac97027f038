"""Conversions between pixel-unit flows and normalized ([-1, 1], align_corners=True) flows.

One normalized unit is ``(size - 1) / 2`` pixels along that axis (W for channel 0 = x,
H for channel 1 = y). An axis with a single pixel has no normalized extent: its scale is 0.
"""

from __future__ import annotations

import numbers

import torch
from einops import rearrange

from ..conventions import UNITS


def _check_size(value, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (numbers.Integral, torch.SymInt)):
        raise TypeError(f"{name} must be an integer number of pixels, got {type(value).__name__} {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1 pixel, got {value}")


def pixel_scale(height: int, width: int) -> tuple[float, float]:
    """Pixels per normalized unit, (x along W, y along H).

    One normalized unit (``align_corners=True``) is ``(size - 1) / 2`` pixels; a 1-pixel axis
    has scale 0.

    Args:
        height: image height in pixels, an integer >= 1.
        width: image width in pixels, an integer >= 1.

    Returns:
        ``((width - 1) / 2, (height - 1) / 2)`` as floats. A TypeError / ValueError names the
        argument that is not an integer >= 1.

    Example:
        >>> from flowtriton import pixel_scale
        >>> pixel_scale(32, 64)
        (31.5, 15.5)
        >>> pixel_scale(1, 3)
        (1.0, 0.0)
    """
    _check_size(height, "height")
    _check_size(width, "width")
    return (width - 1) / 2.0, (height - 1) / 2.0


_SCALES: dict = {}
_MAX_CACHED_SCALES = 256


def xy_scale(sx: float, sy: float, like: torch.Tensor) -> torch.Tensor:
    """(1, 2, 1, 1) tensor (sx, sy) with ``like``'s dtype and device.

    Built once per (values, dtype, device) on the device itself (two fills, no host-to-device copy)
    and cached, so a training step issues no kernel and no copy for it and CUDA graphs can capture
    the ops that use it. The tensor is SHARED: never modify it in place."""
    key = (float(sx), float(sy), like.dtype, like.device)
    scale = _SCALES.get(key)
    if scale is not None:
        return scale
    # A normal tensor even under inference_mode (an inference tensor in the cache would break
    # every later autograd use), built eagerly: never cached while a CUDA graph is being captured
    # (the fills would only be recorded) and synchronized once so other streams see its values.
    with torch.inference_mode(False):
        scale = torch.empty((1, 2, 1, 1), dtype=like.dtype, device=like.device)
        scale[:, 0].fill_(float(sx))
        scale[:, 1].fill_(float(sy))
    if like.device.type == "cuda":
        if torch.cuda.is_current_stream_capturing():
            return scale
        torch.cuda.current_stream(like.device).synchronize()
    if len(_SCALES) >= _MAX_CACHED_SCALES:
        _SCALES.clear()
    _SCALES[key] = scale
    return scale


def unit_factors(height: int, width: int, units: str) -> tuple[float, float]:
    """Pixels per unit of ``units`` along (x, y): (1, 1) for 'pixels', ``pixel_scale`` for 'normalized'."""
    if units not in UNITS:
        raise ValueError(f"units must be one of {UNITS}, got {units!r}")
    return pixel_scale(height, width) if units == "normalized" else (1.0, 1.0)


def unit_scale(height: int, width: int, units: str, like: torch.Tensor, factor: float = 1.0) -> torch.Tensor:
    """(1, 2, 1, 1) pixels per unit of ``units`` along (x, y), times ``factor`` (e.g. a step size
    in ``units``): ones for 'pixels', ``pixel_scale`` for 'normalized'. Shared (see
    :func:`xy_scale`): never modify it in place."""
    sx, sy = unit_factors(height, width, units)
    return xy_scale(sx * factor, sy * factor, like)


def _scale_tensor(flow: torch.Tensor, name: str) -> torch.Tensor:
    if flow.dim() != 4 or flow.shape[1] != 2:
        raise ValueError(f"{name} must have shape (N, 2, H, W), got {tuple(flow.shape)}")
    sx, sy = pixel_scale(flow.shape[2], flow.shape[3])
    return xy_scale(sx, sy, flow)


def normalized_to_pixels(flow: torch.Tensor) -> torch.Tensor:
    """(N, 2, H, W) normalized flow -> pixel flow.

    Args:
        flow: (N, 2, H, W) flow in normalized units (``align_corners=True``); channel 0 = x,
            channel 1 = y. Another shape raises a ValueError.

    Returns:
        (N, 2, H, W) flow in pixels: x times (W-1)/2, y times (H-1)/2 (see :func:`pixel_scale`).

    Example:
        >>> from flowtriton import normalized_to_pixels
        >>> normalized_to_pixels(torch.ones(1, 2, 5, 9))[0, :, 0, 0]  # (9 - 1) / 2, (5 - 1) / 2
        tensor([4., 2.])
    """
    return flow * _scale_tensor(flow, "flow")


def pixels_to_normalized(flow: torch.Tensor) -> torch.Tensor:
    """(N, 2, H, W) pixel flow -> normalized flow.

    An axis with a single pixel has no normalized extent: a ValueError names it (its pixel flow
    cannot be expressed in normalized units).

    Args:
        flow: (N, 2, H, W) flow in pixels; channel 0 = x, channel 1 = y; H, W >= 2.

    Returns:
        (N, 2, H, W) flow in normalized units: x divided by (W-1)/2, y by (H-1)/2.

    Example:
        >>> from flowtriton import normalized_to_pixels, pixels_to_normalized
        >>> flow = torch.tensor([4.0, 2.0]).view(1, 2, 1, 1).expand(1, 2, 5, 9)
        >>> pixels_to_normalized(flow)[0, :, 0, 0]
        tensor([1., 1.])
        >>> flow = torch.randn(1, 2, 5, 9)
        >>> torch.allclose(normalized_to_pixels(pixels_to_normalized(flow)), flow)  # round trip
        True
    """
    scale = _scale_tensor(flow, "flow")
    for axis, size in (("W (x)", flow.shape[3]), ("H (y)", flow.shape[2])):
        if size == 1:
            raise ValueError(f"flow has a single pixel along {axis}: normalized units are undefined "
                             f"there (1 unit = (size - 1) / 2 px = 0 px); use pixel units")
    return flow / scale


def _grid_offsets(flow: torch.Tensor) -> torch.Tensor:
    """Pixel flow -> normalized offsets, 0 along a 1-pixel axis (``grid_sample`` maps every
    coordinate there to the single pixel)."""
    sx, sy = pixel_scale(flow.shape[2], flow.shape[3])
    inv = xy_scale(1.0 / sx if sx > 0 else 0.0, 1.0 / sy if sy > 0 else 0.0, flow)
    return flow * inv


def identity_grid(n: int, height: int, width: int, dtype=torch.float32, device=None) -> torch.Tensor:
    """(N, H, W, 2) normalized identity grid built from exact integers (``F.grid_sample`` layout)."""
    ys = torch.arange(height, dtype=torch.float64, device=device)
    xs = torch.arange(width, dtype=torch.float64, device=device)
    gy = ys * (2.0 / (height - 1)) - 1.0 if height > 1 else ys * 0.0
    gx = xs * (2.0 / (width - 1)) - 1.0 if width > 1 else xs * 0.0
    grid = torch.stack(torch.meshgrid(gx, gy, indexing="xy"), dim=-1)
    return grid.to(dtype).unsqueeze(0).expand(n, height, width, 2)


def flow_to_grid(flow: torch.Tensor) -> torch.Tensor:
    """(N, 2, H, W) pixel flow -> (N, H, W, 2) normalized sampling grid for ``F.grid_sample``.

    The grid is for ``align_corners=True``. Inexact at integer positions in float32 (the float32
    grid lands just off the integers for some widths, see docs/method.md): use float64 or
    non-integer flows when comparing. Along a 1-pixel axis the offset is 0 (grid_sample samples
    that pixel).

    Args:
        flow: (N, 2, H, W) flow in pixels; channel 0 = x (along W), channel 1 = y (along H).

    Returns:
        (N, H, W, 2) sampling grid in [-1, 1] (plus the flow), ``flow``'s dtype and device; last
        axis (x, y).

    Example:
        >>> import torch.nn.functional as F
        >>> from flowtriton import flow_to_grid, warp
        >>> grid = flow_to_grid(torch.zeros(1, 2, 3, 5))
        >>> grid.shape, grid[0, 0, 0], grid[0, -1, -1]  # zero flow: the identity grid, corners at -1 and 1
        (torch.Size([1, 3, 5, 2]), tensor([-1., -1.]), tensor([1., 1.]))
        >>> image = torch.rand(1, 1, 4, 6, dtype=torch.float64)
        >>> flow = torch.rand(1, 2, 4, 6, dtype=torch.float64) - 0.5
        >>> torch.allclose(F.grid_sample(image, flow_to_grid(flow), align_corners=True), warp(image, flow))
        True
    """
    n, _, height, width = flow.shape
    base = identity_grid(n, height, width, dtype=flow.dtype, device=flow.device)
    return base + rearrange(_grid_offsets(flow), "n xy h w -> n h w xy")
