"""FlowPGD: the authors' multi-step flow attack (docs/method.md) and its usual PGD options."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..ops.warp import warp
from ..ops.units import UNITS, unit_scale
from ..ops.validation import check_choice
from .base import (PADDING_MODES, FlowAttack, attack_goal_met, check_int, check_number, check_seed, input_gradient,
                   margin_loss, resolve_generator, uniform)

LOSSES = ("ce", "margin")
NORMS = ("linf", "tnorm")


class FlowPGD(FlowAttack):
    """Projected sign-gradient ascent on a flow; the defaults are the authors' evaluation attack.

    Default: untargeted, flow starts at 0, ``steps`` = 100 iterations of
    ``flow <- clip(flow + step_size * sign(grad_flow CE(model(clamp(warp(x, flow, 'zeros'), 0, 1)), y)),
    -eps, eps)`` with ``eps = 0.01`` and ``step_size = eps / steps`` in normalized units (one unit =
    (size - 1) / 2 pixels per axis: 0.155 px on 32 x 32 images).

    Arguments (all distances in ``units``: 'normalized' or 'pixels'):
      eps: budget. ``norm='linf'``: a box |flow component| <= eps (per component, in ``units``);
        ``norm='tnorm'``: each pixel's flow vector has Euclidean length <= eps (measured in
        ``units``; with 'normalized' units on non-square images that is an ellipse in pixels).
      steps: iterations per start (>= 1). step_size: per iteration, default eps / steps. For
        'tnorm' the step is ``step_size`` along each pixel's normalized gradient vector.
      loss: 'ce' (cross-entropy) or 'margin' (C&W logit margin, unclamped).
      random_start: start uniformly in the budget instead of at 0.
      restarts: number of starts (>= 1); the first starts at 0 unless ``random_start``, the others
        always start at random. Per example the worst case is kept: a successful start first, then
        the highest loss.
      targeted: ``labels`` are target classes; the loss is descended towards them.
      padding_mode: warp padding ('zeros' as the authors).
      generator / seed: randomness of the random starts; with neither, torch's global generator
        (``torch.manual_seed`` makes runs repeatable).
    ``result.info``: 'loss' (N,) the final attack loss (ascent direction, i.e. CE for
    untargeted, -CE towards the target for targeted; logit units for 'margin').
    """

    def __init__(self, model, eps: float = 0.01, steps: int = 100, step_size: float | None = None,
                 units: str = "normalized", norm: str = "linf", loss: str = "ce",
                 random_start: bool = False, restarts: int = 1, targeted: bool = False,
                 padding_mode: str = "zeros", generator: torch.Generator | None = None,
                 seed: int | None = None, backend: str | None = None):
        super().__init__(model, targeted=targeted, backend=backend)
        self.eps = check_number(eps, "eps")
        self.steps = check_int(steps, "steps")
        self.step_size = None if step_size is None else check_number(step_size, "step_size")
        self.units = check_choice(units, UNITS, "units")
        self.norm = check_choice(norm, NORMS, "norm")
        self.loss = check_choice(loss, LOSSES, "loss")
        if not isinstance(random_start, bool):
            raise TypeError(f"random_start must be a bool, got {type(random_start).__name__}")
        self.random_start = random_start
        self.restarts = check_int(restarts, "restarts")
        self.padding_mode = check_choice(padding_mode, PADDING_MODES, "padding_mode")
        self.generator = generator
        self.seed = check_seed(seed)

    @property
    def effective_step_size(self) -> float:
        """Step per iteration, in ``units``."""
        return self.eps / self.steps if self.step_size is None else self.step_size

    def with_budget(self, budget: float) -> "FlowPGD":
        """A copy with ``eps = budget`` (same units, step size eps / steps unless set)."""
        return self._copy_with(eps=check_number(budget, "budget"))

    # -- the attack -----------------------------------------------------------------------------
    def _objective(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """(N,) per-example loss to ascend."""
        if self.loss == "ce":
            ce = F.cross_entropy(logits, labels, reduction="none")
            return -ce if self.targeted else ce
        return margin_loss(logits, labels, self.targeted)

    def _adversarial(self, images, flow_units, scale):
        return warp(images, flow_units * scale, self.padding_mode, backend=self.backend).clamp(0, 1)

    def _project(self, flow: torch.Tensor) -> torch.Tensor:
        if self.norm == "linf":
            return flow.clamp(-self.eps, self.eps)
        length = flow.square().sum(dim=1, keepdim=True).sqrt()
        return torch.where(length > self.eps, flow * (self.eps / length.clamp_min(1e-30)), flow)

    def _random_start(self, shape, like: torch.Tensor, generator) -> torch.Tensor:
        draw = uniform(shape, like, generator)
        if self.norm == "linf":
            return (2 * draw - 1) * self.eps
        angle = draw[:, :1] * (2 * torch.pi)
        radius = uniform((shape[0], 1) + tuple(shape[2:]), like, generator).sqrt() * self.eps
        return torch.cat((angle.cos(), angle.sin()), dim=1) * radius

    def _ascent_direction(self, grad: torch.Tensor) -> torch.Tensor:
        if self.norm == "linf":
            return grad.sign()
        length = grad.square().sum(dim=1, keepdim=True).sqrt()
        return torch.where(length > 0, grad / length.clamp_min(1e-30), torch.zeros_like(grad))

    def _one_start(self, images, labels, start, scale):
        """Run ``steps`` iterations from ``start`` (in units); -> (flow in units, final loss (N,),
        success (N,))."""
        flow = start
        step = self.effective_step_size
        for _ in range(self.steps):
            flow = flow.detach().requires_grad_(True)
            with torch.enable_grad():
                logits = self._logits(self._adversarial(images, flow, scale))
                objective = self._objective(logits, labels).sum()
                grad = input_gradient(objective, flow)
            with torch.no_grad():
                flow = self._project(flow + step * self._ascent_direction(grad))
        with torch.no_grad():
            logits = self._logits(self._adversarial(images, flow, scale))
            loss = self._objective(logits, labels)
            success = attack_goal_met(logits.argmax(dim=1), labels, self.targeted)
        return flow.detach(), loss, success

    def _attack(self, images, labels):
        n, _, height, width = images.shape
        scale = unit_scale(height, width, self.units, images)
        shape = (n, 2, height, width)
        generator = resolve_generator(self.generator, self.seed, images.device)
        best_flow = best_loss = best_success = None
        for restart in range(self.restarts):
            if restart == 0 and not self.random_start:
                start = images.new_zeros(shape)
            else:
                start = self._random_start(shape, images, generator)
            flow, loss, success = self._one_start(images, labels, self._project(start), scale)
            if best_flow is None:
                best_flow, best_loss, best_success = flow, loss, success
                continue
            better = (success & ~best_success) | ((success == best_success) & (loss > best_loss))
            best_flow = torch.where(better[:, None, None, None], flow, best_flow)
            best_loss = torch.where(better, loss, best_loss)
            best_success = best_success | success
        with torch.no_grad():
            adv = self._adversarial(images, best_flow, scale)
        iterations = torch.full((n,), self.steps * self.restarts, device=images.device)
        return best_flow * scale, adv, iterations, {"loss": best_loss}
