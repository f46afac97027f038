"""Triton kernels for bilinear backward warping by a pixel-unit flow, and their launchers.

Semantics are those of ``flowtriton/reference/warp.py`` (read its docstring): exact-integer
pixel coordinates, corners ``floor(x)`` and ``floor(x) + 1``, padding modes zeros / border
(clamped corner indices) / reflection (reflected coordinate, slope +-1), non-finite flows read 0.

Three kernels, each one program per (image n, block of BLOCK pixels) on a 1-D grid, looping
over channels:

* ``_warp_gather_kernel``: ``out = sum_k w_k * A[k] + sum_k (dw_k . t) * B[k]`` where ``A[k]``,
  ``B[k]`` are the four corner values of two images. With A = image it is the forward warp; with
  B = image and ``t`` a tangent flow it is the flow-direction JVP; with both it is the
  grad_output part of the double backward.
* ``_warp_grad_flow_kernel``: ``g[d] = sum_c go_c * d(warp A)_c / d flow_d`` (a gather: each
  output pixel owns its flow vector, so no atomics), plus the mixed second-derivative term
  ``sum_c go_c * sum_e t_e d^2(warp B)_c / d flow_d d flow_e`` of the double backward.
* ``_warp_scatter_kernel``: ``grad_image[corner_k(p)] += coef_k(p) * go(p)`` with coef = w
  (backward w.r.t. the image) or ``dw . t`` (double backward), with atomics.

Launchers (``warp_gather``, ``warp_grad_flow``, ``warp_scatter``) allocate outputs and launch
with a launch configuration cached per (shape, dtype, padding mode, variant); they trust their
callers (``flowtriton.ops`` validates at the public entry). No autograd, no dispatch, no GPU query
at import time.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import triton
import triton.language as tl

from ..conventions import PADDING_CODES
from . import utils as _utils
from .utils import (LaunchConfig, alert_nondeterministic, block_size, cached_config, compute_dtype, grid_1d,
                    launch_config, load_acc, load_field, pixel_block)

# The kernels' ``PAD`` constexpr: PADDING_CODES (flowtriton.conventions) = zeros 0, border 1, reflection 2.


class _Axis(NamedTuple):
    """One axis of a bilinear sample (see :func:`_axis`)."""

    i0: tl.tensor     # lower corner index, clamped to the image
    i1: tl.tensor     # upper corner index, clamped to the image
    in0: tl.tensor    # whether the unclamped lower corner is inside the image
    in1: tl.tensor
    frac: tl.tensor   # the weight of the upper corner
    slope: tl.tensor  # d(padded coordinate) / d(coordinate): +-1 under reflection, else 1


class _Sampling(NamedTuple):
    """Where and how each pixel of a program samples (see :func:`_sampling`)."""

    valid: tl.tensor  # in the image, with a finite flow
    wx: tl.tensor     # weight of the right corners
    wy: tl.tensor     # weight of the lower corners
    sx: tl.tensor     # slope of the padded x coordinate
    sy: tl.tensor
    o00: tl.tensor    # corner offsets in the plane: (upper, left), (upper, right), (lower, left), (lower, right)
    o01: tl.tensor
    o10: tl.tensor
    o11: tl.tensor
    m00: tl.tensor    # corner load masks, in the same order
    m01: tl.tensor
    m10: tl.tensor
    m11: tl.tensor


@triton.jit
def _axis(coord, size, inv_period, PAD: tl.constexpr):
    """One axis: corner indices (clamped to the image), in-bounds flags, fraction, slope."""
    sizef = size * 1.0
    if PAD == 2:  # reflection
        period = 2.0 * (sizef - 1.0)
        mag = tl.abs(coord)
        mag = mag - period * tl.floor(mag * inv_period)
        flipped = mag > (sizef - 1.0)
        reflected = tl.minimum(tl.maximum(tl.where(flipped, period - mag, mag), 0.0), sizef - 1.0)
        sign = tl.where(coord < 0, -1.0, 1.0)
        slope = tl.where(flipped, -sign, sign)
        coord = tl.where(size > 1, reflected, 0.0)
        slope = tl.where(size > 1, slope, 0.0)
    else:
        coord = tl.minimum(tl.maximum(coord, -2.0), sizef + 1.0)
        slope = tl.zeros_like(coord) + 1.0
    lo = tl.floor(coord)
    frac = coord - lo
    i0 = lo.to(tl.int32)
    i1 = i0 + 1
    in0 = (i0 >= 0) & (i0 < size)
    in1 = (i1 >= 0) & (i1 < size)
    i0 = tl.minimum(tl.maximum(i0, 0), size - 1)
    i1 = tl.minimum(tl.maximum(i1, 0), size - 1)
    return _Axis(i0, i1, in0, in1, frac, slope)


@triton.jit
def _sampling(flow_ptr, px, H, W, inv_period_x, inv_period_y, PAD: tl.constexpr, IS_FP64: tl.constexpr):
    """The :class:`_Sampling` of the pixels ``px`` (a :class:`~.utils.PixelBlock`): what every
    kernel needs to read the four corners each pixel's flow points between."""
    fx, fy = load_field(flow_ptr, px.n, px.offs, H * W, px.mask, IS_FP64)
    finite = (tl.abs(fx) < float("inf")) & (tl.abs(fy) < float("inf"))  # False for NaN too
    valid = px.mask & finite
    fx = tl.where(finite, fx, 0.0)
    fy = tl.where(finite, fy, 0.0)
    ax = _axis(px.col.to(fx.dtype) + fx, W, inv_period_x, PAD)
    ay = _axis(px.row.to(fy.dtype) + fy, H, inv_period_y, PAD)
    if PAD == 0:  # zeros: a corner outside the image reads 0
        m00 = valid & ay.in0 & ax.in0
        m01 = valid & ay.in0 & ax.in1
        m10 = valid & ay.in1 & ax.in0
        m11 = valid & ay.in1 & ax.in1
    else:
        m00 = valid
        m01 = valid
        m10 = valid
        m11 = valid
    return _Sampling(valid, ax.frac, ay.frac, ax.slope, ay.slope,
                     ay.i0 * W + ax.i0, ay.i0 * W + ax.i1, ay.i1 * W + ax.i0, ay.i1 * W + ax.i1,
                     m00, m01, m10, m11)


