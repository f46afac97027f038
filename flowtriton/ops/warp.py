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

In eager mode (no tracing, see :func:`flowtriton.backend.traced`) :func:`warp` takes a leaner
route to the same launchers, with the same derivative structure: the launcher itself when no
input needs a gradient, else the ``autograd.Function`` ``WarpFunction``, whose backward runs
``WarpImageGradFunction`` / ``WarpFlowGradFunction`` when a graph is being built
(``create_graph=True``) and the launchers directly when not. Those two are differentiable once
more through the raw launchers; a third derivative raises. A custom op costs tens of
microseconds of dispatch per call (``benchmarks/bench_host_overhead.py``); this route costs what
an ``autograd.Function`` and a kernel launch cost.
"""

from __future__ import annotations

import functools
from typing import Optional

import torch
from torch import Tensor

from .. import reference
from ..backend import eager_apply, resolve_backend, traced
from ..conventions import PADDING_MODES
from .validation import check_image_flow, check_image_pair
from .validation import contiguous as _c

_KW = None  # flowtriton.kernels.warp, imported on the first Triton call: TRITON_INTERPRET must be set first

THIRD_ORDER_MESSAGE = ("flowtriton: the Triton warp is differentiable twice; a third derivative is not implemented "
                       "on the Triton path. Use backend='torch' for higher orders.")


def _kernels():
    global _KW
    if _KW is None:
        from ..kernels import warp as k

        _KW = k
    return _KW



# --- raw kernels (no autograd: a derivative through them raises) ------------------------------

@torch.library.custom_op("flowtriton::_warp_gather", mutates_args=())
def _warp_gather(flow: Tensor, value_src: Optional[Tensor], tangent_src: Optional[Tensor],
                 tangent: Optional[Tensor], padding_mode: str) -> Tensor:
    """``warp(value_src) + d warp(tangent_src) along tangent``, (N, C, H, W)."""
    return (_KW or _kernels()).warp_gather(_c(flow), padding_mode, value_src=_c(value_src), tangent_src=_c(tangent_src),
                                           tangent=_c(tangent))


@_warp_gather.register_fake
def _(flow, value_src, tangent_src, tangent, padding_mode):
    return torch.empty_like(value_src if value_src is not None else tangent_src)


@torch.library.custom_op("flowtriton::_warp_grad_flow", mutates_args=())
def _warp_grad_flow(flow: Tensor, grad_out: Tensor, src: Optional[Tensor], cross_src: Optional[Tensor],
                    tangent: Optional[Tensor], padding_mode: str) -> Tensor:
    """``sum_c grad_out d warp(src) / d flow`` + the mixed term of ``cross_src`` along ``tangent``."""
    return (_KW or _kernels()).warp_grad_flow(_c(flow), _c(grad_out), padding_mode, src=_c(src),
                                              cross_src=_c(cross_src), tangent=_c(tangent))


@_warp_grad_flow.register_fake
def _(flow, grad_out, src, cross_src, tangent, padding_mode):
    return torch.empty_like(flow)


@torch.library.custom_op("flowtriton::_warp_scatter", mutates_args=())
def _warp_scatter(flow: Tensor, grad_out: Tensor, tangent: Optional[Tensor], padding_mode: str) -> Tensor:
    """Adjoint of the warp w.r.t. the image (or its derivative along ``tangent``), (N, C, H, W)."""
    return (_KW or _kernels()).warp_scatter(_c(flow), _c(grad_out), padding_mode, tangent=_c(tangent))


@_warp_scatter.register_fake
def _(flow, grad_out, tangent, padding_mode):
    return torch.empty_like(grad_out)


# --- differentiable ops ---------------------------------------------------------------------

@torch.library.custom_op("flowtriton::warp_image_grad", mutates_args=())
def warp_image_grad(flow: Tensor, grad_out: Tensor, padding_mode: str) -> Tensor:
    """Gradient of ``<grad_out, warp(image, flow)>`` w.r.t. the image, (N, C, H, W)."""
    check_image_flow(grad_out, flow, padding_mode, PADDING_MODES, image_name="grad_out")  # a torch.ops entry
    return (_KW or _kernels()).warp_scatter(_c(flow), _c(grad_out), padding_mode)


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
    check_image_flow(image, flow, padding_mode, PADDING_MODES)  # a torch.ops entry
    check_image_pair(image, grad_out, "grad_out")
    return (_KW or _kernels()).warp_grad_flow(_c(flow), _c(grad_out), padding_mode, src=_c(image))


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
    """The Triton warp as an op: ``flowtriton.warp`` without dispatch. The ops that torch.ops
    exposes check their inputs (the launchers do not): they run under tracing and for direct
    callers, never on the eager route."""
    check_image_flow(image, flow, padding_mode, PADDING_MODES)
    return (_KW or _kernels()).warp_forward(_c(image), _c(flow), padding_mode)


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


# --- the eager route: autograd.Functions over the launchers ----------------------------------

class _NoThirdOrder(torch.autograd.Function):
    """Passes the second-order outputs through; differentiating them raises. Its inputs are the
    tensors those outputs depend on, so the autograd engine reaches it from any of them (a node
    hanging off fresh leaves, as ``once_differentiable`` builds, is pruned by ``autograd.grad``
    and a third-order term would vanish silently)."""

    @staticmethod
    def forward(ctx, outputs, *depends_on):
        return tuple(outputs)

    @staticmethod
    def backward(ctx, *grads):
        raise RuntimeError(THIRD_ORDER_MESSAGE)


def third_order_guard(backward):
    """Decorator for the backward of a second-order Function: it runs without a graph; when a graph
    was asked for (a third derivative on the way), its outputs pass through :class:`_NoThirdOrder`."""

    @functools.wraps(backward)
    def wrapper(ctx, *grads):
        with torch.no_grad():
            outputs = backward(ctx, *grads)
        if not torch.is_grad_enabled():
            return outputs
        depends_on = [t for t in (*grads, *ctx.saved_tensors) if t is not None and t.requires_grad]
        present = [i for i, o in enumerate(outputs) if o is not None]
        if not depends_on or not present:
            return outputs
        guarded = _NoThirdOrder.apply([outputs[i] for i in present], *depends_on)
        outputs = list(outputs)
        for i, value in zip(present, guarded):
            outputs[i] = value
        return tuple(outputs)

    return wrapper


class WarpImageGradFunction(torch.autograd.Function):
    """``warp_image_grad`` in eager mode: (flow, grad_out) -> grad_image; once more differentiable."""

    @staticmethod
    def forward(ctx, flow, grad_out, padding_mode):
        ctx.padding_mode = padding_mode
        ctx.save_for_backward(flow, grad_out)
        return (_KW or _kernels()).warp_scatter(flow, grad_out, padding_mode)

    @staticmethod
    @third_order_guard
    def backward(ctx, gg):
        flow, grad_out = ctx.saved_tensors
        k, gg = _KW, gg.contiguous()
        d_flow = d_go = None
        if ctx.needs_input_grad[0]:
            d_flow = k.warp_grad_flow(flow, grad_out, ctx.padding_mode, src=gg)
        if ctx.needs_input_grad[1]:
            d_go = k.warp_gather(flow, ctx.padding_mode, value_src=gg)
        return d_flow, d_go, None


class WarpFlowGradFunction(torch.autograd.Function):
    """``warp_flow_grad`` in eager mode: (image, flow, grad_out) -> grad_flow; once more
    differentiable."""

    @staticmethod
    def forward(ctx, image, flow, grad_out, padding_mode):
        ctx.padding_mode = padding_mode
        ctx.save_for_backward(image, flow, grad_out)
        return (_KW or _kernels()).warp_grad_flow(flow, grad_out, padding_mode, src=image)

    @staticmethod
    @third_order_guard
    def backward(ctx, gg):
        image, flow, grad_out = ctx.saved_tensors
        k, mode, gg = _KW, ctx.padding_mode, gg.contiguous()
        d_image = d_flow = d_go = None
        if ctx.needs_input_grad[0]:
            d_image = k.warp_scatter(flow, grad_out, mode, tangent=gg)
        if ctx.needs_input_grad[1]:
            d_flow = k.warp_grad_flow(flow, grad_out, mode, cross_src=image, tangent=gg)
        if ctx.needs_input_grad[2]:
            d_go = k.warp_gather(flow, mode, tangent_src=image, tangent=gg)
        return d_image, d_flow, d_go, None


class WarpFunction(torch.autograd.Function):
    """``flowtriton::warp`` in eager mode; its backward is differentiable again when a graph is
    being built."""

    @staticmethod
    def forward(ctx, image, flow, padding_mode):
        ctx.padding_mode = padding_mode
        ctx.save_for_backward(image, flow)
        return (_KW or _kernels()).warp_forward(image, flow, padding_mode)

    @staticmethod
    def backward(ctx, grad_out):
        image, flow = ctx.saved_tensors
        mode, grad_out = ctx.padding_mode, grad_out.contiguous()
        graph = torch.is_grad_enabled()  # create_graph=True: the backward's own graph is needed
        grad_image = grad_flow = None
        if ctx.needs_input_grad[0]:  # skipped when the image needs no gradient (attacks, FGR)
            grad_image = (WarpImageGradFunction.apply(flow, grad_out, mode) if graph
                          else _KW.warp_scatter(flow, grad_out, mode))
        if ctx.needs_input_grad[1]:
            grad_flow = (WarpFlowGradFunction.apply(image, flow, grad_out, mode) if graph
                         else _KW.warp_grad_flow(flow, grad_out, mode, src=image))
        return grad_image, grad_flow, None


_warp_apply = eager_apply(WarpFunction)


def warp(image: torch.Tensor, flow: torch.Tensor, padding_mode: str = "zeros",
         backend: str | None = None) -> torch.Tensor:
    """Backward-warp ``image`` (N, C, H, W) by ``flow`` (N, 2, H, W) in pixels.

    ``out[n, c, i, j] = image[n, c](i + flow[n, 1, i, j], j + flow[n, 0, i, j])``, bilinear,
    pixel centres on integers (``align_corners=True``). A pixel whose flow is NaN or infinite
    reads 0 and passes no gradient. Differentiable w.r.t. image and flow, twice (any order on the
    reference). On the Triton path the gradient w.r.t. the image is an atomic scatter: under
    ``torch.use_deterministic_algorithms(True)`` it raises, as ``F.grid_sample``'s backward does.

    Args:
        image: (N, C, H, W) image to sample from.
        flow: (N, 2, H, W) displacement in pixels, same N, H, W, dtype and device as ``image``;
            channel 0 = x (along W), channel 1 = y (along H).
        padding_mode: what is read outside the image: 'zeros', 'border' or 'reflection'.
        backend: 'auto' (Triton on CUDA, reference elsewhere), 'triton' or 'torch'; ``None``
            uses the setting in force (see :mod:`flowtriton.backend`).

    Returns:
        (N, C, H, W) warped image, ``image``'s dtype and device.

    Example:
        >>> from flowtriton import warp
        >>> image = torch.arange(16.0).view(1, 1, 4, 4)
        >>> flow = torch.zeros(1, 2, 4, 4)
        >>> torch.equal(warp(image, flow), image)  # zero flow: the image itself
        True
        >>> flow[:, 0] = 1.0  # every pixel reads its right-hand neighbour
        >>> out = warp(image, flow)
        >>> torch.equal(out[..., :-1], torch.roll(image, -1, dims=3)[..., :-1])
        True
        >>> out[0, 0, :, -1]  # past the right edge: zeros
        tensor([0., 0., 0., 0.])
        >>> warp(image, flow, padding_mode="border")[0, 0, :, -1]
        tensor([ 3.,  7., 11., 15.])
    """
    check_image_flow(image, flow, padding_mode, PADDING_MODES)
    if resolve_backend(backend, image) == "torch":
        return reference.warp(image, flow, padding_mode)
    image, flow = _c(image), _c(flow)
    if traced(image, flow):
        return warp_op(image, flow, padding_mode)
    if (image.requires_grad or flow.requires_grad) and torch.is_grad_enabled():
        return _warp_apply(image, flow, padding_mode)
    return (_KW or _kernels()).warp_forward(image, flow, padding_mode)
