"""Tests of flowtriton.attacks: FlowPGD, ADef, StAdv, RotationTranslation, evaluate.

Tiny linear / one-conv models on 8x8 images; the warp runs on the torch backend on CPU.
"""

import gc
import json
import math
import warnings

import pytest
import torch
import torch.nn.functional as F

import flowtriton
from flowtriton.attacks import (ADef, EvaluationResult, EvaluationRow, FlowPGD, RandomFlow, RotationTranslation,
                                StAdv, evaluate, flow_norms, flow_smoothness, rigid_flow)
from flowtriton.attacks.adef import gaussian_kernel
from flowtriton.attacks.evaluate import row_key

warnings.filterwarnings("ignore", category=FutureWarning)


# -- tiny models and images ------------------------------------------------------------------------
def smooth_images(n=6, channels=1, height=8, width=8, seed=0, dtype=torch.float32):
    """(n, channels, height, width) images in [0, 1] with real spatial gradients."""
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, channels, 3, 3, generator=gen, dtype=torch.float64)
    return F.interpolate(coarse, size=(height, width), mode="bilinear", align_corners=True).to(dtype)


class Linear(torch.nn.Module):
    """logits = W flatten(x) + b."""

    def __init__(self, channels=1, height=8, width=8, classes=3, seed=0, dtype=torch.float32):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        weight = torch.randn(classes, channels * height * width, generator=gen, dtype=torch.float64)
        self.weight = torch.nn.Parameter(weight.to(dtype))
        self.bias = torch.nn.Parameter(torch.zeros(classes, dtype=dtype))

    def forward(self, x):
        return x.flatten(1) @ self.weight.t() + self.bias


