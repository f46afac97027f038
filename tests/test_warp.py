"""warp: Triton kernels vs the reference (hypothesis), reference vs F.grid_sample, gradcheck and
gradgradcheck on both backends, and every bad-input case of the functional layer."""

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

import flowtriton
from flowtriton import reference
from flowtriton.ops.units import flow_to_grid

from conftest import DEVICE, NONDET_TOL

MODES = ("zeros", "border", "reflection")
TOL = {torch.float64: dict(atol=1e-10, rtol=1e-9), torch.float32: dict(atol=2e-5, rtol=2e-5)}


def _flow(kind: str, n, h, w, dtype, gen):
    """A flow of the given kind: fractional, exact integers, far outside, or mixed with specials."""
    if kind == "fractional":
        return (torch.rand(n, 2, h, w, generator=gen, dtype=torch.float64) * 6 - 3).to(dtype)
    if kind == "integer":
        return torch.randint(-4, 5, (n, 2, h, w), generator=gen).to(dtype)
    if kind == "far":
        scale = torch.tensor([1e1, 1e3, 1e6], dtype=torch.float64)
        idx = torch.randint(0, 3, (n, 2, h, w), generator=gen)
        sign = torch.randint(0, 2, (n, 2, h, w), generator=gen) * 2 - 1
        return (scale[idx] * sign * torch.rand(n, 2, h, w, generator=gen, dtype=torch.float64)).to(dtype)
    # "special": fractional flow with some NaN / +-inf components
    flow = _flow("fractional", n, h, w, dtype, gen)
    pick = torch.randint(0, 8, flow.shape, generator=gen)
    flow[pick == 0] = float("nan")
    flow[pick == 1] = float("inf")
    flow[pick == 2] = -float("inf")
    return flow


def _case(seed, n, c, h, w, dtype, kind):
    gen = torch.Generator().manual_seed(seed)
    image = torch.rand(n, c, h, w, generator=gen, dtype=torch.float64).to(dtype)
    flow = _flow(kind, n, h, w, dtype, gen)
    return gen, image.to(DEVICE), flow.to(DEVICE)


def _first_and_second(fn, image, flow, gen):
    """Output, both grads (create_graph) and the double-backward grads of a scalar of them."""
    image = image.clone().requires_grad_(True)
    flow = flow.clone().requires_grad_(True)
    out = fn(image, flow)
    go = torch.randn(out.shape, generator=gen, dtype=torch.float64).to(out.device, out.dtype)
    g_image, g_flow = torch.autograd.grad(out, (image, flow), go, create_graph=True)
    w_image = torch.randn(g_image.shape, generator=gen, dtype=torch.float64).to(out.device, out.dtype)
    scalar = (g_flow.square()).sum() + (g_image * w_image).sum() + (g_flow * out.sum(1, keepdim=True)).sum()
    gg_image, gg_flow = torch.autograd.grad(scalar, (image, flow))
    return [out, g_image, g_flow, gg_image, gg_flow]


@given(
    seed=st.integers(0, 2**31 - 1),
    n=st.integers(1, 2), c=st.integers(1, 3), h=st.integers(1, 6), w=st.integers(1, 6),
    mode=st.sampled_from(MODES),
    dtype=st.sampled_from([torch.float32, torch.float64]),
    kind=st.sampled_from(["fractional", "integer", "far", "special"]),
)
def test_triton_matches_reference_through_second_order(seed, n, c, h, w, mode, dtype, kind):
    gen, image, flow = _case(seed, n, c, h, w, dtype, kind)
    gen_a = torch.Generator().manual_seed(seed + 1)
    gen_b = torch.Generator().manual_seed(seed + 1)
    got = _first_and_second(lambda x, f: flowtriton.warp(x, f, mode, backend="triton"), image, flow, gen_a)
    want = _first_and_second(lambda x, f: reference.warp(x, f, mode), image, flow, gen_b)
    names = ["out", "grad_image", "grad_flow", "gradgrad_image", "gradgrad_flow"]
    for name, a, b in zip(names, got, want):
        assert torch.isfinite(a).all(), name
        scale = 1.0 if name == "out" else max(1.0, b.abs().max().item())
        torch.testing.assert_close(a / scale, b / scale, **TOL[dtype], msg=lambda m: f"{name}: {m}")


