"""``FlowGradReg``: flow gradient regularization (Xia & Li 2021), exact or by a finite difference."""

from __future__ import annotations

import torch

from ..ops import flow_gradient, flow_gradient_penalty, pixel_scale, warp
from ..ops.flow_gradient import UNITS, flow_jvp
from ..reference import SCHEMES
from .common import (
    REDUCTIONS,
    SeededNoise,
    check_batch,
    check_choice,
    check_nonnegative,
    check_positive,
    classifier_losses,
    mean_norm,
    per_example_cross_entropy,
    reduce_squared_norms,
)

MODES = ("exact", "finite_difference")
FD_PERTURBATIONS = ("linear", "warp")


def _to_pixels(field: torch.Tensor, units: str) -> torch.Tensor:
    """(N, 2, H, W) flow in ``units`` -> pixels."""
    if units == "pixels":
        return field
    sx, sy = pixel_scale(field.shape[2], field.shape[3])
    return field * torch.tensor([sx, sy], dtype=field.dtype, device=field.device).view(1, 2, 1, 1)


class FlowGradReg:
    """Flow gradient regularization: ``loss, parts = reg(model, images, labels)``.

    ``loss = L + lam * penalty`` with ``L`` the batch-mean of ``loss_fn`` on the (randomly
    started) images and ``penalty`` the squared norm of ``dL / d flow`` at zero flow, reduced over
    the batch by ``reduction``. ``parts`` holds detached values for logging: 'ce' (L), 'penalty',
    'flow_grad_norm' (mean per-example L2 norm of the flow gradient of the summed loss, in
    ``units``; NaN when lam = 0, where it is not computed), 'input_grad_norm', 'loss' and
    'logits'. Call ``loss.backward()`` and step the optimizer as usual.

    The defaults reproduce the authors' code (REFERENCE.md 1.2) exactly:

    * ``sigma=0.01`` random start, in ``units``: a Gaussian flow per pixel and component, applied
      with zero padding, clamped to [0, 1], detached; 0 turns it off, and so does ``lam=0`` (as in
      the authors' code, where lam = 0 is standard training).
    * ``units='normalized'``: flow measured in normalized units (x: (W-1)/2 px, y: (H-1)/2 px),
      so the pixel flow gradient is multiplied by (W-1)/2 and (H-1)/2.
    * ``scheme='forward'``: the derivative of the authors' clamped gather sampler.
    * ``reduction='paper'``: ``mean_b ||dL/dtau_b||^2`` with ``L`` the BATCH MEAN, which is
      ``1/B^2`` times the mean per-example squared gradient, so lam = 100/200/300 mean what they
      mean in the authors' code at their batch size (128). ``'mean'`` (batch-size free,
      lam_mean = lam_paper / B^2) and ``'sum'`` change that scale, as does ``units='pixels'``
      (x: times (2/(W-1))^2). See ``flowtriton.regularizers.common``.

    ``mode='exact'`` backpropagates twice through the closed form (``create_graph=True`` for the
    input gradient, then the fused penalty). ``mode='finite_difference'`` needs first-order
    gradients only (Finlay & Oberman's construction along the flow): with ``v`` the per-example
    normalized, detached flow gradient, ``d_b = (l_b(x moved by fd_step * v) - l_b(x)) / fd_step``
    estimates ``||dl_b/dtau||`` and ``penalty = reduction(d^2 / B^2)`` is on the exact penalty's
    scale. How the image is moved (``fd_perturbation``):

    * ``'linear'`` (default): ``x + J(x, fd_step * v)``, the scheme's first-order image change
      (the derivative of the clamped sampler for 'forward'). ``d`` tends to the exact norm as
      ``fd_step -> 0`` (error O(fd_step)).
    * ``'warp'``: a real warp (border padding). Bilinear warping is one-sided: components of ``v``
      that are negative see BACKWARD differences, so on images with pixel-level texture ``d``
      can be well below the forward-scheme norm (measured: penalty ~0.3x the exact one on noisy
      16x16 images, for every step size). Kept for studying the true deformation.

    ``fd_step`` is in ``units`` (default 0.01 normalized = 0.155 px at W=32). In this mode the
    model runs twice per step (train-mode BatchNorm updates its running statistics twice, and the
    per-example losses interact through the batch statistics).

    Other options: ``loss_fn(logits, labels) -> (N,)`` per-example losses (default
    cross-entropy); ``generator`` or ``seed`` for the random start; ``backend`` for the flowtriton
    ops ('auto', 'triton', 'torch'). Works with any classifier module returning (N, classes)
    logits, under ``torch.autocast`` and inside DistributedDataParallel (the input gradient is
    taken with ``autograd.grad``, which does not touch parameter gradients; DDP reduces them in the
    final ``loss.backward()``).
    """

    def __init__(self, lam: float = 100.0, sigma: float = 0.01, units: str = "normalized",
                 scheme: str = "forward", loss_fn=None, reduction: str = "paper", mode: str = "exact",
                 fd_step: float = 0.01, fd_perturbation: str = "linear", generator: torch.Generator | None = None,
                 seed: int | None = None, backend: str | None = None):
        self.lam = check_nonnegative(lam, "lam")
        self.sigma = check_nonnegative(sigma, "sigma")
        self.units = check_choice(units, UNITS, "units")
        self.scheme = check_choice(scheme, SCHEMES, "scheme")
        self.reduction = check_choice(reduction, REDUCTIONS, "reduction")
        self.mode = check_choice(mode, MODES, "mode")
        self.fd_step = check_positive(fd_step, "fd_step")
        self.fd_perturbation = check_choice(fd_perturbation, FD_PERTURBATIONS, "fd_perturbation")
        self.loss_fn = per_example_cross_entropy if loss_fn is None else loss_fn
        self.noise = SeededNoise(generator, seed)
        self.backend = backend

    def __repr__(self) -> str:
        return (f"FlowGradReg(lam={self.lam}, sigma={self.sigma}, units={self.units!r}, scheme={self.scheme!r}, "
                f"reduction={self.reduction!r}, mode={self.mode!r})")

    def random_start(self, images: torch.Tensor) -> torch.Tensor:
        """Detached ``clamp(warp(images, n, 'zeros'), 0, 1)``, ``n ~ N(0, sigma^2)`` per pixel and
        component in ``units`` (drawn as ``randn(N, 2, H, W) * sigma``); the images themselves
        when sigma or lam is 0."""
        images = images.detach()
        if self.sigma == 0 or self.lam == 0:
            return images
        n, _, h, w = images.shape
        noise = self.noise.randn((n, 2, h, w), images) * self.sigma
        with torch.no_grad():
            moved = warp(images, _to_pixels(noise, self.units), "zeros", backend=self.backend)
        return moved.clamp(0.0, 1.0)

    def __call__(self, model, images: torch.Tensor, labels: torch.Tensor):
        check_batch(images, labels)
        x = self.random_start(images)
        z = x.detach().requires_grad_(True)
        losses, logits = classifier_losses(model, z, labels, self.loss_fn)
        ce = losses.mean()
        if self.lam == 0:
            nan = torch.full((), float("nan"), device=ce.device)
            zero = torch.zeros((), device=ce.device)
            return ce, self._parts(ce, zero, nan, nan, ce, logits)
        if self.mode == "exact":
            return self._exact(model, x, z, ce, logits)
        return self._finite_difference(model, x, z, labels, losses, ce, logits)

    def _exact(self, model, x, z, ce, logits):
        batch = x.shape[0]
        (grad_image,) = torch.autograd.grad(ce, z, create_graph=True)
        with torch.autocast(x.device.type, enabled=False):
            squared = flow_gradient_penalty(x, grad_image.to(x.dtype), self.scheme, backend=self.backend,
                                            units=self.units)
            penalty = reduce_squared_norms(squared, self.reduction, batch)
        loss = ce + self.lam * penalty
        input_sq = grad_image.detach().flatten(1).square().sum(1)
        return loss, self._parts(ce, penalty, mean_norm(squared, batch), mean_norm(input_sq, batch), loss, logits)

    def _finite_difference(self, model, x, z, labels, losses, ce, logits):
        batch = x.shape[0]
        (grad_image,) = torch.autograd.grad(ce, z, retain_graph=True)
        with torch.no_grad(), torch.autocast(x.device.type, enabled=False):
            field = flow_gradient(x, grad_image.to(x.dtype), self.scheme, backend=self.backend, units=self.units)
            squared = field.flatten(1).square().sum(1)
            norms = squared.sqrt().view(-1, 1, 1, 1)
            direction = torch.where(norms > 0, field / norms.clamp_min(torch.finfo(field.dtype).tiny), 0.0)
            step = _to_pixels(direction * self.fd_step, self.units)
            if self.fd_perturbation == "warp":
                moved = warp(x, step, "border", backend=self.backend)
            else:
                moved = x + flow_jvp(x, step, self.scheme, backend=self.backend)
        moved_losses, _ = classifier_losses(model, moved, labels, self.loss_fn)
        slopes = (moved_losses - losses) / self.fd_step  # (N,), ~ per-example flow gradient norm
        penalty = reduce_squared_norms(slopes.square() / batch**2, self.reduction, batch)
        loss = ce + self.lam * penalty
        input_sq = grad_image.flatten(1).square().sum(1)
        return loss, self._parts(ce, penalty, mean_norm(squared, batch), mean_norm(input_sq, batch), loss, logits)

    @staticmethod
    def _parts(ce, penalty, flow_norm, input_norm, loss, logits):
        return {"ce": ce.detach(), "penalty": penalty.detach(), "flow_grad_norm": flow_norm.detach(),
                "input_grad_norm": input_norm.detach(), "loss": loss.detach(), "logits": logits.detach()}
