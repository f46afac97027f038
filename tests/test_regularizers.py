"""FlowGradReg / InputGradReg / TransformGradReg: the authors' formulation reproduced to 1e-6,
reductions and units, random start, finite-difference mode, autocast, DDP, bad input."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import flowtriton
from flowtriton.ops import identity_grid
from flowtriton.regularizers import TransformGradReg, affine_flow

from conftest import DEVICE

BACKENDS = ("torch", "triton")


class TinyNet(nn.Module):
    """conv-BN-softplus, pooled, linear: curved enough for second derivatives to matter."""

    def __init__(self, channels=3, classes=10):
        super().__init__()
        self.conv = nn.Conv2d(channels, 4, 3, padding=1, bias=False)  # BN follows
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4 * 4 * 4, classes)

    def forward(self, x):
        x = F.softplus(self.bn(self.conv(x)))
        return self.fc(F.adaptive_avg_pool2d(x, 4).flatten(1))


def make_model(seed=0, dtype=torch.float64, channels=3):
    torch.manual_seed(seed)
    return TinyNet(channels).to(dtype)


def make_batch(n=4, c=3, h=32, w=32, dtype=torch.float64, seed=0, device="cpu"):
    gen = torch.Generator().manual_seed(seed)
    # smooth-ish images in [0, 1]: low-frequency pattern plus a little noise
    ys = torch.linspace(0, 1, h, dtype=dtype).view(1, 1, h, 1)
    xs = torch.linspace(0, 1, w, dtype=dtype).view(1, 1, 1, w)
    phase = torch.rand((n, c, 1, 1), generator=gen, dtype=dtype) * 6
    images = 0.5 + 0.3 * torch.sin(3 * xs + 2 * ys + phase) + 0.1 * torch.rand((n, c, h, w), generator=gen, dtype=dtype)
    labels = torch.randint(0, 10, (n,), generator=gen)
    return images.clamp(0, 1).to(device), labels.to(device)


# ------------------------------------------------------------------------------------------
# The authors' formulation, re-implemented here independently (docs/method.md)
# ------------------------------------------------------------------------------------------

def authors_bilinear(image, base, tau):
    """Gather-based bilinear sampler at the normalized grid ``base + tau`` ((N, H, W, 2),
    align_corners=True), coordinates clamped to the image (border), as the authors' code samples.
    ``base`` is the identity in PIXELS (exact integers): unnormalizing ``(base + tau + 1) (W-1)/2``
    in float64 would land next to the integers (the float trap of docs/method.md that the authors'
    float32 grid escapes at W=32), so the identity part is kept in pixels."""
    n, c, h, w = image.shape
    x = (base[..., 0] + tau[..., 0] * (w - 1) / 2).clamp(0, w - 1)
    y = (base[..., 1] + tau[..., 1] * (h - 1) / 2).clamp(0, h - 1)
    x0 = torch.floor(x.detach()).long()
    y0 = torch.floor(y.detach()).long()
    x1 = (x0 + 1).clamp(max=w - 1)
    y1 = (y0 + 1).clamp(max=h - 1)
    wx = (x - x0).unsqueeze(1)
    wy = (y - y0).unsqueeze(1)
    flat = image.reshape(n, c, h * w)

    def at(iy, ix):
        return torch.gather(flat, 2, (iy * w + ix).reshape(n, 1, -1).expand(n, c, -1)).reshape(n, c, h, w)

    return (at(y0, x0) * (1 - wx) + at(y0, x1) * wx) * (1 - wy) + (at(y1, x0) * (1 - wx) + at(y1, x1) * wx) * wy


def authors_identity_pixels(n, h, w):
    """affine_grid's identity, float32 as in the authors' code (floor-exact for W=32 there,
    docs/method.md), unnormalized to pixels and snapped to the integers it represents."""
    theta = torch.tensor([[1.0, 0, 0], [0, 1.0, 0]]).expand(n, 2, 3)
    grid32 = F.affine_grid(theta, (n, 1, h, w), align_corners=True)
    pixels = (grid32 + 1) * torch.tensor([(w - 1) / 2, (h - 1) / 2])
    assert (pixels - pixels.round()).abs().max() < 1e-4
    assert torch.equal(torch.floor(pixels), pixels.round())  # float32 floor picks the right cell
    return pixels.round().double()


def authors_loss(model, images, labels, lam, sigma, seed):
    n, c, h, w = images.shape
    base = authors_identity_pixels(n, h, w).to(images.device)
    if sigma > 0 and lam > 0:
        noise = torch.randn((n, 2, h, w), generator=torch.Generator(device=images.device).manual_seed(seed),
                            dtype=images.dtype, device=images.device) * sigma  # as FlowGradReg(seed=...) draws
        theta = torch.tensor([[1.0, 0, 0], [0, 1.0, 0]], dtype=torch.float64, device=images.device)
        grid = F.affine_grid(theta.expand(n, 2, 3),
                             (n, c, h, w), align_corners=True)  # fractional positions: no float trap
        moved = F.grid_sample(images, grid + noise.permute(0, 2, 3, 1), align_corners=True)  # zero padding
        images = moved.clamp(0, 1).detach()
    tau = torch.zeros((n, h, w, 2), dtype=images.dtype, device=images.device, requires_grad=True)
    ce = F.cross_entropy(model(authors_bilinear(images, base, tau)), labels)
    (grad_tau,) = torch.autograd.grad(ce, tau, create_graph=True)
    reg = grad_tau.square().sum(dim=(1, 2, 3)).mean()
    return ce + lam * reg


def _param_grads(model):
    return [p.grad.clone() for p in model.parameters()]


def _assert_rel(got, want, rel):
    scale = want.abs().max().clamp_min(1e-30)
    assert (got - want).abs().max() / scale < rel, ((got - want).abs().max().item(), scale.item())


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("sigma", [0.0, 0.01])
def test_flowgradreg_reproduces_authors_code(backend, sigma):
    images, labels = make_batch(device=DEVICE)
    lam, seed = 300.0, 11
    ref_model = make_model().to(DEVICE)
    model = copy.deepcopy(ref_model)
    want = authors_loss(ref_model, images, labels, lam, sigma, seed)
    want.backward()
    reg = flowtriton.FlowGradReg(lam=lam, sigma=sigma, seed=seed, backend=backend)
    loss, parts = reg(model, images, labels)
    loss.backward()
    _assert_rel(loss.detach(), want.detach(), 1e-6)
    assert lam * parts["penalty"] > 0.05 * parts["ce"]  # the penalty shapes the gradients (8-97% here)
    for got, expected in zip(_param_grads(model), _param_grads(ref_model)):
        _assert_rel(got, expected, 1e-6)


def test_penalty_reductions_and_units_relate_as_documented():
    images, labels = make_batch(n=3, h=8, w=8)
    model = make_model()
    batch, scale = 3, (8 - 1) / 2
    penalties = {}
    for reduction in ("paper", "mean", "sum"):
        for units in ("normalized", "pixels"):
            reg = flowtriton.FlowGradReg(lam=1.0, sigma=0, reduction=reduction, units=units, backend="torch")
            penalties[reduction, units] = reg(model, images, labels)[1]["penalty"]
    torch.testing.assert_close(penalties["mean", "normalized"], batch**2 * penalties["paper", "normalized"])
    torch.testing.assert_close(penalties["sum", "normalized"], batch * penalties["mean", "normalized"])
    torch.testing.assert_close(penalties["paper", "normalized"], scale**2 * penalties["paper", "pixels"])
    # 'mean' with a per-example (eval-mode) model is the mean per-example squared flow gradient
    model.eval()
    reg = flowtriton.FlowGradReg(lam=1.0, sigma=0, reduction="mean", units="pixels", backend="torch")
    per_example = []
    for i in range(batch):
        x = images[i:i + 1].clone().requires_grad_(True)
        (g,) = torch.autograd.grad(F.cross_entropy(model(x), labels[i:i + 1]), x)
        per_example.append(flowtriton.flow_gradient_penalty(x.detach(), g)[0])
    torch.testing.assert_close(reg(model, images, labels)[1]["penalty"], torch.stack(per_example).mean())


def test_parts_are_detached_and_complete():
    images, labels = make_batch(n=2, h=8, w=8)
    loss, parts = flowtriton.FlowGradReg(lam=10.0)(make_model(), images, labels)
    assert {"ce", "penalty", "flow_grad_norm", "input_grad_norm", "loss", "logits"} <= set(parts)
    assert loss.requires_grad and all(not v.requires_grad for v in parts.values())
    torch.testing.assert_close(parts["loss"], parts["ce"] + 10.0 * parts["penalty"])
    # flow_grad_norm: mean per-example norm of the summed loss's flow gradient (normalized units)
    torch.testing.assert_close(parts["flow_grad_norm"] ** 2 / 4, parts["penalty"], rtol=0.5, atol=0)


def test_lam_zero_is_plain_cross_entropy_without_random_start():
    images, labels = make_batch(n=2, h=8, w=8)
    model = make_model()
    loss, parts = flowtriton.FlowGradReg(lam=0.0, sigma=0.5)(model, images, labels)
    torch.testing.assert_close(loss, F.cross_entropy(model(images), labels))
    assert parts["penalty"] == 0 and math.isnan(parts["flow_grad_norm"])


def test_random_start_is_seeded_and_changes_the_input():
    images, labels = make_batch(n=2, h=8, w=8)
    model = make_model()
    model.eval()
    first = flowtriton.FlowGradReg(lam=1.0, sigma=0.05, seed=3)(model, images, labels)[0]
    again = flowtriton.FlowGradReg(lam=1.0, sigma=0.05, seed=3)(model, images, labels)[0]
    other = flowtriton.FlowGradReg(lam=1.0, sigma=0.05, seed=4)(model, images, labels)[0]
    gen = torch.Generator().manual_seed(3)
    with_gen = flowtriton.FlowGradReg(lam=1.0, sigma=0.05, generator=gen)(model, images, labels)[0]
    off = flowtriton.FlowGradReg(lam=1.0, sigma=0.0)(model, images, labels)[0]
    assert first == again == with_gen
    assert first != other and first != off
    reg = flowtriton.FlowGradReg(lam=1.0, sigma=0.05, seed=3)
    moved = reg.random_start(images)
    assert not moved.requires_grad and 0 <= moved.min() and moved.max() <= 1
    assert 0 < (moved - images).abs().max() < 0.5


def _exact_and_fd(model, images, labels, step, perturbation):
    exact = flowtriton.FlowGradReg(lam=1.0, sigma=0, backend="torch")(model, images, labels)[1]["penalty"]
    fd = flowtriton.FlowGradReg(lam=1.0, sigma=0, mode="finite_difference", fd_step=step,
                                fd_perturbation=perturbation, backend="torch")(model, images, labels)[1]["penalty"]
    return exact, fd


@pytest.mark.parametrize("perturbation", ["linear", "warp"])
def test_finite_difference_penalty_approaches_exact_as_step_shrinks(perturbation):
    images, labels = make_batch(n=3, h=16, w=16)
    model = make_model()
    model.eval()  # per-example losses stay per-example
    errors = []
    for step in (0.3, 0.03, 0.003, 0.0003):
        exact, fd = _exact_and_fd(model, images, labels, step, perturbation)
        errors.append(float((fd - exact).abs() / exact))
    assert errors[-1] < errors[0], errors
    if perturbation == "linear":
        assert all(b < a for a, b in zip(errors, errors[1:])), errors  # O(h) convergence
        assert errors[-1] < 1e-3, errors
    else:  # one-sided bilinear differences: converges, but to a smaller value on textured images
        assert all(b <= a + 1e-9 for a, b in zip(errors, errors[1:])), errors
        assert 0.1 < float(fd / exact) < 1.0, errors


@pytest.mark.parametrize("backend", BACKENDS)
def test_finite_difference_mode_trains_with_first_order_gradients_only(backend):
    images, labels = make_batch(n=3, h=16, w=16, device=DEVICE)
    model = make_model().to(DEVICE)
    model.eval()

    def penalty_grads(**options):
        """Parameter gradients of lam * penalty alone (the CE part subtracted)."""
        grads = []
        for lam in (1000.0, 0.0):
            net = copy.deepcopy(model)
            flowtriton.FlowGradReg(lam=lam, sigma=0, backend=backend, **options)(net, images, labels)[0].backward()
            grads.append(_param_grads(net))
        return [a - b for a, b in zip(*grads)]

    fd = penalty_grads(mode="finite_difference", fd_step=1e-4, fd_perturbation="linear")
    exact = penalty_grads()
    for got, want in zip(fd, exact):
        _assert_rel(got, want, 1e-3)


def test_input_grad_reg_matches_double_backprop():
    images, labels = make_batch(n=3, h=8, w=8)
    model = make_model()
    ref_model = copy.deepcopy(model)
    loss, parts = flowtriton.InputGradReg(lam=5.0, reduction="sum")(model, images, labels)
    loss.backward()
    x = images.clone().requires_grad_(True)
    summed = F.cross_entropy(ref_model(x), labels, reduction="sum")
    (g,) = torch.autograd.grad(summed, x, create_graph=True)
    want = summed / 3 + 5.0 * g.square().sum()  # Ross & Doshi-Velez: sum over the batch
    want.backward()
    torch.testing.assert_close(loss, want)
    for got, expected in zip(_param_grads(model), _param_grads(ref_model)):
        torch.testing.assert_close(got, expected)
    assert {"ce", "penalty", "flow_grad_norm", "input_grad_norm", "loss"} <= set(parts)
    assert parts["flow_grad_norm"] > 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_transform_reg_flow_instance_equals_flowgradreg(backend):
    images, labels = make_batch(n=2, h=8, w=8, device=DEVICE)
    model = make_model().to(DEVICE)
    other = copy.deepcopy(model)
    loss, _ = flowtriton.FlowGradReg(lam=30.0, sigma=0, backend=backend)(model, images, labels)
    loss.backward()
    generic, parts = TransformGradReg.flow(lam=30.0, backend=backend)(other, images, labels)
    generic.backward()
    torch.testing.assert_close(generic, loss)
    for got, want in zip(_param_grads(other), _param_grads(model)):
        torch.testing.assert_close(got, want)
    assert "param_grad_norm" in parts


def test_transform_reg_affine_matches_closed_form_chain_rule():
    images, labels = make_batch(n=2, h=8, w=8)
    model = make_model()
    model.eval()
    reg = TransformGradReg.affine(lam=1.0, padding_mode="border", backend="torch")
    penalty = reg(model, images, labels)[1]["penalty"]
    x = images.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(F.cross_entropy(model(x), labels), x)
    field = flowtriton.flow_gradient(images, g, units="normalized")  # dL / d normalized flow
    grid = identity_grid(1, 8, 8, dtype=torch.float64)[0]
    homogeneous = torch.cat((grid, torch.ones_like(grid[..., :1])), -1)  # (H, W, 3)
    grad_theta = torch.einsum("nihw,hwj->nij", field, homogeneous)
    torch.testing.assert_close(penalty, grad_theta.square().sum((1, 2)).mean())
    # a pure translation theta moves every pixel by the same pixel amount
    theta = torch.tensor([[[0.0, 0, 2 / 7], [0, 0, 0]]], dtype=torch.float64)
    torch.testing.assert_close(affine_flow(theta, 8, 8)[0, 0], torch.ones(8, 8, dtype=torch.float64))


def test_works_under_cpu_autocast():
    images, labels = make_batch(n=2, h=8, w=8, dtype=torch.float32)
    model = make_model(dtype=torch.float32)
    ref_model = copy.deepcopy(model)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, parts = flowtriton.FlowGradReg(lam=100.0, sigma=0)(model, images, labels)
    loss.backward()
    ref, _ = flowtriton.FlowGradReg(lam=100.0, sigma=0)(ref_model, images, labels)
    ref.backward()
    assert torch.isfinite(loss) and abs(loss.item() - ref.item()) < 0.05 * abs(ref.item())
    for got, want in zip(_param_grads(model), _param_grads(ref_model)):
        assert torch.isfinite(got).all()
        assert torch.nn.functional.cosine_similarity(got.flatten(), want.flatten(), dim=0) > 0.9


_TORCH = tuple(int(part) for part in torch.__version__.split("+")[0].split(".")[:2])
# Seen on torch 2.11 (H200 machine, CPU tensors, gloo, 2026-11-26), passing on torch 2.13: the
# finite-difference mode's second forward through DDP bumps the version of a 4-element float64
# tensor (the BatchNorm's size) that the first forward's graph saved. exact mode passes on both.
_FD_DDP_XFAIL = pytest.mark.xfail(_TORCH < (2, 13), strict=False,
                                  reason="finite_difference under DDP: in-place version error on torch < 2.13")


@pytest.mark.parametrize("mode", ["exact", pytest.param("finite_difference", marks=_FD_DDP_XFAIL)])
def test_works_inside_distributed_data_parallel(tmp_path, mode):
    import torch.distributed as dist

    images, labels = make_batch(n=2, h=8, w=8)
    model = make_model()
    ref_model = copy.deepcopy(model)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        ddp = nn.parallel.DistributedDataParallel(model)
        reg = flowtriton.FlowGradReg(lam=100.0, sigma=0, mode=mode, backend="torch")
        for _ in range(2):  # a second step checks DDP's reducer finished the first one
            model.zero_grad()
            loss, _ = reg(ddp, images, labels)
            loss.backward()
    finally:
        dist.destroy_process_group()
    for _ in range(2):
        ref_model.zero_grad()
        ref, _ = reg(ref_model, images, labels)
        ref.backward()
    torch.testing.assert_close(loss, ref)
    for got, want in zip(_param_grads(model), _param_grads(ref_model)):
        torch.testing.assert_close(got, want)


class _FeatureMap(nn.Module):
    def forward(self, x):
        return x


class _Pair(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = make_model()

    def forward(self, x):
        return self.net(x), x


@pytest.mark.parametrize("make_reg", [flowtriton.FlowGradReg, flowtriton.InputGradReg])
def test_bad_input_is_named(make_reg):
    images, labels = make_batch(n=2, h=8, w=8)
    with pytest.raises(ValueError, match="lam"):
        make_reg(lam=-1.0)
    with pytest.raises(ValueError, match=r"model must return \(N, classes\) logits.*\(2, 3, 8, 8\)"):
        make_reg(lam=1.0)(_FeatureMap(), images, labels)
    with pytest.raises(ValueError, match="model must return a \\(N, classes\\) logits tensor, got tuple"):
        make_reg(lam=1.0)(_Pair(), images, labels)
    with pytest.raises(ValueError, match="labels must have N=2"):
        make_reg(lam=1.0)(make_model(), images, labels[:1])
    with pytest.raises(ValueError, match=r"loss_fn must return per-example losses of shape \(2,\)"):
        make_reg(lam=1.0, loss_fn=F.cross_entropy)(make_model(), images, labels)
    with pytest.raises(ValueError, match="reduction"):
        make_reg(lam=1.0, reduction="batchmean")


def test_flowgradreg_bad_options_are_named():
    with pytest.raises(ValueError, match="sigma"):
        flowtriton.FlowGradReg(sigma=-0.01)
    with pytest.raises(ValueError, match="units"):
        flowtriton.FlowGradReg(units="percent")
    with pytest.raises(ValueError, match="mode"):
        flowtriton.FlowGradReg(mode="approximate")
    with pytest.raises(ValueError, match="fd_step"):
        flowtriton.FlowGradReg(fd_step=0)
    with pytest.raises(ValueError, match="generator or seed"):
        flowtriton.FlowGradReg(seed=1, generator=torch.Generator())


# ------------------------------------------------------------------------------------------
# The functional primitives: same numbers as the wrappers, usable in a custom loop
# ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("reduction", ["paper", "mean", "sum"])
@pytest.mark.parametrize("units,scheme", [("normalized", "forward"), ("pixels", "central")])
def test_fgr_penalty_equals_flowgradreg(reduction, units, scheme):
    images, labels = make_batch(n=3, h=8, w=8)
    model, ref_model = make_model(), make_model()
    reg = flowtriton.FlowGradReg(lam=7.0, sigma=0.02, seed=5, units=units, scheme=scheme, reduction=reduction)
    loss, parts = reg(ref_model, images, labels)
    loss.backward()
    gen = torch.Generator().manual_seed(5)
    x = flowtriton.fgr_random_start(images, 0.02, units, gen).requires_grad_(True)
    ce = F.cross_entropy(model(x), labels)
    penalty = flowtriton.fgr_penalty(ce, x, units=units, scheme=scheme, reduction=reduction)
    assert x.grad is None and all(p.grad is None for p in model.parameters())  # autograd.grad, not backward
    (ce + 7.0 * penalty).backward()
    torch.testing.assert_close(penalty.detach(), parts["penalty"])
    assert parts["penalty"] > 0
    for got, want in zip(_param_grads(model), _param_grads(ref_model)):
        torch.testing.assert_close(got, want)


def test_fgr_penalty_finite_difference_equals_flowgradreg():
    images, labels = make_batch(n=3, h=8, w=8)
    model = make_model()
    _, parts = flowtriton.FlowGradReg(lam=1.0, sigma=0, mode="finite_difference")(model, images, labels)
    x = images.clone().requires_grad_(True)
    losses = F.cross_entropy(model(x), labels, reduction="none")
    penalty = flowtriton.fgr_penalty(losses, x, mode="finite_difference",
                                     loss_at=lambda moved: F.cross_entropy(model(moved), labels, reduction="none"))
    torch.testing.assert_close(penalty.detach(), parts["penalty"])
    with pytest.raises(ValueError, match=r"per-example losses of shape \(3,\)"):
        flowtriton.fgr_penalty(losses.mean(), x, mode="finite_difference", loss_at=lambda m: m)
    with pytest.raises(TypeError, match="loss_at"):
        flowtriton.fgr_penalty(losses, x, mode="finite_difference")


def test_igr_penalty_equals_inputgradreg():
    images, labels = make_batch(n=3, h=8, w=8)
    model = make_model()
    _, parts = flowtriton.InputGradReg(lam=3.0, reduction="mean")(model, images, labels)
    x = images.clone().requires_grad_(True)
    penalty = flowtriton.igr_penalty(F.cross_entropy(model(x), labels), x, reduction="mean")
    torch.testing.assert_close(penalty.detach(), parts["penalty"])


class _DictNet(nn.Module):
    """A model whose forward returns a dict (logits plus an auxiliary loss), as detection or
    multi-task heads do; FlowGradReg's (model, images, labels) interface cannot call it."""

    def __init__(self):
        super().__init__()
        self.net = make_model()

    def forward(self, x):
        logits = self.net(x)
        return {"logits": logits, "aux": logits.square().mean()}


