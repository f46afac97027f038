"""Triton kernels for the flow gradient at zero flow and the fused FGR penalty, and their launchers.

Notation (``flowtriton/reference/flow_gradient.py`` is the oracle): ``D_x``, ``D_y`` are the
pixel-unit spatial differences of a scheme ('forward': ``v[j+1] - v[j]``, 0 in the last column;
'central': ``(v[j+1] - v[j-1]) / 2`` inside, one-sided at the borders, 0 on a 1-pixel axis), and
``s = (s_x, s_y)`` per-component unit scales (1 for pixels, ``(size - 1) / 2`` for normalized
units). For an image ``x``, a loss gradient ``g`` (both (N, C, H, W)) and a flow field ``T``
(N, 2, H, W):

* flow gradient  ``B(x, g)_d = s_d sum_c g_c D_d x_c``                         -> (N, 2, H, W)
* flow JVP       ``J(x, T)_c = sum_d s_d T_d D_d x_c``  (image change along T)  -> (N, C, H, W)
  (the adjoint of ``B`` in ``g``: ``<B(x, g), T> = <g, J(x, T)>``)
* image VJP      ``K(g, T)_c = sum_d s_d D_d^T (T_d g_c)``  (``<B(x, g), T> = <x, K(g, T)>``)
* penalty        ``P(x, g)_n = sum_{d, pixels} B(x, g)_d^2``                    -> (N,)

Kernels (one program per (image, block of BLOCK pixels) on a 1-D grid, so a batch may exceed
CUDA's 65535 limit of grid axes 1 and 2; programs loop over channels; every pixel's own values
are gathered, so there are no atomics and the results are deterministic):

* ``_penalty_partial_kernel``: B, square, channel and pixel sums fused; writes one partial sum
  per (image, block). Images of up to 1024 pixels are one block, so that partial IS the penalty;
  larger images take a second, deterministic stage (the launcher sums the partials). Nothing of
  size (N, 2, H, W) is written.
* ``_flow_gradient_kernel``: B.
* ``_flow_jvp_kernel``: ``coef_scale * coef[n] * J(x, T)`` with T read from memory, or T = B(x, g) computed on
  the fly (``FIELD_FROM_GRAD``): with coef = 2 dP that is the penalty's gradient w.r.t. g, again
  with no (N, 2, H, W) intermediate.
* ``_image_vjp_kernel``: ``coef[n] * K(g, T)``.

Arithmetic runs in float32 (float64 for float64 tensors); float16/bfloat16 tensors are read and
written in their own type. Plane offsets are int64.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..conventions import SCHEME_CODES
from . import utils as _utils
from .utils import (LaunchConfig, block_size, cached_config, compute_dtype, grid_1d, launch_config, load_acc,
                    load_field, penalty_block_size, pixel_block)


@triton.jit
def _differences(base, px, H, W, CENTRAL: tl.constexpr, IS_FP64: tl.constexpr):
    """(D_x v, D_y v) of the plane at ``base`` for the pixels ``px`` (a :class:`~.utils.PixelBlock`)."""
    offs = px.offs
    mask = px.mask
    v = load_acc(base, offs, mask, IS_FP64)
    has_right = px.col < W - 1
    has_down = px.row < H - 1
    right = load_acc(base, offs + 1, mask & has_right, IS_FP64)
    down = load_acc(base, offs + W, mask & has_down, IS_FP64)
    if CENTRAL:
        has_left = px.col > 0
        has_up = px.row > 0
        left = load_acc(base, offs - 1, mask & has_left, IS_FP64)
        up = load_acc(base, offs - W, mask & has_up, IS_FP64)
        right = tl.where(has_right, right, v)
        left = tl.where(has_left, left, v)
        down = tl.where(has_down, down, v)
        up = tl.where(has_up, up, v)
        dx = (right - left) * tl.where(has_right & has_left, 0.5, 1.0)
        dy = (down - up) * tl.where(has_down & has_up, 0.5, 1.0)
    else:
        dx = tl.where(has_right, right - v, 0.0)
        dy = tl.where(has_down, down - v, 0.0)
    return dx, dy


@triton.jit
def _adjoint_difference(b_prev, b_mid, b_next, k, size, CENTRAL: tl.constexpr):
    """(D^T b)[k] from b[k - 1], b[k], b[k + 1] (values outside the axis must be 0)."""
    if CENTRAL:
        # D b[m] = cp(m) b[m + 1] + c0(m) b[m] + cm(m) b[m - 1]; D^T b[k] = cp(k-1) b[k-1] + c0(k) b[k] + cm(k+1) b[k+1]
        many = size > 1
        cp_prev = tl.where(k == 1, 1.0, 0.5)
        c0 = tl.where(k == 0, -1.0, tl.where(k == size - 1, 1.0, 0.0))
        cm_next = tl.where(k + 1 == size - 1, -1.0, -0.5)
        cp_prev = tl.where(many & (k >= 1), cp_prev, 0.0)
        c0 = tl.where(many, c0, 0.0)
        cm_next = tl.where(many & (k + 1 < size), cm_next, 0.0)
        out = cp_prev * b_prev + c0 * b_mid + cm_next * b_next
    else:
        out = tl.where(k >= 1, b_prev, 0.0) - tl.where(k < size - 1, b_mid, 0.0)
    return out


@triton.jit
def _field_from_grad(x_ptr, g_ptr, px, C, H, W, scale_x, scale_y,
                     CENTRAL: tl.constexpr, IS_FP64: tl.constexpr, BLOCK: tl.constexpr):
    """B(x, g) at the pixels ``px`` (a :class:`~.utils.PixelBlock`): (F_x, F_y)."""
    hw = H * W
    if IS_FP64:
        fx = tl.zeros([BLOCK], dtype=tl.float64)
        fy = tl.zeros([BLOCK], dtype=tl.float64)
    else:
        fx = tl.zeros([BLOCK], dtype=tl.float32)
        fy = tl.zeros([BLOCK], dtype=tl.float32)
    for c in range(C):
        plane = (px.n * C + c) * hw
        g = load_acc(g_ptr + plane, px.offs, px.mask, IS_FP64)
        dx, dy = _differences(x_ptr + plane, px, H, W, CENTRAL, IS_FP64)
        fx += g * dx
        fy += g * dy
    return fx * scale_x, fy * scale_y


@triton.jit
def _penalty_partial_kernel(x_ptr, g_ptr, partial_ptr, C, H, W, n_blocks, scale_x, scale_y,
                            CENTRAL: tl.constexpr, IS_FP64: tl.constexpr, BLOCK: tl.constexpr):
    px = pixel_block(H, W, BLOCK)
    fx, fy = _field_from_grad(x_ptr, g_ptr, px, C, H, W, scale_x, scale_y, CENTRAL, IS_FP64, BLOCK)
    squares = tl.where(px.mask, fx * fx + fy * fy, 0.0)
    tl.store(partial_ptr + px.n * n_blocks + px.block, tl.sum(squares, axis=0))


@triton.jit
def _flow_gradient_kernel(x_ptr, g_ptr, out_ptr, C, H, W, scale_x, scale_y,
                          CENTRAL: tl.constexpr, IS_FP64: tl.constexpr, BLOCK: tl.constexpr):
    hw = H * W
    px = pixel_block(H, W, BLOCK)
    fx, fy = _field_from_grad(x_ptr, g_ptr, px, C, H, W, scale_x, scale_y, CENTRAL, IS_FP64, BLOCK)
    base = out_ptr + px.n * 2 * hw
    tl.store(base + px.offs, fx.to(out_ptr.dtype.element_ty), mask=px.mask)
    tl.store(base + hw + px.offs, fy.to(out_ptr.dtype.element_ty), mask=px.mask)


@triton.jit
def _flow_jvp_kernel(x_ptr, g_ptr, field_ptr, coef_ptr, out_ptr, C, H, W, scale_x, scale_y,
                     coef_stride, coef_scale,
                     CENTRAL: tl.constexpr, FIELD_FROM_GRAD: tl.constexpr, HAS_COEF: tl.constexpr,
                     IS_FP64: tl.constexpr, BLOCK: tl.constexpr):
    hw = H * W
    px = pixel_block(H, W, BLOCK)
    if FIELD_FROM_GRAD:
        tx, ty = _field_from_grad(x_ptr, g_ptr, px, C, H, W, scale_x, scale_y, CENTRAL, IS_FP64, BLOCK)
    else:
        tx, ty = load_field(field_ptr, px.n, px.offs, hw, px.mask, IS_FP64)
    tx = tx * scale_x
    ty = ty * scale_y
    if HAS_COEF:
        coef = load_acc(coef_ptr, px.n * coef_stride, True, IS_FP64) * coef_scale
        tx = tx * coef
        ty = ty * coef
    for c in range(C):
        plane = (px.n * C + c) * hw
        dx, dy = _differences(x_ptr + plane, px, H, W, CENTRAL, IS_FP64)
        out = tx * dx + ty * dy
        tl.store(out_ptr + plane + px.offs, out.to(out_ptr.dtype.element_ty), mask=px.mask)


@triton.jit
def _image_vjp_kernel(g_ptr, field_ptr, coef_ptr, out_ptr, C, H, W, scale_x, scale_y,
                      coef_stride, coef_scale,
                      CENTRAL: tl.constexpr, HAS_COEF: tl.constexpr,
                      IS_FP64: tl.constexpr, BLOCK: tl.constexpr):
    hw = H * W
    px = pixel_block(H, W, BLOCK)
    offs = px.offs
    mask = px.mask
    has_left = mask & (px.col > 0)
    has_up = mask & (px.row > 0)
    has_right = mask & (px.col < W - 1)
    has_down = mask & (px.row < H - 1)
    fbase = field_ptr + px.n * 2 * hw
    tx = load_acc(fbase, offs, mask, IS_FP64) * scale_x
    tx_left = load_acc(fbase, offs - 1, has_left, IS_FP64) * scale_x
    ty = load_acc(fbase + hw, offs, mask, IS_FP64) * scale_y
    ty_up = load_acc(fbase + hw, offs - W, has_up, IS_FP64) * scale_y
    if CENTRAL:
        tx_right = load_acc(fbase, offs + 1, has_right, IS_FP64) * scale_x
        ty_down = load_acc(fbase + hw, offs + W, has_down, IS_FP64) * scale_y
    if HAS_COEF:
        coef = load_acc(coef_ptr, px.n * coef_stride, True, IS_FP64) * coef_scale
    for c in range(C):
        plane = (px.n * C + c) * hw
        gbase = g_ptr + plane
        g = load_acc(gbase, offs, mask, IS_FP64)
        g_left = load_acc(gbase, offs - 1, has_left, IS_FP64)
        g_up = load_acc(gbase, offs - W, has_up, IS_FP64)
        if CENTRAL:
            g_right = load_acc(gbase, offs + 1, has_right, IS_FP64)
            g_down = load_acc(gbase, offs + W, has_down, IS_FP64)
            next_x = tx_right * g_right
            next_y = ty_down * g_down
        else:
            next_x = tl.zeros_like(g)
            next_y = tl.zeros_like(g)
        out = _adjoint_difference(tx_left * g_left, tx * g, next_x, px.col, W, CENTRAL)
        out += _adjoint_difference(ty_up * g_up, ty * g, next_y, px.row, H, CENTRAL)
        if HAS_COEF:
            out = out * coef
        tl.store(out_ptr + plane + offs, out.to(out_ptr.dtype.element_ty), mask=mask)


# ----------------------------------------------------------------------------------------------
# Launchers: allocate, launch with a configuration cached per (shape, dtype, scheme, variant).
# ``scale`` is (s_x, s_y); ``coef`` an optional (N,) tensor (any stride, e.g. the expanded
# gradient of a mean) multiplied by ``coef_scale``. They trust their callers (the functional layer
# validates once, at the public entry): images (N, C, H, W) and fields (N, 2, H, W) of one dtype
# and device, contiguous.
# ----------------------------------------------------------------------------------------------

_PENALTY, _FLOW_GRADIENT, _JVP_FROM_GRAD_COEF = ("penalty",), ("flow_gradient",), ("flow_jvp", True, True)
_VARIANTS = {  # variant name -> (kernel name, the constexpr flags its remaining entries set)
    "penalty": ("_penalty_partial_kernel", ()),
    "flow_gradient": ("_flow_gradient_kernel", ()),
    "flow_jvp": ("_flow_jvp_kernel", ("FIELD_FROM_GRAD", "HAS_COEF")),
    "image_vjp": ("_image_vjp_kernel", ("HAS_COEF",)),
}


def _config(variant: tuple, shape, dtype: torch.dtype, scheme: str, scale, coef_stride: int = 0,
            coef_scale: float = 1.0) -> LaunchConfig:
    """Grid, constexprs and every scalar argument of one kernel for (variant, shape, dtype,
    scheme, scale, coef stride and scale), cached; ``variant`` is (name, *flags). Triton
    specializes on the coefficient's (integer) stride, not on the float scales: those are in the
    key only so that a launch passes nothing but its pointers. ``cfg.extra`` is (block, blocks per
    image)."""
    key = (variant, shape, dtype, scheme, scale, coef_stride, coef_scale, _utils._forced_block)
    cfg = _utils._configs.get(key)
    if cfg is not None:
        return cfg

    def make():
        n, c, h, w = shape
        name, flag_names = _VARIANTS[variant[0]]
        block = penalty_block_size(h * w) if variant[0] == "penalty" else block_size(h * w)
        blocks = triton.cdiv(h * w, block)
        constexprs = dict(CENTRAL=bool(SCHEME_CODES[scheme]), **dict(zip(flag_names, variant[1:])),
                          IS_FP64=dtype == torch.float64, BLOCK=block)
        ints = (c, h, w, blocks) if variant[0] == "penalty" else (c, h, w)
        scalars = ints + (float(scale[0]), float(scale[1]))
        if variant[0] in ("flow_jvp", "image_vjp"):
            scalars += (coef_stride, float(coef_scale))
        return LaunchConfig(globals()[name], grid_1d(n, h * w, block), ints, constexprs, scalars=scalars,
                            extra=(block, blocks))

    return cached_config(key, make)


def penalty(image: torch.Tensor, grad_image: torch.Tensor, scheme: str,
            scale: tuple[float, float] = (1.0, 1.0)) -> torch.Tensor:
    """(N,) ``sum ||B(image, grad_image)||^2`` per example, in float32 (float64 for float64)."""
    n = image.shape[0]
    if image.numel() == 0:
        return torch.zeros(n, dtype=compute_dtype(image.dtype), device=image.device)
    cfg = _config(_PENALTY, image.shape, image.dtype, scheme, scale)
    blocks = cfg.extra[1]
    if image.dtype == torch.float32 or image.dtype == torch.float64:  # positional sizes: the cheapest allocation
        partial = image.new_empty(n, blocks) if blocks > 1 else image.new_empty(n)
    else:
        partial = torch.empty((n, blocks) if blocks > 1 else (n,), dtype=torch.float32, device=image.device)
    launch_config(cfg, partial, (image, grad_image, partial))
    return partial if blocks == 1 else partial.sum(dim=1)


def flow_gradient(image: torch.Tensor, grad_image: torch.Tensor, scheme: str,
                  scale: tuple[float, float] = (1.0, 1.0)) -> torch.Tensor:
    """(N, 2, H, W) ``B(image, grad_image)`` in the inputs' dtype."""
    n, c, h, w = image.shape
    out = image.new_empty(n, 2, h, w)
    if image.numel() == 0:
        return out.zero_()
    cfg = _config(_FLOW_GRADIENT, image.shape, image.dtype, scheme, scale)
    launch_config(cfg, out, (image, grad_image, out))
    return out


