"""``FlowGradReg``: flow gradient regularization (Xia & Li 2021), exact or by a finite difference."""

from __future__ import annotations

import torch

from ..checks import check_choice, check_number
from ..backend import check_backend
from ..ops.units import UNITS
from ..reference import SCHEMES
from .common import (
    GradientRegularizer,
    REDUCTIONS,
    RangeCheck,
    SeededNoise,
    classifier_losses,
    mean_norm,
    per_example_cross_entropy,
)
from .functional import (
    DEFAULT_FD_STEP,
    DEFAULT_SIGMA,
    FD_PERTURBATIONS,
    MODES,
    fgr_exact,
    fgr_finite_difference,
    fgr_random_start,
)

DEFAULT_FGR_LAM = 200.0
"""The library's one default FGR weight (``reduction='paper'``): ``FlowGradReg()``, ``flowtriton
train --method fgr`` and the demo all use it. On the demo (small CNN, embedded MNIST, batch 64)
it buys clear robustness to flow attacks for about one point of clean accuracy."""


class FlowGradReg(GradientRegularizer):
    """Flow gradient regularization: ``loss, parts = reg(model, images, labels)``.

    ``loss = L + lam * penalty`` with ``L`` the batch-mean of ``loss_fn`` on the (randomly
    started) images and ``penalty`` the squared norm of ``dL / d flow`` at zero flow, reduced over
    the batch by ``reduction``. ``parts`` holds detached values for logging: 'ce' (L), 'penalty',
    'flow_grad_norm' (mean per-example L2 norm of the flow gradient of the summed loss, in
    ``units``; NaN when lam = 0, where it is not computed), 'input_grad_norm', 'loss' and
    'logits'. Call ``loss.backward()`` and step the optimizer as usual. ``lam`` defaults to
    :data:`DEFAULT_FGR_LAM`, the library's one default weight (the demo's and the CLI's); the
    other defaults reproduce the authors' code exactly (see docs/method.md).

    ``mode='exact'`` backpropagates twice through the closed form (``create_graph=True`` for the
    input gradient, then the fused penalty). ``mode='finite_difference'`` needs first-order
    gradients only (Finlay & Oberman's construction along the flow): with ``v`` the per-example
    normalized, detached flow gradient, ``d_b = (l_b(x moved by fd_step * v) - l_b(x)) / fd_step``
    estimates ``||dl_b/dtau||`` and ``penalty = reduction(d^2 / B^2)`` is on the exact penalty's
    scale. In this mode the model runs twice per step (train-mode BatchNorm updates its running
    statistics twice, and the per-example losses interact through the batch statistics).

    Images must lie in [0, 1] and (N,) integer labels in [0, classes) (ValueError otherwise):
    checked on the first call and on every call for tensors off CUDA, so CUDA training steps never
    wait for the host; under ``torch.compile`` the checks add no graph break (off CUDA they are
    asynchronous assertions in the graph, a RuntimeError when one fails; on CUDA only eager calls
    check). Labels: (N,) integer class indices of any integer dtype (float labels are refused, not
    truncated) or (N, classes) probabilities for a ``loss_fn`` that takes them. An empty batch is
    a ValueError (the batch mean of no losses is undefined), and so is a model whose output does
    not depend on its input. Under ``torch.no_grad()`` the call still computes the penalty
    (gradients are switched on inside) and returns detached values, e.g. to log a validation
    loss; under ``torch.inference_mode()`` it raises a RuntimeError. The penalty itself is
    :func:`flowtriton.fgr_penalty`, usable directly in a loop that computes its own loss.

    Works with any classifier module returning (N, classes) logits, under ``torch.autocast`` and
    inside DistributedDataParallel (the input gradient is taken with ``autograd.grad``, which does
    not touch parameter gradients; DDP reduces them in the final ``loss.backward()``; scale ``lam``
    by 1 / world_size^2 with the 'paper' reduction so it means what it means on one process, as
    ``flowtriton train`` does).

    Args:
        lam: penalty weight (>= 0; default :data:`DEFAULT_FGR_LAM`); 0 is standard training.
        sigma: random-start std (default 0.01), in ``units``: a Gaussian flow per pixel and
            component, applied with zero padding, clamped to [0, 1], detached; 0 turns it off, and
            so does ``lam=0`` (as in the authors' code, where lam = 0 is standard training).
        units: 'normalized' (default): flow measured in normalized units (x: (W-1)/2 px, y:
            (H-1)/2 px), so the pixel flow gradient is multiplied by (W-1)/2 and (H-1)/2; or
            'pixels' (changes the penalty's scale: x times (2/(W-1))^2).
        scheme: 'forward' (default: the derivative of the authors' clamped gather sampler) or
            'central'.
        loss_fn: ``loss_fn(logits, labels) -> (N,)`` per-example losses (default cross-entropy).
        reduction: 'paper' (default): ``mean_b ||dL/dtau_b||^2`` with ``L`` the BATCH MEAN, which
            is ``1/B^2`` times the mean per-example squared gradient, so lam = 100/200/300 mean
            what they mean in the authors' code at their batch size (128). 'mean' (batch-size
            free, lam_mean = lam_paper / B^2) and 'sum' change that scale. See
            ``flowtriton.regularizers.common``.
        mode: 'exact' (default, double backpropagation) or 'finite_difference' (first-order).
        fd_step: finite-difference step, in ``units`` (default 0.01 normalized = 0.155 px at W=32).
        fd_perturbation: how the finite difference moves the image. 'linear' (default):
            ``x + J(x, fd_step * v)``, the scheme's first-order image change (the derivative of the
            clamped sampler for 'forward'); ``d`` tends to the exact norm as ``fd_step -> 0``
            (error O(fd_step)). 'warp': a real warp (border padding). Bilinear warping is
            one-sided: components of ``v`` that are negative see BACKWARD differences, so on images
            with pixel-level texture ``d`` can be well below the forward-scheme norm (measured:
            penalty ~0.3x the exact one on noisy 16x16 images, for every step size). Kept for
            studying the true deformation.
        generator: a ``torch.Generator`` for the random start.
        seed: an integer (numpy's included) in [-2**63, 2**64 - 1] seeding the random start when
            ``generator`` is None; with neither, torch's global generator.
        backend: backend of the flowtriton ops ('auto', 'triton', 'torch', or None: the setting in
            force at call time; checked here).

    Example:
        >>> from flowtriton.regularizers import FlowGradReg
        >>> _ = torch.manual_seed(0)
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 3))
        >>> images, labels = torch.rand(2, 1, 8, 8), torch.tensor([0, 1])
        >>> reg = FlowGradReg(lam=200.0, seed=0)
        >>> loss, parts = reg(model, images, labels)
        >>> loss.shape, loss.requires_grad, sorted(parts)
        (torch.Size([]), True, ['ce', 'flow_grad_norm', 'input_grad_norm', 'logits', 'loss', 'penalty'])
        >>> bool(torch.isclose(loss, parts["ce"] + 200.0 * parts["penalty"]))
        True
        >>> loss.backward()  # then optimizer.step()
    """

    def __init__(self, lam: float = DEFAULT_FGR_LAM, sigma: float = DEFAULT_SIGMA, units: str = "normalized",
                 scheme: str = "forward", loss_fn=None, reduction: str = "paper", mode: str = "exact",
                 fd_step: float = DEFAULT_FD_STEP, fd_perturbation: str = "linear",
                 generator: torch.Generator | None = None, seed: int | None = None, backend: str | None = None):
        self.lam = check_number(lam, "lam")
        self.sigma = check_number(sigma, "sigma")
        self.units = check_choice(units, UNITS, "units")
        self.scheme = check_choice(scheme, SCHEMES, "scheme")
        self.reduction = check_choice(reduction, REDUCTIONS, "reduction")
        self.mode = check_choice(mode, MODES, "mode")
        self.fd_step = check_number(fd_step, "fd_step", strict=True)
        self.fd_perturbation = check_choice(fd_perturbation, FD_PERTURBATIONS, "fd_perturbation")
        self.loss_fn = per_example_cross_entropy if loss_fn is None else loss_fn
        self.noise = SeededNoise(generator, seed)
        self.backend = check_backend(backend)
        self._check_range = RangeCheck()

    def __repr__(self) -> str:
        return (f"FlowGradReg(lam={self.lam}, sigma={self.sigma}, units={self.units!r}, scheme={self.scheme!r}, "
                f"reduction={self.reduction!r}, mode={self.mode!r})")

    def random_start(self, images: torch.Tensor) -> torch.Tensor:
        """Detached ``clamp(warp(images, n, 'zeros'), 0, 1)``, ``n ~ N(0, sigma^2)`` per pixel and
        component in ``units`` (drawn as ``randn(N, 2, H, W) * sigma``); the images themselves
        when sigma or lam is 0. See :func:`flowtriton.fgr_random_start` (which checks the images)."""
        return self._random_start(images, None)

    def _random_start(self, images, check_range):
        if self.sigma == 0 or self.lam == 0:
            return images.detach()
        return fgr_random_start(images, self.sigma, self.units, self.noise.generator_for(images), self.backend,
                                check_range=check_range)

    def _loss(self, model, images, labels, check):
        z = self._random_start(images, False).requires_grad_(True)  # checked in __call__
        losses, logits = classifier_losses(model, z, labels, self.loss_fn, check)
        ce = losses.mean()
        if self.lam == 0:
            nan = torch.full((), float("nan"), device=ce.device)
            return ce, self._parts(ce, torch.zeros((), device=ce.device), nan, nan, ce, logits)
        if self.mode == "exact":
            penalty, squared, grad_image = fgr_exact(ce, z, self.scheme, self.units, self.reduction, self.backend)
        else:
            def loss_at(moved):
                return classifier_losses(model, moved, labels, self.loss_fn)[0]

            penalty, squared, grad_image = fgr_finite_difference(
                losses, z, loss_at, self.scheme, self.units, self.reduction, self.fd_step, self.fd_perturbation,
                self.backend)
        loss = torch.add(ce, penalty, alpha=self.lam)  # ce + lam * penalty, one kernel
        input_norms = torch.linalg.vector_norm(grad_image.detach().flatten(1), dim=1)
        return loss, self._parts(ce, penalty, mean_norm(squared), input_norms.sum(), loss, logits)

    @staticmethod
    def _parts(ce, penalty, flow_norm, input_norm, loss, logits):
        return {"ce": ce.detach(), "penalty": penalty.detach(), "flow_grad_norm": flow_norm.detach(),
                "input_grad_norm": input_norm.detach(), "loss": loss.detach(), "logits": logits.detach()}