@given(
    seed=st.integers(0, 2**31 - 1),
    n=st.integers(1, 2), c=st.integers(1, 3), h=st.integers(2, 7), w=st.integers(2, 7),
    mode=st.sampled_from(MODES),
)
def test_reference_matches_grid_sample_at_non_integer_flows(seed, n, c, h, w, mode):
    gen = torch.Generator().manual_seed(seed)
    image = torch.rand(n, c, h, w, generator=gen, dtype=torch.float64, requires_grad=True)
    whole = torch.randint(-3, 4, (n, 2, h, w), generator=gen).double()
    frac = 0.05 + 0.9 * torch.rand(n, 2, h, w, generator=gen, dtype=torch.float64)
    flow = (whole + frac).requires_grad_(True)
    ours = reference.warp(image, flow, mode)
    theirs = F.grid_sample(image, flow_to_grid(flow), mode="bilinear", padding_mode=mode, align_corners=True)
    torch.testing.assert_close(ours, theirs, atol=1e-12, rtol=1e-10)
    go = torch.randn(ours.shape, generator=gen, dtype=torch.float64)
    g_ours = torch.autograd.grad(ours, (image, flow), go)
    g_theirs = torch.autograd.grad(theirs, (image, flow), go)
    torch.testing.assert_close(g_ours[0], g_theirs[0], atol=1e-10, rtol=1e-9)
    torch.testing.assert_close(g_ours[1], g_theirs[1], atol=1e-10, rtol=1e-9)


def test_reference_is_the_authors_clamped_gather_sampler_in_border_mode():
    """Border mode = bilinear with corner indices clamped to the image (docs/method.md: the authors' sampler), including
    its derivative at zero flow: the forward difference, 0 in the last column/row."""
    gen = torch.Generator().manual_seed(0)
    image = torch.rand(2, 3, 5, 6, generator=gen, dtype=torch.float64)
    flow = torch.zeros(2, 2, 5, 6, dtype=torch.float64, requires_grad=True)
    out = reference.warp(image, flow, "border")
    torch.testing.assert_close(out, image)
    go = torch.randn(out.shape, generator=gen, dtype=torch.float64)
    (g_flow,) = torch.autograd.grad(out, flow, go)
    dx = torch.zeros_like(image)
    dx[..., :-1] = image[..., 1:] - image[..., :-1]
    dy = torch.zeros_like(image)
    dy[..., :-1, :] = image[..., 1:, :] - image[..., :-1, :]
    torch.testing.assert_close(g_flow[:, 0], (go * dx).sum(1))
    torch.testing.assert_close(g_flow[:, 1], (go * dy).sum(1))


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("mode", MODES)
def test_gradcheck_and_gradgradcheck(backend, mode):
    gen = torch.Generator().manual_seed(3)
    image = torch.rand(1, 2, 3, 4, generator=gen, dtype=torch.float64).to(DEVICE).requires_grad_(True)
    # fractional parts kept away from integers so finite differences do not straddle a kink
    flow = (torch.randint(-2, 3, (1, 2, 3, 4), generator=gen) + 0.2
            + 0.6 * torch.rand(1, 2, 3, 4, generator=gen, dtype=torch.float64)).to(DEVICE).requires_grad_(True)

    def fn(x, f):
        return flowtriton.warp(x, f, mode, backend=backend)

    assert torch.autograd.gradcheck(fn, (image, flow), eps=1e-6, atol=1e-6, nondet_tol=NONDET_TOL)
    assert torch.autograd.gradgradcheck(fn, (image, flow), eps=1e-6, atol=1e-6, nondet_tol=NONDET_TOL)


