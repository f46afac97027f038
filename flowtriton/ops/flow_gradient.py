"""``flow_gradient`` and ``flow_gradient_penalty``: the FGR closed form at zero flow.

Reference (torch) path only for now; the fused Triton penalty kernel plugs in here.
"""

from __future__ import annotations

import torch

from .. import reference
from .validation import check_choice, check_image, check_same


def _check(image, grad_image, scheme):
    check_image(image)
    check_image(grad_image, "grad_image")
    if grad_image.shape != image.shape:
        raise ValueError(f"grad_image shape {tuple(grad_image.shape)} must equal image shape {tuple(image.shape)}")
    check_same(grad_image, image, "grad_image", "image")
    check_choice(scheme, reference.SCHEMES, "scheme")


def flow_gradient(image: torch.Tensor, grad_image: torch.Tensor, scheme: str = "forward",
                  backend: str | None = None) -> torch.Tensor:
    """(N, 2, H, W) pixel-unit gradient of a loss w.r.t. the flow at zero flow.

    ``grad_image`` is the loss's gradient w.r.t. ``image`` (both (N, C, H, W)); channel 0 is x
    (along W), channel 1 is y. ``scheme``: 'forward' (the paper's) or 'central' (ADef's).
    """
    _check(image, grad_image, scheme)
    return reference.flow_gradient(image, grad_image, scheme)


def flow_gradient_penalty(image: torch.Tensor, grad_image: torch.Tensor, scheme: str = "forward",
                          backend: str | None = None) -> torch.Tensor:
    """(N,) per-example squared L2 norm of :func:`flow_gradient`, pixels^-2 x loss^2 units."""
    _check(image, grad_image, scheme)
    return reference.flow_gradient_penalty(image, grad_image, scheme)