class TinyConv(torch.nn.Module):
    """One conv, BatchNorm and dropout (so train/eval modes matter), a linear head."""

    def __init__(self, channels=1, size=8, classes=4, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.conv = torch.nn.Conv2d(channels, 4, 3, padding=1)
        self.norm = torch.nn.BatchNorm2d(4)
        self.drop = torch.nn.Dropout(0.5)
        self.head = torch.nn.Linear(4 * size * size, classes)

    def forward(self, x):
        return self.head(self.drop(torch.relu(self.norm(self.conv(x)))).flatten(1))


def blob_images(n=6, channels=1, size=8, seed=0, dtype=torch.float32):
    """(n, channels, size, size) Gaussian blobs (sigma 1.2 px) near the centre, random shades."""
    gen = torch.Generator().manual_seed(seed)
    centre = (size - 1) / 2 + (torch.rand(n, 2, generator=gen, dtype=torch.float64) - 0.5) * 0.6
    coords = torch.arange(size, dtype=torch.float64)
    gx = torch.exp(-0.5 * ((coords - centre[:, 0, None]) / 1.2) ** 2)
    gy = torch.exp(-0.5 * ((coords - centre[:, 1, None]) / 1.2) ** 2)
    shade = 0.6 + 0.4 * torch.rand(n, channels, generator=gen, dtype=torch.float64)
    images = (gy[:, :, None] * gx[:, None, :])[:, None] * shade[:, :, None, None]
    return images.to(dtype)


class Blob(Linear):
    """A weak linear classifier that small flows fool: class 1 = mass right of the centre,
    class 2 = mass left of it, class 0 = neither by more than ``threshold``."""

    def __init__(self, channels=1, size=8, dtype=torch.float32, threshold=1.0):
        super().__init__(channels=channels, height=size, width=size, classes=3, dtype=dtype)
        ramp = (torch.arange(size, dtype=torch.float64) - (size - 1) / 2).expand(channels, size, size).flatten()
        with torch.no_grad():
            self.weight.copy_(torch.stack((torch.zeros_like(ramp), ramp, -ramp)).to(dtype))
            self.bias.copy_(torch.tensor([threshold, 0.0, 0.0], dtype=dtype))


def predictions(model, images):
    with torch.no_grad():
        return model(images).argmax(dim=1)


ATTACKS = {
    "pgd": lambda m: FlowPGD(m, eps=0.3, steps=5, restarts=2, seed=0),
    "pgd_paper": lambda m: FlowPGD.preset("paper", m, eps=0.3, steps=5),
    "pgd_tnorm_restarts": lambda m: FlowPGD(m, eps=1.0, units="pixels", norm="tnorm", loss="margin",
                                            random_start=True, restarts=2, steps=3, seed=0),
    "adef": lambda m: ADef(m, candidates=[1, 2], steps=10, overshoot=1.2, smooth=0.5),
    "stadv": lambda m: StAdv(m, steps=10),
    "stadv_lbfgs": lambda m: StAdv(m, steps=6, optimizer="lbfgs"),
    "rotation_translation": lambda m: RotationTranslation(m, num_rotations=3, num_translations=3),
    "random_flow": lambda m: RandomFlow(m, eps=0.1, samples=6, seed=0),
}
PADDING = {"pgd": "zeros", "pgd_paper": "zeros", "pgd_tnorm_restarts": "zeros", "adef": "border", "stadv": "border",
           "stadv_lbfgs": "border", "rotation_translation": "zeros", "random_flow": "zeros"}


# -- every attack ----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(ATTACKS))
def test_result_agrees_with_model_and_flow(name):
    model = TinyConv().eval()
    x = smooth_images(6)
    labels = predictions(model, x)
    labels[0] = (labels[0] + 1) % 4  # one example already misclassified
    result = ATTACKS[name](model).run(x, labels)
    preds = predictions(model, result.images)
    assert torch.equal(result.predictions, preds)
    assert torch.equal(result.success, preds != labels)
    assert bool(result.success[0])
    assert result.flow.shape == (6, 2, 8, 8) and result.images.shape == x.shape
    rewarped = flowtriton.warp(x, result.flow, PADDING[name]).clamp(0, 1)
    torch.testing.assert_close(result.images, rewarped, atol=1e-5, rtol=0)
    tnorm, linf, l2 = flow_norms(result.flow)
    torch.testing.assert_close(result.tnorm, tnorm)
    torch.testing.assert_close(result.l2, result.flow.flatten(1).norm(dim=1))
    assert result.iterations.dtype == torch.int64 and result.iterations.shape == (6,)
    assert torch.equal(result.norms["linf"], linf)


@pytest.mark.parametrize("name", list(ATTACKS))
def test_model_modes_restored_and_eval_during_attack(name):
    model = TinyConv()
    model.train()
    model.drop.eval()  # a mixed configuration must come back exactly
    seen = []
    model.register_forward_pre_hook(lambda module, args: seen.append((module.training, module.norm.training)))
    x = smooth_images(4)
    ATTACKS[name](model)(x, torch.zeros(4, dtype=torch.long))
    assert seen and not any(any(modes) for modes in seen)
    assert model.training and model.norm.training and model.conv.training and not model.drop.training


def test_model_modes_restored_after_exception():
    model = TinyConv()
    calls = []

    def explode(module, args):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("boom")

    model.register_forward_pre_hook(explode)
    with pytest.raises(RuntimeError, match="boom"):
        FlowPGD(model, steps=5)(smooth_images(2), torch.zeros(2, dtype=torch.long))
    assert model.training and model.norm.training and model.drop.training


@pytest.mark.parametrize("name", list(ATTACKS))
def test_no_graph_survives(name):
    model = TinyConv()
    x = smooth_images(4)
    result = ATTACKS[name](model).run(x, torch.zeros(4, dtype=torch.long))
    for value in (result.images, result.flow, result.tnorm, result.l2, *result.info.values()):
        assert value.grad_fn is None and not value.requires_grad
    assert all(p.grad is None for p in model.parameters())


def _live_tensors():
    gc.collect()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return sum(1 for o in gc.get_objects() if isinstance(o, torch.Tensor))


@pytest.mark.parametrize("make", [
    lambda m: FlowPGD(m, eps=0.3, steps=12),
    lambda m: ADef(m, candidates=[1, 2], steps=12, max_norm=1e9),
    lambda m: StAdv(m, steps=12, abort_early=False, optimizer="adam", search_steps=1),
    lambda m: StAdv(m, steps=20, abort_early=False, optimizer="lbfgs", search_steps=1),
], ids=["pgd", "adef", "stadv", "stadv_lbfgs"])
def test_memory_does_not_grow_over_iterations(make):
    model = Linear(classes=4, dtype=torch.float64)
    x = smooth_images(4, dtype=torch.float64)
    counts = []
    make(model).run(x[:1], predictions(model, x[:1]))  # warm-up: fills caches (e.g. unit-scale tensors)
    model.register_forward_pre_hook(lambda module, args: counts.append(_live_tensors()))
    before = _live_tensors()
    result = make(model).run(x, predictions(model, x))
    del result
    assert _live_tensors() <= before
    gradient_calls = counts[1:-1]  # drop the clean and the final evaluation
    assert len(gradient_calls) >= 8
    # A leak of one tensor per iteration would lift the last quarter's median by >= n / 2 over
    # the second quarter's; L-BFGS's line search legitimately wobbles by a few tensors.
    n = len(gradient_calls)
    quarter = lambda k: sorted(gradient_calls[k * n // 4:(k + 1) * n // 4])[n // 8]  # noqa: E731
    assert quarter(3) - quarter(1) < n / 4


def _labels_error(images):
    return FlowPGD(Linear(), steps=1).run(images, torch.zeros(2, 1, dtype=torch.long))


@pytest.mark.parametrize("call, error, word", [
    (lambda: FlowPGD(Linear(), eps=-0.1), ValueError, "eps"),
    (lambda: FlowPGD(Linear(), steps=0), ValueError, "steps"),
    (lambda: FlowPGD(Linear(), steps=2.5), TypeError, "steps"),
    (lambda: FlowPGD(Linear(), units="percent"), ValueError, "units"),
    (lambda: FlowPGD(Linear(), norm="l2"), ValueError, "norm"),
    (lambda: FlowPGD(Linear(), loss="hinge"), ValueError, "loss"),
    (lambda: FlowPGD(Linear(), restarts=0), ValueError, "restarts"),
    (lambda: FlowPGD("not a model"), TypeError, "model"),
    (lambda: ADef(Linear(), candidates=0), ValueError, "candidates"),
    (lambda: ADef(Linear(), max_norm=0), ValueError, "max_norm"),
    (lambda: ADef(Linear(), overshoot=0.5), ValueError, "overshoot"),
    (lambda: ADef(Linear(), smooth=-1), ValueError, "smooth"),
    (lambda: ADef(Linear(), steps=0), ValueError, "steps"),
    (lambda: StAdv(Linear(), tau=-1), ValueError, "tau"),
    (lambda: StAdv(Linear(), lr=0), ValueError, "lr"),
    (lambda: StAdv(Linear(), search_steps=0), ValueError, "search_steps"),
    (lambda: StAdv(Linear(), optimizer="sgd"), ValueError, "optimizer"),
    (lambda: StAdv(Linear(), history=0), ValueError, "history"),
    (lambda: RotationTranslation(Linear(), max_rotation=-5), ValueError, "max_rotation"),
    (lambda: RotationTranslation(Linear(), num_rotations=0), ValueError, "num_rotations"),
    (lambda: FlowPGD(Linear(), steps=1).run(smooth_images(2)[0], torch.zeros(2, dtype=torch.long)),
     ValueError, "images"),
    (lambda: FlowPGD(Linear(), steps=1).run(smooth_images(2).long(), torch.zeros(2, dtype=torch.long)),
     TypeError, "images"),
    (lambda: FlowPGD(Linear(), steps=1).run(smooth_images(2), torch.zeros(2)), TypeError, "labels"),
    (lambda: _labels_error(smooth_images(2)), ValueError, "labels"),
    (lambda: FlowPGD(Linear(), steps=1).run(smooth_images(2), torch.zeros(3, dtype=torch.long)),
     ValueError, "labels"),
    (lambda: FlowPGD(Linear(), steps=1).run(smooth_images(2), torch.tensor([0, 7])), ValueError, "labels"),
    (lambda: FlowPGD(Linear(), steps=1, targeted=True).run(smooth_images(2)), ValueError, "labels"),
    (lambda: ADef(Linear(classes=3), candidates=3).run(smooth_images(2)), ValueError, "candidates"),
])
def test_bad_arguments_raise_naming_them(call, error, word):
    with pytest.raises(error, match=word):
        call()


# -- FlowPGD ---------------------------------------------------------------------------------------
def test_pgd_paper_preset_is_the_authors_attack():
    attack = FlowPGD.preset("paper", Linear())
    assert (attack.eps, attack.steps, attack.units, attack.norm, attack.loss) == (0.01, 100, "normalized", "linf", "ce")
    assert attack.effective_step_size == pytest.approx(1e-4)
    assert (attack.random_start, attack.restarts, attack.padding_mode, attack.targeted) == (False, 1, "zeros", False)
    assert (attack.schedule, attack.keep) == ("constant", "last")


@pytest.mark.parametrize("units, norm, eps", [("normalized", "linf", 0.05), ("pixels", "linf", 0.4),
                                              ("pixels", "tnorm", 0.4), ("normalized", "tnorm", 0.05)])
def test_pgd_flow_stays_in_budget(units, norm, eps):
    height, width = 6, 10  # non-square: the normalized unit differs per axis
    model = Linear(height=height, width=width)
    x = smooth_images(5, height=height, width=width)
    attack = FlowPGD(model, eps=eps, steps=6, step_size=eps / 2, units=units, norm=norm, random_start=True, seed=1)
    flow = attack.run(x, predictions(model, x)).flow
    scale = torch.tensor([(width - 1) / 2, (height - 1) / 2]).view(1, 2, 1, 1) if units == "normalized" else 1.0
    in_units = flow / scale
    if norm == "linf":
        assert in_units.abs().max() <= eps * (1 + 1e-5)
        assert in_units.abs().max() >= eps * (1 - 1e-5)  # the box is reached with these steps
    else:
        assert in_units.square().sum(dim=1).sqrt().max() <= eps * (1 + 1e-5)


@pytest.mark.parametrize("units", ["normalized", "pixels"])
def test_pgd_single_step_is_one_sign_step(units):
    model = Linear(classes=3, dtype=torch.float64)
    x = smooth_images(4, dtype=torch.float64)
    labels = predictions(model, x)
    eps = 0.05
    flow = torch.zeros(4, 2, 8, 8, dtype=torch.float64, requires_grad=True)
    scale = 3.5 if units == "normalized" else 1.0  # (8 - 1) / 2 pixels per normalized unit
    loss = F.cross_entropy(model(flowtriton.warp(x, flow * scale).clamp(0, 1)), labels, reduction="sum")
    (grad,) = torch.autograd.grad(loss, flow)
    result = FlowPGD.preset("paper", model, eps=eps, steps=1, units=units).run(x, labels)
    torch.testing.assert_close(result.flow, eps * scale * grad.sign())
    assert result.iterations.tolist() == [1] * 4


def test_pgd_loss_not_below_clean_loss():
    model = TinyConv().eval()
    x = smooth_images(8)
    labels = predictions(model, x)
    result = FlowPGD.preset("paper", model, eps=0.05, steps=10).run(x, labels)
    with torch.no_grad():
        clean = F.cross_entropy(model(x), labels, reduction="none")
        attacked = F.cross_entropy(model(result.images), labels, reduction="none")
    torch.testing.assert_close(result.info["loss"], attacked)
    assert torch.all(attacked >= clean - 1e-6)
    assert attacked.mean() > clean.mean()


@pytest.mark.parametrize("loss", ["ce", "margin"])
def test_pgd_restarts_never_worse_than_one_start(loss):
    model = TinyConv().eval()
    x = smooth_images(8)
    labels = predictions(model, x)
    common = dict(eps=0.02, steps=4, loss=loss, random_start=True, seed=3)
    one = FlowPGD(model, restarts=1, **common).run(x, labels)
    many = FlowPGD(model, restarts=4, **common).run(x, labels)
    assert torch.all(many.success >= one.success)
    same = many.success == one.success
    assert torch.all(many.info["loss"][same] >= one.info["loss"][same] - 1e-6)
    assert many.iterations.tolist() == [16] * 8


def test_pgd_seed_reproducible_and_targeted():
    model = Blob()
    x = blob_images(6)
    labels = predictions(model, x)
    first = FlowPGD(model, eps=0.3, steps=3, random_start=True, seed=7).run(x, labels)
    again = FlowPGD(model, eps=0.3, steps=3, random_start=True,
                    generator=torch.Generator().manual_seed(7)).run(x, labels)
    assert torch.equal(first.flow, again.flow)
    targets = (labels + 1) % 3
    result = FlowPGD(model, eps=1.0, steps=20, units="pixels", targeted=True).run(x, targets)
    assert torch.equal(result.success, result.predictions == targets)
    assert result.success.float().mean() >= 0.5


def test_pgd_with_budget_copies():
    attack = FlowPGD(Linear(), eps=0.01, steps=10, schedule="constant")
    other = attack.with_budget(0.03)
    assert other.eps == 0.03 and attack.eps == 0.01 and other.effective_step_size == pytest.approx(0.003)
    assert FlowPGD(Linear(), eps=0.01).with_budget(0.03).effective_step_size == pytest.approx(0.06)  # APGD: 2 eps
    with pytest.raises(ValueError, match="budget"):
        attack.with_budget(-1)


# -- ADef ------------------------------------------------------------------------------------------
def _adef_first_step(model, x, smooth=0.0):
    """The analytic minimum-norm field of ADef's first step on a linear model, written out with
    torch.gradient (central differences, one-sided at the borders) and an explicit Gaussian."""
    n, c, h, w = x.shape
    logits = model(x).detach()
    order = logits.argsort(dim=1, descending=True)
    current, target = order[:, 0], order[:, 1]
    f = logits.gather(1, target[:, None]).squeeze(1) - logits.gather(1, current[:, None]).squeeze(1)
    grad = (model.weight[target] - model.weight[current]).detach().view(n, c, h, w)
    dx = torch.gradient(x, dim=3)[0]
    dy = torch.gradient(x, dim=2)[0]
    alpha = torch.stack(((grad * dx).sum(1), (grad * dy).sum(1)), dim=1)
    if smooth:
        size = 2 * int(4 * smooth + 0.5) + 1
        g = torch.tensor([math.exp(-0.5 * ((i - (size - 1) / 2) / smooth) ** 2) for i in range(size)],
                         dtype=x.dtype)
        kernel = torch.outer(g, g) / g.sum() ** 2
        conv = lambda v: F.conv2d(v, kernel.expand(2, 1, size, size), padding=size // 2, groups=2)  # noqa: E731
        alpha = conv(alpha)
        squared = alpha.square().flatten(1).sum(1)
        alpha = conv(alpha)
    else:
        squared = alpha.square().flatten(1).sum(1)
    return -f[:, None, None, None] * alpha / squared[:, None, None, None]


@pytest.mark.parametrize("smooth", [0.0, 0.7])
def test_adef_first_step_is_the_analytic_minimum_norm_field(smooth):
    model = Linear(channels=2, classes=3, dtype=torch.float64)
    x = smooth_images(5, channels=2, dtype=torch.float64)
    labels = predictions(model, x)
    result = ADef(model, candidates=1, steps=1, smooth=smooth).run(x, labels)
    expected = _adef_first_step(model, x, smooth)
    torch.testing.assert_close(result.flow, expected)
    assert result.iterations.tolist() == [1] * 5


def test_adef_flips_linear_classifier_with_small_fields():
    model = Blob(channels=2, dtype=torch.float64)
    x = blob_images(8, channels=2, dtype=torch.float64)
    labels = predictions(model, x)
    # the linearized steps approach this boundary from one side: the overshoot carries them over
    result = ADef(model, candidates=[1, 2], steps=50, overshoot=1.2).run(x, labels)
    assert result.success.all()
    assert torch.all(result.predictions != labels)
    assert result.tnorm.max() < 0.5  # pixels: the blobs sit within 0.3 px of the decision lines
    assert torch.all(result.iterations >= 1) and torch.all(result.iterations <= 50)
    # more candidates can only give a field at most as large in the first step
    model = Linear(channels=2, classes=4, dtype=torch.float64)
    x = smooth_images(6, channels=2, dtype=torch.float64)
    labels = predictions(model, x)
    single = ADef(model, candidates=1, steps=1).run(x, labels)
    multi = ADef(model, candidates=[1, 2, 3], steps=1).run(x, labels)
    assert torch.all(multi.tnorm <= single.tnorm + 1e-12)


def test_adef_gaussian_kernel_is_the_reference():
    kernel = gaussian_kernel(0.5, torch.float64)
    assert kernel.shape == (2, 1, 5, 5)  # 2 * int(4 * 0.5 + 0.5) + 1
    torch.testing.assert_close(kernel.sum(dim=(1, 2, 3)), torch.ones(2, dtype=torch.float64))
    assert kernel[0, 0, 2, 2] == kernel.max()


def test_adef_max_norm_overshoot_and_targeting():
    model = Blob(dtype=torch.float64)
    x = blob_images(8, dtype=torch.float64)
    labels = predictions(model, x)
    free = ADef(model, steps=50).run(x, labels)
    cap = free.tnorm.median().item()
    capped = ADef(model, steps=50, max_norm=cap).run(x, labels)
    assert torch.all(capped.tnorm <= cap * (1 + 1e-9))
    assert torch.all(~capped.success[free.tnorm > cap * 1.0001])
    over = ADef(model, steps=50, overshoot=1.5).run(x, labels)
    grown = over.info["overshot"]
    torch.testing.assert_close(over.tnorm[grown], 1.5 * free.tnorm[grown])
    torch.testing.assert_close(over.tnorm[~grown], free.tnorm[~grown])
    targets = predictions(model, x).add(2) % 3
    targeted = ADef(model, steps=50, overshoot=1.2, targeted=True).run(x, targets)
    assert torch.equal(targeted.success, targeted.predictions == targets)
    assert targeted.success.float().mean() >= 0.5


def test_adef_labels_none_deforms_away_from_the_prediction():
    model = Linear(classes=3, dtype=torch.float64)
    x = smooth_images(4, dtype=torch.float64)
    by_default = ADef(model, steps=20).run(x)
    explicit = ADef(model, steps=20).run(x, predictions(model, x))
    assert torch.equal(by_default.flow, explicit.flow)


# -- StAdv -----------------------------------------------------------------------------------------
def _smoothness_loop(flow):
    """The paper's L_flow written pixel by pixel (neighbours outside repeat the edge)."""
    n, _, h, w = flow.shape
    total = [flow.new_zeros(()) for _ in range(n)]
    for b in range(n):
        for i in range(h):
            for j in range(w):
                for di, dj in ((-1, 0), (1, 0), (0, -1), (0, 1)):
                    qi, qj = min(max(i + di, 0), h - 1), min(max(j + dj, 0), w - 1)
                    du = flow[b, 0, i, j] - flow[b, 0, qi, qj]
                    dv = flow[b, 1, i, j] - flow[b, 1, qi, qj]
                    total[b] = total[b] + torch.sqrt(du ** 2 + dv ** 2 + 1e-8)
    return torch.stack(total)


def test_stadv_smoothness_and_gradient_match_autograd_reference():
    flow = torch.randn(2, 2, 3, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    flow[1, :, 1, 1] = flow[1, :, 1, 2]  # an equal neighbour: the 1e-8 keeps the sqrt smooth
    mine = flow.clone().requires_grad_(True)
    theirs = flow.clone().requires_grad_(True)
    value, reference = flow_smoothness(mine), _smoothness_loop(theirs)
    torch.testing.assert_close(value, reference)
    weights = torch.tensor([0.3, -1.7], dtype=torch.float64)
    (g_mine,) = torch.autograd.grad((value * weights).sum(), mine)
    (g_ref,) = torch.autograd.grad((reference * weights).sum(), theirs)
    torch.testing.assert_close(g_mine, g_ref)
    assert torch.autograd.gradcheck(flow_smoothness, (mine,))
    torch.testing.assert_close(flow_smoothness(torch.zeros(1, 2, 3, 4, dtype=torch.float64)),
                               torch.tensor([4 * 12 * 1e-4], dtype=torch.float64))


@pytest.mark.parametrize("optimizer, lr", [("adam", 0.01), ("lbfgs", 0.01)])
def test_stadv_fools_weak_model_with_small_smooth_flow(optimizer, lr):
    x = blob_images(8)
    model = Blob()
    labels = predictions(model, x)
    result = StAdv(model, tau=0.05, steps=100, optimizer=optimizer, lr=lr).run(x, labels)
    assert result.success.all()
    assert result.tnorm.max() < 0.5  # pixels
    # smooth: neighbouring flow vectors differ far less than the vectors themselves
    neighbour_change = (result.flow[..., 1:] - result.flow[..., :-1]).abs().mean()
    assert neighbour_change < 0.5 * result.flow.abs().mean()
    torch.testing.assert_close(result.info["flow_loss"], flow_smoothness(result.flow))


@pytest.mark.parametrize("optimizer", ["adam", "lbfgs"])
def test_stadv_examples_are_independent(optimizer):
    x = blob_images(6, dtype=torch.float64)
    model = Blob(dtype=torch.float64)
    labels = predictions(model, x)
    attack = StAdv(model, steps=60, search_steps=2, optimizer=optimizer)
    full = attack.run(x, labels)
    keep = torch.tensor([4, 1, 3])
    part = attack.run(x[keep], labels[keep])
    torch.testing.assert_close(part.flow, full.flow[keep], atol=1e-9, rtol=1e-7)
    assert torch.equal(part.iterations, full.iterations[keep])
    assert torch.equal(part.success, full.success[keep])
    assert torch.equal(part.info["evaluations"], full.info["evaluations"][keep])
    assert full.success.all()


def test_stadv_binary_search_and_targeting():
    x = blob_images(8)
    model = Blob()
    labels = predictions(model, x)
    searched = StAdv(model, tau=0.05, steps=60, search_steps=3).run(x, labels)
    assert searched.success.all()
    assert torch.all(searched.info["tau"] >= 0.05)  # every example succeeded, so tau only grew
    assert torch.any(searched.info["tau"] > 0.05)
    targets = (labels + 1) % 3
    targeted = StAdv(model, steps=100, targeted=True).run(x, targets)
    assert torch.equal(targeted.success, targeted.predictions == targets)
    assert targeted.success.float().mean() >= 0.5


# -- RotationTranslation ---------------------------------------------------------------------------
def test_rotation_translation_grid_has_identity_first_once():
    attack = RotationTranslation(Linear())
    angles, shifts = attack.transforms()
    assert angles.shape == (125,) and shifts.shape == (125, 2)  # 5 x 5 x 5, identity once
    assert angles[0] == 0 and torch.all(shifts[0] == 0)
    assert int(((angles == 0) & (shifts == 0).all(dim=1)).sum()) == 1
    assert angles.abs().max() == 30 and shifts.abs().max() == 3
    sampled_angles, _ = RotationTranslation(Linear(), random_samples=7, seed=0).transforms()
    assert sampled_angles.shape == (8,) and sampled_angles[0] == 0


def test_rotation_by_90_degrees_matches_rot90():
    x = torch.rand(3, 2, 7, 7, generator=torch.Generator().manual_seed(0))
    flow = rigid_flow(torch.tensor([90.0]), torch.zeros(1, 2), 7, 7).expand(3, 2, 7, 7)
    torch.testing.assert_close(flowtriton.warp(x, flow), torch.rot90(x, 1, dims=(2, 3)), atol=1e-5, rtol=0)
    shift = rigid_flow(torch.tensor([0.0]), torch.tensor([[1.0, 0.0]]), 7, 7).expand(3, 2, 7, 7)
    moved = flowtriton.warp(x, shift)
    torch.testing.assert_close(moved[..., 1:], x[..., :-1])
    assert torch.all(moved[..., 0] == 0)


def test_rotation_translation_picks_first_fooling_else_worst():
    x = smooth_images(6)
    model = Linear(classes=3)
    labels = predictions(model, x)
    attack = RotationTranslation(model, num_rotations=3, num_translations=3)
    angles, shifts = attack.transforms()
    flows = rigid_flow(angles, shifts, 8, 8)
    result = attack.run(x, labels)
    with torch.no_grad():
        per_transform = torch.stack([model(flowtriton.warp(x, f.expand(6, 2, 8, 8))) for f in flows])
    fooled = per_transform.argmax(dim=2) != labels  # (T, N)
    losses = torch.stack([F.cross_entropy(z, labels, reduction="none") for z in per_transform])
    for b in range(6):
        if fooled[:, b].any():
            expected = int(fooled[:, b].nonzero()[0])
        else:
            expected = int(losses[:, b].argmax())
        torch.testing.assert_close(result.flow[b], flows[expected])
    wrong = (labels + 1) % 3  # misclassified from the start: the identity is chosen
    assert torch.all(attack.run(x, wrong).flow == 0)


# -- evaluate --------------------------------------------------------------------------------------
def _table(result, **kwargs) -> dict:
    """``result.to_dict(**kwargs)`` without the wall times: what two runs of one evaluation share."""
    out = result.to_dict(**kwargs)
    out.pop("seconds", None)
    return out


def _evaluation(data, **kwargs):
    model = TinyConv(classes=3).eval()
    attacks = {"pgd": FlowPGD(model, steps=3, restarts=2, seed=0), "adef": ADef(model, candidates=[1, 2], steps=8),
               "rt": RotationTranslation(model, num_rotations=3, num_translations=3)}
    budgets = {"pgd": [0.05, 0.01], "adef": [0.1, 0.5]}
    return evaluate(model, data, attacks, budgets, **kwargs)


def test_evaluate_table_json_markdown():
    x = smooth_images(8)
    model = TinyConv(classes=3).eval()
    labels = predictions(model, x)
    labels[:2] = (labels[:2] + 1) % 3
    result = _evaluation((x, labels), batch_size=3)
    names = [(row.attack, row.budget) for row in result.rows]
    assert names == [("clean", None), ("pgd", 0.01), ("pgd", 0.05), ("adef", 0.1), ("adef", 0.5), ("rt", None),
                     ("union", None)]  # one pixel-T-norm attack only: no per-budget union rows
    assert result.clean_accuracy == pytest.approx(0.75)
    assert all(row.examples == 8 for row in result.rows)
    assert all(row.accuracy <= result.clean_accuracy for row in result.rows)
    assert result.accuracy("pgd", 0.01) >= result.accuracy("pgd", 0.05)
    assert result.accuracy("adef", 0.1) >= result.accuracy("adef", 0.5)
    assert result.rows[1].units == "normalized" and result.rows[3].units == "pixels"
    assert set(result.median_tnorm) == {"adef"}
    text = result.to_json()
    assert json.loads(text) == result.to_dict()
    assert EvaluationResult.from_json(text).to_dict() == result.to_dict()
    markdown = result.to_markdown()
    lines = markdown.splitlines()
    assert lines[0].startswith("| attack | budget") and len([t for t in lines if t.startswith("| pgd")]) == 2
    assert "median successful T-norm" in markdown


def test_evaluate_masks_worst_case_and_merge():
    """Per-example masks reproduce every row, the union row and any worst case; evaluating one
    attack at a time and merging gives the same table as one call with all attacks."""
    x = smooth_images(8)
    model = TinyConv(classes=3).eval()
    labels = predictions(model, x)
    labels[:2] = (labels[:2] + 1) % 3
    result = _evaluation((x, labels), batch_size=3)
    assert sorted(result.masks) == sorted(["clean", "pgd@0.01", "pgd@0.05", "adef@0.1", "adef@0.5", "rt"])
    for row in result.rows[:-1]:
        assert result.masks[row_key(row.attack, row.budget)].float().mean().item() == pytest.approx(row.accuracy)
    everything = {"pgd": [0.01, 0.05], "adef": [0.1, 0.5], "rt": None}
    assert result.worst_case(everything) == pytest.approx(result.accuracy("union"))
    pair = result.masks["clean"] & result.masks["pgd@0.05"] & result.masks["adef@0.5"]
    assert result.worst_case({"pgd": 0.05, "adef": 0.5}) == pytest.approx(pair.float().mean().item())
    with pytest.raises(KeyError, match="pgd@0.02"):
        result.worst_case({"pgd": 0.02})
    back = EvaluationResult.from_json(json.dumps(result.to_dict(masks=True)))
    assert all(torch.equal(back.masks[k], result.masks[k]) for k in result.masks)
    assert "masks" not in result.to_dict()
    attacks = {"pgd": FlowPGD(model, steps=3, restarts=2, seed=0), "adef": ADef(model, candidates=[1, 2], steps=8),
               "rt": RotationTranslation(model, num_rotations=3, num_translations=3)}
    budgets = {"pgd": [0.05, 0.01], "adef": [0.1, 0.5]}
    parts = [evaluate(model, (x, labels), {name: attack}, {name: budgets[name]} if name in budgets else None,
                      batch_size=3) for name, attack in attacks.items()]
    merged = EvaluationResult.merge(parts)
    assert [(r.attack, r.budget, r.accuracy) for r in merged.rows] == \
        [(r.attack, r.budget, r.accuracy) for r in result.rows]
    with pytest.raises(ValueError, match="more than one"):
        EvaluationResult.merge(parts + parts[:1])
    other = evaluate(model, (x, predictions(model, x)), {"rt": attacks["rt"]}, batch_size=3)
    with pytest.raises(ValueError, match="different examples"):
        EvaluationResult.merge(parts[:1] + [other])


def test_worst_case_on_hand_built_masks():
    """worst_case ANDs exactly the selected rows with the clean row (every example known)."""
    rows = [EvaluationRow("clean", None, None, 0.75, 4), EvaluationRow("a", 0.1, "pixels", 0.5, 4),
            EvaluationRow("a", 0.5, "pixels", 0.25, 4), EvaluationRow("b", None, None, 0.5, 4)]
    flags = {"clean": [1, 1, 1, 0], "a@0.1": [1, 1, 0, 0], "a@0.5": [0, 1, 0, 0], "b": [1, 0, 1, 0]}
    result = EvaluationResult(rows=rows, masks={k: torch.tensor(v, dtype=torch.bool) for k, v in flags.items()})
    assert result.worst_case({"a": 0.1}) == 0.5
    assert result.worst_case({"a": 0.1, "b": None}) == 0.25
    assert result.worst_case({"a": [0.1, 0.5], "b": None}) == 0.0
    assert result.worst_case({"b": None}) == 0.5
    with pytest.raises(ValueError, match="non-empty"):
        result.worst_case({})
    back = EvaluationResult.from_json(result.to_json(masks=True))
    assert back.worst_case({"a": 0.1, "b": None}) == 0.25
    broken = json.loads(result.to_json(masks=True))
    broken["masks"]["b"] = "101"
    with pytest.raises(ValueError, match="one flag per example"):
        EvaluationResult.from_dict(broken)


def test_evaluate_accepts_a_dataloader_and_checks_arguments():
    x = smooth_images(8)
    labels = torch.arange(8) % 3
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, labels), batch_size=3)
    assert _table(_evaluation(loader)) == _table(_evaluation((x, labels), batch_size=3))
    model = TinyConv(classes=3)
    with pytest.raises(ValueError, match="budget"):
        evaluate(model, (x, labels), {"rt": RotationTranslation(model)}, {"rt": [1.0]})
    with pytest.raises(ValueError, match="unknown attack"):
        evaluate(model, (x, labels), {"pgd": FlowPGD(model)}, {"adef": [1.0]})
    with pytest.raises(ValueError, match="targeted"):
        evaluate(model, (x, labels), {"pgd": FlowPGD(model, targeted=True)})
    with pytest.raises(TypeError, match="data"):
        evaluate(model, 42, {"pgd": FlowPGD(model)})


def test_evaluate_progress_bar_counts_every_attack_run(capsys):
    from flowtriton.attacks import FlowPGD, evaluate

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
    images, labels = torch.rand(6, 1, 4, 4), torch.randint(0, 3, (6,))
    result = evaluate(model, (images, labels), {"pgd": FlowPGD(model, steps=1)}, {"pgd": [0.01, 0.02]},
                      batch_size=3, progress=True)
    err = capsys.readouterr().err
    assert "evaluate" in err and "4/4" in err.replace(" ", "")  # a total: 2 batches x 2 budgets
    assert len(result.rows) == 3


# -- grad modes, image range, global seeding -------------------------------------------------------
@pytest.mark.parametrize("name", list(ATTACKS))
def test_attacks_run_inside_no_grad(name):
    model = TinyConv().eval()
    x = smooth_images(4)
    labels = predictions(model, x)
    expected = ATTACKS[name](model).run(x, labels)
    with torch.no_grad():
        inside = ATTACKS[name](model).run(x, labels)
        assert not torch.is_grad_enabled()  # the caller's mode is left as it was
    torch.testing.assert_close(inside.flow, expected.flow)
    assert torch.equal(inside.success, expected.success)


@pytest.mark.parametrize("name", list(ATTACKS))
def test_attacks_refuse_inference_mode_clearly(name):
    model = TinyConv().eval()
    x = smooth_images(2)
    with torch.inference_mode(), pytest.raises(RuntimeError, match="inference_mode"):
        ATTACKS[name](model).run(x, torch.zeros(2, dtype=torch.long))


def test_attacks_accept_tensors_made_under_inference_mode():
    model = TinyConv().eval()
    with torch.inference_mode():
        x = smooth_images(3)
        labels = model(x).argmax(dim=1)
    result = FlowPGD(model, eps=0.3, steps=2).run(x, labels)
    assert result.images.shape == x.shape and not result.images.is_inference()


@pytest.mark.parametrize("name", list(ATTACKS))
@pytest.mark.parametrize("scale, shift", [(255.0, 0.0), (1.0, -0.5)])
def test_images_outside_unit_range_raise(name, scale, shift):
    model = TinyConv().eval()
    x = smooth_images(2) * scale + shift
    with pytest.raises(ValueError, match=r"images must hold values in \[0, 1\]"):
        ATTACKS[name](model).run(x, torch.zeros(2, dtype=torch.long))


def test_images_within_tolerance_of_unit_range_are_accepted():
    model = TinyConv().eval()
    x = smooth_images(2)
    x[0, 0, 0, 0], x[1, 0, 0, 0] = 1 + 5e-5, -5e-5
    assert FlowPGD(model, eps=0.1, steps=1).run(x, torch.zeros(2, dtype=torch.long)).images.shape == x.shape


def test_seed_none_draws_from_torch_global_generator():
    model = TinyConv().eval()
    x = smooth_images(4)
    labels = predictions(model, x)
    make_pgd = lambda: FlowPGD(model, eps=0.3, steps=1, random_start=True)  # noqa: E731
    torch.manual_seed(123)
    first = make_pgd().run(x, labels).flow
    torch.manual_seed(123)
    again = make_pgd().run(x, labels).flow
    different = make_pgd().run(x, labels).flow  # the global generator moved on
    assert torch.equal(first, again) and not torch.equal(first, different)
    rt = RotationTranslation(model, random_samples=5)
    torch.manual_seed(7)
    angles, shifts = rt.transforms()
    torch.manual_seed(7)
    angles2, shifts2 = rt.transforms()
    assert torch.equal(angles, angles2) and torch.equal(shifts, shifts2)
    assert not torch.equal(angles, rt.transforms()[0])


def test_seed_argument_is_checked():
    with pytest.raises(TypeError, match="seed"):
        FlowPGD(Linear(), seed=1.5)
    with pytest.raises(TypeError, match="seed"):
        RotationTranslation(Linear(), seed="0")


def test_evaluate_union_is_the_worst_case_per_example():
    model = TinyConv(classes=3).eval()
    x = smooth_images(8)
    labels = predictions(model, x)
    labels[0] = (labels[0] + 1) % 3
    attacks = {"adef": ADef(model, candidates=[1, 2], steps=8),
               "stadv": StAdv(model, steps=8, search_steps=1),
               "pgd_px": FlowPGD(model, units="pixels", norm="tnorm", steps=3, restarts=2, seed=0),
               "rt": RotationTranslation(model, num_rotations=3, num_translations=3)}
    budgets = {"adef": [0.2, 1.0], "stadv": [0.5, 1.0], "pgd_px": [1.0]}
    seen = []
    result = evaluate(model, (x, labels), attacks, budgets, batch_size=5,
                      on_attack_done=lambda name, partial: seen.append((name, partial)))
    # by hand, from the same (deterministic) runs
    correct = predictions(model, x) == labels
    adef, stadv = attacks["adef"].run(x, labels), attacks["stadv"].run(x, labels)
    needed = {k: torch.where(r.success, r.tnorm, torch.full_like(r.tnorm, math.inf)) for k, r in
              (("adef", adef), ("stadv", stadv))}
    pgd_fooled = attacks["pgd_px"].with_budget(1.0).run(x, labels).success
    rt_fooled = attacks["rt"].run(x, labels).success
    for b in (0.2, 0.5):
        expected = correct & (needed["adef"] > b) & (needed["stadv"] > b)
        assert result.accuracy("union", b) == pytest.approx(expected.float().mean().item())
    at_one = correct & (needed["adef"] > 1.0) & (needed["stadv"] > 1.0) & ~pgd_fooled
    assert result.accuracy("union", 1.0) == pytest.approx(at_one.float().mean().item())
    assert result.accuracy("union") == pytest.approx((at_one & ~rt_fooled).float().mean().item())
    assert [row.units for row in result.rows if row.attack == "union"] == [None, "pixels", "pixels", "pixels"]
    for row in result.rows:
        if row.attack not in ("clean", "union"):
            assert result.accuracy("union") <= row.accuracy
    # written as each attack finishes: the last partial result is the final one
    assert [name for name, _ in seen] == list(attacks)
    assert [row.attack for row in seen[0][1].rows] == ["clean", "adef", "adef"]
    assert seen[-1][1].to_dict() == result.to_dict()
    with pytest.raises(ValueError, match="reserved"):
        evaluate(model, (x, labels), {"union": FlowPGD(model)})


def test_evaluate_inside_no_grad_and_refuses_inference_mode():
    model = TinyConv(classes=3).eval()
    x = smooth_images(6)
    labels = predictions(model, x)
    outside = _evaluation((x, labels), batch_size=3)
    with torch.no_grad():
        inside = _evaluation((x, labels), batch_size=3)
    assert _table(inside) == _table(outside)
    with torch.inference_mode(), pytest.raises(RuntimeError, match="inference_mode"):
        _evaluation((x, labels))


# -- StAdv at full strength ------------------------------------------------------------------------
def test_stadv_defaults_are_the_published_loss_with_a_tau_search():
    attack = StAdv(Linear())
    assert (attack.tau, attack.kappa, attack.optimizer, attack.steps, attack.lr) == (0.05, 0.0, "adam", 100, 0.05)
    assert attack.search_steps == 5 and not attack.warm_start and attack.padding_mode == "border"
    assert attack.keep == "tnorm"
    fast = StAdv.preset("fast", Linear())  # the defaults before issue 20
    assert (fast.steps, fast.search_steps, fast.warm_start) == (20, 2, False)


def _objective(model, x, labels, flow, tau):
    """stAdv's per-example objective at ``flow``: C&W margin (kappa 0) + tau * L_flow."""
    with torch.no_grad():
        logits = model(flowtriton.warp(x, flow, "border"))
    true = logits.gather(1, labels[:, None]).squeeze(1)
    other = logits.masked_fill(F.one_hot(labels, logits.shape[1]).bool(), -math.inf).amax(dim=1)
    return (true - other).clamp_min(0) + tau * flow_smoothness(flow)


@pytest.mark.parametrize("optimizer", ["adam", "lbfgs"])
def test_stadv_never_ends_above_its_starting_objective(optimizer):
    """A weakly confident model where tau = 0.05 keeps zero flow nearly stationary: a run must
    not end (for failures: keep) a flow whose objective is above the zero flow's."""
    x = blob_images(6, dtype=torch.float64)
    model = Blob(dtype=torch.float64, threshold=0.3)
    labels = predictions(model, x)
    result = StAdv(model, tau=0.05, steps=40, search_steps=1, optimizer=optimizer, lr=0.05).run(x, labels)
    start = _objective(model, x, labels, torch.zeros_like(result.flow), 0.05)
    end = _objective(model, x, labels, result.flow, 0.05)
    failed = ~result.success
    assert torch.all(end[failed] <= start[failed] + 1e-9)


def test_stadv_search_lowers_tau_for_failures_until_they_break():
    """With a smoothness weight far too high for the model, the first search step fails
    everywhere (L-BFGS stops at once: zero flow is stationary); the search divides tau by 10
    per step and then succeeds."""
    x = blob_images(6, dtype=torch.float64)
    model = Blob(dtype=torch.float64)
    labels = predictions(model, x)
    stuck = StAdv(model, tau=50.0, search_steps=1, steps=30, optimizer="lbfgs").run(x, labels)
    assert not stuck.success.any()
    searched = StAdv(model, tau=50.0, search_steps=4, steps=30, optimizer="lbfgs").run(x, labels)
    assert searched.success.all()
    assert torch.all(searched.info["tau"] < 50.0)
    assert torch.all(searched.iterations > stuck.iterations)


class _NoVmap(torch.autograd.Function):
    """Identity-times-two whose backward reads a value on the host: it cannot run under vmap."""

    @staticmethod
    def forward(ctx, x):
        return x * 2

    @staticmethod
    def backward(ctx, g):
        float(g.abs().sum().item())
        return g * 2


def test_adef_falls_back_to_one_backward_per_candidate_when_vmap_fails():
    torch.manual_seed(0)
    linear = torch.nn.Linear(49, 10)
    model = lambda x: linear(_NoVmap.apply(x).flatten(1))  # noqa: E731
    x = torch.rand(3, 1, 7, 7)
    labels = model(x).argmax(1)
    result = ADef(model, candidates=[1, 2], steps=5).run(x, labels)
    assert result.success.any() and torch.isfinite(result.flow).all()


# -- no surprises (issue 21) -----------------------------------------------------------------------
def test_evaluate_keeps_two_attacks_of_one_class_apart():
    """Bug 7: two FlowPGD attacks given as a sequence were both keyed 'FlowPGD', the second
    silently replacing the first. Repeated classes are numbered in order."""
    model = Linear(classes=3)
    x = smooth_images(4)
    labels = predictions(model, x)
    weak, strong = FlowPGD(model, eps=0.0, steps=1), FlowPGD(model, eps=2.0, units="pixels", steps=3)
    result = evaluate(model, (x, labels), [weak, strong, RotationTranslation(model, num_rotations=1,
                                                                                num_translations=1)])
    assert [row.attack for row in result.rows] == ["clean", "FlowPGD-1", "FlowPGD-2", "RotationTranslation", "union"]
    assert result.accuracy("FlowPGD-1") == 1.0  # eps 0: nothing moves
    assert result.accuracy("FlowPGD-2") < 1.0
    table = evaluate(model, (x, labels), [weak, strong], budgets={"FlowPGD-2": [0.5]})
    assert [(row.attack, row.budget) for row in table.rows[1:3]] == [("FlowPGD-1", None), ("FlowPGD-2", 0.5)]
    with pytest.raises(ValueError, match="unknown attack 'FlowPGD'.*FlowPGD-1"):
        evaluate(model, (x, labels), [weak, strong], budgets={"FlowPGD": [0.5]})
    with pytest.raises(TypeError, match="attacks must be keyed by name"):
        evaluate(model, (x, labels), {0: weak})


def test_evaluate_takes_a_number_as_one_budget_and_names_bad_budgets():
    model = Linear(classes=3)
    x = smooth_images(4)
    labels = predictions(model, x)
    attack = FlowPGD(model, steps=1)
    one = evaluate(model, (x, labels), {"pgd": attack}, {"pgd": 0.02})
    assert _table(one) == _table(evaluate(model, (x, labels), {"pgd": attack}, {"pgd": [0.02]}))
    with pytest.raises(TypeError, match=r"budgets must be a \{attack name: budget or \[budgets\]\} dict.*list"):
        evaluate(model, (x, labels), {"pgd": attack}, [0.02])
    with pytest.raises(TypeError, match=r"budgets\['pgd'\] must be a number or a list of numbers, got str"):
        evaluate(model, (x, labels), {"pgd": attack}, {"pgd": "0.02"})
    with pytest.raises(TypeError, match=r"budgets\['pgd'\] must be a real number"):
        evaluate(model, (x, labels), {"pgd": attack}, {"pgd": [None]})


def test_evaluate_refuses_an_attack_built_on_another_model():
    model, other = Linear(classes=3), Linear(classes=3, seed=1)
    x = smooth_images(4)
    labels = predictions(model, x)
    with pytest.raises(ValueError, match=r"attacks\['pgd'\] was built on another model"):
        evaluate(model, (x, labels), {"pgd": FlowPGD(other, steps=1)})
    # the same module under a wrapper is the same model
    wrapped = torch.nn.DataParallel(model)
    rt = RotationTranslation(wrapped, num_rotations=1, num_translations=1)
    assert evaluate(model, (x, labels), {"rt": rt}).clean_accuracy == 1.0


def test_evaluate_refuses_float_labels_instead_of_truncating_them():
    model = Linear(classes=3)
    x = smooth_images(4)
    labels = predictions(model, x)
    attack = RotationTranslation(model, num_rotations=1, num_translations=1)
    with pytest.raises(TypeError, match="labels in data must be integer class indices, got torch.float32"):
        evaluate(model, (x, labels.float() + 0.5), {"rt": attack})
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):
        evaluate(model, (x, labels + 3), {"rt": attack})
    with pytest.raises(ValueError, match=r"images must hold values in \[0, 1\]"):
        evaluate(model, (x * 255, labels), {"rt": attack})
    int32 = evaluate(model, (x, labels.int()), {"rt": attack})
    assert _table(int32) == _table(evaluate(model, (x, labels), {"rt": attack}))


def test_rotation_translation_refuses_angles_beyond_180_degrees():
    with pytest.raises(ValueError, match=r"max_rotation must lie in \[0, 180\] degrees.*720"):
        RotationTranslation(Linear(), max_rotation=720)
    assert RotationTranslation(Linear(), max_rotation=180).max_rotation == 180


@pytest.mark.parametrize("make", [lambda **kw: FlowPGD(Linear(), **kw),
                                  lambda **kw: RotationTranslation(Linear(), **kw)])
def test_attack_seeds_and_backends_are_checked_when_built(make):
    np = pytest.importorskip("numpy")
    with pytest.raises(TypeError, match="seed must be an int or None, got bool"):
        make(seed=True)
    with pytest.raises(ValueError, match=r"seed must lie in \[-2\*\*63, 2\*\*64 - 1\]"):
        make(seed=2**70)
    assert make(seed=np.int64(3)).seed == 3 and type(make(seed=np.uint16(3)).seed) is int
    with pytest.raises(ValueError, match=r"backend must be one of .*'gpu'"):
        make(backend="gpu")


def test_numpy_seed_reproduces_the_int_seed():
    np = pytest.importorskip("numpy")
    model = TinyConv().eval()
    x = smooth_images(3)
    labels = predictions(model, x)

    def run(seed):
        return FlowPGD(model, eps=1.0, units="pixels", random_start=True, steps=1, seed=seed).run(x, labels)

    torch.testing.assert_close(run(np.int32(5)).flow, run(5).flow)


@pytest.mark.parametrize("make", [lambda m: FlowPGD(m, steps=1), lambda m: ADef(m, steps=2)])
def test_gradient_attacks_name_a_model_that_ignores_its_input(make):
    weights = torch.nn.Parameter(torch.zeros(3))

    def ignores(x):
        return weights.expand(x.shape[0], 3)

    x = smooth_images(2)
    for model in (ignores, lambda x: torch.zeros(x.shape[0], 3)):
        with pytest.raises(ValueError, match="model's output does not depend on its input images"):
            make(model).run(x, torch.tensor([0, 0]))


@pytest.mark.parametrize("name", list(ATTACKS))
def test_attacks_on_an_empty_batch_return_an_empty_result(name):
    """Defined (and documented) behaviour: an attack of no examples returns a result of N = 0."""
    model = TinyConv().eval()
    result = ATTACKS[name](model).run(smooth_images(2)[:0], torch.zeros(0, dtype=torch.long))
    assert result.images.shape == (0, 1, 8, 8) and result.flow.shape == (0, 2, 8, 8)
    assert result.success.shape == result.tnorm.shape == (0,)


# -- issue 20: strong defaults, presets, the standard ensemble, the gradient-masking check ---------
def _old_flow_pgd(model, x, labels, eps, steps, step_size=None, scale=3.5, loss="ce", targeted=False):
    """FlowPGD's defaults before issue 20 (git HEAD 4761278), written out: zero start, ``steps``
    sign steps of eps / steps on the per-example loss summed, clipped to the box, final iterate."""
    step = eps / steps if step_size is None else step_size
    flow = x.new_zeros((x.shape[0], 2) + tuple(x.shape[2:]))

    def objective(logits):
        if loss == "ce":
            ce = F.cross_entropy(logits, labels, reduction="none")
            return -ce if targeted else ce
        true = logits.gather(1, labels[:, None]).squeeze(1)
        other = logits.masked_fill(F.one_hot(labels, logits.shape[1]).bool(), -math.inf).amax(dim=1)
        return true - other if targeted else other - true

    for _ in range(steps):
        flow = flow.detach().requires_grad_(True)
        value = objective(model(flowtriton.warp(x, flow * scale, "zeros").clamp(0, 1))).sum()
        (grad,) = torch.autograd.grad(value, flow)
        with torch.no_grad():
            flow = (flow + step * grad.sign()).clamp(-eps, eps)
    with torch.no_grad():
        final = objective(model(flowtriton.warp(x, flow * scale, "zeros").clamp(0, 1)))
    return flow * scale, final


@pytest.mark.parametrize("kwargs", [dict(eps=0.01, steps=100), dict(eps=0.05, steps=7),
                                    dict(eps=0.3, steps=5, loss="margin"), dict(eps=0.2, steps=6, targeted=True),
                                    dict(eps=0.1, steps=5, step_size=0.03)])
def test_paper_preset_reproduces_the_old_flowpgd_bit_for_bit(kwargs):
    """Preset 'paper' (and the cheap attack of adversarial training) is the old default algorithm
    exactly: same flows, images, losses, bit for bit (checked against git HEAD 4761278's FlowPGD
    too, by loading its source: identical on 7 settings including restarts and the T-norm)."""
    model = TinyConv().eval()
    x = smooth_images(8)
    labels = predictions(model, x)
    labels[0] = (labels[0] + 1) % 4
    if kwargs.get("targeted"):
        labels = (labels + 1) % 4
    flow, loss = _old_flow_pgd(model, x, labels, **kwargs)
    result = FlowPGD.preset("paper", model, **kwargs).run(x, labels)
    assert torch.equal(result.flow, flow) and torch.equal(result.info["loss"], loss)
    assert torch.equal(result.images, flowtriton.warp(x, flow, "zeros").clamp(0, 1))
    assert result.iterations.tolist() == [kwargs["steps"]] * 8


def test_defaults_changed_only_where_documented():
    """FlowPGD's and StAdv's defaults are their 'standard' presets (docs/attacks.md); the old
    defaults are presets 'paper' / 'fast'; ADef and rotation + translation keep theirs."""
    from flowtriton.attacks.flow_pgd import PRESETS

    model = Linear()
    pgd, old = FlowPGD(model).settings(), FlowPGD.preset("paper", model).settings()
    assert {k: pgd[k] for k in PRESETS["standard"]} == {k: list(v) if isinstance(v, tuple) else v
                                                         for k, v in PRESETS["standard"].items()}
    assert (pgd["steps"], pgd["restarts"], pgd["loss"], pgd["schedule"], pgd["keep"], pgd["random_start"]) == \
        (40, 6, ["ce", "margin"], "apgd", "best", True)
    assert (old["steps"], old["restarts"], old["loss"], old["schedule"], old["keep"], old["random_start"]) == \
        (100, 1, "ce", "constant", "last", False)
    differ = sorted(k for k in pgd if pgd[k] != old[k])
    assert differ == ["keep", "loss", "random_start", "restarts", "schedule", "steps"]
    stadv, fast = StAdv(model).settings(), StAdv.preset("fast", model).settings()
    assert sorted(k for k in stadv if stadv[k] != fast[k]) == ["keep", "search_steps", "steps"]
    assert (fast["steps"], fast["search_steps"], fast["warm_start"]) == (20, 2, False)
    adef = ADef(model)
    assert (adef.candidates, adef.steps, adef.max_norm, adef.overshoot, adef.smooth) == ([1], 50, math.inf, 1.0, 0.0)
    rt = RotationTranslation(model)
    assert (rt.max_rotation, rt.max_translation, rt.num_rotations, rt.num_translations) == (30.0, 3.0, 5, 5)
    with pytest.raises(ValueError, match="preset"):
        FlowPGD.preset("strong", model)
    assert FlowPGD.preset("fast", model, eps=0.02).eps == 0.02


def test_apgd_checkpoints_fooled_examples_stop_and_best_iterate_kept():
    from flowtriton.attacks.flow_pgd import apgd_checkpoints

    assert apgd_checkpoints(100) == [22, 41, 57, 70, 80, 87, 93, 99]  # as APGD's reference code
    assert apgd_checkpoints(40) == [8, 15, 21, 26, 30, 33, 35, 37, 39] and apgd_checkpoints(1) == []
    model = TinyConv().eval()
    x = smooth_images(8)
    labels = predictions(model, x)
    labels[0] = (labels[0] + 1) % 4  # fooled by the very first evaluation
    attack = FlowPGD(model, eps=0.1, steps=6, restarts=2, seed=0)
    result = attack.run(x, labels)
    assert result.success[0] and result.info["evaluations"][0] == 1 and result.iterations[0] == 0
    assert (result.info["evaluations"] <= attack.runs * (attack.steps + 1)).all()
    survivors = ~result.success
    assert (result.info["evaluations"][survivors] == attack.runs * (attack.steps + 1)).all()
    assert result.linf.max() <= 0.1 * 3.5 * (1 + 1e-6)
    # the best iterate, not the last: success never below the same starts keeping the final iterate
    last = FlowPGD(model, eps=0.1, steps=6, restarts=2, seed=0, keep="last").run(x, labels)
    assert result.success.sum() >= last.success.sum()
    constant = FlowPGD(model, eps=0.1, steps=6, schedule="constant", restarts=2, seed=0).run(x, labels)
    assert constant.success.shape == (8,)
    with pytest.raises(ValueError, match="schedule"):
        FlowPGD(model, schedule="cosine")
    with pytest.raises(ValueError, match="keep"):
        FlowPGD(model, keep="first")
    with pytest.raises(ValueError, match="momentum"):
        FlowPGD(model, momentum=1.5)


def test_random_flow_stays_inside_its_box_and_is_reproducible():
    model = TinyConv().eval()
    x = smooth_images(6)
    labels = predictions(model, x)
    attack = RandomFlow(model, eps=0.05, samples=12, seed=3)
    flows = attack.flows(8, 8, x)
    assert flows.shape == (12, 2, 8, 8) and flows.abs().max() <= 0.05 + 1e-7
    assert (flows[0].abs() == 0.05).all()  # resolution 1: a rigid shift to a corner of the box
    first, again = attack.run(x, labels), attack.run(x, labels)
    assert torch.equal(first.flow, again.flow)
    assert first.linf.max() <= 0.05 * 3.5 * (1 + 1e-6)
    assert attack.with_budget(0.2).run(x, labels).success.sum() >= first.success.sum()
    assert first.info["evaluations"].tolist() == [12] * 6


def test_evaluation_presets_are_fixed_and_versioned():
    from flowtriton.attacks import EVALUATION_PRESETS, preset_suite
    from flowtriton.app.evaluation import build_attacks

    model = TinyConv(classes=10)
    versions = {name: spec["version"] for name, spec in EVALUATION_PRESETS.items()}
    assert versions == {"standard": 3, "paper": 1, "fast": 1}
    suite, budgets = preset_suite(model, "standard", 10)
    assert list(suite) == ["flowpgd", "random", "adef", "stadv", "stadv-fast", "rt"]
    assert budgets == {"flowpgd": [0.005, 0.01, 0.02, 0.04], "random": [0.005, 0.01, 0.02, 0.04],
                       "adef": [0.25, 0.5, 1.0, 2.0], "stadv": [0.25, 0.5, 1.0, 2.0],
                       "stadv-fast": [0.25, 0.5, 1.0, 2.0]}
    assert s_fast_is_the_cheap_stadv(suite["stadv-fast"], model)
    s = {name: attack.settings() for name, attack in suite.items()}
    assert s["flowpgd"] == {**FlowPGD(model, seed=0).settings()}  # FlowPGD's defaults, seeded
    assert (s["flowpgd"]["units"], s["flowpgd"]["norm"], s["flowpgd"]["seed"]) == ("normalized", "linf", 0)
    assert s["random"] == RandomFlow(model, seed=0).settings() and s["random"]["samples"] == 64
    assert s["adef"] == ADef(model, candidates=range(1, 10), steps=100, smooth=0.5, overshoot=1.2).settings()
    assert s["stadv"] == StAdv(model).settings() and s["rt"] == RotationTranslation(model).settings()
    # 'paper' and 'fast' are the suites of build_attacks(size='full' / 'small') before issue 20
    paper, _ = build_attacks(model, size="full")
    assert {k: a.settings() for k, a in paper.items()} == {
        "flowpgd": FlowPGD.preset("paper", model).settings(),
        "adef": ADef(model, candidates=range(1, 10), steps=100, smooth=0.5, overshoot=1.2).settings(),
        "stadv": StAdv.preset("fast", model).settings(), "rt": RotationTranslation(model).settings()}
    small, _ = build_attacks(model, size="small")
    assert small["flowpgd"].settings() == FlowPGD.preset("paper", model, steps=20).settings()
    assert small["adef"].candidates == [1, 2, 3] and small["rt"].num_translations == 3
    assert list(build_attacks(model, preset="standard")[0]) == list(suite)
    with pytest.raises(ValueError, match="preset"):
        preset_suite(model, "strong")
    with pytest.raises(ValueError, match="no attack"):
        preset_suite(model, "paper", names=["random"])


def test_evaluate_with_a_preset_records_protocol_worst_case_and_masking_check():
    model = TinyConv(classes=4).eval()
    x = smooth_images(8)
    labels = predictions(model, x)
    labels[0] = (labels[0] + 1) % 4
    result = evaluate(model, (x, labels), preset="fast", budgets={"linf": [0.05], "tnorm": [0.5]}, batch_size=4)
    names = [(row.attack, row.budget) for row in result.rows]
    assert names[:6] == [("clean", None), ("flowpgd", 0.05), ("adef", 0.5), ("stadv", 0.5), ("rt", None),
                         ("union", None)]
    assert ("worst-case-linf", 0.05) in names and ("worst-case-tnorm", 0.5) in names
    for attack, budget in (("flowpgd", 0.05), ("adef", 0.5), ("stadv", 0.5)):
        assert result.accuracy("worst-case-tnorm" if attack != "flowpgd" else "worst-case-linf",
                               0.5 if attack != "flowpgd" else 0.05) <= result.accuracy(attack, budget)
    # worst case at L-inf 0.05: no run's successful flow inside the box (0.05 * 3.5 px per axis)
    inside = torch.zeros(8, dtype=torch.bool)
    for values in result.norms.values():
        inside |= (values[:, 1] <= 0.175 * (1 + 1e-5)) & (values[:, 2] <= 0.175 * (1 + 1e-5))
    expected = result.masks["clean"] & ~inside
    assert result.accuracy("worst-case-linf", 0.05) == pytest.approx(expected.float().mean().item())
    p = result.protocol
    assert (p["preset"], p["version"]) == ("fast", 1) and list(p["attacks"]) == ["flowpgd", "adef", "stadv", "rt"]
    assert p["attacks"]["flowpgd"]["schedule"] == "constant" and p["attacks"]["flowpgd"]["budgets"] == [0.05]
    assert p["attacks"]["adef"]["candidates"] == [1, 2, 3] and isinstance(p["library"]["commit"], str)
    assert [e["budget"] for e in result.masking] == [0.05] and result.masking[0]["missed"] is not None
    data = json.loads(result.to_json())
    assert data["protocol"] == p and data["masking_check"] == result.masking
    back = EvaluationResult.from_json(result.to_json(masks=True, norms=True))
    assert back.to_dict() == result.to_dict() and back.image_size == (8, 8)
    assert all(torch.allclose(back.norms[k], result.norms[k], atol=1e-5) for k in result.norms)
    assert "Gradient-masking check" in result.to_markdown() and "preset 'fast' version 1" in result.to_markdown()
    part = evaluate(model, (x, labels), ["flowpgd", "rt"], preset="fast", budgets={"linf": 0.05}, batch_size=4)
    assert [r.attack for r in part.rows][:3] == ["clean", "flowpgd", "rt"]
    with pytest.raises(ValueError, match="preset"):
        evaluate(model, (x, labels), preset="strong")
    with pytest.raises(TypeError, match="linf"):
        evaluate(model, (x, labels), preset="fast", budgets={"flowpgd": [0.1]})
    with pytest.raises(TypeError, match="attack names"):
        evaluate(model, (x, labels), {"pgd": FlowPGD(model)}, preset="fast")
    with pytest.raises(TypeError, match="preset"):
        evaluate(model, (x, labels))
    with pytest.raises(ValueError, match="reserved"):
        evaluate(model, (x, labels), {"worst-case-linf": FlowPGD(model)})


def test_masking_check_counts_flows_inside_the_box_by_hand():
    from flowtriton.attacks import masking_check

    inf = math.inf
    correct = torch.tensor([True] * 6 + [False] * 2)
    masks = {"pgd@0.1": torch.tensor([0, 1, 1, 1, 1, 1, 0, 0], dtype=torch.bool)}  # pgd fooled example 0 only
    norms = {"adef": torch.tensor([[0.1, 0.1, 0.1], [0.5, 0.2, 0.3], [0.6, 0.6, 0.1], [inf] * 3, [0.3, 0.3, 0.3],
                                   [0.3, 0.3, 0.3], [inf] * 3, [inf] * 3], dtype=torch.float64)}
    info = {"pgd@0.1": {"gradient": True, "norm": "linf", "units": "normalized", "budget": 0.1},
            "adef": {"gradient": False, "norm": "tnorm", "units": "pixels", "budget": None}}
    # 7 x 11 images: 0.1 normalized = 0.5 px along x, 0.3 px along y
    [entry] = masking_check(correct, masks, norms, info, (7, 11))
    assert (entry["missed"], entry["by"], entry["flagged"]) == (3, {"adef": 3}, True)  # examples 1, 4, 5
    assert entry["fraction"] == pytest.approx(3 / 8) and "gradient masking" in entry["advice"]
    [quiet] = masking_check(correct, masks, norms, info, (3, 3))  # 0.1 normalized = 0.1 px: nothing inside
    assert (quiet["missed"], quiet["flagged"], quiet["advice"]) == (0, False, None)
    [alone] = masking_check(correct, masks, {}, {"pgd@0.1": info["pgd@0.1"]}, (7, 11))
    assert alone["missed"] is None and not alone["flagged"] and "no weaker attack" in alone["advice"]


class _Quantize(torch.nn.Module):
    """x -> round(4 x) / 4: a non-differentiable input layer (torch.round's gradient is zero)."""

    def forward(self, x):
        return torch.round(x * 4) / 4


def _mnist_cnn(seed=0, n=4000, epochs=2):
    from flowtriton.data import load_dataset
    from flowtriton.models import build_model

    train, test = load_dataset("mnist-subset", "train"), load_dataset("mnist-subset", "test")
    images, labels = train.float_images()[:n], train.labels[:n]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(seed)
        model = build_model("tiny-cnn", 10, 1)
        optimizer = torch.optim.Adam(model.parameters(), 3e-3)
        for _ in range(epochs):
            for start in range(0, n, 64):
                loss = F.cross_entropy(model(images[start:start + 64]), labels[start:start + 64])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
    finally:
        torch.set_num_threads(threads)
    return model.eval(), test.float_images()[:200], test.labels[:200]


def test_masking_check_fires_on_a_quantized_model_and_stays_quiet_on_a_standard_cnn():
    """A tiny CNN trained for seconds on the embedded MNIST subset: behind round(4x)/4 (zero
    gradient) FlowPGD cannot move, random flows inside its box still fool it -> flagged; the same
    CNN without the quantizer -> FlowPGD finds everything the random flows find -> quiet."""
    cnn, x, y = _mnist_cnn()
    masked = torch.nn.Sequential(_Quantize(), cnn).eval()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        checks = {}
        for name, model in (("standard", cnn), ("masked", masked)):
            attacks = {"flowpgd": FlowPGD.preset("fast", model), "random": RandomFlow(model, samples=16, seed=0)}
            result = evaluate(model, (x, y), attacks, {"flowpgd": [0.02, 0.05], "random": [0.02, 0.05]})
            checks[name] = result
    finally:
        torch.set_num_threads(threads)
    assert checks["standard"].clean_accuracy > 0.5
    assert not checks["standard"].masking_flagged
    assert all(e["fraction"] <= 0.005 for e in checks["standard"].masking)
    assert checks["masked"].masking_flagged
    assert [e["flagged"] for e in checks["masked"].masking] == [True, True]
    assert checks["masked"].masking[1]["missed"] >= 5  # 2.5 % of 200: far above the 0.5 % threshold
    assert "FLAGGED" in checks["masked"].to_markdown() and "BPDA" in checks["masked"].to_markdown()


def test_adversarial_training_still_builds_the_cheap_attack():
    from flowtriton.train.config import TrainConfig
    from flowtriton.train.objectives import Objective

    model = TinyConv().eval()
    for method in ("at", "fgr+at"):
        cfg = TrainConfig(method=method, at_eps=0.03, at_steps=4)
        attack = Objective(cfg, attack_model=model).attack
        assert attack.settings() == FlowPGD.preset("paper", model, eps=0.03, steps=4).settings()
        assert (attack.schedule, attack.keep, attack.loss, attack.restarts, attack.random_start) == \
            ("constant", "last", "ce", 1, False)
    x = smooth_images(4)
    labels = predictions(model, x)
    flow, _ = _old_flow_pgd(model, x, labels, eps=0.03, steps=4)
    assert torch.equal(attack.run(x, labels).flow, flow)


# -- one vocabulary: steps, units, the budget protocol ---------------------------------------------
def _outcome(result):
    return (result.flow, result.success, result.iterations, result.tnorm,
            {k: v for k, v in result.info.items() if isinstance(v, torch.Tensor)})


def _same(a, b):
    return (all(torch.equal(x, y) for x, y in zip(a[:4], b[:4])) and a[4].keys() == b[4].keys()
            and all(torch.equal(a[4][k], b[4][k]) for k in a[4]))


@pytest.mark.parametrize("cls, kwargs", [
    (ADef, dict(candidates=[1, 2], overshoot=1.2, smooth=0.5)),
    (StAdv, dict(search_steps=2)),
    (StAdv, dict(optimizer="lbfgs", search_steps=1)),
])
def test_deprecated_max_iter_warns_and_runs_identically(cls, kwargs):
    model, x = Blob(), blob_images(5)
    labels = predictions(model, x)
    new = cls(model, steps=7, **kwargs)
    with pytest.warns(DeprecationWarning, match=r"max_iter=\.\.\.\) is deprecated.*use steps="):
        old = cls(model, max_iter=7, **kwargs)
    assert old.steps == new.steps == 7 and old.settings() == new.settings()
    assert "steps" in new.settings() and "max_iter" not in new.settings()
    assert _same(_outcome(old.run(x, labels)), _outcome(new.run(x, labels)))
    with pytest.warns(DeprecationWarning, match=r"\.max_iter is deprecated.*\.steps"):
        assert old.max_iter == 7
    with pytest.raises(TypeError, match="both 'steps' and its deprecated spelling 'max_iter'"):
        cls(model, steps=7, max_iter=7, **kwargs)


def test_deprecated_names_in_presets_and_signatures():
    import inspect

    model = Linear()
    with pytest.warns(DeprecationWarning, match="steps"):
        fast = StAdv.preset("fast", model, max_iter=5)
    assert fast.steps == 5 and fast.search_steps == 2
    with pytest.raises(TypeError, match="both"):
        StAdv.preset("fast", model, steps=5, max_iter=5)
    for cls in (ADef, StAdv, FlowPGD):
        parameters = inspect.signature(cls).parameters
        assert "steps" in parameters and "max_iter" not in parameters
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the new names warn about nothing
        ADef(model, steps=3)
        StAdv.preset("standard", model, steps=3)
    with pytest.raises(TypeError, match="unexpected keyword argument 'max_iters'"):
        ADef(model, max_iters=3)
    with pytest.raises(ValueError, match="steps"):
        ADef(model, steps=0)


def test_budget_kind_and_units_of_every_attack():
    model = Linear()
    expected = [
        (FlowPGD(model), "linf", "normalized", True),
        (FlowPGD(model, norm="tnorm", units="pixels"), "tnorm", "pixels", True),
        (RandomFlow(model), "linf", "normalized", True),
        (RandomFlow(model, units="pixels"), "linf", "pixels", True),
        (ADef(model), "tnorm", "pixels", True),
        (StAdv(model), "tnorm", "pixels", True),
        (RotationTranslation(model), None, None, False),
        (RotationTranslation(model, units="normalized"), None, None, False),
    ]
    for attack, kind, units, budgeted in expected:
        assert (attack.budget_kind, attack.budget_units) == (kind, units), attack
        if not budgeted:
            with pytest.raises(ValueError, match="no budget"):
                attack.with_budget(1.0)
            continue
        copy = attack.with_budget(0.5)
        assert copy is not attack and (copy.budget_kind, copy.budget_units) == (kind, units)
    assert FlowPGD(model).with_budget(0.5).eps == 0.5
    assert ADef(model).with_budget(0.5).max_norm == 0.5 and ADef(model).max_norm == math.inf
    assert StAdv(model).with_budget(0.5).max_norm == 0.5
    with pytest.raises(ValueError, match="budget"):
        StAdv(model).with_budget(0)

    class MinimumNorm(ADef.__mro__[1]):  # a FlowAttack subclass that declares nothing
        minimum_norm = True

    assert (MinimumNorm(model).budget_kind, MinimumNorm(model).budget_units) == ("tnorm", "pixels")


@pytest.mark.parametrize("cls", [ADef, StAdv])
def test_pixel_only_attacks_refuse_normalized_units(cls):
    assert cls(Linear(), units="pixels").units == "pixels"
    with pytest.raises(ValueError, match=r"takes units='pixels' only.*pixel_scale"):
        cls(Linear(), units="normalized")
    with pytest.raises(ValueError, match="units must be one of"):
        cls(Linear(), units="px")


def test_rotation_translation_takes_normalized_translations():
    model = Linear(height=6, width=8)
    x = smooth_images(4, height=6, width=8)
    pixels = RotationTranslation(model, max_translation=1.75, num_rotations=3, num_translations=3)
    normalized = RotationTranslation(model, max_translation=0.5, units="normalized", num_rotations=3,
                                     num_translations=3)
    angles, shifts = normalized.transforms(size=(6, 8))
    ref_angles, ref_shifts = pixels.transforms()
    assert torch.equal(angles, ref_angles)
    # 0.5 normalized = 0.5 * (8 - 1) / 2 = 1.75 px along x, 0.5 * (6 - 1) / 2 = 1.25 px along y
    assert torch.allclose(shifts[:, 0], ref_shifts[:, 0])
    assert torch.allclose(shifts[:, 1], ref_shifts[:, 1] * (1.25 / 1.75))
    assert float(normalized.run(x).info["translation"][:, 1].abs().max()) <= 1.25 + 1e-6
    with pytest.raises(ValueError, match="size"):
        normalized.transforms()
    drawn = RotationTranslation(model, max_translation=0.5, units="normalized", random_samples=20, seed=0)
    shifts = drawn.transforms(size=(6, 8))[1]
    assert float(shifts[:, 0].abs().max()) <= 1.75 and float(shifts[:, 1].abs().max()) <= 1.25


def test_stadv_max_norm_keeps_its_flows_inside_the_budget():
    model, x = Blob(), blob_images(6)
    labels = predictions(model, x)
    free = StAdv(model, steps=30, search_steps=2).run(x, labels)
    cap = 0.5 * float(free.tnorm[free.success].max())
    capped = StAdv(model, steps=30, search_steps=2).with_budget(cap).run(x, labels)
    assert float(capped.tnorm.max()) <= cap * (1 + 1e-5)
    within = free.success & (free.tnorm <= cap)
    assert bool(capped.success[within].all())  # what the free run found inside the cap, the capped run keeps


def test_evaluate_asks_the_budget_protocol():
    """evaluate's units, run descriptions and budget checks come from budget_kind / budget_units."""
    model = TinyConv(classes=3).eval()
    x = smooth_images(6)
    labels = predictions(model, x)
    attacks = {"pgd": FlowPGD(model, steps=2, restarts=1, seed=0), "random": RandomFlow(model, samples=3, seed=0),
               "adef": ADef(model, candidates=[1, 2], steps=4), "rt": RotationTranslation(model, num_rotations=1,
                                                                                       num_translations=3)}
    result = evaluate(model, (x, labels), attacks, {"pgd": 0.02, "random": 0.02, "adef": 0.5}, batch_size=3)
    units = {(row.attack, row.budget): row.units for row in result.rows}
    assert units[("pgd", 0.02)] == units[("random", 0.02)] == "normalized" and units[("adef", 0.5)] == "pixels"
    assert units[("rt", None)] is None
    info = result.run_info
    assert (info["pgd@0.02"]["norm"], info["pgd@0.02"]["units"], info["pgd@0.02"]["gradient"]) == \
        ("linf", "normalized", True)
    assert (info["random@0.02"]["norm"], info["adef"]["norm"], info["adef"]["units"]) == ("linf", "tnorm", "pixels")
    assert (info["rt"]["norm"], info["rt"]["units"]) == (None, None)
    with pytest.raises(ValueError, match=r"budgets\['rt'\].*budget_kind is None"):
        evaluate(model, (x, labels), {"rt": attacks["rt"]}, {"rt": 1.0})


def test_evaluate_table_is_unchanged_by_the_renaming():
    """The same evaluation spelled with the deprecated names gives the same table, masks, norms and
    protocol (the protocol records the new names either way)."""
    model = TinyConv(classes=3).eval()
    x = smooth_images(8)
    labels = predictions(model, x)
    labels[:2] = (labels[:2] + 1) % 3

    def run(iterations):
        attacks = {"pgd": FlowPGD(model, steps=3, restarts=2, seed=0),
                   "adef": ADef(model, candidates=[1, 2], **iterations(8)),
                   "stadv": StAdv(model, search_steps=2, **iterations(6)),
                   "rt": RotationTranslation(model, num_rotations=3, num_translations=3)}
        budgets = {"pgd": [0.05, 0.01], "adef": [0.1, 0.5], "stadv": [0.5, 1.0]}
        return _table(evaluate(model, (x, labels), attacks, budgets, batch_size=3), masks=True, norms=True)

    new = run(lambda n: {"steps": n})
    with pytest.warns(DeprecationWarning):
        old = run(lambda n: {"max_iter": n})
    assert old == new
    assert new["protocol"]["attacks"]["adef"]["steps"] == 8 and "max_iter" not in new["protocol"]["attacks"]["adef"]


def test_preset_attacks_declare_the_preset_budget_kinds():
    from flowtriton.attacks import EVALUATION_PRESETS, preset_suite
    from flowtriton.attacks.presets import BUDGET_UNITS

    model = TinyConv(classes=10)
    for name, spec in EVALUATION_PRESETS.items():
        suite, plan = preset_suite(model, name, 10)
        for attack_name, attack in suite.items():
            kind = spec["kinds"][attack_name]
            assert attack.budget_kind == kind
            assert attack.budget_units == (None if kind is None else BUDGET_UNITS[kind])
            assert (attack_name in plan) == (kind is not None)


# -- StAdv: which successful flow is kept -------------------------------------------------------------
def test_stadv_keep_smooth_is_the_old_behaviour_and_recorded():
    model = Linear()
    assert StAdv.preset("fast", model).settings()["keep"] == "smooth"
    assert StAdv(model).settings()["keep"] == "tnorm"
    assert StAdv.preset("standard", model).settings() == StAdv(model).settings()
    x = blob_images(6, dtype=torch.float64)
    blob = Blob(dtype=torch.float64, threshold=0.3)
    labels = predictions(blob, x)
    fast = StAdv.preset("fast", blob).run(x, labels)
    smooth = StAdv(blob, steps=20, search_steps=2, warm_start=False, keep="smooth").run(x, labels)
    for key in ("flow", "iterations", "success"):
        assert torch.equal(getattr(fast, key), getattr(smooth, key))
    assert torch.equal(fast.info["tau"], smooth.info["tau"])


@pytest.mark.parametrize("settings", [dict(steps=30, search_steps=3, warm_start=True), dict(steps=30, search_steps=3),
                                      dict(steps=8, search_steps=2, optimizer="lbfgs"),
                                      dict(steps=30, search_steps=3, max_norm=0.4)])
def test_stadv_keep_tnorm_keeps_no_larger_tnorm_with_the_same_success(settings):
    x = torch.cat([blob_images(6, dtype=torch.float64), smooth_images(4, dtype=torch.float64)])
    model = Blob(dtype=torch.float64, threshold=0.3)
    labels = predictions(model, x)
    smooth = StAdv(model, keep="smooth", **settings).run(x, labels)
    small = StAdv(model, keep="tnorm", **settings).run(x, labels)
    assert torch.equal(small.success, smooth.success) and small.success.any()
    assert torch.all(small.tnorm <= smooth.tnorm + 1e-12)
    assert torch.equal(small.iterations, smooth.iterations)
    assert torch.equal(small.info["evaluations"], smooth.info["evaluations"])
    torch.testing.assert_close(small.info["flow_loss"], flow_smoothness(small.flow))
    assert torch.all(small.info["flow_loss"] >= smooth.info["flow_loss"] - 1e-9)  # the smoothest flow stays smoothest
    if "max_norm" in settings:
        assert torch.all(small.tnorm <= settings["max_norm"] + 1e-9)
    # per example: the same as attacking each example alone
    part = StAdv(model, keep="tnorm", **settings).run(x[[3, 0]], labels[[3, 0]])
    torch.testing.assert_close(part.flow, small.flow[[3, 0]], atol=1e-9, rtol=1e-7)


def test_stadv_keep_is_checked():
    with pytest.raises(ValueError, match="keep.*'smallest'"):
        StAdv(Linear(), keep="smallest")
    with pytest.raises(ValueError, match="keep"):
        StAdv.preset("fast", Linear(), keep=None)


def s_fast_is_the_cheap_stadv(attack, model) -> bool:
    return attack.settings() == StAdv.preset("fast", model).settings()


def test_standard_preset_version_3_runs_the_tnorm_keeping_stadv_and_the_cheap_one():
    from flowtriton.attacks import EVALUATION_PRESETS, preset_suite

    assert EVALUATION_PRESETS["standard"]["version"] == 3
    assert (EVALUATION_PRESETS["paper"]["version"], EVALUATION_PRESETS["fast"]["version"]) == (1, 1)
    model = Linear()
    assert preset_suite(model, "standard")[0]["stadv"].keep == "tnorm"
    for name in ("paper", "fast"):
        assert preset_suite(model, name)[0]["stadv"].settings() == StAdv.preset("fast", model).settings()