def test_zero_flow_is_identity_in_every_mode_and_backend():
    image = torch.rand(2, 3, 7, 5).to(DEVICE)
    flow = torch.zeros(2, 2, 7, 5, device=DEVICE)
    for mode in MODES:
        for backend in ("torch", "triton"):
            assert torch.equal(flowtriton.warp(image, flow, mode, backend=backend), image)


def test_integer_shift_moves_pixels_exactly():
    image = torch.arange(30.0, device=DEVICE).view(1, 1, 5, 6)
    flow = torch.zeros(1, 2, 5, 6, device=DEVICE)
    flow[:, 0] = 1.0  # read one pixel to the right
    for backend in ("torch", "triton"):
        out = flowtriton.warp(image, flow, "zeros", backend=backend)
        assert torch.equal(out[..., :-1], image[..., 1:])
        assert torch.equal(out[..., -1], torch.zeros(1, 1, 5, device=DEVICE))
        out = flowtriton.warp(image, flow, "border", backend=backend)
        assert torch.equal(out[..., -1], image[..., -1])


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_non_finite_flow_reads_zero_and_passes_no_gradient(backend):
    image = torch.rand(1, 2, 4, 4).to(DEVICE).requires_grad_(True)
    flow = torch.zeros(1, 2, 4, 4, device=DEVICE)
    flow[0, 0, 1, 1] = float("nan")
    flow[0, 1, 2, 3] = float("inf")
    flow[0, 0, 3, 0] = -float("inf")
    flow.requires_grad_(True)
    for mode in MODES:
        out = flowtriton.warp(image, flow, mode, backend=backend)
        bad = ~torch.isfinite(flow.detach()).all(1, keepdim=True).expand_as(out)
        assert torch.all(out[bad] == 0)
        assert torch.equal(out[~bad], image.detach()[~bad])
        g_image, g_flow = torch.autograd.grad(out.sum(), (image, flow))
        assert torch.isfinite(g_image).all() and torch.isfinite(g_flow).all()
        assert torch.all(g_flow[:, :, 1, 1] == 0) and torch.all(g_flow[:, :, 2, 3] == 0)


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_far_outside_flows_read_padding(backend):
    image = torch.rand(1, 1, 3, 4).to(DEVICE)
    for value in (1e4, -1e7, 3e38):
        flow = torch.full((1, 2, 3, 4), value, device=DEVICE)
        zeros = flowtriton.warp(image, flow, "zeros", backend=backend)
        assert torch.equal(zeros, torch.zeros_like(image))
        border = flowtriton.warp(image, flow, "border", backend=backend)
        corner = image[0, 0, -1, -1] if value > 0 else image[0, 0, 0, 0]
        assert torch.all(border == corner)
        refl = flowtriton.warp(image, flow, "reflection", backend=backend)
        assert torch.isfinite(refl).all() and refl.min() >= image.min() and refl.max() <= image.max()


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_empty_batch(backend):
    image = torch.rand(0, 3, 4, 5, device=DEVICE, requires_grad=True)
    flow = torch.zeros(0, 2, 4, 5, device=DEVICE, requires_grad=True)
    out = flowtriton.warp(image, flow, backend=backend)
    assert out.shape == (0, 3, 4, 5)
    out.sum().backward()
    assert flow.grad is not None and flow.grad.shape == flow.shape
    assert image.grad is not None and image.grad.shape == image.shape


@pytest.mark.parametrize("layout", ["noncontiguous", "channels_last"])
def test_noncontiguous_and_channels_last_inputs(layout):
    gen = torch.Generator().manual_seed(1)
    image = torch.rand(2, 3, 5, 6, generator=gen).to(DEVICE)
    flow = (torch.randn(2, 2, 5, 6, generator=gen) * 2).to(DEVICE)
    want = reference.warp(image, flow, "border")
    if layout == "channels_last":
        image_in = image.to(memory_format=torch.channels_last)
        flow_in = flow.to(memory_format=torch.channels_last)
    else:
        image_in = image.transpose(2, 3).contiguous().transpose(2, 3)
        flow_in = torch.stack([flow, flow], dim=-1)[..., 0]
    assert not image_in.is_contiguous() and not flow_in.is_contiguous()
    for backend in ("torch", "triton"):
        torch.testing.assert_close(flowtriton.warp(image_in, flow_in, "border", backend=backend), want)