def test_fgr_penalty_in_a_custom_loop_with_several_loss_terms():
    images, labels = make_batch(n=4, h=8, w=8)
    model = _DictNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    before = [p.detach().clone() for p in model.parameters()]
    x = flowtriton.fgr_random_start(images).requires_grad_(True)
    out = model(x)
    ce = F.cross_entropy(out["logits"], labels)
    penalty = flowtriton.fgr_penalty(ce, x)
    (ce + 0.1 * out["aux"] + flowtriton.DEFAULT_FGR_LAM * penalty).backward()
    opt.step()
    assert penalty.requires_grad and penalty > 0
    assert any(not torch.equal(b, p) for b, p in zip(before, model.parameters()))


def test_penalty_primitives_name_bad_input():
    images, labels = make_batch(n=2, h=8, w=8)
    model = make_model()
    with pytest.raises(ValueError, match="images must require grad"):
        flowtriton.fgr_penalty(F.cross_entropy(model(images), labels), images)
    x = images.clone().requires_grad_(True)
    with pytest.raises(ValueError, match=r"loss must be a scalar.*\(2, 10\)"):
        flowtriton.fgr_penalty(model(x), x)
    with pytest.raises(ValueError, match="no autograd graph"):
        flowtriton.igr_penalty(torch.tensor(1.0, dtype=torch.float64), x)
    with pytest.raises(ValueError, match="scheme"):
        flowtriton.fgr_penalty(F.cross_entropy(model(x), labels), x, scheme="backward")
    bright = (images * 255).requires_grad_(True)
    with pytest.raises(ValueError, match=r"images must hold values in \[0, 1\]"):
        flowtriton.fgr_penalty(F.cross_entropy(model(bright), labels), bright)
    # check_range=False skips the check (the caller has checked once already)
    assert flowtriton.fgr_penalty(F.cross_entropy(model(bright), labels), bright, check_range=False) >= 0


