"""ADef (Alaifari, Alberti & Gauksson, ICLR 2019): iterative minimum-norm adversarial deformations.

Follows the authors' reference algorithm (REFERENCE.md 2.1), batched over images: one backward
per candidate label and iteration, never a Python loop over images.
"""

from __future__ import annotations

import math
import numbers

import torch
import torch.nn.functional as F

from ..ops.flow_gradient import flow_gradient
from ..ops.warp import warp
from .base import FlowAttack, attack_goal_met, check_int, check_number, flow_norms


def gaussian_kernel(sigma: float, dtype=torch.float32, device=None) -> torch.Tensor:
    """(2, 1, k, k) depthwise Gaussian (sigma in pixels) for a 2-channel field, as the reference:
    size ``2 * int(4 sigma + 0.5) + 1``, normalized to sum 1."""
    size = 2 * int(4 * sigma + 0.5) + 1
    centre = (size - 1) / 2.0
    taps = (torch.arange(size, dtype=torch.float64) - centre) / sigma
    gauss = torch.exp(-0.5 * taps.square())
    gauss = gauss / gauss.sum()
    kernel = torch.outer(gauss, gauss).to(dtype=dtype, device=device)
    return kernel.expand(2, 1, size, size).contiguous()


def smooth_field(field: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Convolve each channel of (N, 2, H, W) ``field`` with ``kernel`` (zero padding, same size)."""
    pad = (kernel.shape[-1] - 1) // 2
    return F.conv2d(field, kernel, padding=pad, groups=2)


class ADef(FlowAttack):
    """ADef: repeatedly take the minimum-norm flow that reaches the linearized decision boundary.

    Each iteration, per still-correct image and per candidate label k:
    ``f = F_k - F_current`` (logits of the deformed image, < 0 while the current label wins),
    ``alpha = flow_gradient(x_deformed, grad_x f, scheme='central')`` (pixels), and the candidate
    field ``tau + (-f) * S(S alpha) / ||S alpha||^2`` (S = Gaussian smoothing, identity when
    ``smooth == 0``; units: pixels). The candidate with the smallest T-norm is kept and the image is
    re-warped from the ORIGINAL image with border padding.

    Arguments:
      candidates: int or sequence of ints >= 1, indices into the clean logits sorted in
        descending order (1 = the runner-up label); the current label is always included.
        ``candidates=range(1, classes)`` tries every label. Ignored when ``targeted``.
      max_iter: iterations (>= 1). max_norm: T-norm cap in pixels (inf = none): candidates at or
        above it are dropped and an image with none left stops.
      overshoot: >= 1; at the end, fields of images never fooled, or fooled but lying on a
        decision boundary (another logit within 1e-6 of the top), are multiplied by
        ``clamp(max_norm / ||tau||_T, 1, overshoot)``.
      smooth: Gaussian sigma in pixels (0 = none), kernel truncated at 4 sigma, zero padding.
      targeted: ``labels`` are target classes (the reference's ``targeting`` with one candidate per
        image); stops when the target is predicted.
    An image stops when its goal is met, when no candidate changes its field (by more than 1e-10
    px of T-norm) below ``max_norm``, or after ``max_iter`` iterations. Untargeted images the model
    already misclassifies succeed at once with a zero field. ``labels=None`` deforms away from
    the model's own predictions, as the reference does.
    ``result.iterations``: updates made per image. ``result.info``: 'overshot' (N,) bool.
    """

    minimum_norm = True

    def __init__(self, model, candidates=1, max_iter: int = 50, max_norm: float = math.inf,
                 overshoot: float = 1.0, smooth: float = 0.0, targeted: bool = False,
                 backend: str | None = None):
        super().__init__(model, targeted=targeted, backend=backend)
        if isinstance(candidates, numbers.Integral) and not isinstance(candidates, bool):
            candidates = [candidates]
        try:
            candidates = [check_int(c, "candidates", minimum=1) for c in candidates]
        except TypeError as error:
            raise TypeError(f"candidates must be an int or a sequence of ints >= 1: {error}") from None
        if not candidates:
            raise ValueError("candidates must not be empty")
        self.candidates = sorted(set(candidates))
        self.max_iter = check_int(max_iter, "max_iter")
        self.max_norm = check_number(max_norm, "max_norm", strict=True, allow_inf=True)
        self.overshoot = check_number(overshoot, "overshoot", minimum=1.0)
        self.smooth = check_number(smooth, "smooth")

    def _candidate_labels(self, clean_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """(N, K) labels to steer towards."""
        if self.targeted:
            return labels[:, None]
        classes = clean_logits.shape[1]
        if self.candidates[-1] >= classes:
            raise ValueError(f"candidates must be < the number of classes ({classes}), got {self.candidates}")
        order = clean_logits.argsort(dim=1, descending=True)
        return order[:, self.candidates]

    def _attack(self, images, labels):
        n = images.shape[0]
        device = images.device
        with torch.no_grad():
            clean_logits = self._logits(images)
        cand_labels = self._candidate_labels(clean_logits, labels)
        kernel = gaussian_kernel(self.smooth, images.dtype, device) if self.smooth > 0 else None

        tau = images.new_zeros((n, 2) + tuple(images.shape[2:]))
        norm = images.new_zeros(n)
        iterations = torch.zeros(n, dtype=torch.int64, device=device)
        active = ~attack_goal_met(clean_logits.argmax(dim=1), labels, self.targeted)
        try_overshoot = active.clone()
        step_count = 0
        while True:
            idx = active.nonzero().squeeze(1)
            if idx.numel() == 0:
                break
            x_n = warp(images[idx], tau[idx], "border", backend=self.backend).detach().requires_grad_(True)
            with torch.enable_grad():
                logits = self._logits(x_n)
            current = logits.argmax(dim=1)
            if step_count > 0:
                reached = attack_goal_met(current, labels[idx], self.targeted)
                with torch.no_grad():
                    gap = logits - logits.amax(dim=1, keepdim=True)
                    on_boundary = (gap > -1e-6).sum(dim=1) > 1
                iterations[idx[reached]] = step_count
                try_overshoot[idx[reached]] = on_boundary[reached]
                active[idx[reached]] = False
                if step_count == self.max_iter:
                    iterations[idx[~reached]] = step_count
                    break
                sub = (~reached).nonzero().squeeze(1)
                if sub.numel() == 0:
                    break
            else:
                sub = torch.arange(idx.numel(), device=device)
            step_count += 1
            ids = idx[sub]
            best_tau, best_norm = self._best_candidate(logits, x_n, sub, current, cand_labels[ids], tau[ids], kernel)
            changed = ((best_norm - norm[ids]).abs() > 1e-10) & (best_norm < self.max_norm)
            iterations[ids[~changed]] = step_count - 1
            active[ids[~changed]] = False
            tau[ids[changed]] = best_tau[changed]
            norm[ids[changed]] = best_norm[changed]

        if self.overshoot > 1:
            factor = (self.max_norm / norm).clamp(1.0, self.overshoot)
            factor = torch.where(try_overshoot, factor, torch.ones_like(factor))
            tau = tau * factor[:, None, None, None]
        else:
            try_overshoot = torch.zeros_like(try_overshoot)
        with torch.no_grad():
            adv = warp(images, tau, "border", backend=self.backend)
        return tau, adv, iterations, {"overshot": try_overshoot}

    def _best_candidate(self, logits, x_n, sub, current, cand_labels, tau, kernel):
        """Smallest-T-norm candidate field per image of ``sub``: ((S, 2, H, W), (S,)) pixels."""
        best_norm = torch.full((sub.numel(),), self.max_norm, dtype=tau.dtype, device=tau.device)
        best_tau = tau.clone()
        x_sub = x_n.detach()[sub]
        rows = logits[sub]
        current_logit = rows.gather(1, current[sub, None]).squeeze(1)
        for k in range(cand_labels.shape[1]):
            f = rows.gather(1, cand_labels[:, k, None]).squeeze(1) - current_logit
            with torch.enable_grad():
                (grad,) = torch.autograd.grad(f.sum(), x_n, retain_graph=True)
            with torch.no_grad():
                alpha = flow_gradient(x_sub, grad[sub], scheme="central", backend=self.backend)
                if kernel is not None:
                    alpha = smooth_field(alpha, kernel)
                squared = alpha.square().flatten(1).sum(dim=1)
                if kernel is not None:
                    alpha = smooth_field(alpha, kernel)
                scale = -f.detach() / squared.clamp_min(torch.finfo(squared.dtype).tiny)
                candidate = tau + scale[:, None, None, None] * alpha
                cand_norm = flow_norms(candidate)[0]
                usable = (squared > 0) & torch.isfinite(cand_norm)
                better = usable & (cand_norm < best_norm)
                best_norm = torch.where(better, cand_norm, best_norm)
                best_tau = torch.where(better[:, None, None, None], candidate, best_tau)
        return best_tau, best_norm