def penalty_grad(image: torch.Tensor, grad_image: torch.Tensor, coef: torch.Tensor, scheme: str,
                 scale: tuple[float, float] = (1.0, 1.0)) -> torch.Tensor:
    """(N, C, H, W) gradient of ``sum_n coef[n] P_n`` w.r.t. ``grad_image``: ``2 coef[n] J(image,
    B(image, grad_image))`` in one kernel (:func:`flow_jvp` with the field computed on the fly),
    on the shortest path (the backward of every FGR step goes through here)."""
    out = torch.empty_like(image)
    if image.numel() == 0:
        return out.zero_()
    cfg = _config(_JVP_FROM_GRAD_COEF, image.shape, image.dtype, scheme, scale, coef.stride(0), 2.0)
    launch_config(cfg, out, (image, grad_image, image, coef, out), guard=(image, grad_image, coef, out))
    return out


def flow_jvp(image: torch.Tensor, scheme: str, scale: tuple[float, float] = (1.0, 1.0), *,
             field: torch.Tensor | None = None, grad_image: torch.Tensor | None = None,
             coef: torch.Tensor | None = None, coef_scale: float = 1.0) -> torch.Tensor:
    """(N, C, H, W) ``coef_scale * coef[n] * J(image, T)`` with ``T = field`` or, given
    ``grad_image`` instead, ``T = B(image, grad_image)`` computed on the fly (then, with
    ``coef_scale=2``, the result is the gradient of ``sum_n coef[n] P_n`` w.r.t. ``grad_image``)."""
    out = torch.empty_like(image)
    if image.numel() == 0:
        return out.zero_()
    from_grad = grad_image is not None
    if from_grad == (field is not None):
        raise ValueError("give exactly one of field, grad_image")
    stride = 0 if coef is None else coef.stride(0)
    cfg = _config(("flow_jvp", from_grad, coef is not None), image.shape, image.dtype, scheme, scale, stride,
                  coef_scale)
    other = grad_image if from_grad else field
    launch_config(cfg, out, (image, grad_image if from_grad else image, image if from_grad else field,
                             image if coef is None else coef, out),
                  guard=(image, other, out) if coef is None else (image, other, coef, out))
    return out


def image_vjp(grad_image: torch.Tensor, field: torch.Tensor, scheme: str,
              scale: tuple[float, float] = (1.0, 1.0), coef: torch.Tensor | None = None,
              coef_scale: float = 1.0) -> torch.Tensor:
    """(N, C, H, W) ``coef_scale * coef[n] * K(grad_image, field)``: the gradient of
    ``<B(x, grad_image), field>`` w.r.t. the image ``x``."""
    out = torch.empty_like(grad_image)
    if grad_image.numel() == 0:
        return out.zero_()
    stride = 0 if coef is None else coef.stride(0)
    cfg = _config(("image_vjp", coef is not None), grad_image.shape, grad_image.dtype, scheme, scale, stride,
                  coef_scale)
    launch_config(cfg, out, (grad_image, field, grad_image if coef is None else coef, out),
                  guard=(grad_image, field, out) if coef is None else (grad_image, field, coef, out))
    return out
