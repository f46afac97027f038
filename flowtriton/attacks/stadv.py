"""stAdv (Xiao et al., ICLR 2018): spatially transformed adversarial examples, batched on the device.

Each example is its own problem: the per-example losses only share a sum, whose gradient decouples,
and Adam's moments are per coordinate, so no example's step depends on another's. Early stopping,
best-so-far tracking and the binary search over tau are all per example.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..ops.warp import warp
from .base import (FlowAttack, attack_goal_met, check_choice, check_int, check_number, margin_loss)


def flow_smoothness(flow: torch.Tensor) -> torch.Tensor:
    """stAdv's L_flow: (N, 2, H, W) pixel flow -> (N,), pixels.

    ``sum_p sum_{q in N(p)} sqrt(||du_p - du_q||^2 + ||dv_p - dv_q||^2 + 1e-8)`` over the 4
    neighbours of each pixel; a neighbour outside the image repeats the edge pixel (TensorFlow's
    SYMMETRIC padding by one, as the authors' package), so it adds sqrt(1e-8) = 1e-4.
    """
    height, width = flow.shape[-2:]
    padded = F.pad(flow, (1, 1, 1, 1), mode="replicate")
    total = flow.new_zeros(flow.shape[0])
    for dy, dx in ((0, 1), (2, 1), (1, 0), (1, 2)):
        neighbour = padded[:, :, dy:dy + height, dx:dx + width]
        total = total + ((flow - neighbour).square().sum(dim=1) + 1e-8).sqrt().flatten(1).sum(dim=1)
    return total


class StAdv(FlowAttack):
    """Minimize ``L_adv + tau * L_flow`` per example with a batched Adam on the flow (pixels).

    ``L_adv``: C&W margin ``max(Z_y - max_{i!=y} Z_i, -kappa)`` (untargeted, y the true label) or
    ``max(max_{i!=t} Z_i - Z_t, -kappa)`` (targeted), logit units. ``L_flow``:
    :func:`flow_smoothness`. The image is ``warp(x, flow, padding_mode)`` (border: the authors'
    sampler clamps coordinates to the image).

    Arguments:
      tau: smoothness weight (paper 0.05), 1 / pixel logit units. kappa: confidence, logits (>= 0).
      max_iter: Adam steps per search step. lr: Adam step size, pixels. betas: Adam's.
      search_steps: binary search over tau per example (1 = none): after a success tau grows
        (x10 until a failure bounds it, then bisection), after a failure it shrinks.
      abort_early: every ``max(1, max_iter // 10)`` steps, an example whose flow is already
        successful and whose loss fell by less than 0.01 % since the previous check stops.
    Kept per example: the successful flow with the smallest L_flow over every step and search step
    (for a fixed tau and kappa = 0 that is the smallest-loss successful flow); an example never
    fooled gets its smallest-loss flow of the last search step.
    ``result.info``: 'tau' (N,) the weight at which the kept flow was found; 'flow_loss' (N,) its
    L_flow (pixels).
    """

    minimum_norm = True

    def __init__(self, model, tau: float = 0.05, kappa: float = 0.0, max_iter: int = 200,
                 lr: float = 0.01, betas: tuple[float, float] = (0.9, 0.999), search_steps: int = 1,
                 abort_early: bool = True, padding_mode: str = "border", targeted: bool = False,
                 backend: str | None = None):
        super().__init__(model, targeted=targeted, backend=backend)
        self.tau = check_number(tau, "tau")
        self.kappa = check_number(kappa, "kappa")
        self.max_iter = check_int(max_iter, "max_iter")
        self.lr = check_number(lr, "lr", strict=True)
        if len(betas) != 2:
            raise ValueError(f"betas must be a pair, got {betas!r}")
        self.betas = tuple(check_number(b, "betas") for b in betas)
        if not all(b < 1 for b in self.betas):
            raise ValueError(f"betas must lie in [0, 1), got {betas!r}")
        self.search_steps = check_int(search_steps, "search_steps")
        if not isinstance(abort_early, bool):
            raise TypeError(f"abort_early must be a bool, got {type(abort_early).__name__}")
        self.abort_early = abort_early
        self.padding_mode = check_choice(padding_mode, ("zeros", "border", "reflection"), "padding_mode")

    def losses(self, images, flow, labels, tau):
        """Per-example (total, adversarial, flow) losses, each (N,); ``tau`` a float or (N,)."""
        logits = self._logits(warp(images, flow, self.padding_mode, backend=self.backend), labels)
        adv = (-margin_loss(logits, labels, self.targeted)).clamp_min(-self.kappa)
        smooth = flow_smoothness(flow)
        return adv + tau * smooth, adv, smooth, logits

    def _attack(self, images, labels):
        n = images.shape[0]
        device, dtype = images.device, images.dtype
        shape = (n, 2) + tuple(images.shape[2:])
        tau = torch.full((n,), self.tau, dtype=dtype, device=device)
        lower = torch.zeros_like(tau)
        upper = torch.full_like(tau, math.inf)
        best_flow = images.new_zeros(shape)
        best_smooth = torch.full_like(tau, math.inf)
        best_tau = tau.clone()
        found = torch.zeros(n, dtype=torch.bool, device=device)
        iterations = torch.zeros(n, dtype=torch.int64, device=device)
        fallback_flow = best_flow
        for _ in range(self.search_steps):
            step_found, fallback_flow, steps = self._optimize(
                images, labels, tau, best_flow, best_smooth, best_tau, found)
            iterations += steps
            lower = torch.where(step_found, tau, lower)
            upper = torch.where(step_found, upper, tau)
            tau = torch.where(torch.isinf(upper), tau * 10, (lower + upper) / 2)
        flow = torch.where(found[:, None, None, None], best_flow, fallback_flow)
        tau_used = torch.where(found, best_tau, tau)
        with torch.no_grad():
            adv = warp(images, flow, self.padding_mode, backend=self.backend)
        return flow, adv, iterations, {"tau": tau_used, "flow_loss": flow_smoothness(flow)}

    def _optimize(self, images, labels, tau, best_flow, best_smooth, best_tau, found):
        """One Adam run at per-example ``tau`` from zero flow. Updates ``best_*`` and ``found`` in
        place; -> (found in this run (N,), smallest-loss flow of this run, steps taken (N,))."""
        n = images.shape[0]
        device = images.device
        beta1, beta2 = self.betas
        flow = torch.zeros_like(best_flow)
        m = torch.zeros_like(flow)
        v = torch.zeros_like(flow)
        run_found = torch.zeros(n, dtype=torch.bool, device=device)
        low_loss = torch.full_like(tau, math.inf)
        low_flow = flow.clone()
        checkpoint = torch.full_like(tau, math.inf)
        steps = torch.zeros(n, dtype=torch.int64, device=device)
        active = torch.ones(n, dtype=torch.bool, device=device)
        check_every = max(1, self.max_iter // 10)
        for step in range(self.max_iter + 1):
            idx = active.nonzero().squeeze(1)
            if idx.numel() == 0:
                break
            x, y, t = images[idx], labels[idx], tau[idx]
            f = flow[idx].detach().requires_grad_(True)
            with torch.enable_grad():
                total, _, smooth, logits = self.losses(x, f, y, t)
                (grad,) = torch.autograd.grad(total.sum(), f) if step < self.max_iter else (None,)
            with torch.no_grad():
                total, smooth, f = total.detach(), smooth.detach(), f.detach()
                success = attack_goal_met(logits.argmax(dim=1), y, self.targeted)
                improved = success & (smooth < best_smooth[idx])
                sel = idx[improved]
                best_flow[sel] = f[improved]
                best_smooth[sel] = smooth[improved]
                best_tau[sel] = t[improved]
                found[sel] = True
                run_found[idx[success]] = True
                lower_loss = total < low_loss[idx]
                low_loss[idx[lower_loss]] = total[lower_loss]
                low_flow[idx[lower_loss]] = f[lower_loss]
                if grad is None:
                    break
                # Adam, per coordinate (bias correction uses the shared step count).
                m[idx] = beta1 * m[idx] + (1 - beta1) * grad
                v[idx] = beta2 * v[idx] + (1 - beta2) * grad.square()
                m_hat = m[idx] / (1 - beta1 ** (step + 1))
                v_hat = v[idx] / (1 - beta2 ** (step + 1))
                flow[idx] = f - self.lr * m_hat / (v_hat.sqrt() + 1e-8)
                steps[idx] += 1
                if self.abort_early and (step + 1) % check_every == 0:
                    stalled = total > checkpoint[idx] - 1e-4 * checkpoint[idx].abs()
                    stop = stalled & run_found[idx]
                    active[idx[stop]] = False
                    checkpoint[idx] = total
        return run_found, low_flow, steps