@pytest.mark.parametrize("make_reg", [flowtriton.FlowGradReg, flowtriton.InputGradReg,
                                      lambda lam: TransformGradReg.affine(lam=lam)])
def test_regularizers_refuse_images_outside_unit_range(make_reg):
    images, labels = make_batch(n=2, h=8, w=8)
    reg = make_reg(lam=1.0)
    reg(make_model(), images, labels)  # a first good batch
    for value, shown in ((255.0, "max 255"), (-0.5, "min -0.5")):
        bad = images.clone()
        bad[1, 2, 3, 4] = value
        with pytest.raises(ValueError, match=r"images must hold values in \[0, 1\].*" + shown):
            reg(make_model(), bad, labels)  # CPU tensors are checked on every call
    reg(make_model(), (images + 5e-5).clamp(max=1 + 5e-5), labels)  # inside the tolerance


def test_range_check_syncs_on_cuda_only_on_the_first_call(monkeypatch):
    from flowtriton.regularizers import common

    seen = []
    monkeypatch.setattr(common, "check_unit_range", lambda images, name: seen.append(images.device.type))

    class FakeCuda:
        device = torch.device("cuda")

    check = common.RangeCheck()
    for _ in range(3):
        check(FakeCuda())
    check(torch.zeros(1))
    assert seen == ["cuda", "cpu"]