@triton.jit
def _load_corners(base, s, IS_FP64: tl.constexpr):
    """The four corner values (00, 01, 10, 11) of the plane at ``base`` for the sampling ``s``."""
    return (load_acc(base, s.o00, s.m00, IS_FP64), load_acc(base, s.o01, s.m01, IS_FP64),
            load_acc(base, s.o10, s.m10, IS_FP64), load_acc(base, s.o11, s.m11, IS_FP64))


@triton.jit
def _warp_gather_kernel(val_ptr, tsrc_ptr, flow_ptr, tan_ptr, out_ptr,
                        C, H, W, inv_period_x, inv_period_y,
                        PAD: tl.constexpr, HAS_VALUE: tl.constexpr, HAS_TANGENT: tl.constexpr,
                        IS_FP64: tl.constexpr, BLOCK: tl.constexpr):
    hw = H * W
    px = pixel_block(H, W, BLOCK)
    s = _sampling(flow_ptr, px, H, W, inv_period_x, inv_period_y, PAD, IS_FP64)
    wx = s.wx
    wy = s.wy
    if HAS_TANGENT:
        tx, ty = load_field(tan_ptr, px.n, px.offs, hw, px.mask, IS_FP64)
        ax = tx * s.sx  # d wx along the tangent
        ay = ty * s.sy
    for c in range(C):
        plane = (px.n * C + c) * hw
        acc = tl.zeros_like(wx)
        if HAS_VALUE:
            a00, a01, a10, a11 = _load_corners(val_ptr + plane, s, IS_FP64)
            top = a00 + wx * (a01 - a00)
            bottom = a10 + wx * (a11 - a10)
            acc += top + wy * (bottom - top)
        if HAS_TANGENT:
            b00, b01, b10, b11 = _load_corners(tsrc_ptr + plane, s, IS_FP64)
            dx = (1.0 - wy) * (b01 - b00) + wy * (b11 - b10)
            dy = (1.0 - wx) * (b10 - b00) + wx * (b11 - b01)
            acc += ax * dx + ay * dy
        acc = tl.where(s.valid, acc, 0.0)
        tl.store(out_ptr + plane + px.offs, acc.to(out_ptr.dtype.element_ty), mask=px.mask)


