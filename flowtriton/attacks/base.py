"""What every flow attack shares: the result type, argument checks, eval mode, norms, losses.

Units: images are (N, C, H, W) in [0, 1]; flows are (N, 2, H, W) in PIXELS (channel 0 = x along
W, channel 1 = y along H), whatever unit an attack's budget is configured in.
"""

from __future__ import annotations

import contextlib
import copy
import math
import numbers
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ..backend import check_backend
from ..ops.units import UNITS, unit_scale  # noqa: F401 - re-exported for attack modules
from ..ops.validation import check_unit_range
from ..ops.warp import warp
from ..reference import PADDING_MODES  # noqa: F401 - re-exported for attack modules
from ..regularizers.common import check_seed as _check_seed



@dataclass
class AttackResult:
    """What :meth:`FlowAttack.run` returns; every tensor is detached, on the images' device.

    images: (N, C, H, W) adversarial images in [0, 1].
    flow: (N, 2, H, W) the flow that produced them, pixels.
    success: (N,) bool, judged on ``images`` by the model: prediction != label (untargeted) or
        prediction == target (targeted).
    predictions: (N,) int64, the model's labels for ``images``.
    tnorm: (N,) pixels, max over pixels of the Euclidean length of the flow vector (ADef's T-norm).
    linf: (N,) pixels, max absolute flow component.
    l2: (N,) pixels, Euclidean norm of the whole flow.
    iterations: (N,) int64, gradient steps (or transforms tried) spent on each example.
    info: attack-specific per-example tensors (documented by each attack).
    """

    images: torch.Tensor
    flow: torch.Tensor
    success: torch.Tensor
    predictions: torch.Tensor
    tnorm: torch.Tensor
    linf: torch.Tensor
    l2: torch.Tensor
    iterations: torch.Tensor
    info: dict = field(default_factory=dict)

    @property
    def norms(self) -> dict:
        """{'tnorm', 'linf', 'l2'} -> (N,) tensors in pixels."""
        return {"tnorm": self.tnorm, "linf": self.linf, "l2": self.l2}


