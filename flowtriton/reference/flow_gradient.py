"""Pure-PyTorch flow gradient at zero flow and its squared-norm penalty (the FGR closed form).

``flow_gradient(image, grad_image)[n, 0] = sum_c grad_image[n, c] * Dx image[n, c]`` and channel 1
likewise with ``Dy``, in pixel units: the gradient of a loss w.r.t. a pixel-unit flow at
``flow = 0`` when ``grad_image`` is the loss's gradient w.r.t. the (warped) image.

Schemes:
* ``'forward'`` (the paper's): ``Dx v[j] = v[j + 1] - v[j]``, 0 in the last column (rows alike).
  It is the derivative of ``reference.warp(..., padding_mode='border')`` at zero flow.
* ``'central'`` (ADef's): ``(v[j + 1] - v[j - 1]) / 2`` inside, one-sided differences in the
  first and last column; 0 when the axis has a single pixel.

``scale = (s_x, s_y)`` multiplies the x and y components (1 for pixel units, ``(W - 1) / 2`` and
``(H - 1) / 2`` for the paper's normalized units). :func:`flow_jvp` is the adjoint of
:func:`flow_gradient` in ``grad_image``: the first-order change of the image under a small flow.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..conventions import SCHEMES


def spatial_differences(image: torch.Tensor, scheme: str = "forward") -> torch.Tensor:
    """(N, C, H, W) -> (N, C, 2, H, W): [horizontal, vertical] differences in pixel units."""
    if scheme not in SCHEMES:
        raise ValueError(f"scheme must be one of {SCHEMES}, got {scheme!r}")
    dx = _diff_along(image, dim=-1, scheme=scheme)
    dy = _diff_along(image, dim=-2, scheme=scheme)
    return torch.stack((dx, dy), dim=2)


def _diff_along(v: torch.Tensor, dim: int, scheme: str) -> torch.Tensor:
    size = v.shape[dim]
    if size == 1:
        return torch.zeros_like(v)
    if scheme == "forward":
        d = v.narrow(dim, 1, size - 1) - v.narrow(dim, 0, size - 1)
        pad = [0, 1, 0, 0] if dim == -1 else [0, 0, 0, 1]
        return F.pad(d, pad)
    first = v.narrow(dim, 1, 1) - v.narrow(dim, 0, 1)
    last = v.narrow(dim, size - 1, 1) - v.narrow(dim, size - 2, 1)
    if size == 2:
        return torch.cat((first, last), dim=dim)
    inner = 0.5 * (v.narrow(dim, 2, size - 2) - v.narrow(dim, 0, size - 2))
    return torch.cat((first, inner, last), dim=dim)


def _apply_scale(field: torch.Tensor, scale) -> torch.Tensor:
    if tuple(scale) == (1.0, 1.0):
        return field
    factors = torch.tensor([float(scale[0]), float(scale[1])], dtype=field.dtype, device=field.device)
    return field * factors.view(1, 2, 1, 1)


def flow_gradient(image: torch.Tensor, grad_image: torch.Tensor, scheme: str = "forward",
                  scale=(1.0, 1.0)) -> torch.Tensor:
    """(N, C, H, W) image and loss gradient -> (N, 2, H, W) flow gradient at zero flow (pixel
    units for the default ``scale``)."""
    field = (grad_image.unsqueeze(2) * spatial_differences(image, scheme)).sum(dim=1)
    return _apply_scale(field, scale)


def flow_gradient_penalty(image: torch.Tensor, grad_image: torch.Tensor, scheme: str = "forward",
                          scale=(1.0, 1.0)) -> torch.Tensor:
    """Per-example squared L2 norm of the flow gradient: (N,), pixel units squared by default."""
    return flow_gradient(image, grad_image, scheme, scale).square().flatten(1).sum(dim=1)


def flow_jvp(image: torch.Tensor, flow: torch.Tensor, scheme: str = "forward", scale=(1.0, 1.0)) -> torch.Tensor:
    """(N, C, H, W): ``sum_d scale_d flow_d D_d image``, the first-order change of the warped image
    under ``flow`` (N, 2, H, W) at zero flow."""
    weighted = _apply_scale(flow, scale).unsqueeze(1)  # (N, 1, 2, H, W)
    return (spatial_differences(image, scheme) * weighted).sum(dim=2)