@triton.jit
def _warp_grad_flow_kernel(src_ptr, csrc_ptr, flow_ptr, tan_ptr, go_ptr, out_ptr,
                           C, H, W, inv_period_x, inv_period_y,
                           PAD: tl.constexpr, HAS_FIRST: tl.constexpr, HAS_CROSS: tl.constexpr,
                           IS_FP64: tl.constexpr, BLOCK: tl.constexpr):
    hw = H * W
    px = pixel_block(H, W, BLOCK)
    s = _sampling(flow_ptr, px, H, W, inv_period_x, inv_period_y, PAD, IS_FP64)
    wx = s.wx
    wy = s.wy
    gx = tl.zeros_like(wx)
    gy = tl.zeros_like(wx)
    cross = tl.zeros_like(wx)
    for c in range(C):
        plane = (px.n * C + c) * hw
        go = load_acc(go_ptr + plane, px.offs, px.mask, IS_FP64)
        if HAS_FIRST:
            a00, a01, a10, a11 = _load_corners(src_ptr + plane, s, IS_FP64)
            gx += go * ((1.0 - wy) * (a01 - a00) + wy * (a11 - a10))
            gy += go * ((1.0 - wx) * (a10 - a00) + wx * (a11 - a01))
        if HAS_CROSS:
            b00, b01, b10, b11 = _load_corners(csrc_ptr + plane, s, IS_FP64)
            cross += go * (b00 - b01 - b10 + b11)
    gx = gx * s.sx
    gy = gy * s.sy
    if HAS_CROSS:
        tx, ty = load_field(tan_ptr, px.n, px.offs, hw, px.mask, IS_FP64)
        mixed = cross * s.sx * s.sy
        gx += mixed * ty
        gy += mixed * tx
    gx = tl.where(s.valid, gx, 0.0)
    gy = tl.where(s.valid, gy, 0.0)
    obase = out_ptr + px.n * 2 * hw
    tl.store(obase + px.offs, gx.to(out_ptr.dtype.element_ty), mask=px.mask)
    tl.store(obase + hw + px.offs, gy.to(out_ptr.dtype.element_ty), mask=px.mask)


@triton.jit
def _warp_scatter_kernel(go_ptr, flow_ptr, tan_ptr, out_ptr,
                         C, H, W, inv_period_x, inv_period_y,
                         PAD: tl.constexpr, USE_TANGENT: tl.constexpr,
                         IS_FP64: tl.constexpr, BLOCK: tl.constexpr):
    hw = H * W
    px = pixel_block(H, W, BLOCK)
    s = _sampling(flow_ptr, px, H, W, inv_period_x, inv_period_y, PAD, IS_FP64)
    wx = s.wx
    wy = s.wy
    if USE_TANGENT:
        tx, ty = load_field(tan_ptr, px.n, px.offs, hw, px.mask, IS_FP64)
        ax = tx * s.sx
        ay = ty * s.sy
        # d w_k along the tangent, for k = 00, 01, 10, 11
        c00 = -ax * (1.0 - wy) - ay * (1.0 - wx)
        c01 = ax * (1.0 - wy) - ay * wx
        c10 = -ax * wy + ay * (1.0 - wx)
        c11 = ax * wy + ay * wx
    else:
        c00 = (1.0 - wx) * (1.0 - wy)
        c01 = wx * (1.0 - wy)
        c10 = (1.0 - wx) * wy
        c11 = wx * wy
    for c in range(C):
        plane = (px.n * C + c) * hw
        go = load_acc(go_ptr + plane, px.offs, px.mask, IS_FP64)
        base = out_ptr + plane
        tl.atomic_add(base + s.o00, c00 * go, mask=s.m00, sem="relaxed")
        tl.atomic_add(base + s.o01, c01 * go, mask=s.m01, sem="relaxed")
        tl.atomic_add(base + s.o10, c10 * go, mask=s.m10, sem="relaxed")
        tl.atomic_add(base + s.o11, c11 * go, mask=s.m11, sem="relaxed")


# ----------------------------------------------------------------------------------------------
# Launchers
# ----------------------------------------------------------------------------------------------

def _inv_period(size: int) -> float:
    """1 / (2 (size - 1)); Triton passes Python floats as float32, and the reference rounds alike."""
    return 1.0 / (2.0 * (size - 1)) if size > 1 else 0.0


_VARIANTS = {  # variant name -> (kernel name, the constexpr flags its remaining entries set)
    "gather": ("_warp_gather_kernel", ("HAS_VALUE", "HAS_TANGENT")),
    "grad_flow": ("_warp_grad_flow_kernel", ("HAS_FIRST", "HAS_CROSS")),
    "scatter": ("_warp_scatter_kernel", ("USE_TANGENT",)),
}


