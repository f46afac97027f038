"""RandomFlow: random flows at the corners of an L-infinity box, no gradient. Weak by design: it is
the gradient-masking canary of :func:`flowtriton.attacks.evaluate` (a model it fools more often
than FlowPGD at the same budget hides its gradients)."""

from __future__ import annotations


import torch
import torch.nn.functional as F

from ..ops.units import unit_scale
from ..ops.validation import check_choice
from ..ops.warp import warp
from .base import (PADDING_MODES, FlowAttack, check_generator, check_int, check_number, check_seed, check_units,
                   resolve_generator, uniform)


class RandomFlow(FlowAttack):
    """Try ``samples`` random flows with every component at +-eps (L-infinity box, in ``units``)
    and keep, per example, the first that fools the model, else the one with the highest
    cross-entropy. No gradient is used, so masked or shattered gradients cannot stop it.

    Sample ``s`` draws random signs on a coarse ``r x r`` grid per flow channel, ``r`` cycling
    through ``resolutions`` (1 = a rigid shift to a corner of the box, larger = more local
    deformations), upsamples them bilinearly (align_corners=True) to the image and clips to the
    box: every flow lies inside it, most of its components on its faces. The same flows are tried
    on every image of a batch.

    Calling the attack returns the (N, C, H, W) adversarial images; ``run`` an
    :class:`~flowtriton.attacks.AttackResult` (flow in pixels). ``result.iterations``: flows tried
    per image. ``result.info``: 'evaluations' (N,) model forward passes per image (no backward).

    Args:
        model: classifier, (N, C, H, W) images in [0, 1] -> (N, classes) logits.
        eps: L-infinity budget per flow component, in ``units``.
        samples: flows tried per image (>= 1).
        units: 'normalized' (default, as FlowPGD; 1 unit = (size - 1) / 2 px per axis) or 'pixels'.
        resolutions: coarse grid sizes cycled through (ints >= 1).
        padding_mode: warp padding ('zeros', as FlowPGD); images are clamped to [0, 1] as FlowPGD's.
        max_batch: most warped images per model call.
        targeted: ``labels`` are target classes (fallback: the flow with the lowest cross-entropy
            towards the target).
        generator: the draws (a ``torch.Generator``).
        seed: an integer seed for the draws, used when ``generator`` is None; with neither,
            torch's global generator.
        backend: flowtriton ops backend ('auto', 'triton', 'torch' or None).

    Example:
        >>> from flowtriton.attacks import RandomFlow
        >>> _ = torch.manual_seed(0)
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 3))
        >>> images, labels = torch.rand(2, 1, 8, 8), torch.tensor([0, 1])
        >>> attack = RandomFlow(model, eps=0.05, samples=8, seed=0)
        >>> attack.flows(8, 8, images).shape  # the flows tried, in units
        torch.Size([8, 2, 8, 8])
        >>> result = attack.run(images, labels)
        >>> result.iterations.tolist(), round(float(result.linf.max()), 3)  # 0.05 normalized = 0.175 px
        ([8, 8], 0.175)
    """

    PRESETS = {
        "standard": dict(samples=64, resolutions=(1, 2, 4, 8)),
        "fast": dict(samples=16, resolutions=(1, 2, 4, 8)),
    }

    def __init__(self, model, eps: float = 0.01, samples: int = 64, units: str = "normalized",
                 resolutions=(1, 2, 4, 8), padding_mode: str = "zeros", max_batch: int = 1024,
                 targeted: bool = False, generator: torch.Generator | None = None, seed: int | None = None,
                 backend: str | None = None):
        super().__init__(model, targeted=targeted, backend=backend)
        self.eps = check_number(eps, "eps")
        self.samples = check_int(samples, "samples")
        self.units = check_units(units, "RandomFlow")
        self.norm = "linf"
        try:
            self.resolutions = tuple(check_int(r, "resolutions") for r in resolutions)
        except TypeError as error:
            raise TypeError(f"resolutions must be a sequence of ints >= 1: {error}") from None
        if not self.resolutions:
            raise ValueError("resolutions must not be empty")
        self.padding_mode = check_choice(padding_mode, PADDING_MODES, "padding_mode")
        self.max_batch = check_int(max_batch, "max_batch")
        self.generator = check_generator(generator, seed)
        self.seed = check_seed(seed)

    @property
    def budget_kind(self) -> str:
        """'linf': ``eps`` bounds every flow component."""
        return "linf"

    def with_budget(self, budget: float) -> "RandomFlow":
        """A copy with ``eps = budget`` (same units)."""
        return self._copy_with(eps=check_number(budget, "budget"))

    def flows(self, height: int, width: int, like: torch.Tensor) -> torch.Tensor:
        """(samples, 2, H, W) flows in ``units``, inside the box."""
        generator = resolve_generator(self.generator, self.seed, like.device)
        out = like.new_empty((self.samples, 2, height, width))
        for s in range(self.samples):
            r = self.resolutions[s % len(self.resolutions)]
            signs = uniform((1, 2, r, r), like, generator).round() * 2 - 1
            if r == 1:
                field = signs.expand(1, 2, height, width)
            else:
                field = F.interpolate(signs, size=(height, width), mode="bilinear", align_corners=True)
            out[s] = field[0].clamp(-1, 1) * self.eps
        return out

    def _attack(self, images, labels):
        n, _, height, width = images.shape
        scale = unit_scale(height, width, self.units, images)
        flows = self.flows(height, width, images) * scale  # pixels
        count = flows.shape[0]
        pick = self._best_of_flows(images, labels, flows, clamp=True)
        flow = flows[pick] if n else flows[:0]
        with torch.no_grad():
            adv = warp(images, flow, self.padding_mode, backend=self.backend).clamp(0, 1)
        tried = torch.full((n,), count, dtype=torch.int64, device=images.device)
        return flow, adv, tried, {"evaluations": tried.clone()}
