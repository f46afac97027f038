"""``flow_gradient``, ``flow_gradient_penalty`` and ``flow_jvp``: the FGR closed form at zero flow.

With ``D_x, D_y`` the scheme's spatial differences and ``s`` the unit scales (see
``kernels/penalty.py`` for the notation), three bilinear maps of an image ``x`` (N, C, H, W), a
loss gradient ``g`` (N, C, H, W) and a flow field ``T`` (N, 2, H, W) close under differentiation:

* ``B(x, g) = flow_gradient``                 (N, 2, H, W)
* ``J(x, T) = flow_jvp``,  ``<B(x, g), T> = <g, J(x, T)>``   (N, C, H, W)
* ``K(g, T)``,             ``<B(x, g), T> = <x, K(g, T)>``   (N, C, H, W)

so each one's backward is made of the other two: the Triton path is differentiable to any order
with four kernels. The penalty ``P = ||B(x, g)||^2`` per example is one fused kernel; its
backward is one more fused kernel (``dP/dg = 2 J(x, B(x, g))``, no (N, 2, H, W) intermediate)
unless a graph is being built (``create_graph=True``), when it is composed from the
differentiable Functions above. Training with FGR needs only the first: the second-order term
goes through ``g``'s own graph (the network's double backward).
"""

from __future__ import annotations

import torch

from .. import reference
from ..backend import resolve_backend
from ..reference.flow_gradient import flow_gradient as ref_flow_gradient
from ..reference.flow_gradient import flow_gradient_penalty as ref_penalty
from ..reference.flow_gradient import flow_jvp as ref_flow_jvp
from .units import pixel_scale
from .validation import check_choice, check_flow, check_image, check_same

UNITS = ("pixels", "normalized")


def _kernels():
    from ..kernels import penalty as k  # imported lazily: TRITON_INTERPRET must be set first

    return k


def _scale(units: str, height: int, width: int) -> tuple[float, float]:
    return (1.0, 1.0) if units == "pixels" else pixel_scale(height, width)


class _FlowGradient(torch.autograd.Function):
    """(x, g) -> B(x, g)."""

    @staticmethod
    def forward(ctx, image, grad_image, scheme, scale):
        ctx.scheme, ctx.scale = scheme, scale
        ctx.save_for_backward(image, grad_image)
        return _kernels().flow_gradient(image, grad_image, scheme, scale)

    @staticmethod
    def backward(ctx, grad_field):
        image, grad_image = ctx.saved_tensors
        grad_field = grad_field.contiguous()
        d_image = d_grad = None
        if ctx.needs_input_grad[0]:
            d_image = _ImageVJP.apply(grad_image, grad_field, ctx.scheme, ctx.scale)
        if ctx.needs_input_grad[1]:
            d_grad = _FlowJVP.apply(image, grad_field, ctx.scheme, ctx.scale)
        return d_image, d_grad, None, None


class _FlowJVP(torch.autograd.Function):
    """(x, T) -> J(x, T); ``<u, J(x, T)> = <B(x, u), T> = <x, K(u, T)>``."""

    @staticmethod
    def forward(ctx, image, field, scheme, scale):
        ctx.scheme, ctx.scale = scheme, scale
        ctx.save_for_backward(image, field)
        return _kernels().flow_jvp(image, scheme, scale, field=field)

    @staticmethod
    def backward(ctx, grad_out):
        image, field = ctx.saved_tensors
        grad_out = grad_out.contiguous()
        d_image = d_field = None
        if ctx.needs_input_grad[0]:
            d_image = _ImageVJP.apply(grad_out, field, ctx.scheme, ctx.scale)
        if ctx.needs_input_grad[1]:
            d_field = _FlowGradient.apply(image, grad_out, ctx.scheme, ctx.scale)
        return d_image, d_field, None, None


class _ImageVJP(torch.autograd.Function):
    """(g, T) -> K(g, T); ``<u, K(g, T)> = <B(u, g), T> = <g, J(u, T)>``."""

    @staticmethod
    def forward(ctx, grad_image, field, scheme, scale):
        ctx.scheme, ctx.scale = scheme, scale
        ctx.save_for_backward(grad_image, field)
        return _kernels().image_vjp(grad_image, field, scheme, scale)

    @staticmethod
    def backward(ctx, grad_out):
        grad_image, field = ctx.saved_tensors
        grad_out = grad_out.contiguous()
        d_grad = d_field = None
        if ctx.needs_input_grad[0]:
            d_grad = _FlowJVP.apply(grad_out, field, ctx.scheme, ctx.scale)
        if ctx.needs_input_grad[1]:
            d_field = _FlowGradient.apply(grad_out, grad_image, ctx.scheme, ctx.scale)
        return d_grad, d_field, None, None


class _Penalty(torch.autograd.Function):
    """(x, g) -> (N,) ||B(x, g)||^2 per example, one fused kernel."""

    @staticmethod
    def forward(ctx, image, grad_image, scheme, scale):
        ctx.scheme, ctx.scale = scheme, scale
        ctx.save_for_backward(image, grad_image)
        return _kernels().penalty(image, grad_image, scheme, scale).to(image.dtype)

    @staticmethod
    def backward(ctx, grad_out):
        image, grad_image = ctx.saved_tensors
        need_image, need_grad = ctx.needs_input_grad[:2]
        scheme, scale = ctx.scheme, ctx.scale
        d_image = d_grad = None
        if torch.is_grad_enabled():
            # create_graph=True: compose differentiable Functions (the field is materialized).
            field = _FlowGradient.apply(image, grad_image, scheme, scale)
            coef = (2.0 * grad_out).view(-1, 1, 1, 1)
            if need_image:
                d_image = coef * _ImageVJP.apply(grad_image, field, scheme, scale)
            if need_grad:
                d_grad = coef * _FlowJVP.apply(image, field, scheme, scale)
            return d_image, d_grad, None, None
        k = _kernels()
        coef = 2.0 * grad_out
        if need_grad:
            d_grad = k.flow_jvp(image, scheme, scale, grad_image=grad_image, coef=coef)
        if need_image:
            field = k.flow_gradient(image, grad_image, scheme, scale)
            d_image = k.image_vjp(grad_image, field, scheme, scale, coef=coef)
        return d_image, d_grad, None, None


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
    return _FlowGradient.apply(image.contiguous(), grad_image.contiguous(), scheme, scale)


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
    return _Penalty.apply(image.contiguous(), grad_image.contiguous(), scheme, scale)


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
    return _FlowJVP.apply(image.contiguous(), flow.contiguous(), scheme, (1.0, 1.0))
