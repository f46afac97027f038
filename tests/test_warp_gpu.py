"""GPU-only checks of the warp kernels: what the sequential interpreter cannot exercise (atomic
contention in the image scatter, many programs, half precision, int64 offsets)."""

import pytest
import torch

import flowtriton
from flowtriton import reference

pytestmark = pytest.mark.gpu
MODES = ("zeros", "border", "reflection")


def _grads(fn, image, flow, go):
    image = image.clone().requires_grad_(True)
    flow = flow.clone().requires_grad_(True)
    out = fn(image, flow)
    return (out, *torch.autograd.grad(out, (image, flow), go))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_atomic_scatter_under_full_contention(mode, dtype):
    """Every pixel samples the same fractional point: 4 addresses receive all contributions."""
    n, c, h, w = 4, 3, 96, 80
    image = torch.rand(n, c, h, w, device="cuda", dtype=dtype)
    rows = torch.arange(h, device="cuda", dtype=dtype).view(h, 1)
    cols = torch.arange(w, device="cuda", dtype=dtype).view(1, w)
    flow = torch.stack((17.25 - cols.expand(h, w), 33.5 - rows.expand(h, w))).expand(n, 2, h, w).contiguous()
    go = torch.randn(n, c, h, w, device="cuda", dtype=dtype)
    got = _grads(lambda x, f: flowtriton.warp(x, f, mode, backend="triton"), image, flow, go)
    want = _grads(lambda x, f: reference.warp(x, f, mode), image, flow, go)
    tol = dict(atol=1e-9, rtol=1e-9) if dtype == torch.float64 else dict(atol=2e-3, rtol=1e-4)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, **tol)
    # the scatter landed on exactly four pixels per channel
    assert int((got[1][0, 0] != 0).sum()) == 4


@pytest.mark.parametrize("mode", MODES)
def test_many_programs_match_reference_through_second_order(mode):
    gen = torch.Generator(device="cuda").manual_seed(0)
    image = torch.rand(16, 3, 67, 45, device="cuda", generator=gen, dtype=torch.float64, requires_grad=True)
    flow = (torch.randn(16, 2, 67, 45, device="cuda", generator=gen, dtype=torch.float64) * 5).requires_grad_(True)
    results = []
    for fn in (lambda x, f: flowtriton.warp(x, f, mode, backend="triton"), lambda x, f: reference.warp(x, f, mode)):
        out = fn(image, flow)
        gi, gf = torch.autograd.grad(out, (image, flow), torch.ones_like(out), create_graph=True)
        results.append((out, gi, gf, *torch.autograd.grad(gf.square().sum() + gi.square().sum(), (image, flow))))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, atol=1e-9, rtol=1e-9)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_on_cuda(dtype):
    image = torch.rand(8, 3, 32, 32, device="cuda")
    flow = torch.randn(8, 2, 32, 32, device="cuda") * 2
    got = _grads(lambda x, f: flowtriton.warp(x, f, backend="triton"), image.to(dtype), flow.to(dtype),
                 torch.ones(8, 3, 32, 32, device="cuda", dtype=dtype))
    want = _grads(lambda x, f: reference.warp(x, f), image.to(dtype).float(), flow.to(dtype).float(),
                  torch.ones(8, 3, 32, 32, device="cuda"))
    for a, b in zip(got, want):
        assert a.dtype == dtype
        torch.testing.assert_close(a.float(), b, atol=3e-2, rtol=3e-2)


def test_int64_offsets_beyond_2_pow_31_elements():
    free, _ = torch.cuda.mem_get_info()
    numel = 2**31 + 2**20
    if free < 4 * numel * 4:
        pytest.skip("needs ~36 GB of free GPU memory")
    h = w = 8
    n = numel // (h * w)
    image = torch.rand(n, 1, h, w, device="cuda")
    flow = torch.zeros(n, 2, h, w, device="cuda")
    flow[-1, 0] = 1.0
    out = flowtriton.warp(image, flow, "zeros", backend="triton")
    assert torch.equal(out[:-1], image[:-1])
    assert torch.equal(out[-1, 0, :, :-1], image[-1, 0, :, 1:])
