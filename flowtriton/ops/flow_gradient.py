"""``flow_gradient``, ``flow_gradient_penalty`` and ``flow_jvp``: the FGR closed form at zero flow.

With ``D_x, D_y`` the scheme's spatial differences and ``s`` the unit scales (see
``kernels/penalty.py`` for the notation), three bilinear maps of an image ``x`` (N, C, H, W), a
loss gradient ``g`` (N, C, H, W) and a flow field ``T`` (N, 2, H, W) close under differentiation:

* ``B(x, g) = flow_gradient``                 (N, 2, H, W)
* ``J(x, T) = flow_jvp``,  ``<B(x, g), T> = <g, J(x, T)>``   (N, C, H, W)
* ``K(g, T)``,             ``<B(x, g), T> = <x, K(g, T)>``   (N, C, H, W)

so each one's backward is made of the other two: the Triton path is differentiable to any order
with four kernels. Each map, and the penalty, is a ``torch.library`` custom op (namespace
``flowtriton``) with its autograd registered, so ``torch.compile`` keeps it as one op. The penalty ``P = ||B(x, g)||^2`` per example is one fused kernel; its
backward is one more fused kernel (``dP/dg = 2 J(x, B(x, g))``, no (N, 2, H, W) intermediate)
unless a graph is being built (``create_graph=True``), when it is composed from the
differentiable Functions above. Training with FGR needs only the first: the second-order term
goes through ``g``'s own graph (the network's double backward).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .. import reference
from ..backend import resolve_backend
from ..reference.flow_gradient import flow_gradient as ref_flow_gradient
from ..reference.flow_gradient import flow_gradient_penalty as ref_penalty
from ..reference.flow_gradient import flow_jvp as ref_flow_jvp
from .units import UNITS, pixel_scale
from .validation import check_choice, check_flow, check_image, check_same


def _kernels():
    from ..kernels import penalty as k  # imported lazily: TRITON_INTERPRET must be set first

    return k


def _scale(units: str, height: int, width: int) -> tuple[float, float]:
    return (1.0, 1.0) if units == "pixels" else pixel_scale(height, width)


# --- the three bilinear maps, differentiable to any order ---------------------------------------

@torch.library.custom_op("flowtriton::flow_gradient", mutates_args=())
def flow_gradient_op(image: Tensor, grad_image: Tensor, scheme: str, sx: float, sy: float) -> Tensor:
    """B(x, g), (N, 2, H, W)."""
    return _kernels().flow_gradient(image, grad_image, scheme, (sx, sy))


@flow_gradient_op.register_fake
def _(image, grad_image, scheme, sx, sy):
    return image.new_empty((image.shape[0], 2, image.shape[2], image.shape[3]))


@torch.library.custom_op("flowtriton::flow_jvp", mutates_args=())
def flow_jvp_op(image: Tensor, field: Tensor, scheme: str, sx: float, sy: float) -> Tensor:
    """J(x, T), (N, C, H, W); ``<u, J(x, T)> = <B(x, u), T> = <x, K(u, T)>``."""
    return _kernels().flow_jvp(image, scheme, (sx, sy), field=field)


@flow_jvp_op.register_fake
def _(image, field, scheme, sx, sy):
    return torch.empty_like(image)


@torch.library.custom_op("flowtriton::image_vjp", mutates_args=())
def image_vjp_op(grad_image: Tensor, field: Tensor, scheme: str, sx: float, sy: float) -> Tensor:
    """K(g, T), (N, C, H, W); ``<u, K(g, T)> = <B(u, g), T> = <g, J(u, T)>``."""
    return _kernels().image_vjp(grad_image, field, scheme, (sx, sy))


@image_vjp_op.register_fake
def _(grad_image, field, scheme, sx, sy):
    return torch.empty_like(grad_image)


def _save(ctx, inputs, output):
    first, second, scheme, sx, sy = inputs
    ctx.scheme, ctx.sx, ctx.sy = scheme, sx, sy
    ctx.save_for_backward(first, second)


def _flow_gradient_backward(ctx, grad_field):
    image, grad_image = ctx.saved_tensors
    grad_field = grad_field.contiguous()
    args = (ctx.scheme, ctx.sx, ctx.sy)
    d_image = image_vjp_op(grad_image, grad_field, *args) if ctx.needs_input_grad[0] else None
    d_grad = flow_jvp_op(image, grad_field, *args) if ctx.needs_input_grad[1] else None
    return d_image, d_grad, None, None, None


def _flow_jvp_backward(ctx, grad_out):
    image, field = ctx.saved_tensors
    grad_out = grad_out.contiguous()
    args = (ctx.scheme, ctx.sx, ctx.sy)
    d_image = image_vjp_op(grad_out, field, *args) if ctx.needs_input_grad[0] else None
    d_field = flow_gradient_op(image, grad_out, *args) if ctx.needs_input_grad[1] else None
    return d_image, d_field, None, None, None


def _image_vjp_backward(ctx, grad_out):
    grad_image, field = ctx.saved_tensors
    grad_out = grad_out.contiguous()
    args = (ctx.scheme, ctx.sx, ctx.sy)
    d_grad = flow_jvp_op(grad_out, field, *args) if ctx.needs_input_grad[0] else None
    d_field = flow_gradient_op(grad_out, grad_image, *args) if ctx.needs_input_grad[1] else None
    return d_grad, d_field, None, None, None


flow_gradient_op.register_autograd(_flow_gradient_backward, setup_context=_save)
flow_jvp_op.register_autograd(_flow_jvp_backward, setup_context=_save)
image_vjp_op.register_autograd(_image_vjp_backward, setup_context=_save)


# --- the fused penalty --------------------------------------------------------------------------

@torch.library.custom_op("flowtriton::flow_gradient_penalty", mutates_args=())
def penalty_op(image: Tensor, grad_image: Tensor, scheme: str, sx: float, sy: float) -> Tensor:
    """(N,) ||B(x, g)||^2 per example, one fused kernel (two stages above 1024 pixels)."""
    return _kernels().penalty(image, grad_image, scheme, (sx, sy)).to(image.dtype)


@penalty_op.register_fake
def _(image, grad_image, scheme, sx, sy):
    return image.new_empty((image.shape[0],))


@torch.library.custom_op("flowtriton::_penalty_grad_wrt_grad", mutates_args=())
def _penalty_grad_wrt_grad(image: Tensor, grad_image: Tensor, grad_out: Tensor, scheme: str,
                           sx: float, sy: float) -> Tensor:
    """``2 grad_out[n] J(x, B(x, g))``: one fused kernel, no (N, 2, H, W) intermediate."""
    return _kernels().flow_jvp(image, scheme, (sx, sy), grad_image=grad_image, coef=grad_out, coef_scale=2.0)


@_penalty_grad_wrt_grad.register_fake
def _(image, grad_image, grad_out, scheme, sx, sy):
    return torch.empty_like(image)


@torch.library.custom_op("flowtriton::_penalty_grad_wrt_image", mutates_args=())
def _penalty_grad_wrt_image(image: Tensor, grad_image: Tensor, grad_out: Tensor, scheme: str,
                            sx: float, sy: float) -> Tensor:
    """``2 grad_out[n] K(g, B(x, g))``."""
    k = _kernels()
    field = k.flow_gradient(image, grad_image, scheme, (sx, sy))
    return k.image_vjp(grad_image, field, scheme, (sx, sy), coef=grad_out, coef_scale=2.0)


@_penalty_grad_wrt_image.register_fake
def _(image, grad_image, grad_out, scheme, sx, sy):
    return torch.empty_like(grad_image)


def _penalty_backward(ctx, grad_out):
    image, grad_image = ctx.saved_tensors
    need_image, need_grad = ctx.needs_input_grad[:2]
    args = (ctx.scheme, ctx.sx, ctx.sy)
    d_image = d_grad = None
    if torch.is_grad_enabled():
        # create_graph=True: compose the differentiable ops (the field is materialized).
        field = flow_gradient_op(image, grad_image, *args)
        coef = (2.0 * grad_out).view(-1, 1, 1, 1)
        if need_image:
            d_image = coef * image_vjp_op(grad_image, field, *args)
        if need_grad:
            d_grad = coef * flow_jvp_op(image, field, *args)
        return d_image, d_grad, None, None, None
    if need_grad:
        d_grad = _penalty_grad_wrt_grad(image, grad_image, grad_out, *args)
    if need_image:
        d_image = _penalty_grad_wrt_image(image, grad_image, grad_out, *args)
    return d_image, d_grad, None, None, None


penalty_op.register_autograd(_penalty_backward, setup_context=_save)


def _check(image, grad_image, scheme, units):
    check_image(image)
    check_image(grad_image, "grad_image")
    if grad_image.shape != image.shape:
        raise ValueError(f"grad_image shape {tuple(grad_image.shape)} must equal image shape {tuple(image.shape)}")
    check_same(grad_image, image, "grad_image", "image")
    check_choice(scheme, reference.SCHEMES, "scheme")
    check_choice(units, UNITS, "units")


def flow_gradient(image: torch.Tensor, grad_image: torch.Tensor, scheme: str = "forward",
                  backend: str | None = None, units: str = "pixels") -> torch.Tensor:
    """(N, 2, H, W) gradient of a loss w.r.t. the flow at zero flow.

    ``grad_image`` is the loss's gradient w.r.t. ``image`` (both (N, C, H, W)); channel 0 is x
    (along W), channel 1 is y. ``scheme``: 'forward' (the paper's; the derivative of the clamped
    gather sampler) or 'central' (ADef's). ``units``: 'pixels' (loss per pixel of flow) or
    'normalized' (per normalized unit: x times (W-1)/2, y times (H-1)/2). Differentiable in both
    inputs to any order on either backend.
    """
    _check(image, grad_image, scheme, units)
    scale = _scale(units, image.shape[2], image.shape[3])
    if resolve_backend(backend, image) == "torch":
        return ref_flow_gradient(image, grad_image, scheme, scale)
    return flow_gradient_op(image.contiguous(), grad_image.contiguous(), scheme, *scale)


def flow_gradient_penalty(image: torch.Tensor, grad_image: torch.Tensor, scheme: str = "forward",
                          backend: str | None = None, units: str = "pixels") -> torch.Tensor:
    """(N,) per-example squared L2 norm of :func:`flow_gradient` (loss^2 per ``units``^2).

    On the Triton backend the stencil, product, channel sum, square and per-example reduction
    are one kernel; the backward (w.r.t. ``grad_image``, and ``image`` when it requires grad) is
    differentiable again, as FGR's double backpropagation and gradgradcheck need.
    """
    _check(image, grad_image, scheme, units)
    scale = _scale(units, image.shape[2], image.shape[3])
    if resolve_backend(backend, image) == "torch":
        return ref_penalty(image, grad_image, scheme, scale)
    return penalty_op(image.contiguous(), grad_image.contiguous(), scheme, *scale)


def flow_jvp(image: torch.Tensor, flow: torch.Tensor, scheme: str = "forward",
             backend: str | None = None) -> torch.Tensor:
    """(N, C, H, W) first-order change of ``image`` warped by a small pixel ``flow`` (N, 2, H, W)
    at zero flow: ``sum_d flow_d D_d image`` (the adjoint of :func:`flow_gradient` in
    ``grad_image``). With scheme='forward' it is the derivative of the clamped gather sampler
    along ``flow``. Differentiable in both inputs to any order.
    """
    check_image(image)
    check_flow(flow, image)
    check_choice(scheme, reference.SCHEMES, "scheme")
    if resolve_backend(backend, image) == "torch":
        return ref_flow_jvp(image, flow, scheme)
    return flow_jvp_op(image.contiguous(), flow.contiguous(), scheme, 1.0, 1.0)
