"""FlowPGD: projected gradient ascent on a flow. The defaults are an evaluation-grade attack (an
APGD-style schedule, cross-entropy and margin losses, two starts, the best iterate per example);
``FlowPGD.preset('paper')`` is the FGR authors' multi-step attack exactly (docs/attacks.md)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..ops.warp import warp
from ..ops.units import unit_scale
from ..ops.validation import check_choice
from .base import (PADDING_MODES, FlowAttack, attack_goal_met, check_generator, check_int, check_number, check_seed,
                   check_units, input_gradient, margin_loss, resolve_generator, uniform)

LOSSES = ("ce", "margin")
NORMS = ("linf", "tnorm")
SCHEDULES = ("apgd", "constant")
KEEPS = ("best", "last")

#: Named settings (the constructor's defaults are 'standard'); ``FlowPGD.preset(name, model, **overrides)``.
PRESETS = {
    # The evaluation attack (the defaults): APGD schedule, 40 steps, cross-entropy and margin,
    # 6 random starts per loss, the best iterate per example. At most 12 x (40 + 1) = 492 model
    # passes per image, fewer for images fooled early (benchmarks/bench_attacks.py; docs/attacks.md).
    "standard": dict(steps=40, step_size=None, loss=("ce", "margin"), schedule="apgd", random_start=True,
                     restarts=6, keep="best", momentum=0.75),
    # The FGR authors' multi-step attack, bit for bit the FlowPGD defaults before issue 20: eps / steps
    # sign steps on the cross-entropy from zero flow, one start, the final iterate. 100 + 1 passes.
    "paper": dict(steps=100, step_size=None, loss="ce", schedule="constant", random_start=False, restarts=1,
                  keep="last", momentum=0.75),
    # Cheap but sound (smoke tests, quick looks): APGD, cross-entropy, 20 steps, one start, the best
    # iterate. At most 21 passes.
    "fast": dict(steps=20, step_size=None, loss="ce", schedule="apgd", random_start=False, restarts=1,
                 keep="best", momentum=0.75),
}


def apgd_checkpoints(steps: int) -> list[int]:
    """Iterations (1-based counts of updates) after which APGD checks its step size (Croce & Hein
    2020): the first after ``max(int(0.22 steps), 1)`` updates, each following interval shorter by
    ``max(int(0.03 steps), 1)`` down to ``max(int(0.06 steps), 1)``; none at or after ``steps``."""
    out, at = [], 0
    length = max(int(0.22 * steps), 1)
    shrink, shortest = max(int(0.03 * steps), 1), max(int(0.06 * steps), 1)
    while at + length < steps:
        at += length
        out.append(at)
        length = max(length - shrink, shortest)
    return out


def _check_losses(loss) -> tuple:
    names = [loss] if isinstance(loss, str) else loss
    try:
        names = list(names)
    except TypeError:
        raise TypeError(f"loss must be one of {LOSSES} or a sequence of them, got {type(loss).__name__}") from None
    if not names:
        raise ValueError(f"loss must name at least one of {LOSSES}")
    for name in names:
        check_choice(name, LOSSES, "loss")
    return tuple(dict.fromkeys(names))


class _Best:
    """Per-example record over every iterate of every start (``keep='best'``): the first flow that
    fooled the model, else the flow with the highest criterion."""

    def __init__(self, shape, like: torch.Tensor):
        n = shape[0]
        self.flow = like.new_zeros(shape)
        self.criterion = like.new_full((n,), -math.inf)
        self.success = torch.zeros(n, dtype=torch.bool, device=like.device)

    def update(self, rows, flow, criterion, success):
        better = ~self.success[rows] & (success | (criterion > self.criterion[rows]))
        sel = rows[better]
        self.flow[sel] = flow[better]
        self.criterion[sel] = criterion[better]
        self.success[sel] = success[better]


class FlowPGD(FlowAttack):
    """Projected gradient ascent on a flow inside a budget; the defaults are an evaluation-grade
    attack, ``FlowPGD.preset('paper', model)`` the FGR authors' attack.

    The authors' attack (``schedule='constant'``, ``loss='ce'``, one start from zero flow,
    ``keep='last'``): ``steps`` iterations of
    ``flow <- clip(flow + step_size * sign(grad_flow CE(model(clamp(warp(x, flow, 'zeros'), 0, 1)), y)),
    -eps, eps)`` with ``step_size = eps / steps`` (normalized units: one unit = (size - 1) / 2 pixels
    per axis, 0.155 px on 32 x 32 images), the final iterate returned.

    The defaults (preset 'standard') instead follow APGD (Croce & Hein, ICML 2020): the first step
    is ``2 eps``; each later step mixes the new projected sign step with the previous move
    (``momentum`` 0.75 on the new step); at checkpoints (:func:`apgd_checkpoints`: after 8, 15,
    21, ... of 40 updates) an example's step halves and restarts from its best point when at most
    75 % of its updates since the last checkpoint raised its loss, or when its step was not halved
    last time and its best loss has not improved. 40 updates from each of 6 random starts, on the
    cross-entropy and on the C&W margin (12 runs), keeping per example the first iterate of any run
    that fools the model (a fooled example stops; later runs skip it), else the iterate with the
    highest margin. On a flow-adversarially-trained MNIST CNN this beat a 600-pass ensemble of the
    authors' attack (docs/attacks.md) with fewer model passes; it costs at most
    12 x 41 = 492 passes per image (the authors' attack: 101).

    Calling the attack returns the (N, C, H, W) adversarial images; ``run`` an
    :class:`~flowtriton.attacks.AttackResult` (flow in pixels). ``result.info``: 'loss' (N,) the
    criterion at the kept flow (ascent direction: CE for untargeted, -CE towards a target; logit
    units for the margin); 'evaluations' (N,) model forward passes (all but the last of each start
    with a backward). ``result.iterations``: updates made per example (fewer than
    ``steps x restarts x losses`` where ``keep='best'`` stopped an example early).

    Args:
        model: classifier, (N, C, H, W) images in [0, 1] -> (N, classes) logits.
        eps: budget, in ``units``. ``norm='linf'``: a box |flow component| <= eps (per component);
            ``norm='tnorm'``: each pixel's flow vector has Euclidean length <= eps (measured in
            ``units``; with 'normalized' units on non-square images that is an ellipse in pixels).
        steps: updates per start (>= 1, default 40); each start evaluates the model ``steps + 1``
            times.
        step_size: 'constant': every step (default eps / steps); 'apgd': the first step (default
            2 eps), halved at checkpoints. In ``units``; a value set here does not follow
            :meth:`with_budget`. For 'tnorm' the step moves each pixel ``step_size`` along its
            normalized gradient vector.
        units: unit of every distance argument: 'normalized' (default; 1 unit = (size - 1) / 2 px
            per axis) or 'pixels'.
        norm: 'linf' (default: a box per flow component) or 'tnorm' (a ball per pixel).
        loss: 'ce' (cross-entropy), 'margin' (C&W logit margin, unclamped) or a sequence of them
            (default ('ce', 'margin')): every start runs once per loss.
        schedule: 'apgd' (default) or 'constant' (the authors').
        random_start: the first start is random too (default True); False: it starts at 0.
        restarts: starts per loss (>= 1, default 6); all but a non-random first one start
            uniformly inside the budget.
        keep: 'best' (default): per example the first iterate (over every step of every start)
            that fools the model, else the one with the highest criterion; a fooled example stops
            and later starts skip it. 'last': each start's final iterate (the authors'; every start
            runs on every example), then per example a successful start first, else the highest
            criterion. The criterion is the attack loss when ``loss`` is one loss, the margin when
            it is several.
        momentum: APGD's weight of the new step (0.75), in (0, 1]; unused by 'constant'.
        targeted: ``labels`` are target classes; the losses are descended towards them.
        padding_mode: warp padding ('zeros' as the authors).
        generator: randomness of the random starts (a ``torch.Generator``).
        seed: an integer seed for the random starts, used when ``generator`` is None; with
            neither, torch's global generator (``torch.manual_seed`` makes runs repeatable).
        backend: flowtriton ops backend ('auto', 'triton', 'torch' or None).

    Example:
        >>> from flowtriton.attacks import FlowPGD
        >>> _ = torch.manual_seed(0)
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 3))
        >>> images, labels = torch.rand(2, 1, 8, 8), torch.tensor([0, 1])
        >>> attack = FlowPGD(model, eps=0.05, steps=5, restarts=1, seed=0)  # eps: normalized units
        >>> adv = attack(images, labels)
        >>> adv.shape, bool(adv.min() >= 0 and adv.max() <= 1)
        (torch.Size([2, 1, 8, 8]), True)
        >>> result = attack.run(images, labels)
        >>> result.flow.shape, bool((result.linf <= 0.05 * 3.5 + 1e-6).all())  # 0.05 normalized = 0.175 px
        (torch.Size([2, 2, 8, 8]), True)
        >>> FlowPGD.preset("paper", model, eps=0.01).schedule  # the FGR authors' attack
        'constant'
    """

    gradient_budgeted = True
    PRESETS = PRESETS

    def __init__(self, model, eps: float = 0.01, steps: int = 40, step_size: float | None = None,
                 units: str = "normalized", norm: str = "linf", loss=("ce", "margin"), schedule: str = "apgd",
                 random_start: bool = True, restarts: int = 6, keep: str = "best", momentum: float = 0.75,
                 targeted: bool = False, padding_mode: str = "zeros", generator: torch.Generator | None = None,
                 seed: int | None = None, backend: str | None = None):
        super().__init__(model, targeted=targeted, backend=backend)
        self.eps = check_number(eps, "eps")
        self.steps = check_int(steps, "steps")
        self.step_size = None if step_size is None else check_number(step_size, "step_size")
        self.units = check_units(units, "FlowPGD")
        self.norm = check_choice(norm, NORMS, "norm")
        losses = _check_losses(loss)
        self.loss = losses[0] if len(losses) == 1 else losses
        self.schedule = check_choice(schedule, SCHEDULES, "schedule")
        if not isinstance(random_start, bool):
            raise TypeError(f"random_start must be a bool, got {type(random_start).__name__}")
        self.random_start = random_start
        self.restarts = check_int(restarts, "restarts")
        self.keep = check_choice(keep, KEEPS, "keep")
        self.momentum = check_number(momentum, "momentum", strict=True)
        if self.momentum > 1:
            raise ValueError(f"momentum must lie in (0, 1], got {self.momentum}")
        self.padding_mode = check_choice(padding_mode, PADDING_MODES, "padding_mode")
        self.generator = check_generator(generator, seed)
        self.seed = check_seed(seed)

    @classmethod
    def preset(cls, name: str, model, **overrides) -> "FlowPGD":
        """``FlowPGD(model, **PRESETS[name], **overrides)``: 'standard' (the defaults), 'paper' (the
        authors' attack, the defaults before issue 20, bit for bit) or 'fast' (20 APGD steps on the
        cross-entropy, one start). ``overrides`` (eps, units, steps, ...) replace preset values."""
        return super().preset(name, model, **overrides)

    @property
    def losses(self) -> tuple:
        """The losses run, in order."""
        return (self.loss,) if isinstance(self.loss, str) else tuple(self.loss)

    @property
    def effective_step_size(self) -> float:
        """Step per iteration ('constant') or first step ('apgd'), in ``units``."""
        if self.step_size is not None:
            return self.step_size
        return self.eps / self.steps if self.schedule == "constant" else 2.0 * self.eps

    @property
    def runs(self) -> int:
        """Starts per example at most: ``restarts x len(losses)``."""
        return self.restarts * len(self.losses)

    @property
    def budget_kind(self) -> str:
        """``norm``: 'linf' (the default: a box per flow component) or 'tnorm' (a ball per pixel)."""
        return self.norm

    def with_budget(self, budget: float) -> "FlowPGD":
        """A copy with ``eps = budget`` (same units; the step size follows eps unless set)."""
        return self._copy_with(eps=check_number(budget, "budget"))

    # -- the attack -----------------------------------------------------------------------------
    def _objective(self, logits: torch.Tensor, labels: torch.Tensor, loss: str) -> torch.Tensor:
        """(N,) per-example loss to ascend."""
        if loss == "ce":
            ce = F.cross_entropy(logits, labels, reduction="none")
            return -ce if self.targeted else ce
        return margin_loss(logits, labels, self.targeted)

    def _criterion(self, objective, logits, labels):
        """(N,) what ranks flows that did not fool the model: the loss itself, or with several
        losses the margin (the one scale they share)."""
        if isinstance(self.loss, str):
            return objective
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

    def _one_start(self, images, labels, start, scale, loss, best=None, rows=None):
        """``steps`` updates from ``start`` (in units) on ``loss``. ``best`` (keep='best'): the
        record of examples ``rows`` of the whole batch, updated at every iterate; an example stops
        once fooled. -> (flow in units, criterion (N,), success (N,), updates (N,), passes (N,)),
        all at the final iterate."""
        n = images.shape[0]
        device = images.device
        apgd = self.schedule == "apgd"
        flow = start.detach()
        updates = torch.zeros(n, dtype=torch.int64, device=device)
        passes = torch.zeros(n, dtype=torch.int64, device=device)
        active = torch.ones(n, dtype=torch.bool, device=device)
        criterion = images.new_full((n,), -math.inf)
        success = torch.zeros(n, dtype=torch.bool, device=device)
        step = self.effective_step_size
        if apgd:
            eta = images.new_full((n,), step)
            previous = flow.clone()
            flow_max, grad_max = flow.clone(), torch.zeros_like(flow)
            loss_max = images.new_full((n,), -math.inf)
            loss_prev = images.new_full((n,), -math.inf)
            loss_max_checked = images.new_full((n,), -math.inf)
            increases = torch.zeros(n, dtype=torch.int64, device=device)
            halved_last = torch.ones(n, dtype=torch.bool, device=device)
            checkpoints = set(apgd_checkpoints(self.steps))
            last_check = 0
        everyone = torch.arange(n, device=device)
        for k in range(self.steps + 1):
            idx = everyone if best is None else active.nonzero().squeeze(1)
            if idx.numel() == 0:
                break
            final = k == self.steps
            f = flow[idx].detach().requires_grad_(not final)
            x, y = images[idx], labels[idx]
            if final:
                with torch.no_grad():
                    logits = self._logits(self._adversarial(x, f, scale))
                    objective = self._objective(logits, y, loss)
            else:
                with torch.enable_grad():
                    logits = self._logits(self._adversarial(x, f, scale))
                    objective = self._objective(logits, y, loss)
                    grad = input_gradient(objective.sum(), f)
            with torch.no_grad():
                passes[idx] += 1
                f = f.detach()
                objective = objective.detach()
                crit = self._criterion(objective, logits.detach(), y)
                fooled = attack_goal_met(logits.argmax(dim=1), y, self.targeted)
                criterion[idx], success[idx] = crit, fooled
                if final:
                    if best is not None:
                        best.update(rows[idx], f, crit, fooled)
                    break
                if best is not None:
                    best.update(rows[idx], f, crit, fooled)
                    if bool(fooled.any()):  # fooled examples stop here: no update for them
                        active[idx[fooled]] = False
                        keep = ~fooled
                        idx, f, grad, objective = idx[keep], f[keep], grad[keep], objective[keep]
                        if idx.numel() == 0:
                            break
                if not apgd:
                    flow[idx] = self._project(f + step * self._ascent_direction(grad))
                    updates[idx] += 1
                    continue
                # APGD: track each example's best point, check the step size at checkpoints.
                if k > 0:
                    increases[idx] += (objective > loss_prev[idx]).long()
                loss_prev[idx] = objective
                higher = objective > loss_max[idx]
                loss_max[idx] = torch.where(higher, objective, loss_max[idx])
                flow_max[idx[higher]] = f[higher]
                grad_max[idx[higher]] = grad[higher]
                if k == 0:
                    loss_max_checked[idx] = objective
                point, direction = f, grad
                if k in checkpoints:
                    oscillating = increases[idx] <= 0.75 * (k - last_check)
                    stalled = ~halved_last[idx] & (loss_max_checked[idx] >= loss_max[idx])
                    halve = oscillating | stalled
                    halved_last[idx] = halve
                    loss_max_checked[idx] = loss_max[idx]
                    increases[idx] = 0
                    eta[idx] = torch.where(halve, eta[idx] * 0.5, eta[idx])
                    back = halve[:, None, None, None]
                    point = torch.where(back, flow_max[idx], f)
                    direction = torch.where(back, grad_max[idx], grad)
                    last_check = k
                a = 1.0 if k == 0 else self.momentum
                z = self._project(point + eta[idx, None, None, None] * self._ascent_direction(direction))
                moved = self._project(point + a * (z - point) + (1 - a) * (point - previous[idx]))
                previous[idx] = point
                flow[idx] = moved
                updates[idx] += 1
        return flow, criterion, success, updates, passes

    def _attack(self, images, labels):
        n, _, height, width = images.shape
        scale = unit_scale(height, width, self.units, images)
        shape = (n, 2, height, width)
        generator = resolve_generator(self.generator, self.seed, images.device)
        updates = torch.zeros(n, dtype=torch.int64, device=images.device)
        passes = torch.zeros_like(updates)
        best = _Best(shape, images) if self.keep == "best" else None
        best_flow = best_loss = best_success = None
        for restart in range(self.restarts):
            for loss in self.losses:
                if restart == 0 and not self.random_start:
                    start = images.new_zeros(shape)
                else:
                    start = self._random_start(shape, images, generator)
                start = self._project(start)
                if best is not None:
                    rows = (~best.success).nonzero().squeeze(1)
                    if rows.numel() == 0:
                        continue
                    _, _, _, done, used = self._one_start(images[rows], labels[rows], start[rows], scale, loss,
                                                          best, rows)
                    updates[rows] += done
                    passes[rows] += used
                    continue
                flow, crit, success, done, used = self._one_start(images, labels, start, scale, loss)
                updates += done
                passes += used
                if best_flow is None:
                    best_flow, best_loss, best_success = flow, crit, success
                    continue
                better = (success & ~best_success) | ((success == best_success) & (crit > best_loss))
                best_flow = torch.where(better[:, None, None, None], flow, best_flow)
                best_loss = torch.where(better, crit, best_loss)
                best_success = best_success | success
        if best is not None:
            best_flow, best_loss = best.flow, best.criterion
        with torch.no_grad():
            adv = self._adversarial(images, best_flow, scale)
        return best_flow * scale, adv, updates, {"loss": best_loss, "evaluations": passes}