def test_half_precision_inputs_compute_in_float32():
    gen = torch.Generator().manual_seed(2)
    image = torch.rand(1, 2, 5, 5, generator=gen).to(DEVICE)
    flow = torch.randn(1, 2, 5, 5, generator=gen).to(DEVICE)
    want = reference.warp(image, flow, "zeros")
    for dtype in (torch.float16, torch.bfloat16):
        for backend in ("torch", "triton"):
            got = flowtriton.warp(image.to(dtype), flow.to(dtype), "zeros", backend=backend)
            assert got.dtype == dtype
            torch.testing.assert_close(got.float(), reference.warp(image.to(dtype).float(), flow.to(dtype).float()),
                                       atol=1e-2, rtol=1e-2)
    assert want.dtype == torch.float32


# ---------------------------------------------------------------------------------------------
# Bad input: each raises ValueError/TypeError naming the argument.
# ---------------------------------------------------------------------------------------------

def _good():
    return torch.rand(2, 3, 4, 5), torch.zeros(2, 2, 4, 5)


@pytest.mark.parametrize(
    "make, error, match",
    [
        (lambda x, f: (x[0], f), ValueError, r"image must have shape \(N, C, H, W\)"),
        (lambda x, f: (x, f[0]), ValueError, r"flow must have shape \(N, 2, H, W\)"),
        (lambda x, f: (x, f[:1]), ValueError, r"flow shape \(1, 2, 4, 5\) does not match image"),
        (lambda x, f: (x, f[..., :3]), ValueError, "does not match image shape"),
        (lambda x, f: (x, torch.zeros(2, 3, 4, 5)), ValueError, "flow must have 2 channels"),
        (lambda x, f: (x.long(), f), TypeError, "image must be a floating tensor"),
        (lambda x, f: (x, f.int()), TypeError, "flow must be a floating tensor"),
        (lambda x, f: (x, f.double()), TypeError, "flow dtype torch.float64 differs from image dtype"),
        (lambda x, f: (x, f.to("meta")), ValueError, "flow is on meta but image is on cpu"),
        (lambda x, f: (x.numpy(), f), TypeError, "image must be a torch.Tensor"),
        (lambda x, f: (x[:, :, :0], f[:, :, :0]), ValueError, "image must have C, H, W >= 1"),
    ],
)
def test_bad_input_raises_naming_the_argument(make, error, match):
    image, flow = make(*_good())
    for backend in ("torch", "triton"):
        with pytest.raises(error, match=match):
            flowtriton.warp(image, flow, backend=backend)


def test_bad_padding_mode_and_backend():
    image, flow = _good()
    with pytest.raises(ValueError, match="padding_mode must be one of"):
        flowtriton.warp(image, flow, "wrap")
    with pytest.raises(ValueError, match="backend must be one of"):
        flowtriton.warp(image, flow, backend="cuda")


@pytest.mark.parametrize("h, w", [(1, 1), (1, 5), (4, 1)])
def test_single_row_or_column_images(h, w):
    gen = torch.Generator().manual_seed(5)
    image = torch.rand(2, 2, h, w, generator=gen, dtype=torch.float64).to(DEVICE)
    flow = torch.randn(2, 2, h, w, generator=gen, dtype=torch.float64).to(DEVICE)
    for mode in MODES:
        want = reference.warp(image, flow, mode)
        assert torch.isfinite(want).all()
        torch.testing.assert_close(flowtriton.warp(image, flow, mode, backend="triton"), want)
    assert math.isclose(flowtriton.warp(image, flow * 0, "zeros").sum().item(), image.sum().item())
