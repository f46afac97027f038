"""stAdv (Xiao et al., ICLR 2018): spatially transformed adversarial examples, batched on the device
(definition and defaults: docs/attacks.md).

Each example is its own problem: the per-example losses only share a sum, whose gradient decouples,
and Adam's moments are per coordinate, so no example's step depends on another's. Early stopping,
best-so-far tracking and the binary search over tau are all per example.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..ops.warp import warp
from ..ops.validation import check_choice
from .base import (PADDING_MODES, FlowAttack, attack_goal_met, check_int, check_number, check_units, flow_norms,
                   margin_loss, renamed_arguments, renamed_attribute)

#: Why StAdv's distances are pixels only.
PIXELS_ONLY = ("its loss L_flow, its step size lr and its T-norm cap max_norm are pixel distances (normalized "
               "units would change the published loss, and make the cap an ellipse on non-square images). "
               "Convert a normalized distance d to pixels with d * (size - 1) / 2 (flowtriton.ops.units.pixel_scale)")


#: Which successful flow StAdv keeps per example: the smallest T-norm or the smallest L_flow.
KEEP = ("tnorm", "smooth")


def flow_smoothness(flow: torch.Tensor) -> torch.Tensor:
    """stAdv's smoothness loss L_flow of a flow, per example.

    ``sum_p sum_{q in N(p)} sqrt(||du_p - du_q||^2 + ||dv_p - dv_q||^2 + 1e-8)`` over the 4
    neighbours of each pixel; a neighbour outside the image repeats the edge pixel (TensorFlow's
    SYMMETRIC padding by one, as the authors' package), so it adds sqrt(1e-8) = 1e-4.

    Args:
        flow: (N, 2, H, W) flow in pixels.

    Returns:
        (N,) L_flow, pixels; differentiable in ``flow``.

    Example:
        >>> from flowtriton.attacks import flow_smoothness
        >>> flow_smoothness(torch.zeros(2, 2, 8, 8)).round(decimals=4)  # 4 x 64 x 1e-4
        tensor([0.0256, 0.0256])
        >>> shift = torch.ones(1, 2, 8, 8)  # a rigid shift costs no more than zero flow
        >>> torch.allclose(flow_smoothness(shift), flow_smoothness(torch.zeros(1, 2, 8, 8)))
        True
    """
    height, width = flow.shape[-2:]
    padded = F.pad(flow, (1, 1, 1, 1), mode="replicate")
    total = flow.new_zeros(flow.shape[0])
    for dy, dx in ((0, 1), (2, 1), (1, 0), (1, 2)):
        neighbour = padded[:, :, dy:dy + height, dx:dx + width]
        total = total + ((flow - neighbour).square().sum(dim=1) + 1e-8).sqrt().flatten(1).sum(dim=1)
    return total


class _Record:
    """Per-example bookkeeping of one optimizer run: the best successful flow overall (smallest
    L_flow, shared across search steps; with a finite ``max_norm``, among the successful flows of
    T-norm <= max_norm only), this run's smallest-loss flow and success, and, with ``smallest``
    (``keep='tnorm'``), the successful flow of smallest T-norm (same rule, also shared)."""

    def __init__(self, best_flow, best_smooth, best_tau, found, max_norm=math.inf, smallest=None):
        self.best_flow, self.best_smooth, self.best_tau, self.found = best_flow, best_smooth, best_tau, found
        self.max_norm = max_norm
        # None, or (flow, T-norm, tau) of each example's smallest-T-norm successful flow so far
        self.smallest = smallest
        n = found.shape[0]
        self.run_found = torch.zeros_like(found)
        self.low_loss = torch.full((n,), math.inf, dtype=best_smooth.dtype, device=found.device)
        self.low_flow = torch.zeros_like(best_flow)
        self.evaluations = torch.zeros(n, dtype=torch.int64, device=found.device)

    def update(self, idx, flow, total, smooth, success, tau):
        tnorm = None if math.isinf(self.max_norm) and self.smallest is None else flow_norms(flow)[0]
        within = success if math.isinf(self.max_norm) else success & (tnorm <= self.max_norm)
        improved = within & (smooth < self.best_smooth[idx])
        sel = idx[improved]
        self.best_flow[sel] = flow[improved]
        self.best_smooth[sel] = smooth[improved]
        self.best_tau[sel] = tau[improved]
        self.found[sel] = True
        if self.smallest is not None:
            small_flow, small_tnorm, small_tau = self.smallest
            smaller = within & (tnorm < small_tnorm[idx])
            sel = idx[smaller]
            small_flow[sel] = flow[smaller]
            small_tnorm[sel] = tnorm[smaller]
            small_tau[sel] = tau[smaller]
        self.run_found[idx[success]] = True
        lower = total < self.low_loss[idx]
        self.low_loss[idx[lower]] = total[lower]
        self.low_flow[idx[lower]] = flow[lower]
        self.evaluations[idx] += 1


#: Named settings (the constructor's defaults are 'standard'); ``StAdv.preset(name, model, **overrides)``.
PRESETS = {
    # The published loss and weight at full strength (the defaults): 5 tau search steps of up to
    # 100 Adam steps, each from zero flow, keeping per example the successful flow of smallest
    # T-norm (since evaluation preset 'standard' version 2; before: warm starts, smallest L_flow,
    # i.e. keep='smooth', warm_start=True). At most 5 x (100 + 1) model passes per image.
    "standard": dict(tau=0.05, kappa=0.0, optimizer="adam", steps=100, search_steps=5, warm_start=False,
                     abort_early=True, lr=0.05, keep="tnorm"),
    # The defaults before issue 20, bit for bit: 2 search steps of up to 20 Adam steps, each from
    # zero flow. At most 2 x 21 passes; enough on undefended models, far too little on robust ones.
    "fast": dict(tau=0.05, kappa=0.0, optimizer="adam", steps=20, search_steps=2, warm_start=False,
                 abort_early=True, lr=0.05, keep="smooth"),
}


class StAdv(FlowAttack):
    """Minimize ``L_adv + tau * L_flow`` per example on the flow (pixels), batched on the device.

    ``L_adv``: C&W margin ``max(Z_y - max_{i!=y} Z_i, -kappa)`` (untargeted, y the true label) or
    ``max(max_{i!=t} Z_i - Z_t, -kappa)`` (targeted), logit units. ``L_flow``:
    :func:`flow_smoothness`. The image is ``warp(x, flow, padding_mode)`` (border: the authors'
    sampler clamps coordinates to the image).

    The defaults (preset 'standard') are the published loss and weight (tau 0.05, kappa 0) at full
    strength: a five-step search over tau per example, each step up to 100 Adam steps of 0.05 px
    from zero flow, keeping the successful flow of smallest T-norm (``keep='tnorm'``, the strong
    minimum-norm attack at every T-norm budget). The published loss leaves zero flow
    a stationary point whenever the margin's flow gradient is small against ``tau`` times the
    smoothness term's kink, so a fixed tau fails on confident, smoothed or robust models; the
    search retries those examples at tau / 10, 1/100, ... On a flow-adversarially-trained MNIST CNN
    the old full-strength settings (warm starts, smallest L_flow) fooled 197 of 198 correctly
    classified test images, advertorch's SpatialTransformAttack
    195 (tau 0.05) or 136 (its defaults), and the old defaults (``StAdv.preset('fast')``: two
    search steps of 20 Adam steps from zero flow) 51; doubling the iterations fooled no more
    (docs/attacks.md). Cost: at most 5 x 101 model passes per image. Adam is the default
    optimizer: on the benchmark's MNIST CNN it fooled every image with about a quarter of the
    model evaluations of L-BFGS (the paper's optimizer, ``optimizer='lbfgs'``).

    Kept per example (``keep``): 'tnorm' (default) the successful flow with the smallest T-norm
    (:attr:`AttackResult.tnorm`) among every flow evaluated in every search step; 'smooth' (the
    published criterion, presets 'fast') the one with the smallest L_flow (for a fixed tau and
    kappa = 0 the smallest-loss successful flow). Both see the same flows (the search and warm
    starts follow the smoothest successful flows), so they succeed on the same examples and
    'tnorm' keeps a T-norm no larger than 'smooth'. An example never fooled gets its
    smallest-loss flow of the last search step. Calling the attack returns the
    (N, C, H, W) adversarial images; ``run`` an :class:`~flowtriton.attacks.AttackResult` (flow in
    pixels). ``result.iterations``: optimizer iterations. ``result.info``: 'tau' (N,) the weight
    at which the kept flow was found; 'flow_loss' (N,) its L_flow (pixels); 'evaluations' (N,)
    loss and gradient evaluations (model forward + backward passes).

    Args:
        model: classifier, (N, C, H, W) images in [0, 1] -> (N, classes) logits.
        tau: smoothness weight at the first search step (paper 0.05), logits per pixel.
        kappa: confidence, logits (>= 0).
        optimizer: 'adam' (default; step size ``lr`` in pixels, ``betas``; an example's step size
            halves whenever a step raised its loss, so its objective cannot keep rising) or
            'lbfgs' (the paper's: a batched L-BFGS with ``history`` pairs and a backtracking
            Armijo line search of at most ``max_line_search`` halvings, all per example; it never
            raises its objective).
        steps: optimizer iterations (Adam or L-BFGS steps) per search step (``max_iter``, its old
            name, is deprecated).
        search_steps: search over tau per example (1 = none; default 5), an outer loop around
            ``steps``: after a failure tau / 10 until a success bounds it, after a success tau * 10
            until a failure bounds it, then the geometric mean of the bounds.
        warm_start: each search step starts from the previous one's flow (the smoothest successful
            flow where it succeeded, else its lowest-loss flow); False (default): from zero flow.
            Warm starts gave smaller smoothest flows on robust models, but continuing a failure's
            flow at a lower tau reaches larger T-norms than a fresh start (docs/attacks.md).
        abort_early: every ``max(1, steps // 10)`` iterations, an example that has a successful
            flow and whose loss fell by less than 0.1 % since the previous check stops. L-BFGS
            also stops an example whose line search finds no decrease (a stationary point: the
            next search step lowers its tau).
        history: L-BFGS curvature pairs kept per example.
        max_line_search: L-BFGS line-search halvings at most.
        lr: Adam step size, pixels.
        betas: Adam's moment decay rates, each in [0, 1).
        padding_mode: warp padding ('border' by default: the authors' sampler clamps coordinates).
        targeted: ``labels`` are target classes.
        backend: flowtriton ops backend ('auto', 'triton', 'torch' or None).
        max_norm: T-norm cap in pixels (inf = none, the default; the attack's budget, see
            :meth:`with_budget`): only successful flows of T-norm <= max_norm are kept, and an
            example with none gets its fallback flow scaled into that T-norm ball.
        units: 'pixels' (the only value: ``lr``, ``max_norm`` and L_flow are pixel distances;
            'normalized' is a ValueError).
        keep: which successful flow is kept per example: 'tnorm' (default; smallest T-norm) or
            'smooth' (smallest L_flow, the published criterion and the behaviour before it).

    Example:
        >>> from flowtriton.attacks import StAdv
        >>> _ = torch.manual_seed(0)
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 3))
        >>> images, labels = torch.rand(2, 1, 8, 8), torch.tensor([0, 1])
        >>> attack = StAdv(model, steps=5, search_steps=2)
        >>> result = attack.run(images, labels)
        >>> result.flow.shape, sorted(result.info)
        (torch.Size([2, 2, 8, 8]), ['evaluations', 'flow_loss', 'tau'])
        >>> capped = attack.with_budget(0.5).run(images, labels)  # T-norm cap, pixels
        >>> bool((capped.tnorm <= 0.5 + 1e-6).all())
        True
    """

    minimum_norm = True
    PRESETS = PRESETS
    max_iter = renamed_attribute("max_iter", "steps")

    @renamed_arguments(max_iter="steps")
    def __init__(self, model, tau: float = 0.05, kappa: float = 0.0, optimizer: str = "adam",
                 steps: int = 100, search_steps: int = 5, warm_start: bool = False, abort_early: bool = True,
                 history: int = 10, max_line_search: int = 10, lr: float = 0.05,
                 betas: tuple[float, float] = (0.9, 0.999), padding_mode: str = "border",
                 targeted: bool = False, backend: str | None = None, max_norm: float = math.inf,
                 units: str = "pixels", keep: str = "tnorm"):
        super().__init__(model, targeted=targeted, backend=backend)
        self.tau = check_number(tau, "tau")
        self.kappa = check_number(kappa, "kappa")
        self.optimizer = check_choice(optimizer, ("lbfgs", "adam"), "optimizer")
        self.steps = check_int(steps, "steps")
        self.search_steps = check_int(search_steps, "search_steps")
        if not isinstance(warm_start, bool):
            raise TypeError(f"warm_start must be a bool, got {type(warm_start).__name__}")
        self.warm_start = warm_start
        if not isinstance(abort_early, bool):
            raise TypeError(f"abort_early must be a bool, got {type(abort_early).__name__}")
        self.abort_early = abort_early
        self.history = check_int(history, "history")
        self.max_line_search = check_int(max_line_search, "max_line_search")
        self.lr = check_number(lr, "lr", strict=True)
        if len(betas) != 2:
            raise ValueError(f"betas must be a pair, got {betas!r}")
        self.betas = tuple(check_number(b, "betas") for b in betas)
        if not all(b < 1 for b in self.betas):
            raise ValueError(f"betas must lie in [0, 1), got {betas!r}")
        self.padding_mode = check_choice(padding_mode, PADDING_MODES, "padding_mode")
        self.max_norm = check_number(max_norm, "max_norm", strict=True, allow_inf=True)
        self.units = check_units(units, "StAdv", ("pixels",), PIXELS_ONLY)
        self.keep = check_choice(keep, KEEP, "keep")

    @property
    def budget_kind(self) -> str:
        """'tnorm': a budget is a T-norm in pixels (:func:`flowtriton.attacks.evaluate` runs StAdv
        once and judges every budget on the T-norm of the flow it kept)."""
        return "tnorm"

    def with_budget(self, budget: float) -> "StAdv":
        """A copy with ``max_norm = budget`` (a T-norm cap, pixels): its flows stay within it."""
        return self._copy_with(max_norm=check_number(budget, "budget", strict=True, allow_inf=True))

    def losses(self, images, flow, labels, tau):
        """Per-example (total, adversarial, flow) losses, each (N,), and the logits; ``tau`` a
        float or (N,)."""
        logits = self._logits(warp(images, flow, self.padding_mode, backend=self.backend))
        adv = (-margin_loss(logits, labels, self.targeted)).clamp_min(-self.kappa)
        smooth = flow_smoothness(flow)
        return adv + tau * smooth, adv, smooth, logits

    def _evaluate(self, images, labels, tau, idx, flow, record):
        """Loss and gradient at ``flow`` for examples ``idx``; records every evaluated flow."""
        f = flow.detach().requires_grad_(True)
        with torch.enable_grad():
            total, _, smooth, logits = self.losses(images[idx], f, labels[idx], tau[idx])
            (grad,) = torch.autograd.grad(total.sum(), f)
        with torch.no_grad():
            success = attack_goal_met(logits.argmax(dim=1), labels[idx], self.targeted)
            record.update(idx, f.detach(), total.detach(), smooth.detach(), success, tau[idx])
        return total.detach(), grad

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
        evaluations = torch.zeros(n, dtype=torch.int64, device=device)
        optimize = self._lbfgs if self.optimizer == "lbfgs" else self._adam
        capped = None if math.isinf(self.max_norm) else self.max_norm
        start = images.new_zeros(shape)
        smallest = None
        if self.keep == "tnorm":  # kept apart: the search and its warm starts follow the smoothest flows
            smallest = (images.new_zeros(shape), torch.full_like(tau, math.inf), tau.clone())
        for _ in range(self.search_steps):
            record = _Record(best_flow, best_smooth, best_tau, found, self.max_norm, smallest)
            iterations += optimize(images, labels, tau, record, start)
            evaluations += record.evaluations
            if self.warm_start:
                # The next search step continues from this one: from the smoothest successful flow
                # where it succeeded (tau goes up), else from its lowest-loss flow (tau goes down).
                succeeded = record.run_found if capped is None else record.run_found & found
                start = torch.where(succeeded[:, None, None, None], best_flow, record.low_flow)
            last_tau = tau
            lower = torch.where(record.run_found, tau, lower)
            upper = torch.where(record.run_found, upper, tau)
            tau = torch.where(torch.isinf(upper), tau * 10,
                              torch.where(lower == 0, tau / 10, (lower * upper).sqrt()))
        if smallest is not None:  # the smallest-T-norm successful flows instead of the smoothest
            best_flow, best_tau = smallest[0], smallest[2]
        flow = torch.where(found[:, None, None, None], best_flow, record.low_flow)
        if capped is not None:  # the fallback flows, scaled into the T-norm ball
            flow = flow * (capped / flow_norms(flow)[0].clamp_min(1e-30)).clamp(max=1.0)[:, None, None, None]
        tau_used = torch.where(found, best_tau, last_tau)
        with torch.no_grad():
            adv = warp(images, flow, self.padding_mode, backend=self.backend)
        return flow, adv, iterations, {"tau": tau_used, "flow_loss": flow_smoothness(flow),
                                       "evaluations": evaluations}

    def _stop_stalled(self, step, idx, total, checkpoint, record, active):
        """Success-aware early stop at the check points (every steps // 10 iterations)."""
        if self.abort_early and (step + 1) % max(1, self.steps // 10) == 0:
            previous = checkpoint[idx]
            stalled = total > previous - 1e-3 * previous.abs()
            active[idx[stalled & record.run_found[idx]]] = False
            checkpoint[idx] = total

    def _adam(self, images, labels, tau, record, start):
        """Adam from ``start`` (pixels); -> iterations per example (N,)."""
        n = images.shape[0]
        beta1, beta2 = self.betas
        flow = start.clone()
        m = torch.zeros_like(flow)
        v = torch.zeros_like(flow)
        checkpoint = torch.full_like(tau, math.inf)
        steps = torch.zeros(n, dtype=torch.int64, device=images.device)
        active = torch.ones(n, dtype=torch.bool, device=images.device)
        lr = torch.full_like(tau, self.lr)
        previous = torch.full_like(tau, math.inf)
        for step in range(self.steps):
            idx = active.nonzero().squeeze(1)
            if idx.numel() == 0:
                break
            total, grad = self._evaluate(images, labels, tau, idx, flow[idx], record)
            with torch.no_grad():
                # A step that raised the loss was too long for this example: halve its step size.
                rose = total > previous[idx]
                lr[idx] = torch.where(rose, lr[idx] * 0.5, lr[idx])
                previous[idx] = total
                m[idx] = beta1 * m[idx] + (1 - beta1) * grad
                v[idx] = beta2 * v[idx] + (1 - beta2) * grad.square()
                m_hat = m[idx] / (1 - beta1 ** (step + 1))
                v_hat = v[idx] / (1 - beta2 ** (step + 1))
                flow[idx] = flow[idx] - lr[idx, None, None, None] * m_hat / (v_hat.sqrt() + 1e-8)
                steps[idx] += 1
                self._stop_stalled(step, idx, total, checkpoint, record, active)
        idx = active.nonzero().squeeze(1)
        if idx.numel():
            self._evaluate(images, labels, tau, idx, flow[idx], record)  # the last step's flow
        return steps

    def _lbfgs(self, images, labels, tau, record, start, c1: float = 1e-4):
        """Batched L-BFGS from ``start`` (pixels), everything per example; -> iterations per example (N,)."""
        n = images.shape[0]
        device = images.device
        shape = record.best_flow.shape
        dim = shape[1] * shape[2] * shape[3]
        flow = start.reshape(n, dim).clone()
        all_idx = torch.arange(n, device=device)
        value, grad = self._evaluate(images, labels, tau, all_idx, flow.view(shape), record)
        grad = grad.flatten(1)
        s_hist = flow.new_zeros(self.history, n, dim)
        y_hist = flow.new_zeros(self.history, n, dim)
        rho = flow.new_zeros(self.history, n)  # 0 marks an unused or rejected pair: it does nothing
        gamma = flow.new_zeros(n)  # initial inverse-Hessian scale; 0 until a pair was accepted
        checkpoint = torch.full_like(tau, math.inf)
        steps = torch.zeros(n, dtype=torch.int64, device=device)
        active = torch.ones(n, dtype=torch.bool, device=device)
        head = 0
        for step in range(self.steps):
            idx = active.nonzero().squeeze(1)
            if idx.numel() == 0:
                break
            with torch.no_grad():
                g = grad[idx]
                direction = -self._two_loop(g, s_hist[:, idx], y_hist[:, idx], rho[:, idx], gamma[idx], head)
                slope = (direction * g).sum(dim=1)
                not_descent = ~(slope < 0)
                direction[not_descent] = -g[not_descent]
                slope = (direction * g).sum(dim=1)
                # Without curvature yet, the first trial moves the largest component 0.1 px.
                fresh = gamma[idx] == 0
                first = 0.1 / direction.abs().amax(dim=1).clamp_min(1e-30)
                step_size = torch.where(fresh, first, torch.ones_like(first))
            new_flow, new_value, new_grad, accepted = self._line_search(
                images, labels, tau, idx, flow[idx], value[idx], direction, slope, step_size, record, c1)
            with torch.no_grad():
                ok = idx[accepted]
                s = new_flow[accepted] - flow[ok]
                y = new_grad[accepted] - grad[ok]
                sy = (s * y).sum(dim=1)
                curved = sy > 1e-10
                s_hist[head, ok] = torch.where(curved[:, None], s, torch.zeros_like(s))
                y_hist[head, ok] = torch.where(curved[:, None], y, torch.zeros_like(y))
                rho[head, ok] = torch.where(curved, 1.0 / sy.clamp_min(1e-30), torch.zeros_like(sy))
                gamma[ok] = torch.where(curved, sy / y.square().sum(dim=1).clamp_min(1e-30), gamma[ok])
                rejected = idx[~accepted]
                s_hist[head, rejected] = 0
                y_hist[head, rejected] = 0
                rho[head, rejected] = 0
                head = (head + 1) % self.history
                flow[ok], value[ok], grad[ok] = new_flow[accepted], new_value[accepted], new_grad[accepted]
                steps[ok] += 1
                active[rejected] = False  # no decrease along a descent direction: converged
                self._stop_stalled(step, idx, value[idx], checkpoint, record, active)
        return steps

    @staticmethod
    def _two_loop(g, s_hist, y_hist, rho, gamma, head):
        """Apply each example's L-BFGS inverse-Hessian estimate to its gradient (S, D)."""
        m = s_hist.shape[0]
        order = [(head - 1 - j) % m for j in range(m)]  # newest first
        q = g.clone()
        alphas = []
        for i in order:
            a = rho[i] * (s_hist[i] * q).sum(dim=1)
            q = q - a[:, None] * y_hist[i]
            alphas.append(a)
        r = q * torch.where(gamma > 0, gamma, torch.ones_like(gamma))[:, None]
        for i, a in zip(reversed(order), reversed(alphas)):
            b = rho[i] * (y_hist[i] * r).sum(dim=1)
            r = r + (a - b)[:, None] * s_hist[i]
        return r

    def _line_search(self, images, labels, tau, idx, flow, value, direction, slope, step_size, record, c1):
        """Backtracking Armijo search per example; -> (flow, value, grad, accepted) for ``idx``."""
        shape = (-1,) + tuple(record.best_flow.shape[1:])
        new_flow, new_value, new_grad = flow.clone(), value.clone(), torch.zeros_like(flow)
        pending = torch.ones(idx.numel(), dtype=torch.bool, device=idx.device)
        for _ in range(self.max_line_search):
            sub = pending.nonzero().squeeze(1)
            if sub.numel() == 0:
                break
            trial = flow[sub] + step_size[sub, None] * direction[sub]
            trial_value, trial_grad = self._evaluate(images, labels, tau, idx[sub], trial.view(shape), record)
            with torch.no_grad():
                good = trial_value <= value[sub] + c1 * step_size[sub] * slope[sub]
                take = sub[good]
                new_flow[take] = trial[good]
                new_value[take] = trial_value[good]
                new_grad[take] = trial_grad.flatten(1)[good]
                pending[take] = False
                step_size[sub[~good]] *= 0.5
        return new_flow, new_value, new_grad, ~pending
