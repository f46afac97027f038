"""``warp``: backward warping by a pixel-unit flow, dispatched to Triton or the reference.

The Triton path is a set of ``torch.library`` custom ops (namespace ``flowtriton``), so
``torch.compile`` sees each call as one op (no graph break) and CUDA graphs can capture it:

* ``flowtriton::warp(image, flow, padding_mode)``; its autograd runs
* ``flowtriton::warp_image_grad(flow, grad_out, padding_mode)`` (the atomic scatter) and
  ``flowtriton::warp_flow_grad(image, flow, grad_out, padding_mode)`` (a gather), each
  differentiable once more through the raw kernels ``flowtriton::_warp_gather``,
  ``_warp_grad_flow`` and ``_warp_scatter``: second order on the Triton path; a third
  derivative raises. The reference (``backend='torch'``) is differentiable to any order.

The ops run the Triton kernels on CUDA tensors, and on CPU tensors when TRITON_INTERPRET=1 was
set before flowtriton was imported (that is how CI runs ``torch.library.opcheck`` on them).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .. import reference
from ..backend import resolve_backend
from .validation import check_choice, check_flow, check_image


def _kernels():
    from ..kernels import warp as k  # imported lazily: TRITON_INTERPRET must be set first

    return k


# --- raw kernels (no autograd: a derivative through them raises) ------------------------------

@torch.library.custom_op("flowtriton::_warp_gather", mutates_args=())
def _warp_gather(flow: Tensor, value_src: Optional[Tensor], tangent_src: Optional[Tensor],
                 tangent: Optional[Tensor], padding_mode: str) -> Tensor:
    """``warp(value_src) + d warp(tangent_src) along tangent``, (N, C, H, W)."""
    return _kernels().warp_gather(flow, padding_mode, value_src=value_src, tangent_src=tangent_src,
                                  tangent=tangent)


@_warp_gather.register_fake
def _(flow, value_src, tangent_src, tangent, padding_mode):
    return torch.empty_like(value_src if value_src is not None else tangent_src)


@torch.library.custom_op("flowtriton::_warp_grad_flow", mutates_args=())
def _warp_grad_flow(flow: Tensor, grad_out: Tensor, src: Optional[Tensor], cross_src: Optional[Tensor],
                    tangent: Optional[Tensor], padding_mode: str) -> Tensor:
    """``sum_c grad_out d warp(src) / d flow`` + the mixed term of ``cross_src`` along ``tangent``."""
    return _kernels().warp_grad_flow(flow, grad_out, padding_mode, src=src, cross_src=cross_src, tangent=tangent)


@_warp_grad_flow.register_fake
def _(flow, grad_out, src, cross_src, tangent, padding_mode):
    return torch.empty_like(flow)


@torch.library.custom_op("flowtriton::_warp_scatter", mutates_args=())
def _warp_scatter(flow: Tensor, grad_out: Tensor, tangent: Optional[Tensor], padding_mode: str) -> Tensor:
    """Adjoint of the warp w.r.t. the image (or its derivative along ``tangent``), (N, C, H, W)."""
    return _kernels().warp_scatter(flow, grad_out, padding_mode, tangent=tangent)


@_warp_scatter.register_fake
def _(flow, grad_out, tangent, padding_mode):
    return torch.empty_like(grad_out)


def _contiguous(t: Optional[Tensor]) -> Optional[Tensor]:
    return None if t is None else t.contiguous()


# --- differentiable ops ---------------------------------------------------------------------

@torch.library.custom_op("flowtriton::warp_image_grad", mutates_args=())
def warp_image_grad(flow: Tensor, grad_out: Tensor, padding_mode: str) -> Tensor:
    """Gradient of ``<grad_out, warp(image, flow)>`` w.r.t. the image, (N, C, H, W)."""
    return _kernels().warp_scatter(flow, grad_out, padding_mode)


@warp_image_grad.register_fake
def _(flow, grad_out, padding_mode):
    return torch.empty_like(grad_out)


def _image_grad_setup(ctx, inputs, output):
    flow, grad_out, padding_mode = inputs
    ctx.padding_mode = padding_mode
    ctx.save_for_backward(flow, grad_out)


def _image_grad_backward(ctx, gg):
    flow, grad_out = ctx.saved_tensors
    gg = gg.contiguous()
    d_flow = d_go = None
    if ctx.needs_input_grad[0]:
        d_flow = _warp_grad_flow(flow, grad_out, gg, None, None, ctx.padding_mode)
    if ctx.needs_input_grad[1]:
        d_go = _warp_gather(flow, gg, None, None, ctx.padding_mode)
    return d_flow, d_go, None


warp_image_grad.register_autograd(_image_grad_backward, setup_context=_image_grad_setup)


@torch.library.custom_op("flowtriton::warp_flow_grad", mutates_args=())
def warp_flow_grad(image: Tensor, flow: Tensor, grad_out: Tensor, padding_mode: str) -> Tensor:
    """Gradient of ``<grad_out, warp(image, flow)>`` w.r.t. the flow, (N, 2, H, W)."""
    return _kernels().warp_grad_flow(flow, grad_out, padding_mode, src=image)


@warp_flow_grad.register_fake
def _(image, flow, grad_out, padding_mode):
    return torch.empty_like(flow)


def _flow_grad_setup(ctx, inputs, output):
    image, flow, grad_out, padding_mode = inputs
    ctx.padding_mode = padding_mode
    ctx.save_for_backward(image, flow, grad_out)


def _flow_grad_backward(ctx, gg):
    image, flow, grad_out = ctx.saved_tensors
    mode, gg = ctx.padding_mode, gg.contiguous()
    d_image = d_flow = d_go = None
    if ctx.needs_input_grad[0]:
        d_image = _warp_scatter(flow, grad_out, gg, mode)
    if ctx.needs_input_grad[1]:
        d_flow = _warp_grad_flow(flow, grad_out, None, image, gg, mode)
    if ctx.needs_input_grad[2]:
        d_go = _warp_gather(flow, None, image, gg, mode)
    return d_image, d_flow, d_go, None


warp_flow_grad.register_autograd(_flow_grad_backward, setup_context=_flow_grad_setup)


@torch.library.custom_op("flowtriton::warp", mutates_args=())
def warp_op(image: Tensor, flow: Tensor, padding_mode: str) -> Tensor:
    """The Triton warp as an op: ``flowtriton.warp`` without validation or dispatch."""
    return _kernels().warp_gather(flow, padding_mode, value_src=image)


@warp_op.register_fake
def _(image, flow, padding_mode):
    return torch.empty_like(image)


def _warp_setup(ctx, inputs, output):
    image, flow, padding_mode = inputs
    ctx.padding_mode = padding_mode
    ctx.save_for_backward(image, flow)


def _warp_backward(ctx, grad_out):
    image, flow = ctx.saved_tensors
    grad_out = grad_out.contiguous()
    grad_image = grad_flow = None
    if ctx.needs_input_grad[0]:  # skipped when the image needs no gradient (attacks, FGR)
        grad_image = warp_image_grad(flow, grad_out, ctx.padding_mode)
    if ctx.needs_input_grad[1]:
        grad_flow = warp_flow_grad(image, flow, grad_out, ctx.padding_mode)
    return grad_image, grad_flow, None


warp_op.register_autograd(_warp_backward, setup_context=_warp_setup)


def warp(image: torch.Tensor, flow: torch.Tensor, padding_mode: str = "zeros",
         backend: str | None = None) -> torch.Tensor:
    """Backward-warp ``image`` (N, C, H, W) by ``flow`` (N, 2, H, W) in pixels.

    ``out[n, c, i, j] = image[n, c](i + flow[n, 1, i, j], j + flow[n, 0, i, j])``, bilinear,
    pixel centres on integers (``align_corners=True``). ``padding_mode``: 'zeros', 'border' or
    'reflection'. A pixel whose flow is NaN or infinite reads 0 and passes no gradient.
    ``backend``: 'auto' (Triton on CUDA, reference elsewhere), 'triton' or 'torch'; see
    :mod:`flowtriton.backend`. Differentiable w.r.t. image and flow, twice (any order on the
    reference). On the Triton path the gradient w.r.t. the image is an atomic scatter: under
    ``torch.use_deterministic_algorithms(True)`` it raises, as ``F.grid_sample``'s backward does.
    """
    check_image(image)
    check_flow(flow, image)
    check_choice(padding_mode, reference.PADDING_MODES, "padding_mode")
    if resolve_backend(backend, image) == "torch":
        return reference.warp(image, flow, padding_mode)
    return warp_op(image.contiguous(), flow.contiguous(), padding_mode)