def _jsonable(value):
    """``value`` as JSON-ready data: numbers, strings, None, lists; inf as the string 'inf'."""
    if value is None or isinstance(value, (bool, str, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, (list, tuple, range)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, torch.Generator):
        return "torch.Generator"
    return repr(value)


def flow_norms(flow: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(N, 2, H, W) pixel flow -> (tnorm, linf, l2), each (N,) in pixels."""
    flat = flow.detach().flatten(2)
    tnorm = flat.square().sum(dim=1).sqrt().amax(dim=1)
    linf = flat.abs().flatten(1).amax(dim=1)
    l2 = flat.flatten(1).square().sum(dim=1).sqrt()
    return tnorm, linf, l2


def margin_loss(logits: torch.Tensor, labels: torch.Tensor, targeted: bool) -> torch.Tensor:
    """(N,) C&W margin, logit units: untargeted ``max_{i!=y} Z_i - Z_y``, targeted
    ``Z_t - max_{i!=t} Z_i``; positive means the attack's goal is met. Not clamped."""
    true = logits.gather(1, labels[:, None]).squeeze(1)
    others = logits.masked_fill(F.one_hot(labels, logits.shape[1]).bool(), float("-inf"))
    best_other = others.amax(dim=1)
    return true - best_other if targeted else best_other - true


def attack_goal_met(predictions: torch.Tensor, labels: torch.Tensor, targeted: bool) -> torch.Tensor:
    """(N,) bool: prediction == target (targeted) or prediction != label (untargeted)."""
    return predictions == labels if targeted else predictions != labels


@contextlib.contextmanager
def eval_mode(model):
    """Put every submodule of ``model`` in eval mode; restore each one's own mode on exit."""
    modules = list(model.modules()) if isinstance(model, torch.nn.Module) else []
    modes = [m.training for m in modules]
    try:
        for m in modules:
            m.training = False
        yield
    finally:
        for m, mode in zip(modules, modes):
            m.training = mode


def resolve_generator(generator, seed, device: torch.device) -> torch.Generator | None:
    """The generator for random draws: ``generator`` if given, else a new one on ``device`` seeded
    with ``seed``, else None: torch's global generator (so ``torch.manual_seed`` reproduces a run,
    as in torchattacks and the regularizers)."""
    if generator is not None:
        return generator
    if seed is None:
        return None
    return torch.Generator(device=device).manual_seed(int(seed))


def uniform(shape, like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """U[0, 1) draws of ``shape`` with ``like``'s dtype, on ``like``'s device, from ``generator``
    (None: torch's global generator of that device)."""
    device = like.device if generator is None else generator.device
    return torch.rand(shape, generator=generator, device=device, dtype=like.dtype).to(like.device)


def check_seed(seed) -> int | None:
    """``seed`` as an int (numpy integers accepted), None kept; TypeError for a bool or a
    non-integer, ValueError outside [-2**63, 2**64 - 1] (torch.Generator's range)."""
    return _check_seed(seed)


MODEL_IGNORES_INPUT = ("model's output does not depend on its input images (does the model ignore or detach its "
                       "input?): a gradient attack has no gradient to follow")


def input_gradient(outputs: torch.Tensor, inputs: torch.Tensor, grad_outputs=None, **kwargs) -> torch.Tensor:
    """``torch.autograd.grad(outputs, inputs, grad_outputs, **kwargs)[0]``; ValueError instead of
    torch's autograd messages when ``outputs`` do not depend on ``inputs``."""
    if outputs.requires_grad:
        (grad,) = torch.autograd.grad(outputs, inputs, grad_outputs, allow_unused=True, **kwargs)
        if grad is not None:
            return grad
    raise ValueError(MODEL_IGNORES_INPUT)


def check_grad_mode(caller: str) -> None:
    """RuntimeError under ``torch.inference_mode()``: attacks need gradients, which inference
    mode forbids (``torch.no_grad()`` is fine: attacks switch gradients on where they need them)."""
    if torch.is_inference_mode_enabled():
        raise RuntimeError(f"{caller} cannot run under torch.inference_mode(): it needs input gradients, "
                           "which inference mode disables for good; call it outside that block "
                           "(torch.no_grad() is fine)")


def check_number(value, name: str, minimum: float | None = 0.0, strict: bool = False,
                 allow_inf: bool = False) -> float:
    """A real number >= minimum (> minimum when ``strict``); TypeError/ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    value = float(value)
    if value != value or (value in (float("inf"), float("-inf")) and not allow_inf):
        raise ValueError(f"{name} must be finite, got {value}")
    if minimum is not None and (value < minimum or (strict and value == minimum)):
        raise ValueError(f"{name} must be {'>' if strict else '>='} {minimum}, got {value}")
    return value


def check_int(value, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def check_images(images) -> None:
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"images must be a torch.Tensor, got {type(images).__name__}")
    if images.dim() != 4:
        raise ValueError(f"images must have shape (N, C, H, W), got {tuple(images.shape)}")
    if not images.is_floating_point():
        raise TypeError(f"images must be a floating tensor, got {images.dtype}")
    if min(images.shape[1:]) < 1:
        raise ValueError(f"images must have C, H, W >= 1, got {tuple(images.shape)}")


def check_labels(labels, images: torch.Tensor, name: str = "labels") -> None:
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(labels).__name__}")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise TypeError(f"{name} must be an integer tensor, got {labels.dtype}")
    if labels.dim() != 1 or labels.shape[0] != images.shape[0]:
        raise ValueError(f"{name} must have shape ({images.shape[0]},) to match images "
                         f"{tuple(images.shape)}, got {tuple(labels.shape)}")
    if labels.device != images.device:
        raise ValueError(f"{name} is on {labels.device} but images are on {images.device}")


def check_label_range(labels: torch.Tensor, num_classes: int, name: str = "labels") -> None:
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(f"{name} must lie in [0, {num_classes}), got values in "
                         f"[{int(labels.min())}, {int(labels.max())}]")


class FlowAttack:
    """Base class: configure in ``__init__``, ``adv = attack(images, labels)``,
    ``result = attack.run(images, labels)`` (an :class:`AttackResult`).

    ``labels`` are the true labels (untargeted) or the target classes (``targeted=True``);
    ``labels=None`` (untargeted only) attacks the model's own predictions on ``images``.
    The model runs in eval mode during the attack and gets its modes back afterwards, even on an
    exception. Images must lie in [0, 1] (ValueError otherwise; normalization belongs inside the
    model). Works inside ``torch.no_grad()`` (gradients are switched on for the attack); raises a
    RuntimeError under ``torch.inference_mode()``. ``backend`` ('auto', 'triton', 'torch' or None)
    is checked here, a ``seed`` (where an attack takes one) must be an integer in
    [-2**63, 2**64 - 1] (numpy integers accepted, bools refused). A model whose output does not
    depend on its input is a ValueError from the gradient attacks; an empty batch (N = 0) gives an
    empty result. Subclasses implement :meth:`_attack` (it runs with gradients enabled).
    """

    #: True for attacks that search the smallest flow (ADef, StAdv): budgets are applied after
    #: the fact to their T-norm (see :func:`flowtriton.attacks.evaluate`).
    minimum_norm = False
    #: True for attacks that follow the model's gradient inside a budget (FlowPGD): the
    #: gradient-masking check of :func:`flowtriton.attacks.evaluate` compares them with the others.
    gradient_budgeted = False
    #: Named settings: {name: constructor keyword arguments}; see :meth:`preset`.
    PRESETS: dict = {}

    @classmethod
    def preset(cls, name: str, model, **overrides) -> "FlowAttack":
        """``cls(model, **cls.PRESETS[name], **overrides)``: a named setting of this attack
        (docs/attacks.md lists them); ``overrides`` replace the preset's values."""
        if not isinstance(name, str) or name not in cls.PRESETS:
            raise ValueError(f"preset must be one of {tuple(cls.PRESETS)} for {cls.__name__}, got {name!r}")
        return cls(model, **{**cls.PRESETS[name], **overrides})

    def settings(self) -> dict:
        """Every constructor setting of this attack, JSON-ready (the model left out; a generator
        recorded as its class name), with the class name under 'class'."""
        out = {"class": type(self).__name__}
        for key, value in vars(self).items():
            if key == "model" or key.startswith("_"):
                continue
            out[key] = _jsonable(value)
        return out

    def __init__(self, model, targeted: bool = False, backend: str | None = None):
        if not callable(model):
            raise TypeError(f"model must be callable (an nn.Module), got {type(model).__name__}")
        if not isinstance(targeted, bool):
            raise TypeError(f"targeted must be a bool, got {type(targeted).__name__}")
        self.model = model
        self.targeted = targeted
        self.backend = check_backend(backend)

    def __call__(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """(N, C, H, W) adversarial images."""
        return self.run(images, labels).images

    def run(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> AttackResult:
        check_grad_mode(f"{type(self).__name__}.run")
        check_images(images)
        if labels is None:
            if self.targeted:
                raise ValueError("labels (the target classes) are required when targeted=True")
        else:
            check_labels(labels, images)
        check_unit_range(images, "images")
        # Tensors made under inference mode cannot enter autograd: a plain copy can.
        images = images.clone() if images.is_inference() else images.detach()
        if labels is not None and labels.is_inference():
            labels = labels.clone()
        with eval_mode(self.model), torch.enable_grad():
            with torch.no_grad():
                clean_logits = self._logits(images)
            if labels is None:
                labels = clean_logits.argmax(dim=1)
            check_label_range(labels, clean_logits.shape[1])
            labels = labels.long()
            flow, adv, iterations, info = self._attack(images, labels)
            info = {k: v.detach() if isinstance(v, torch.Tensor) else v for k, v in info.items()}
            with torch.no_grad():
                predictions = self.model(adv).argmax(dim=1)
        tnorm, linf, l2 = flow_norms(flow)
        return AttackResult(
            images=adv.detach(), flow=flow.detach(),
            success=attack_goal_met(predictions, labels, self.targeted),
            predictions=predictions, tnorm=tnorm, linf=linf, l2=l2,
            iterations=iterations.to(torch.int64), info=info)

    def _attack(self, images: torch.Tensor, labels: torch.Tensor):
        """-> (flow (N, 2, H, W) pixels, adversarial images, iterations (N,), info dict)."""
        raise NotImplementedError

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        """Run the model; check its output is (N, classes)."""
        logits = self.model(x)
        if not isinstance(logits, torch.Tensor) or logits.dim() != 2 or logits.shape[0] != x.shape[0]:
            shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
            raise ValueError(f"model must return logits of shape (N, classes), got {shape}")
        return logits

    def _best_of_flows(self, images: torch.Tensor, labels: torch.Tensor, flows: torch.Tensor,
                       clamp: bool) -> torch.Tensor:
        """Index (N,) into ``flows`` (T, 2, H, W) pixels, tried on every image: per image the first
        flow that meets the attack's goal, else the one with the highest loss (cross-entropy,
        negated when targeted). ``self.max_batch`` images go through the model per call, flows
        major; ``clamp``: clamp the warped images to [0, 1]. For grid / random-search attacks."""
        n, count = images.shape[0], flows.shape[0]
        chosen = torch.full((n,), -1, dtype=torch.int64, device=images.device)
        best_loss = images.new_full((n,), -math.inf)
        best_any = torch.zeros(n, dtype=torch.int64, device=images.device)
        per_call = max(1, self.max_batch // max(n, 1))
        with torch.no_grad():
            for start in range(0, count, per_call):
                block = flows[start:start + per_call]
                t = block.shape[0]
                x = images.repeat(t, 1, 1, 1)
                y = labels.repeat(t)
                adv = warp(x, block.repeat_interleave(n, dim=0), self.padding_mode, backend=self.backend)
                logits = self._logits(adv.clamp(0, 1) if clamp else adv)
                loss = F.cross_entropy(logits, y, reduction="none").view(t, n)
                if self.targeted:
                    loss = -loss
                fooled = attack_goal_met(logits.argmax(dim=1), y, self.targeted).view(t, n)
                index = torch.arange(start, start + t, device=images.device)[:, None].expand(t, n)
                first = torch.where(fooled, index, count).amin(dim=0)
                chosen = torch.where((chosen < 0) & (first < count), first, chosen)
                block_loss, block_arg = loss.max(dim=0)
                higher = block_loss > best_loss
                best_loss = torch.where(higher, block_loss, best_loss)
                best_any = torch.where(higher, block_arg + start, best_any)
        return torch.where(chosen >= 0, chosen, best_any)

    def with_budget(self, budget: float) -> "FlowAttack":
        """A copy of this attack at another budget (attacks with a budget override this)."""
        raise ValueError(f"{type(self).__name__} has no budget to set")

    def _copy_with(self, **changes) -> "FlowAttack":
        clone = copy.copy(self)
        for key, value in changes.items():
            setattr(clone, key, value)
        return clone

    def __repr__(self) -> str:
        skip = {"model"}
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if k not in skip and not k.startswith("_"))
        return f"{type(self).__name__}({fields})"
