"""Pure-PyTorch bilinear backward warping by a pixel-unit flow: the oracle for the Triton kernels.

Semantics (shared with ``kernels/warp.py``, which must agree to rounding):

* ``out[n, c, i, j] = image[n, c](y, x)`` with ``y = i + flow[n, 1, i, j]`` and
  ``x = j + flow[n, 0, i, j]`` in pixels; pixel centres sit on integer coordinates
  (``align_corners=True``). Coordinates are built from exact integers, so a zero flow is the
  identity.
* Bilinear interpolation of the four corners ``floor(x), floor(x) + 1`` (and likewise in y).
  At an exactly integer coordinate the derivative is therefore the forward difference
  ``v[k + 1] - v[k]``.
* ``padding_mode``:
  - ``'zeros'``: a corner outside the image reads 0 (as ``F.grid_sample``).
  - ``'border'``: corner indices are clamped to the image (the authors' gather sampler). The
    value equals ``F.grid_sample(padding_mode='border')``; the derivative is the forward
    difference in the first column/row and 0 in the last one and outside.
  - ``'reflection'``: the coordinate is reflected about the first and last pixel centre (period
    ``2 (size - 1)``), then sampled as ``'border'``. The derivative of the reflection is
    ``+-1``.
* Non-finite flows: a pixel whose flow has a NaN or an infinite component reads 0 in every mode
  and passes no gradient (neither to the flow nor to the image).
* Reflection reduces ``|x|`` modulo the period with ``1 / period`` rounded to float32 (as the
  kernels receive it).
* Coordinates are clamped to ``[-2, size + 1]`` before ``floor`` (no integer overflow for huge
  flows); that changes neither values nor derivatives, which are constant out there.

Written for clarity; differentiable twice by plain autograd.
"""

from __future__ import annotations

import torch

from ..conventions import PADDING_MODES


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The precision the math runs in: float64 for float64 inputs, float32 otherwise."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _map_coordinate(coord: torch.Tensor, size: int, padding_mode: str) -> torch.Tensor:
    """Apply the padding mode's coordinate map; gradient = the map's derivative (1 or +-1)."""
    if padding_mode != "reflection":
        return coord.clamp(-2.0, size + 1.0)
    if size == 1:
        return coord * 0.0
    period = 2.0 * (size - 1)
    # The kernels receive 1 / period as a float32 argument; round it the same way so that both
    # implementations pick the same branch at the reflection points.
    inv_period = float(torch.tensor(1.0 / period, dtype=torch.float32))
    raw = coord.detach()
    mag = raw.abs()
    mag = mag - period * torch.floor(mag * inv_period)
    flipped = mag > (size - 1)
    # the clamp only matters where float precision runs out (|x| >> size)
    reflected = torch.where(flipped, period - mag, mag).clamp(0.0, size - 1.0)
    sign = torch.where(raw < 0, -1.0, 1.0).to(coord.dtype)
    slope = torch.where(flipped, -sign, sign)
    # Value of the reflected coordinate, derivative `slope` (straight-through form keeps it
    # differentiable to any order with the exact piecewise-linear derivative).
    return reflected + slope * (coord - raw)


def _corners(coord: torch.Tensor, size: int, padding_mode: str):
    """Lower/upper corner indices (clamped into the image) and their in-image flags."""
    lo = torch.floor(coord.detach()).long()
    hi = lo + 1
    if padding_mode == "zeros":
        in_lo, in_hi = (lo >= 0) & (lo < size), (hi >= 0) & (hi < size)
    else:  # border / reflection read the clamped index
        in_lo = in_hi = None
    return lo.clamp(0, size - 1), hi.clamp(0, size - 1), in_lo, in_hi


def warp(image: torch.Tensor, flow: torch.Tensor, padding_mode: str = "zeros") -> torch.Tensor:
    """Backward-warp ``image`` (N, C, H, W) by ``flow`` (N, 2, H, W), pixel units.

    Returns (N, C, H, W) in ``image.dtype``. No validation here: ``flowtriton.warp`` owns it.
    """
    if padding_mode not in PADDING_MODES:
        raise ValueError(f"padding_mode must be one of {PADDING_MODES}, got {padding_mode!r}")
    n, c, height, width = image.shape
    work = compute_dtype(image.dtype)
    img = image.to(work)
    flw = flow.to(work)
    finite = torch.isfinite(flw).all(dim=1)  # (N, H, W)
    flw = torch.where(finite.unsqueeze(1), flw, torch.zeros((), dtype=work, device=flw.device))

    rows = torch.arange(height, device=image.device, dtype=work).view(1, height, 1)
    cols = torch.arange(width, device=image.device, dtype=work).view(1, 1, width)
    y = _map_coordinate(rows + flw[:, 1], height, padding_mode)
    x = _map_coordinate(cols + flw[:, 0], width, padding_mode)

    wy = y - torch.floor(y.detach())  # fractions, differentiable; floor is piecewise constant
    wx = x - torch.floor(x.detach())
    y0, y1, in_y0, in_y1 = _corners(y, height, padding_mode)
    x0, x1, in_x0, in_x1 = _corners(x, width, padding_mode)

    # Four corners stacked on dim 1: (N, 4, H, W) flat indices and bilinear weights.
    index = torch.stack((y0 * width + x0, y0 * width + x1, y1 * width + x0, y1 * width + x1), dim=1)
    weight = torch.stack(((1 - wy) * (1 - wx), (1 - wy) * wx, wy * (1 - wx), wy * wx), dim=1)
    keep = finite.unsqueeze(1)
    if padding_mode == "zeros":  # a corner outside the image reads 0: drop its weight
        keep = keep & torch.stack((in_y0 & in_x0, in_y0 & in_x1, in_y1 & in_x0, in_y1 & in_x1), dim=1)
    weight = weight * keep.to(work)

    plane = img.reshape(n, c, height * width)
    flat = index.reshape(n, 1, 4 * height * width).expand(n, c, 4 * height * width)
    corners = torch.gather(plane, 2, flat).reshape(n, c, 4, height, width)
    out = (corners * weight.unsqueeze(1)).sum(dim=2)
    return out.to(image.dtype)
