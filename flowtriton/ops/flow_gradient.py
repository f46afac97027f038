"""``flow_gradient``, ``flow_gradient_penalty`` and ``flow_jvp``: the FGR closed form at zero flow.

With ``D_x, D_y`` the scheme's spatial differences and ``s`` the unit scales (see
``kernels/flow_gradient.py`` for the notation), three bilinear maps of an image ``x`` (N, C, H, W), a
loss gradient ``g`` (N, C, H, W) and a flow field ``T`` (N, 2, H, W) close under differentiation:

* ``B(x, g) = flow_gradient``                 (N, 2, H, W)
* ``J(x, T) = flow_jvp``,  ``<B(x, g), T> = <g, J(x, T)>``   (N, C, H, W)
* ``K(g, T)``,             ``<B(x, g), T> = <x, K(g, T)>``   (N, C, H, W)

so each one's backward is made of the other two: the Triton path is differentiable to any order
with four kernels. Each map, and the penalty, is a ``torch.library`` custom op (namespace
``flowtriton``) with its autograd registered, so ``torch.compile`` keeps it as one op. The penalty
``P = ||B(x, g)||^2`` per example is one fused kernel; its
backward is one more fused kernel (``dP/dg = 2 J(x, B(x, g))``, no (N, 2, H, W) intermediate)
unless a graph is being built (``create_graph=True``), when it is composed from the
differentiable Functions above. Training with FGR needs only the first: the second-order term
goes through ``g``'s own graph (the network's double backward).

In eager mode (no tracing, see :func:`flowtriton.backend.traced`) the public functions take a
leaner route with the same structure: the launcher itself when no input needs a gradient, else an
``autograd.Function`` (``FlowGradientFunction``, ``FlowJVPFunction``, ``ImageVJPFunction``,
``FlowGradientPenaltyFunction``) whose backward applies the others when a graph is being built
and calls the launchers directly when not. The custom ops stay for torch.compile, export, fake
tensors and torch.func.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..backend import eager_apply, resolve_backend, traced
from ..conventions import SCHEMES, UNITS
from ..reference.flow_gradient import flow_gradient as ref_flow_gradient
from ..reference.flow_gradient import flow_gradient_penalty as ref_penalty
from ..reference.flow_gradient import flow_jvp as ref_flow_jvp
from .units import pixel_scale
from .validation import check_choice, check_image_flow, check_image_pair
from .validation import contiguous as _c

_KP = None  # flowtriton.kernels.flow_gradient, imported on the first Triton call: TRITON_INTERPRET must be set first


def _kernels():
    global _KP
    if _KP is None:
        from ..kernels import flow_gradient as k

        _KP = k
    return _KP



_PIXELS = (1.0, 1.0)


def _scale(units: str, height: int, width: int) -> tuple[float, float]:
    return _PIXELS if units == "pixels" else pixel_scale(height, width)


def _check_op(image, grad_image, scheme):
    check_image_pair(image, grad_image)
    if scheme.__class__ is not str or scheme not in SCHEMES:
        check_choice(scheme, SCHEMES, "scheme")


# --- the three bilinear maps, differentiable to any order ---------------------------------------

@torch.library.custom_op("flowtriton::flow_gradient", mutates_args=())
def flow_gradient_op(image: Tensor, grad_image: Tensor, scheme: str, sx: float, sy: float) -> Tensor:
    """B(x, g), (N, 2, H, W)."""
    _check_op(image, grad_image, scheme)  # a torch.ops entry: the launchers do not check
    return (_KP or _kernels()).flow_gradient(_c(image), _c(grad_image), scheme, (sx, sy))


@flow_gradient_op.register_fake
def _(image, grad_image, scheme, sx, sy):
    return image.new_empty((image.shape[0], 2, image.shape[2], image.shape[3]))


@torch.library.custom_op("flowtriton::flow_jvp", mutates_args=())
def flow_jvp_op(image: Tensor, field: Tensor, scheme: str, sx: float, sy: float) -> Tensor:
    """J(x, T), (N, C, H, W); ``<u, J(x, T)> = <B(x, u), T> = <x, K(u, T)>``."""
    check_image_flow(image, field, scheme, SCHEMES, "scheme", flow_name="field")
    return (_KP or _kernels()).flow_jvp(_c(image), scheme, (sx, sy), field=_c(field))


@flow_jvp_op.register_fake
def _(image, field, scheme, sx, sy):
    return torch.empty_like(image)


@torch.library.custom_op("flowtriton::image_vjp", mutates_args=())
def image_vjp_op(grad_image: Tensor, field: Tensor, scheme: str, sx: float, sy: float) -> Tensor:
    """K(g, T), (N, C, H, W); ``<u, K(g, T)> = <B(u, g), T> = <g, J(u, T)>``."""
    check_image_flow(grad_image, field, scheme, SCHEMES, "scheme", image_name="grad_image", flow_name="field")
    return (_KP or _kernels()).image_vjp(_c(grad_image), _c(field), scheme, (sx, sy))


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
    _check_op(image, grad_image, scheme)
    out = (_KP or _kernels()).penalty(_c(image), _c(grad_image), scheme, (sx, sy))
    return out if out.dtype == image.dtype else out.to(image.dtype)


@penalty_op.register_fake
def _(image, grad_image, scheme, sx, sy):
    return image.new_empty((image.shape[0],))


@torch.library.custom_op("flowtriton::_penalty_grad_wrt_grad", mutates_args=())
def _penalty_grad_wrt_grad(image: Tensor, grad_image: Tensor, grad_out: Tensor, scheme: str,
                           sx: float, sy: float) -> Tensor:
    """``2 grad_out[n] J(x, B(x, g))``: one fused kernel, no (N, 2, H, W) intermediate."""
    return (_KP or _kernels()).penalty_grad(_c(image), _c(grad_image), grad_out, scheme, (sx, sy))


@_penalty_grad_wrt_grad.register_fake
def _(image, grad_image, grad_out, scheme, sx, sy):
    return torch.empty_like(image)


@torch.library.custom_op("flowtriton::_penalty_grad_wrt_image", mutates_args=())
def _penalty_grad_wrt_image(image: Tensor, grad_image: Tensor, grad_out: Tensor, scheme: str,
                            sx: float, sy: float) -> Tensor:
    """``2 grad_out[n] K(g, B(x, g))``."""
    k, image, grad_image = (_KP or _kernels()), _c(image), _c(grad_image)
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


# --- the eager route: autograd.Functions over the launchers --------------------------------------

def _save_pair(ctx, first, second, scheme, sx, sy):
    ctx.scheme, ctx.scale = scheme, (sx, sy)
    ctx.save_for_backward(first, second)


class FlowGradientFunction(torch.autograd.Function):
    """B(x, g) in eager mode; differentiable to any order."""

    @staticmethod
    def forward(ctx, image, grad_image, scheme, sx, sy):
        _save_pair(ctx, image, grad_image, scheme, sx, sy)
        return _launch_flow_gradient(image, grad_image, scheme, (sx, sy))

    @staticmethod
    def backward(ctx, grad_field):
        image, grad_image = ctx.saved_tensors
        return (*_flow_gradient_vjp(ctx, image, grad_image, grad_field.contiguous()), None, None, None)


class FlowJVPFunction(torch.autograd.Function):
    """J(x, T) in eager mode; differentiable to any order."""

    @staticmethod
    def forward(ctx, image, field, scheme, sx, sy):
        _save_pair(ctx, image, field, scheme, sx, sy)
        return _launch_flow_jvp(image, field, scheme, (sx, sy))

    @staticmethod
    def backward(ctx, grad_out):
        image, field = ctx.saved_tensors
        grad_out, scheme, scale = grad_out.contiguous(), ctx.scheme, ctx.scale
        graph, need = torch.is_grad_enabled(), ctx.needs_input_grad
        d_image = d_field = None
        if need[0]:
            d_image = (ImageVJPFunction.apply(grad_out, field, scheme, *scale) if graph
                       else _KP.image_vjp(grad_out, field, scheme, scale))
        if need[1]:
            d_field = (FlowGradientFunction.apply(image, grad_out, scheme, *scale) if graph
                       else _KP.flow_gradient(image, grad_out, scheme, scale))
        return d_image, d_field, None, None, None


class ImageVJPFunction(torch.autograd.Function):
    """K(g, T) in eager mode; differentiable to any order."""

    @staticmethod
    def forward(ctx, grad_image, field, scheme, sx, sy):
        _save_pair(ctx, grad_image, field, scheme, sx, sy)
        return (_KP or _kernels()).image_vjp(grad_image, field, scheme, (sx, sy))

    @staticmethod
    def backward(ctx, grad_out):
        grad_image, field = ctx.saved_tensors
        grad_out, scheme, scale = grad_out.contiguous(), ctx.scheme, ctx.scale
        graph, need = torch.is_grad_enabled(), ctx.needs_input_grad
        d_grad = d_field = None
        if need[0]:
            d_grad = (FlowJVPFunction.apply(grad_out, field, scheme, *scale) if graph
                      else _KP.flow_jvp(grad_out, scheme, scale, field=field))
        if need[1]:
            d_field = (FlowGradientFunction.apply(grad_out, grad_image, scheme, *scale) if graph
                       else _KP.flow_gradient(grad_out, grad_image, scheme, scale))
        return d_grad, d_field, None, None, None


def _flow_gradient_vjp(ctx, image, grad_image, grad_field):
    """(d image, d grad_image) of ``<B(image, grad_image), grad_field>``: K(g, .) and J(x, .)."""
    scheme, scale = ctx.scheme, ctx.scale
    graph, need = torch.is_grad_enabled(), ctx.needs_input_grad
    d_image = d_grad = None
    if need[0]:
        d_image = (ImageVJPFunction.apply(grad_image, grad_field, scheme, *scale) if graph
                   else _KP.image_vjp(grad_image, grad_field, scheme, scale))
    if need[1]:
        d_grad = (FlowJVPFunction.apply(image, grad_field, scheme, *scale) if graph
                  else _KP.flow_jvp(image, scheme, scale, field=grad_field))
    return d_image, d_grad


class FlowGradientPenaltyFunction(torch.autograd.Function):
    """The fused penalty in eager mode. Backward: the fused kernels without a graph; composed from
    the differentiable Functions above when one is being built (``create_graph=True``)."""

    @staticmethod
    def forward(ctx, image, grad_image, scheme, sx, sy):
        ctx.scheme, ctx.scale = scheme, (sx, sy)
        ctx.save_for_backward(image, grad_image)
        out = (_KP or _kernels()).penalty(image, grad_image, scheme, ctx.scale)
        return out if out.dtype == image.dtype else out.to(image.dtype)

    @staticmethod
    def backward(ctx, grad_out):
        image, grad_image = ctx.saved_tensors
        need = ctx.needs_input_grad
        need_image, need_grad = need[0], need[1]
        scheme, scale = ctx.scheme, ctx.scale
        d_image = d_grad = None
        if torch.is_grad_enabled():
            field = FlowGradientFunction.apply(image, grad_image, scheme, *scale)
            coef = (2.0 * grad_out).view(-1, 1, 1, 1)
            if need_image:
                d_image = coef * ImageVJPFunction.apply(grad_image, field, scheme, *scale)
            if need_grad:
                d_grad = coef * FlowJVPFunction.apply(image, field, scheme, *scale)
            return d_image, d_grad, None, None, None
        k = _KP
        if need_grad:
            d_grad = k.penalty_grad(image, grad_image, grad_out, scheme, scale)
        if need_image:
            field = k.flow_gradient(image, grad_image, scheme, scale)
            d_image = k.image_vjp(grad_image, field, scheme, scale, coef=grad_out, coef_scale=2.0)
        return d_image, d_grad, None, None, None


_APPLY = {f: eager_apply(f) for f in (FlowGradientFunction, FlowJVPFunction, FlowGradientPenaltyFunction)}
_penalty_apply = _APPLY[FlowGradientPenaltyFunction]


# --- public functions ---------------------------------------------------------------------------

def _check(image, grad_image, scheme, units):
    check_image_pair(image, grad_image)
    if scheme.__class__ is not str or scheme not in SCHEMES:
        check_choice(scheme, SCHEMES, "scheme")
    if units.__class__ is not str or units not in UNITS:
        check_choice(units, UNITS, "units")


def _launch_flow_gradient(image, grad_image, scheme, scale):
    return (_KP or _kernels()).flow_gradient(image, grad_image, scheme, scale)


def _launch_penalty(image, grad_image, scheme, scale):
    out = (_KP or _kernels()).penalty(image, grad_image, scheme, scale)
    return out if out.dtype == image.dtype else out.to(image.dtype)


def _launch_flow_jvp(image, field, scheme, scale):
    return (_KP or _kernels()).flow_jvp(image, scheme, scale, field=field)


def _triton(function, op, launch, first, second, scheme, scale):
    """The Triton route for validated inputs: the custom op ``op`` under tracing, else the
    autograd.Function ``function`` when a gradient is needed, else the launcher ``launch``."""
    first, second = _c(first), _c(second)
    if traced(first, second):
        return op(first, second, scheme, *scale)
    if (first.requires_grad or second.requires_grad) and torch.is_grad_enabled():
        return _APPLY[function](first, second, scheme, *scale)
    return launch(first, second, scheme, scale)


def flow_gradient(image: torch.Tensor, grad_image: torch.Tensor, scheme: str = "forward",
                  backend: str | None = None, units: str = "pixels") -> torch.Tensor:
    """(N, 2, H, W) gradient of a loss w.r.t. the flow at zero flow.

    The chain rule through the warp at zero flow: ``sum_c grad_image * D_d image`` per direction
    d, with ``D_d`` the scheme's spatial difference. Differentiable in both inputs to any order
    on either backend.

    Args:
        image: (N, C, H, W) image the loss was evaluated at.
        grad_image: (N, C, H, W) gradient of the loss w.r.t. ``image``, same shape, dtype and device.
        scheme: 'forward' (the paper's; the derivative of the clamped gather sampler) or
            'central' (ADef's).
        backend: 'auto', 'triton' or 'torch'; ``None`` uses the setting in force.
        units: 'pixels' (loss per pixel of flow) or 'normalized' (per normalized unit: x times
            (W-1)/2, y times (H-1)/2).

    Returns:
        (N, 2, H, W) gradient w.r.t. the flow; channel 0 is x (along W), channel 1 is y.

    Example:
        >>> from flowtriton import flow_gradient, warp
        >>> image = torch.rand(1, 3, 5, 5, dtype=torch.float64)
        >>> grad_image = torch.randn(1, 3, 5, 5, dtype=torch.float64)
        >>> field = flow_gradient(image, grad_image)
        >>> field.shape, field.dtype
        (torch.Size([1, 2, 5, 5]), torch.float64)
        >>> # the same as differentiating the (border-padded) warp at zero flow
        >>> flow = torch.zeros(1, 2, 5, 5, dtype=torch.float64, requires_grad=True)
        >>> loss = (warp(image, flow, padding_mode="border") * grad_image).sum()
        >>> torch.allclose(torch.autograd.grad(loss, flow)[0], field)
        True
        >>> normalized = flow_gradient(image, grad_image, units="normalized")  # (5 - 1) / 2 = 2 px per unit
        >>> torch.allclose(normalized, 2 * field)
        True
    """
    _check(image, grad_image, scheme, units)
    scale = _scale(units, image.shape[2], image.shape[3])
    if resolve_backend(backend, image) == "torch":
        return ref_flow_gradient(image, grad_image, scheme, scale)
    return _triton(FlowGradientFunction, flow_gradient_op, _launch_flow_gradient, image, grad_image, scheme, scale)


def flow_gradient_penalty(image: torch.Tensor, grad_image: torch.Tensor, scheme: str = "forward",
                          backend: str | None = None, units: str = "pixels") -> torch.Tensor:
    """(N,) per-example squared L2 norm of :func:`flow_gradient` (loss^2 per ``units``^2).

    On the Triton backend the stencil, product, channel sum, square and per-example reduction
    are one kernel; the backward (w.r.t. ``grad_image``, and ``image`` when it requires grad) is
    differentiable again, as FGR's double backpropagation and gradgradcheck need.

    Args:
        image: (N, C, H, W) image the loss was evaluated at.
        grad_image: (N, C, H, W) gradient of the loss w.r.t. ``image``, same shape, dtype and device.
        scheme: 'forward' or 'central', as in :func:`flow_gradient`.
        backend: 'auto', 'triton' or 'torch'; ``None`` uses the setting in force.
        units: 'pixels' or 'normalized', as in :func:`flow_gradient`.

    Returns:
        (N,) ``||flow_gradient(image, grad_image)||^2`` per example, ``image``'s dtype.

    Example:
        >>> from flowtriton import flow_gradient, flow_gradient_penalty
        >>> image, grad_image = torch.rand(2, 3, 8, 8), torch.randn(2, 3, 8, 8)
        >>> penalty = flow_gradient_penalty(image, grad_image)
        >>> penalty.shape, penalty.dtype
        (torch.Size([2]), torch.float32)
        >>> torch.allclose(penalty, flow_gradient(image, grad_image).pow(2).sum(dim=(1, 2, 3)))
        True
    """
    _check(image, grad_image, scheme, units)
    scale = _PIXELS if units == "pixels" else pixel_scale(image.shape[2], image.shape[3])
    if resolve_backend(backend, image) == "torch":
        return ref_penalty(image, grad_image, scheme, scale)
    image, grad_image = _c(image), _c(grad_image)
    if traced(image, grad_image):
        return penalty_op(image, grad_image, scheme, *scale)
    if (image.requires_grad or grad_image.requires_grad) and torch.is_grad_enabled():
        return _penalty_apply(image, grad_image, scheme, *scale)
    return _launch_penalty(image, grad_image, scheme, scale)


def flow_jvp(image: torch.Tensor, flow: torch.Tensor, scheme: str = "forward",
             backend: str | None = None) -> torch.Tensor:
    """(N, C, H, W) first-order change of ``image`` warped by a small pixel ``flow`` at zero flow.

    ``sum_d flow_d D_d image``: the adjoint of :func:`flow_gradient` in ``grad_image``, i.e.
    ``<flow_gradient(x, g), T> = <g, flow_jvp(x, T)>``. With scheme='forward' it is the
    derivative of the clamped gather sampler along ``flow``. Differentiable in both inputs to any
    order.

    Args:
        image: (N, C, H, W) image.
        flow: (N, 2, H, W) direction in pixels (channel 0 = x, channel 1 = y), same N, H, W,
            dtype and device as ``image``.
        scheme: 'forward' or 'central', as in :func:`flow_gradient`.
        backend: 'auto', 'triton' or 'torch'; ``None`` uses the setting in force.

    Returns:
        (N, C, H, W) directional derivative, ``image``'s dtype.

    Example:
        >>> from flowtriton import flow_gradient, flow_jvp
        >>> ramp = torch.arange(5.0).expand(1, 1, 5, 5)  # rises by 1 per pixel along x
        >>> flow = torch.zeros(1, 2, 5, 5)
        >>> flow[:, 0] = 0.5
        >>> flow_jvp(ramp, flow)[0, 0, 0]  # 0.5 px times slope 1; the forward difference is 0 at the edge
        tensor([0.5000, 0.5000, 0.5000, 0.5000, 0.0000])
        >>> image, grad_image, field = torch.rand(1, 3, 5, 5), torch.randn(1, 3, 5, 5), torch.randn(1, 2, 5, 5)
        >>> lhs = (flow_gradient(image, grad_image) * field).sum()
        >>> torch.allclose(lhs, (grad_image * flow_jvp(image, field)).sum())  # the adjoint
        True
    """
    check_image_flow(image, flow, scheme, SCHEMES, "scheme")
    if resolve_backend(backend, image) == "torch":
        return ref_flow_jvp(image, flow, scheme)
    return _triton(FlowJVPFunction, flow_jvp_op, _launch_flow_jvp, image, flow, scheme, (1.0, 1.0))
