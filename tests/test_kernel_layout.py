"""Every kernel run with the block layout a GPU uses: several programs per image and a ragged last
block, against the reference.

In the interpreter a small image is normally one program, so masks on a ragged last block, the
penalty's per-block partial sums and stencil reads across block boundaries would never execute on
CPU. ``forced_block_size`` makes the launchers split images as a GPU does: with tiny blocks
(16 or 32 pixels on a 5x7 image: 3 or 2 blocks, the last one ragged) and with the exact GPU block
sizes ('gpu': 256 pixels for the warp and penalty maps on 20x20 = 2 blocks, 1024 for the penalty
reduction on 40x40 = 2 blocks).
"""

import pytest
import torch
import triton

import flowtriton
from flowtriton.kernels.utils import GPU_BLOCK, PENALTY_MAX_BLOCK, block_size, forced_block_size, penalty_block_size

from conftest import DEVICE

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

MODES = ("zeros", "border", "reflection")
SCHEMES = ("forward", "central")
TOL = dict(atol=1e-10, rtol=1e-9)  # float64
LAYOUTS = {  # name -> (block, image shape for the warp and the penalty maps, shape for the penalty reduction)
    "block16": (16, (2, 2, 5, 7), (2, 2, 5, 7)),
    "block32": (32, (2, 2, 5, 7), (2, 2, 5, 7)),
    "gpu": ("gpu", (1, 2, 20, 20), (1, 2, 40, 40)),
}


def _blocks(block, hw, penalty=False):
    with forced_block_size(block):
        size = penalty_block_size(hw) if penalty else block_size(hw)
    return triton.cdiv(hw, size), size


def test_layouts_really_split_images_with_a_ragged_last_block():
    for block, shape, penalty_shape in LAYOUTS.values():
        count, size = _blocks(block, shape[2] * shape[3])
        assert count >= 2 and shape[2] * shape[3] % size != 0, (block, count, size)
        count, size = _blocks(block, penalty_shape[2] * penalty_shape[3], penalty=True)
        assert count >= 2 and penalty_shape[2] * penalty_shape[3] % size != 0, (block, count, size)
    assert _blocks("gpu", 400)[1] == GPU_BLOCK and _blocks("gpu", 1600, penalty=True)[1] == PENALTY_MAX_BLOCK
    with pytest.raises(ValueError, match="power of two"):
        with forced_block_size(24):
            pass


def _inputs(shape, seed, requires_grad=True):
    gen = torch.Generator().manual_seed(seed)
    n, c, h, w = shape
    image = torch.rand(shape, generator=gen, dtype=torch.float64)
    flow = torch.rand(n, 2, h, w, generator=gen, dtype=torch.float64) * 6 - 3
    flow[0, :, 0, 0] = torch.tensor([-0.5, 2.0], dtype=torch.float64)
    image, flow = image.to(DEVICE), flow.to(DEVICE)
    return image.requires_grad_(requires_grad), flow.requires_grad_(requires_grad), gen


def _warp_derivatives(backend, image, flow, mode, gen_seed):
    """Output, first derivatives (create_graph) and a second derivative of each input."""
    gen = torch.Generator().manual_seed(gen_seed)
    out = flowtriton.warp(image, flow, mode, backend=backend)
    go = torch.randn(out.shape, generator=gen, dtype=torch.float64).to(out.device)
    g_image, g_flow = torch.autograd.grad(out, (image, flow), go, create_graph=True)
    w_image = torch.randn(g_image.shape, generator=gen, dtype=torch.float64).to(g_image.device)
    scalar = g_flow.square().sum() + (g_image * w_image).sum()
    gg_image, gg_flow = torch.autograd.grad(scalar, (image, flow))
    return out, g_image, g_flow, gg_image, gg_flow


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("mode", MODES)
def test_warp_kernels_across_blocks(layout, mode):
    """Gather (forward, JVP), grad-flow gather (+ mixed term) and the atomic scatter (+ its
    tangent form), each over several blocks per image."""
    block, shape, _ = LAYOUTS[layout]
    image, flow, _ = _inputs(shape, seed=3)
    want = _warp_derivatives("torch", image, flow, mode, 7)
    with forced_block_size(block):
        got = _warp_derivatives("triton", image, flow, mode, 7)
    for name, a, b in zip(("out", "grad_image", "grad_flow", "gg_image", "gg_flow"), got, want):
        torch.testing.assert_close(a, b, **TOL, msg=lambda m, name=name: f"{layout} {mode} {name}: {m}")


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("scheme", SCHEMES)
def test_penalty_reduction_and_fused_backward_across_blocks(layout, scheme):
    """The penalty's per-block partial sums (two-stage reduction) and its fused backward kernels
    (``2 grad_out`` folded in, grad_out expanded with stride 0)."""
    block, _, shape = LAYOUTS[layout]
    gen = torch.Generator().manual_seed(5)
    image = torch.rand(shape, generator=gen, dtype=torch.float64).to(DEVICE).requires_grad_(True)
    grad = torch.randn(shape, generator=gen, dtype=torch.float64).to(DEVICE).requires_grad_(True)
    results = {}
    for backend in ("torch", "triton"):
        with forced_block_size(block):
            penalty = flowtriton.flow_gradient_penalty(image, grad, scheme, backend=backend, units="normalized")
            d_image, d_grad = torch.autograd.grad(penalty.mean(), (image, grad))
        results[backend] = (penalty, d_image, d_grad)
    for name, a, b in zip(("penalty", "d_image", "d_grad"), results["triton"], results["torch"]):
        torch.testing.assert_close(a, b, **TOL, msg=lambda m, name=name: f"{layout} {scheme} {name}: {m}")


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("scheme", SCHEMES)
def test_flow_gradient_jvp_and_image_vjp_across_blocks(layout, scheme):
    """B (flow_gradient), J (flow_jvp) and K (image VJP, reached through B's backward): stencil
    reads that cross block boundaries, through second order."""
    block, shape, _ = LAYOUTS[layout]
    gen = torch.Generator().manual_seed(11)
    image = torch.rand(shape, generator=gen, dtype=torch.float64).to(DEVICE).requires_grad_(True)
    grad = torch.randn(shape, generator=gen, dtype=torch.float64).to(DEVICE).requires_grad_(True)
    field = torch.randn(shape[0], 2, *shape[2:], generator=gen, dtype=torch.float64).to(DEVICE).requires_grad_(True)
    weights = torch.randn(shape[0], 2, *shape[2:], generator=gen, dtype=torch.float64).to(DEVICE)
    results = {}
    for backend in ("torch", "triton"):
        with forced_block_size(block):
            b = flowtriton.flow_gradient(image, grad, scheme, backend=backend, units="normalized")
            j = flowtriton.flow_jvp(image, field, scheme, backend=backend)
            first = torch.autograd.grad((b * weights).sum() + j.square().sum(), (image, grad, field),
                                        create_graph=True)
            second = torch.autograd.grad(sum(g.square().sum() for g in first), (image, grad, field))
        results[backend] = (b, j, *first, *second)
    for index, (a, b) in enumerate(zip(results["triton"], results["torch"])):
        torch.testing.assert_close(a, b, **TOL, msg=lambda m, index=index: f"{layout} {scheme} #{index}: {m}")
