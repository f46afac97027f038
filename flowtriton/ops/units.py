"""Conversions between pixel-unit flows and normalized ([-1, 1], align_corners=True) flows.

One normalized unit is ``(size - 1) / 2`` pixels along that axis (W for channel 0 = x,
H for channel 1 = y). An axis with a single pixel has no normalized extent: its scale is 0.
"""

from __future__ import annotations

import torch

UNITS = ("normalized", "pixels")


def pixel_scale(height: int, width: int) -> tuple[float, float]:
    """Pixels per normalized unit, (x along W, y along H)."""
    return (width - 1) / 2.0, (height - 1) / 2.0


def xy_scale(sx: float, sy: float, like: torch.Tensor) -> torch.Tensor:
    """(1, 2, 1, 1) tensor (sx, sy) with ``like``'s dtype and device, built on the device with
    two fills (no host-to-device copy, so it never syncs and can be captured in a CUDA graph)."""
    scale = torch.empty((1, 2, 1, 1), dtype=like.dtype, device=like.device)
    scale[:, 0].fill_(float(sx))
    scale[:, 1].fill_(float(sy))
    return scale


def unit_scale(height: int, width: int, units: str, like: torch.Tensor) -> torch.Tensor:
    """(1, 2, 1, 1) pixels per unit of ``units`` along (x, y): ones for 'pixels', ``pixel_scale``
    for 'normalized'."""
    if units not in UNITS:
        raise ValueError(f"units must be one of {UNITS}, got {units!r}")
    sx, sy = pixel_scale(height, width) if units == "normalized" else (1.0, 1.0)
    return xy_scale(sx, sy, like)


def _scale_tensor(flow: torch.Tensor, name: str) -> torch.Tensor:
    if flow.dim() != 4 or flow.shape[1] != 2:
        raise ValueError(f"{name} must have shape (N, 2, H, W), got {tuple(flow.shape)}")
    sx, sy = pixel_scale(flow.shape[2], flow.shape[3])
    return xy_scale(sx, sy, flow)


def normalized_to_pixels(flow: torch.Tensor) -> torch.Tensor:
    """(N, 2, H, W) normalized flow -> pixel flow."""
    return flow * _scale_tensor(flow, "flow")


def pixels_to_normalized(flow: torch.Tensor) -> torch.Tensor:
    """(N, 2, H, W) pixel flow -> normalized flow (components along a 1-pixel axis become 0)."""
    scale = _scale_tensor(flow, "flow")
    return torch.where(scale > 0, flow / scale.clamp_min(1e-30), torch.zeros_like(flow))


def identity_grid(n: int, height: int, width: int, dtype=torch.float32, device=None) -> torch.Tensor:
    """(N, H, W, 2) normalized identity grid built from exact integers (``F.grid_sample`` layout)."""
    ys = torch.arange(height, dtype=torch.float64, device=device)
    xs = torch.arange(width, dtype=torch.float64, device=device)
    gy = ys * (2.0 / (height - 1)) - 1.0 if height > 1 else ys * 0.0
    gx = xs * (2.0 / (width - 1)) - 1.0 if width > 1 else xs * 0.0
    grid = torch.stack(torch.meshgrid(gx, gy, indexing="xy"), dim=-1)
    return grid.to(dtype).unsqueeze(0).expand(n, height, width, 2)


def flow_to_grid(flow: torch.Tensor) -> torch.Tensor:
    """(N, 2, H, W) pixel flow -> (N, H, W, 2) normalized sampling grid for ``F.grid_sample``
    with ``align_corners=True``. Inexact at integer positions in float32 (REFERENCE 1.2): use
    float64 or non-integer flows when comparing."""
    n, _, height, width = flow.shape
    base = identity_grid(n, height, width, dtype=flow.dtype, device=flow.device)
    return base + pixels_to_normalized(flow).permute(0, 2, 3, 1)
