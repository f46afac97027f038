"""flow_gradient / flow_gradient_penalty / flow_jvp: closed form vs autograd through the authors'
clamped gather sampler, Triton kernels vs the reference (values, first, second and third
derivatives), gradcheck / gradgradcheck, bad input.

Tensors live on conftest's DEVICE: the GPU when there is one, else the CPU, where the kernels run in
the Triton interpreter: shapes stay tiny (one program per image)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import flowtriton
from flowtriton.ops.flow_gradient import flow_jvp
from flowtriton.ops.units import pixel_scale
from flowtriton.reference.flow_gradient import flow_gradient_penalty as ref_penalty

from conftest import DEVICE, NONDET_TOL

BACKENDS = ("torch", "triton")
SCHEMES = ("forward", "central")


def gather_sampler(image: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """The authors' bilinear sampler, in pixels: coordinates clamped to the image (border), the 4
    corners gathered at floor / floor + 1 (clamped). Written independently of flowtriton."""
    n, c, h, w = image.shape
    rows = torch.arange(h, dtype=image.dtype, device=image.device).view(1, h, 1)
    cols = torch.arange(w, dtype=image.dtype, device=image.device).view(1, 1, w)
    y = (rows + flow[:, 1]).clamp(0, h - 1)
    x = (cols + flow[:, 0]).clamp(0, w - 1)
    y0 = torch.floor(y.detach()).long()
    x0 = torch.floor(x.detach()).long()
    wy = (y - y0).unsqueeze(1)
    wx = (x - x0).unsqueeze(1)
    y1 = (y0 + 1).clamp(max=h - 1)
    x1 = (x0 + 1).clamp(max=w - 1)
    flat = image.reshape(n, c, h * w)

    def at(iy, ix):
        return torch.gather(flat, 2, (iy * w + ix).reshape(n, 1, -1).expand(n, c, -1)).reshape(n, c, h, w)

    top = at(y0, x0) * (1 - wx) + at(y0, x1) * wx
    bottom = at(y1, x0) * (1 - wx) + at(y1, x1) * wx
    return top * (1 - wy) + bottom * wy


def _tensors(n, c, h, w, dtype=torch.float64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    image = torch.rand((n, c, h, w), generator=gen, dtype=dtype)
    grad = torch.randn((n, c, h, w), generator=gen, dtype=dtype)
    return image.to(DEVICE), grad.to(DEVICE)  # drawn on the CPU: the same values on every device


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", [(2, 3, 5, 6), (1, 2, 1, 4), (1, 1, 3, 1), (1, 2, 2, 2)])
def test_closed_form_equals_autograd_through_gather_sampler(backend, shape):
    image, grad = _tensors(*shape)
    flow = torch.zeros((shape[0], 2, shape[2], shape[3]), dtype=torch.float64, device=DEVICE,
                       requires_grad=True)
    (expected,) = torch.autograd.grad((grad * gather_sampler(image, flow)).sum(), flow)
    got = flowtriton.flow_gradient(image, grad, "forward", backend=backend)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    # The first row/column carries forward differences, the last one zero (not grid_sample's border).
    if shape[3] > 1:
        assert expected[:, 0, :, 0].abs().sum() > 0
    torch.testing.assert_close(got[:, 0, :, -1], torch.zeros_like(got[:, 0, :, -1]))
    torch.testing.assert_close(got[:, 1, -1, :], torch.zeros_like(got[:, 1, -1, :]))
    penalty = flowtriton.flow_gradient_penalty(image, grad, "forward", backend=backend)
    torch.testing.assert_close(penalty, expected.square().sum((1, 2, 3)), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_normalized_units_scale_each_component(backend):
    image, grad = _tensors(2, 2, 3, 5)
    sx, sy = pixel_scale(3, 5)
    pixels = flowtriton.flow_gradient(image, grad, backend=backend)
    normalized = flowtriton.flow_gradient(image, grad, backend=backend, units="normalized")
    torch.testing.assert_close(normalized[:, 0], sx * pixels[:, 0])
    torch.testing.assert_close(normalized[:, 1], sy * pixels[:, 1])
    penalty = flowtriton.flow_gradient_penalty(image, grad, backend=backend, units="normalized")
    torch.testing.assert_close(penalty, normalized.square().sum((1, 2, 3)))


@pytest.mark.parametrize("backend", BACKENDS)
def test_flow_jvp_is_adjoint_of_flow_gradient_and_first_order_warp(backend):
    image, grad = _tensors(2, 3, 4, 5)
    tangent = torch.randn(2, 2, 4, 5, dtype=torch.float64).to(DEVICE)
    lhs = (flowtriton.flow_gradient(image, grad, "central", backend=backend) * tangent).sum()
    rhs = (grad * flow_jvp(image, tangent, "central", backend=backend)).sum()
    torch.testing.assert_close(lhs, rhs)
    # forward scheme: the derivative of the clamped sampler along the tangent
    step = 1e-7 * tangent.abs()  # positive components: no floor() crossing, one-sided = forward
    moved = gather_sampler(image, step)
    torch.testing.assert_close(flow_jvp(image, step, "forward", backend=backend), moved - image,
                               rtol=1e-6, atol=1e-12)


def test_triton_path_is_taken_and_fused_backward_matches_composed():
    image, grad = _tensors(2, 2, 4, 4)
    grad.requires_grad_(True)
    penalty = flowtriton.flow_gradient_penalty(image, grad, backend="triton")
    assert type(penalty.grad_fn).__name__ == "FlowGradientPenaltyFunctionBackward"  # the eager route
    (fused,) = torch.autograd.grad(penalty.sum(), grad)  # no create_graph: fused kernel
    penalty = flowtriton.flow_gradient_penalty(image, grad, backend="triton")
    (composed,) = torch.autograd.grad(penalty.sum(), grad, create_graph=True)
    assert composed.requires_grad and not fused.requires_grad
    torch.testing.assert_close(fused, composed.detach())


@st.composite
def problems(draw):
    n = draw(st.integers(1, 2))
    c = draw(st.integers(1, 3))
    h = draw(st.integers(1, 6))
    w = draw(st.integers(1, 6))
    dtype = draw(st.sampled_from([torch.float32, torch.float64]))
    scheme = draw(st.sampled_from(SCHEMES))
    units = draw(st.sampled_from(["pixels", "normalized"]))
    seed = draw(st.integers(0, 2**16))
    return n, c, h, w, dtype, scheme, units, seed


def _tolerance(dtype):
    return dict(rtol=1e-4, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-12)


def _grads(output, inputs, **kwargs):
    """autograd.grad with zeros for inputs the output does not depend on (a 1x1 image has no
    spatial differences)."""
    if not output.requires_grad:
        return tuple(torch.zeros_like(t) for t in inputs)
    return torch.autograd.grad(output, inputs, allow_unused=True, materialize_grads=True, **kwargs)


@given(problems())
def test_triton_penalty_matches_reference_through_third_order(problem):
    n, c, h, w, dtype, scheme, units, seed = problem
    image, grad = _tensors(n, c, h, w, dtype, seed)
    gen = torch.Generator().manual_seed(seed + 1)
    weights = torch.randn(n, generator=gen, dtype=dtype).to(image.device)
    probe = torch.randn(image.shape, generator=gen, dtype=dtype).to(image.device)
    tol = _tolerance(dtype)
    results = {}
    for backend in BACKENDS:
        x = image.clone().requires_grad_(True)
        g = grad.clone().requires_grad_(True)
        value = flowtriton.flow_gradient_penalty(x, g, scheme, backend=backend, units=units)
        plain = _grads((value * weights).sum(), (x, g), retain_graph=True)
        dx, dg = _grads((value * weights).sum(), (x, g), create_graph=True)
        second = _grads((dg * probe).sum() + (dx * probe).sum(), (x, g), create_graph=True)
        third = _grads(second[1].square().sum(), (g,))
        results[backend] = (value, *plain, dx, dg, *second, *third)
    for got, want in zip(results["triton"], results["torch"]):
        torch.testing.assert_close(got, want, **tol)
    assert results["torch"][0].shape == (n,)


@given(problems())
def test_triton_flow_gradient_and_jvp_match_reference(problem):
    n, c, h, w, dtype, scheme, units, seed = problem
    image, grad = _tensors(n, c, h, w, dtype, seed)
    tangent = torch.randn((n, 2, h, w), generator=torch.Generator().manual_seed(seed), dtype=dtype)
    tangent = tangent.to(image.device)
    tol = _tolerance(dtype)
    field = {b: flowtriton.flow_gradient(image, grad, scheme, backend=b, units=units) for b in BACKENDS}
    torch.testing.assert_close(field["triton"], field["torch"], **tol)
    jvp = {b: flow_jvp(image, tangent, scheme, backend=b) for b in BACKENDS}
    torch.testing.assert_close(jvp["triton"], jvp["torch"], **tol)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("scheme", SCHEMES)
def test_penalty_gradcheck_and_gradgradcheck(backend, scheme):
    image, grad = _tensors(1, 2, 3, 3, seed=3)
    image.requires_grad_(True)
    grad.requires_grad_(True)

    def fn(x, g):
        return flowtriton.flow_gradient_penalty(x, g, scheme, backend=backend, units="normalized")

    fast = backend == "triton"
    assert torch.autograd.gradcheck(fn, (image, grad), fast_mode=fast, nondet_tol=NONDET_TOL)
    assert torch.autograd.gradgradcheck(fn, (image, grad), fast_mode=fast, nondet_tol=NONDET_TOL)


def test_flow_gradient_and_jvp_gradcheck_triton():
    image, grad = _tensors(1, 2, 3, 4, seed=4)
    tangent = torch.randn(1, 2, 3, 4, dtype=torch.float64).to(DEVICE).requires_grad_(True)
    image.requires_grad_(True)
    grad.requires_grad_(True)
    assert torch.autograd.gradgradcheck(
        lambda x, g: flowtriton.flow_gradient(x, g, "central", backend="triton"), (image, grad), fast_mode=True,
        nondet_tol=NONDET_TOL)
    assert torch.autograd.gradgradcheck(
        lambda x, t: flow_jvp(x, t, "forward", backend="triton"), (image, tangent), fast_mode=True,
        nondet_tol=NONDET_TOL)


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_batch(backend):
    image = torch.zeros(0, 3, 4, 4, device=DEVICE)
    assert flowtriton.flow_gradient_penalty(image, image, backend=backend).shape == (0,)
    assert flowtriton.flow_gradient(image, image, backend=backend).shape == (0, 2, 4, 4)


def test_float32_kernel_accumulates_like_reference_in_float64():
    image, grad = _tensors(2, 3, 6, 6, dtype=torch.float64, seed=7)
    want = ref_penalty(image, grad)
    got = flowtriton.flow_gradient_penalty(image.float(), grad.float(), backend="triton")
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-7)


def test_bad_input_is_named():
    image, grad = _tensors(2, 3, 4, 4)
    with pytest.raises(ValueError, match=r"grad_image shape \(2, 3, 4, 5\)"):
        flowtriton.flow_gradient_penalty(image, torch.zeros(2, 3, 4, 5, dtype=torch.float64))
    with pytest.raises(TypeError, match="grad_image dtype"):
        flowtriton.flow_gradient(image, grad.float())
    with pytest.raises(ValueError, match="scheme"):
        flowtriton.flow_gradient(image, grad, scheme="backward")
    with pytest.raises(ValueError, match="units"):
        flowtriton.flow_gradient_penalty(image, grad, units="percent")
    with pytest.raises(ValueError, match=r"image must have shape \(N, C, H, W\)"):
        flowtriton.flow_gradient(image[0], grad[0])
    with pytest.raises(ValueError, match="flow must have 2 channels"):
        flow_jvp(image, torch.zeros(2, 3, 4, 4, dtype=torch.float64))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs_accumulate_in_float32(dtype, device):
    image, grad = _tensors(2, 3, 5, 6, dtype=torch.float32, seed=5)
    image, grad = image.to(device), grad.to(device)
    want = ref_penalty(image.double(), grad.double())
    g = grad.to(dtype).requires_grad_(True)
    got = flowtriton.flow_gradient_penalty(image.to(dtype), g, backend="triton")
    assert got.dtype == dtype
    rel = 2e-3 if dtype == torch.float16 else 2e-2  # the inputs' own rounding
    torch.testing.assert_close(got.double(), want, rtol=rel, atol=rel * want.abs().max().item())
    got.sum().backward()
    assert g.grad.dtype == dtype
    x64, g64 = image.to(dtype).double(), g.detach().double().requires_grad_(True)
    ref_penalty(x64, g64).sum().backward()
    torch.testing.assert_close(g.grad.double(), g64.grad, rtol=rel, atol=rel * g64.grad.abs().max().item())