@pytest.mark.parametrize("make_reg", [flowtriton.FlowGradReg, flowtriton.InputGradReg])
@pytest.mark.parametrize("lam", ["100", True, None, [1.0]])
def test_lam_must_be_a_real_number(make_reg, lam):
    with pytest.raises(TypeError, match="lam must be a real number"):
        make_reg(lam=lam)


def test_one_default_lambda_everywhere():
    from flowtriton.train import DEFAULT_LAM

    assert flowtriton.FlowGradReg().lam == flowtriton.DEFAULT_FGR_LAM
    assert flowtriton.InputGradReg().lam == flowtriton.DEFAULT_IGR_LAM
    assert DEFAULT_LAM == {"igr": flowtriton.DEFAULT_IGR_LAM, "fgr": flowtriton.DEFAULT_FGR_LAM,
                           "fgr-fd": flowtriton.DEFAULT_FGR_LAM, "fgr+at": flowtriton.DEFAULT_FGR_LAM}


def test_fgr_penalty_differentiates_through_images_computed_by_trainable_layers():
    """images = a * base with a trainable a: d penalty / d a matches a central difference."""
    torch.manual_seed(0)
    base = torch.rand(2, 1, 6, 6, dtype=torch.float64) * 0.9
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(36, 3)).double()
    labels = torch.tensor([0, 2])

    def penalty(a):
        images = base * a
        loss = torch.nn.functional.cross_entropy(model(images), labels)
        return flowtriton.fgr_penalty(loss, images, backend="torch")

    a = torch.tensor(0.8, dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(penalty(a), a)
    h = 1e-5
    numeric = (penalty(torch.tensor(0.8 + h, dtype=torch.float64, requires_grad=True)).detach()
               - penalty(torch.tensor(0.8 - h, dtype=torch.float64, requires_grad=True)).detach()) / (2 * h)
    torch.testing.assert_close(grad, numeric, rtol=1e-5, atol=1e-10)


# ------------------------------------------------------------------------------------------
# No surprises (issue 21): the random start checks its images; one-line errors naming the
# argument; the range check compiles without a graph break
# ------------------------------------------------------------------------------------------

REGULARIZERS = {"fgr": lambda **kw: flowtriton.FlowGradReg(lam=1.0, backend="torch", **kw),
                "fgr-fd": lambda **kw: flowtriton.FlowGradReg(lam=1.0, mode="finite_difference", backend="torch", **kw),
                "igr": lambda **kw: flowtriton.InputGradReg(lam=1.0, **kw),
                "affine": lambda **kw: TransformGradReg.affine(lam=1.0, backend="torch", **kw)}


def test_fgr_random_start_refuses_images_outside_unit_range():
    """Bug 6: [0, 255] images came back clamped all white, and the README's functional recipe
    then passed fgr_penalty's range check on them."""
    images, labels = make_batch(n=2, h=8, w=8)
    with pytest.raises(ValueError, match=r"images must hold values in \[0, 1\].*max 2"):
        flowtriton.fgr_random_start(images * 255)
    with pytest.raises(ValueError, match=r"images must hold values in \[0, 1\]"):  # the README's recipe
        x = flowtriton.fgr_random_start(images * 255).requires_grad_(True)
        flowtriton.fgr_penalty(F.cross_entropy(make_model()(x), labels), x)
    # the caller that checked already can skip it; bad shapes and dtypes are named too
    assert flowtriton.fgr_random_start(images * 255, check_range=False).max() <= 1
    with pytest.raises(ValueError, match=r"images must be a \(N, C, H, W\) tensor"):
        flowtriton.fgr_random_start(images[0])
    with pytest.raises(TypeError, match="images must be a floating tensor"):
        flowtriton.fgr_random_start((images * 255).long())
    with pytest.raises(TypeError, match="generator must be a torch.Generator"):
        flowtriton.fgr_random_start(images, generator=0)


def test_functional_range_check_runs_on_the_first_cuda_call(monkeypatch):
    """check_range=None: every call off CUDA, the first CUDA call of the process on CUDA (so the
    README's recipe is checked on a GPU too, and later CUDA steps stay sync-free)."""
    from flowtriton.regularizers import common, functional

    seen = []
    monkeypatch.setattr(common, "check_unit_range", lambda images, name: seen.append(images.device.type))
    monkeypatch.setitem(functional._FIRST_CALL, "fgr_random_start", common.RangeCheck())

    class FakeCuda:
        device = torch.device("cuda")

    for _ in range(3):
        functional._check_range(FakeCuda(), None, "fgr_random_start")
    functional._check_range(torch.zeros(1), None, "fgr_random_start")
    functional._check_range(FakeCuda(), True, "fgr_random_start")
    functional._check_range(torch.zeros(1), False, "fgr_random_start")
    assert seen == ["cuda", "cpu", "cuda"]
    with pytest.raises(TypeError, match="check_range"):
        functional._check_range(torch.zeros(1), "yes", "fgr_random_start")


@pytest.mark.parametrize("name", list(REGULARIZERS))
def test_regularizers_under_no_grad_and_inference_mode(name):
    images, labels = make_batch(n=2, h=8, w=8)
    make = (lambda: REGULARIZERS[name](seed=0)) if name.startswith("fgr") else REGULARIZERS[name]
    want, _ = make()(make_model(), images, labels)
    reg = make()
    with torch.no_grad():  # computed (gradients switched on inside), returned detached
        got, parts = reg(make_model(), images, labels)
    assert not got.requires_grad and got.grad_fn is None
    torch.testing.assert_close(got, want.detach())
    assert parts["penalty"] > 0
    with torch.inference_mode(), pytest.raises(RuntimeError, match=r"Reg cannot run under torch.inference_mode\(\)"):
        reg(make_model(), images, labels)
    with torch.inference_mode():
        frozen, frozen_labels = images.clone(), labels.clone()
    loss, _ = reg(make_model(), frozen, frozen_labels)  # tensors made under inference mode are fine outside it
    loss.backward()


class _IgnoresInput(nn.Module):
    def __init__(self):
        super().__init__()
        self.logits = nn.Parameter(torch.zeros(10, dtype=torch.float64))

    def forward(self, x):
        return self.logits.expand(x.shape[0], 10)


@pytest.mark.parametrize("name", list(REGULARIZERS))
@pytest.mark.parametrize("model", [_IgnoresInput(), lambda x: torch.zeros(x.shape[0], 10, dtype=x.dtype)],
                         ids=["parameters", "constant"])
def test_model_that_ignores_its_input_is_named(name, model):
    images, labels = make_batch(n=2, h=8, w=8)
    with pytest.raises(ValueError, match="model's output does not depend on"):
        REGULARIZERS[name]()(model, images, labels)


def test_penalty_primitives_name_a_loss_that_ignores_the_images():
    images, labels = make_batch(n=2, h=8, w=8)
    model = make_model()
    x = images.clone().requires_grad_(True)
    loss = F.cross_entropy(model(images), labels)  # computed from images, not x
    for penalty in (flowtriton.fgr_penalty, flowtriton.igr_penalty):
        with pytest.raises(ValueError, match="loss does not depend on images"):
            penalty(loss, x)
    with torch.no_grad(), pytest.raises(ValueError, match=r"no autograd graph \(gradients are disabled"):
        flowtriton.fgr_penalty(F.cross_entropy(model(x), labels), x)
    with torch.inference_mode(), pytest.raises(RuntimeError, match="inference_mode"):
        flowtriton.fgr_penalty(F.cross_entropy(model(x), labels), x)


@pytest.mark.parametrize("name", list(REGULARIZERS))
def test_regularizer_labels_are_checked_and_any_integer_dtype_works(name):
    images, labels = make_batch(n=3, h=8, w=8)
    make = (lambda: REGULARIZERS[name](seed=0)) if name.startswith("fgr") else REGULARIZERS[name]
    reg = make()
    for bad, shown in ((torch.tensor([0, 10, 2]), r"\[0, 10\]"), (torch.tensor([0, -1, 2]), r"\[-1, 2\]")):
        with pytest.raises(ValueError, match=r"labels must be class indices in \[0, 10\).*" + shown):
            reg(make_model(), images, bad)
    for dtype in (torch.float32, torch.float64, torch.bool):  # never truncated
        with pytest.raises(TypeError, match="labels of shape \\(N,\\) must be integer class indices"):
            reg(make_model(), images, labels.to(dtype))
    with pytest.raises(ValueError, match="labels are on meta but images are on cpu"):
        reg(make_model(), images, labels.to("meta"))
    want = make()(make_model(), images, labels)[1]["ce"]
    for dtype in (torch.int32, torch.int16, torch.uint8):
        torch.testing.assert_close(make()(make_model(), images, labels.to(dtype))[1]["ce"], want)


@pytest.mark.parametrize("name", list(REGULARIZERS))
def test_regularizers_refuse_an_empty_batch(name):
    images, labels = make_batch(n=2, h=8, w=8)
    with pytest.raises(ValueError, match=r"images must hold at least one example.*\(0, 3, 8, 8\)"):
        REGULARIZERS[name]()(make_model(), images[:0], labels[:0])
    x = images[:0].clone().requires_grad_(True)
    with pytest.raises(ValueError, match="images must hold at least one example"):
        flowtriton.fgr_penalty(x.sum(), x)


@pytest.mark.parametrize("seed,error,shown", [(True, TypeError, "bool"), (1.5, TypeError, "float"),
                                              (2**70, ValueError, r"\[-2\*\*63, 2\*\*64 - 1\]"),
                                              (-(2**63) - 1, ValueError, "range")])
def test_seed_must_be_an_integer_in_torch_range(seed, error, shown):
    with pytest.raises(error, match="seed must.*" + shown):
        flowtriton.FlowGradReg(seed=seed)


def test_numpy_integer_seeds_work_like_python_ints():
    np = pytest.importorskip("numpy")
    images, labels = make_batch(n=2, h=8, w=8)
    want = flowtriton.FlowGradReg(seed=7)(make_model(), images, labels)[0]
    for seed in (np.int64(7), np.uint32(7), np.int8(7)):
        torch.testing.assert_close(flowtriton.FlowGradReg(seed=seed)(make_model(), images, labels)[0], want)
    assert flowtriton.FlowGradReg(seed=2**64 - 1).noise.seed == 2**64 - 1


@pytest.mark.parametrize("make", [lambda b: flowtriton.FlowGradReg(backend=b),
                                  lambda b: flowtriton.InputGradReg(backend=b),
                                  lambda b: TransformGradReg.affine(backend=b),
                                  lambda b: TransformGradReg.flow(backend=b)])
def test_regularizer_constructors_refuse_an_unknown_backend(make):
    with pytest.raises(ValueError, match=r"backend must be one of .*'gpu'"):
        make("gpu")
    make(None), make("torch")


def test_range_and_label_checks_compile_without_a_graph_break():
    """The [0, 1] check read the images back (a .item()): under torch.compile that was a graph
    break on every call of the finite-difference step. Compiled, the checks become assertions
    in the graph: fullgraph=True compiles, good batches pass, bad ones still fail (off CUDA)."""
    from flowtriton.regularizers.common import RangeCheck, classifier_losses, per_example_cross_entropy, prepare_batch

    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 10)).double()
    check = RangeCheck()

    def checked_losses(images, labels):
        images, labels = prepare_batch("test", images, labels)
        return classifier_losses(model, images, labels, per_example_cross_entropy, check(images))[0]

    compiled = torch.compile(checked_losses, fullgraph=True, backend="eager")
    images, labels = make_batch(n=2, h=8, w=8)
    torch.testing.assert_close(compiled(images, labels), checked_losses(images, labels))
    with pytest.raises(RuntimeError, match=r"images must hold values in \[0, 1\]"):
        compiled(images * 255, labels)
    with pytest.raises(RuntimeError, match=r"labels must lie in \[0, 10\)"):
        compiled(images, labels + 10)
    with pytest.raises(ValueError, match=r"images must hold values in \[0, 1\]"):  # eager: still the ValueError
        checked_losses(images * 255, labels)


def test_finite_difference_step_has_no_graph_break_from_the_checks():
    """The whole FD step still breaks at torch.autograd.grad (dynamo's default), but none of the
    breaks comes from a check (issue 21: one .item() break per call before)."""
    import torch._dynamo

    torch._dynamo.reset()
    model = make_model()
    reg = flowtriton.FlowGradReg(lam=1.0, mode="finite_difference", backend="torch")
    images, labels = make_batch(n=2, h=8, w=8)

    def step(images, labels):
        return reg(model, images, labels)[0]

    step(images, labels)
    explained = torch._dynamo.explain(step)(images, labels)
    checks = {"check_unit_range", "check_images_in_range", "check_label_values", "prepare_batch", "__call__",
              "_check_range", "check_batch", "check_grad_mode", "_check_loss_and_images"}
    for reason in explained.break_reasons:
        assert "item()" not in reason.reason and "inference" not in reason.reason, reason.reason
        frames = [frame for frame in reason.user_stack if frame.name in checks and "regularizers" in frame.filename
                  and "autograd.grad" not in reason.reason]
        assert not frames, (reason.reason, frames)
    torch._dynamo.reset()
