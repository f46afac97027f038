"""ADef (Alaifari, Alberti & Gauksson, ICLR 2019): iterative minimum-norm adversarial deformations.

Follows the authors' reference algorithm (docs/attacks.md), batched over images AND candidate
labels: per iteration one forward pass of the images still running and one batched backward pass
that gives the gradients of every candidate's logit difference at once (``is_grads_batched``);
never a Python loop over images, two host syncs per iteration.
"""

from __future__ import annotations

import math
import numbers

import torch
import torch.nn.functional as F

from ..ops.flow_gradient import flow_gradient
from ..ops.warp import warp
from .base import (FlowAttack, attack_goal_met, check_int, check_number, check_units, flow_norms, input_gradient,
                   renamed_arguments, renamed_attribute)

#: Why ADef's distances are pixels only.
PIXELS_ONLY = ("its fields are the minimum-norm solutions in pixel space, max_norm is a T-norm (a round ball) and "
               "smooth a round Gaussian in pixels; in normalized units both would be ellipses on non-square images. "
               "Convert a normalized distance d to pixels with d * (size - 1) / 2 "
               "(flowtriton.ops.units.pixel_scale)")


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

    An image stops when its goal is met, when no candidate changes its field (by more than 1e-10
    px of T-norm) below ``max_norm``, or after ``steps`` iterations. Untargeted images the model
    already misclassifies succeed at once with a zero field. ``labels=None`` deforms away from
    the model's own predictions, as the reference does.

    Calling the attack returns the (N, C, H, W) deformed images; ``run`` an
    :class:`~flowtriton.attacks.AttackResult` (flow in pixels). ``result.iterations``: updates
    made per image. ``result.info``: 'overshot' (N,) bool; 'evaluations' (N,) model passes per
    image (a forward pass plus, while the image still runs, one batched backward over all its
    candidates).

    Args:
        model: classifier, (N, C, H, W) images in [0, 1] -> (N, classes) logits.
        candidates: int or sequence of ints >= 1, indices into the clean logits sorted in
            descending order (1 = the runner-up label); the current label is always included.
            ``candidates=range(1, classes)`` tries every label. Ignored when ``targeted``.
        steps: iterations (>= 1; ``max_iter``, its old name, is deprecated).
        max_norm: T-norm cap in pixels (inf = none; the attack's budget, see :meth:`with_budget`):
            candidates at or above it are dropped and an image with none left stops.
        overshoot: >= 1; at the end, fields of images never fooled, or fooled but lying on a
            decision boundary (another logit within 1e-6 of the top, plus 16 float ulps of it),
            are multiplied by ``clamp(max_norm / ||tau||_T, 1, overshoot)``.
        smooth: Gaussian sigma in pixels (0 = none), kernel truncated at 4 sigma, zero padding.
        targeted: ``labels`` are target classes (the reference's ``targeting`` with one candidate
            per image); stops when the target is predicted.
        backend: flowtriton ops backend ('auto', 'triton', 'torch' or None).
        units: 'pixels' (the only value: ``max_norm`` and ``smooth`` are pixel distances;
            'normalized' is a ValueError).

    Example:
        >>> from flowtriton.attacks import ADef
        >>> _ = torch.manual_seed(0)
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 3))
        >>> images, labels = torch.rand(2, 1, 8, 8), torch.tensor([0, 1])
        >>> attack = ADef(model, candidates=range(1, 3), steps=3, overshoot=1.2)
        >>> result = attack.run(images, labels)
        >>> result.flow.shape, sorted(result.info)
        (torch.Size([2, 2, 8, 8]), ['evaluations', 'overshot'])
        >>> attack.budget_kind, attack.budget_units, attack.with_budget(0.5).max_norm  # T-norm, pixels
        ('tnorm', 'pixels', 0.5)
    """

    minimum_norm = True
    max_iter = renamed_attribute("max_iter", "steps")

    @renamed_arguments(max_iter="steps")
    def __init__(self, model, candidates=1, steps: int = 50, max_norm: float = math.inf,
                 overshoot: float = 1.0, smooth: float = 0.0, targeted: bool = False,
                 backend: str | None = None, units: str = "pixels"):
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
        self.steps = check_int(steps, "steps")
        self.max_norm = check_number(max_norm, "max_norm", strict=True, allow_inf=True)
        self.overshoot = check_number(overshoot, "overshoot", minimum=1.0)
        self.smooth = check_number(smooth, "smooth")
        self.units = check_units(units, "ADef", ("pixels",), PIXELS_ONLY)

    @property
    def budget_kind(self) -> str:
        """'tnorm': a budget is a T-norm in pixels (:func:`flowtriton.attacks.evaluate` runs ADef
        once and judges every budget on the T-norm it needed)."""
        return "tnorm"

    def with_budget(self, budget: float) -> "ADef":
        """A copy with ``max_norm = budget`` (a T-norm cap, pixels): its fields stay within it."""
        return self._copy_with(max_norm=check_number(budget, "budget", strict=True, allow_inf=True))

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
        kernel = gaussian_kernel(self.smooth, images.dtype, device) if self.smooth > 0 else None
        tau = images.new_zeros((n, 2) + tuple(images.shape[2:]))
        norm = images.new_zeros(n)
        iterations = torch.zeros(n, dtype=torch.int64, device=device)
        evaluations = torch.zeros(n, dtype=torch.int64, device=device)
        active = torch.ones(n, dtype=torch.bool, device=device)
        try_overshoot = torch.ones(n, dtype=torch.bool, device=device)
        cand_labels = None
        # Two host syncs per iteration (the nonzero() calls that shrink the batch to the images
        # still running); everything else stays on the device.
        for step in range(self.steps + 1):
            idx = active.nonzero().squeeze(1)
            if idx.numel() == 0:
                break
            x_n = warp(images[idx], tau[idx], "border", backend=self.backend).detach().requires_grad_(True)
            logits = self._logits(x_n)
            evaluations[idx] += 1
            current = logits.argmax(dim=1)
            reached = attack_goal_met(current, labels[idx], self.targeted)
            if cand_labels is None:  # the clean pass: candidates from the clean logits
                cand_labels = self._candidate_labels(logits.detach(), labels)
                try_overshoot = ~reached
            else:
                # "On the boundary": another logit within 1e-6 of the top (the reference), widened by
                # a few float ulps of the top logit, since the final check runs the model on a
                # batch of another size whose rounding may tip an exact tie back.
                top = logits.detach().amax(dim=1, keepdim=True)
                tol = 1e-6 + 16 * torch.finfo(top.dtype).eps * top.abs()
                on_boundary = (logits.detach() - top > -tol).sum(dim=1) > 1
                try_overshoot[idx] = torch.where(reached, on_boundary, try_overshoot[idx])
            iterations[idx] = step
            if step == self.steps:
                break
            active[idx] = ~reached
            keep = (~reached).nonzero().squeeze(1)
            if keep.numel() == 0:
                break
            ids = idx[keep]
            best_tau, best_norm = self._best_candidate(logits, x_n, keep, current[keep], cand_labels[ids],
                                                       tau[ids], kernel)
            changed = ((best_norm - norm[ids]).abs() > 1e-10) & (best_norm < self.max_norm)
            active[ids] = changed
            tau[ids] = torch.where(changed[:, None, None, None], best_tau, tau[ids])
            norm[ids] = torch.where(changed, best_norm, norm[ids])

        if self.overshoot > 1:
            factor = (self.max_norm / norm).clamp(1.0, self.overshoot)
            factor = torch.where(try_overshoot, factor, torch.ones_like(factor))
            tau = tau * factor[:, None, None, None]
        else:
            try_overshoot = torch.zeros_like(try_overshoot)
        with torch.no_grad():
            adv = warp(images, tau, "border", backend=self.backend)
        return tau, adv, iterations, {"overshot": try_overshoot, "evaluations": evaluations}

    def _candidate_gradients(self, logits, x_n, keep, current, cand_labels):
        """(K, S, C, H, W) gradients w.r.t. ``x_n[keep]`` of ``f_k = F_{cand_k} - F_current`` for
        the K candidates, from ONE batched backward pass (all candidates at once), and f (S, K)."""
        classes = logits.shape[1]
        rows = logits[keep]
        f = (rows.gather(1, cand_labels) - rows.gather(1, current[:, None])).detach()
        weights = F.one_hot(cand_labels, classes) - F.one_hot(current, classes)[:, None]  # (S, K, classes)
        grad_out = logits.new_zeros((cand_labels.shape[1],) + tuple(logits.shape))
        grad_out[:, keep] = weights.transpose(0, 1).to(logits.dtype)
        try:
            # retain_graph: a batched backward that fails part-way must leave the graph usable for
            # the fallback (the graph is dropped when this function returns anyway).
            grads = input_gradient(logits, x_n, grad_out, is_grads_batched=True, retain_graph=True)
        except RuntimeError as error:  # a model without vmap support: one backward per candidate
            if "out of memory" in str(error):
                raise
            grads = torch.stack([input_gradient(logits, x_n, g, retain_graph=True) for g in grad_out])
        return grads[:, keep], f

    def _best_candidate(self, logits, x_n, keep, current, cand_labels, tau, kernel):
        """Smallest-T-norm candidate field per image of ``keep``: ((S, 2, H, W), (S,)) pixels."""
        grads, f = self._candidate_gradients(logits, x_n, keep, current, cand_labels)
        k, s = grads.shape[:2]
        with torch.no_grad():
            x_sub = x_n.detach()[keep]
            x_rep = x_sub.expand((k,) + tuple(x_sub.shape)).reshape((k * s,) + tuple(x_sub.shape[1:]))
            alpha = flow_gradient(x_rep, grads.reshape(x_rep.shape), scheme="central", backend=self.backend)
            if kernel is not None:
                alpha = smooth_field(alpha, kernel)
            squared = alpha.square().flatten(1).sum(dim=1)
            if kernel is not None:
                alpha = smooth_field(alpha, kernel)
            f = f.t().reshape(-1)  # candidate-major, as alpha
            scale = -f / squared.clamp_min(torch.finfo(squared.dtype).tiny)
            candidate = tau.repeat(k, 1, 1, 1) + scale[:, None, None, None] * alpha
            cand_norm = flow_norms(candidate)[0]
            usable = (squared > 0) & torch.isfinite(cand_norm)
            cand_norm = torch.where(usable, cand_norm, torch.full_like(cand_norm, math.inf)).view(k, s)
            best_norm, pick = cand_norm.min(dim=0)  # first candidate on ties, as a sequential scan
            best_tau = candidate.view((k, s) + tuple(tau.shape[1:]))[pick, torch.arange(s, device=pick.device)]
            below = best_norm < self.max_norm
            best_tau = torch.where(below[:, None, None, None], best_tau, tau)
            best_norm = torch.where(below, best_norm, torch.full_like(best_norm, self.max_norm))
        return best_tau, best_norm