def _config(variant: tuple, shape, dtype: torch.dtype, padding_mode: str) -> LaunchConfig:
    """Grid, sizes and constexprs of one warp kernel for (variant, shape, dtype, padding mode),
    cached; ``variant`` is (name, *flags)."""
    key = (variant, shape, dtype, padding_mode, _utils._forced_block)
    cfg = _utils._configs.get(key)
    if cfg is not None:
        return cfg

    def make():
        n, c, h, w = shape
        name, flag_names = _VARIANTS[variant[0]]
        block = block_size(h * w)
        constexprs = dict(PAD=PADDING_CODES[padding_mode], **dict(zip(flag_names, variant[1:])),
                          IS_FP64=dtype == torch.float64, BLOCK=block)
        return LaunchConfig(globals()[name], grid_1d(n, h * w, block), (c, h, w), constexprs,
                            scalars=(c, h, w, _inv_period(w), _inv_period(h)))

    return cached_config(key, make)


# The launchers trust their callers (the functional layer validates once, at the public entry):
# flow (N, 2, H, W), the other tensors (N, C, H, W) of the same dtype and device, all contiguous.

_PLAIN_GATHER = ("gather", True, False)


def warp_forward(image: torch.Tensor, flow: torch.Tensor, padding_mode: str) -> torch.Tensor:
    """``warp(image, flow)``: :func:`warp_gather` with only ``value_src``, on the shortest path (the
    forward of every warp goes through here)."""
    out = torch.empty_like(image)
    if image.numel() == 0:
        return out.zero_()
    cfg = _config(_PLAIN_GATHER, image.shape, image.dtype, padding_mode)
    launch_config(cfg, out, (image, image, flow, flow, out), guard=(image, flow, out))
    return out


def warp_gather(flow: torch.Tensor, padding_mode: str, value_src: torch.Tensor | None = None,
                tangent_src: torch.Tensor | None = None, tangent: torch.Tensor | None = None) -> torch.Tensor:
    """``warp(value_src, flow) + jvp(tangent_src, flow; tangent)``, (N, C, H, W) in the sources' dtype."""
    ref = value_src if value_src is not None else tangent_src
    out = torch.empty_like(ref)
    if ref.numel() == 0:
        return out.zero_()
    has_value, has_tangent = value_src is not None, tangent_src is not None
    cfg = _config(("gather", has_value, has_tangent), ref.shape, ref.dtype, padding_mode)
    launch_config(cfg, out, (value_src if has_value else tangent_src, tangent_src if has_tangent else value_src,
                             flow, tangent if has_tangent else flow, out),
                  guard=(ref, tangent_src, flow, tangent, out) if has_value and has_tangent else
                  (ref, flow, tangent, out) if has_tangent else (ref, flow, out))
    return out


def warp_grad_flow(flow: torch.Tensor, grad_out: torch.Tensor, padding_mode: str,
                   src: torch.Tensor | None = None, cross_src: torch.Tensor | None = None,
                   tangent: torch.Tensor | None = None) -> torch.Tensor:
    """``sum_c grad_out * d warp(src)/d flow`` plus the mixed term for ``cross_src`` along
    ``tangent``; (N, 2, H, W) in ``flow.dtype``."""
    out = torch.empty_like(flow)
    if flow.numel() == 0:
        return out
    has_first, has_cross = src is not None, cross_src is not None
    cfg = _config(("grad_flow", has_first, has_cross), grad_out.shape, grad_out.dtype, padding_mode)
    launch_config(cfg, out, (src if has_first else cross_src, cross_src if has_cross else src,
                             flow, tangent if has_cross else flow, grad_out, out),
                  guard=(src, cross_src, flow, tangent, grad_out, out) if has_first and has_cross else
                  (cross_src, flow, tangent, grad_out, out) if has_cross else (src, flow, grad_out, out))
    return out


def warp_scatter(flow: torch.Tensor, grad_out: torch.Tensor, padding_mode: str,
                 tangent: torch.Tensor | None = None) -> torch.Tensor:
    """Adjoint of the warp w.r.t. the image: scatter ``grad_out`` into the four corners with the
    bilinear weights (or their derivative along ``tangent``); (N, C, H, W) in ``grad_out``'s dtype
    (accumulated in float32 for half types)."""
    acc = torch.zeros(grad_out.shape, dtype=compute_dtype(grad_out.dtype), device=grad_out.device)
    if grad_out.numel() > 0:
        alert_nondeterministic("flowtriton warp backward w.r.t. the image (atomic scatter)")
        use_tangent = tangent is not None
        cfg = _config(("scatter", use_tangent), grad_out.shape, grad_out.dtype, padding_mode)
        launch_config(cfg, acc, (grad_out, flow, tangent if use_tangent else flow, acc),
                      guard=(grad_out, flow, tangent, acc) if use_tangent else (grad_out, flow, acc))
    return acc if acc.dtype == grad_out.dtype else acc.to(grad_out.dtype)
