"""``warp``: backward warping by a pixel-unit flow, dispatched to Triton or the reference.

The Triton path is two ``torch.autograd.Function``s: ``_Warp`` (forward) whose backward is
``_WarpBackward``, itself differentiable once more (its backward runs the flow-direction JVP and
the mixed second-derivative kernels). Third derivatives are not supported on the Triton path
(``once_differentiable``); the reference is differentiable to any order.
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from .. import reference
from ..backend import resolve_backend
from .validation import check_choice, check_flow, check_image


def _kernels():
    from ..kernels import warp as k  # imported lazily: TRITON_INTERPRET must be set first

    return k


class _Warp(torch.autograd.Function):
    @staticmethod
    def forward(ctx, image, flow, padding_mode):
        ctx.padding_mode = padding_mode
        ctx.save_for_backward(image, flow)
        return _kernels().warp_gather(flow, padding_mode, value_src=image)

    @staticmethod
    def backward(ctx, grad_out):
        image, flow = ctx.saved_tensors
        need_image, need_flow = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_image, grad_flow = _WarpBackward.apply(
            image, flow, grad_out.contiguous(), ctx.padding_mode, need_image, need_flow)
        return grad_image, grad_flow, None


class _WarpBackward(torch.autograd.Function):
    """(image, flow, grad_out) -> (grad_image, grad_flow) of the warp."""

    @staticmethod
    def forward(ctx, image, flow, grad_out, padding_mode, need_image, need_flow):
        k = _kernels()
        ctx.padding_mode = padding_mode
        ctx.save_for_backward(image, flow, grad_out)
        grad_image = k.warp_scatter(flow, grad_out, padding_mode, out_dtype=image.dtype) if need_image else None
        grad_flow = k.warp_grad_flow(flow, grad_out, padding_mode, src=image) if need_flow else None
        return grad_image, grad_flow

    @staticmethod
    @once_differentiable
    def backward(ctx, gg_image, gg_flow):
        k = _kernels()
        image, flow, grad_out = ctx.saved_tensors
        mode = ctx.padding_mode
        gg_image = None if gg_image is None else gg_image.contiguous()
        gg_flow = None if gg_flow is None else gg_flow.contiguous()
        want_image, want_flow, want_go = ctx.needs_input_grad[:3]
        d_image = d_flow = d_go = None
        if want_go and (gg_image is not None or gg_flow is not None):
            # d grad_image / d grad_out is the warp itself; d grad_flow / d grad_out is the JVP.
            d_go = k.warp_gather(flow, mode, value_src=gg_image,
                                 tangent_src=image if gg_flow is not None else None, tangent=gg_flow,
                                 out_dtype=grad_out.dtype)
        if want_image and gg_flow is not None:
            d_image = k.warp_scatter(flow, grad_out, mode, tangent=gg_flow, out_dtype=image.dtype)
        if want_flow and (gg_image is not None or gg_flow is not None):
            d_flow = k.warp_grad_flow(flow, grad_out, mode, src=gg_image,
                                      cross_src=image if gg_flow is not None else None, tangent=gg_flow)
        return d_image, d_flow, d_go, None, None, None


def warp(image: torch.Tensor, flow: torch.Tensor, padding_mode: str = "zeros",
         backend: str | None = None) -> torch.Tensor:
    """Backward-warp ``image`` (N, C, H, W) by ``flow`` (N, 2, H, W) in pixels.

    ``out[n, c, i, j] = image[n, c](i + flow[n, 1, i, j], j + flow[n, 0, i, j])``, bilinear,
    pixel centres on integers (``align_corners=True``). ``padding_mode``: 'zeros', 'border' or
    'reflection'. A pixel whose flow is NaN or infinite reads 0 and passes no gradient.
    ``backend``: 'auto' (Triton on CUDA, reference elsewhere), 'triton' or 'torch'; see
    :mod:`flowtriton.backend`. Differentiable w.r.t. image and flow, twice.
    """
    check_image(image)
    check_flow(flow, image)
    check_choice(padding_mode, reference.PADDING_MODES, "padding_mode")
    if resolve_backend(backend, image) == "torch":
        return reference.warp(image, flow, padding_mode)
    if image.shape[0] == 0:
        return image * 0.0 + 0.0 * flow.sum()  # empty, but linked to both inputs for autograd
    return _Warp.apply(image.contiguous(), flow.contiguous(), padding_mode)
