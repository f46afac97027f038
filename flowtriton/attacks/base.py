"""What every flow attack shares: the result type, argument checks, eval mode, norms, losses, the
budget protocol and the renaming of deprecated arguments.

Units: images are (N, C, H, W) in [0, 1]; flows are (N, 2, H, W) in PIXELS (channel 0 = x along
W, channel 1 = y along H), whatever unit an attack's distance arguments are configured in (its
``units``: 'normalized' or 'pixels', see :data:`flowtriton.ops.units.UNITS`).
"""

from __future__ import annotations

import contextlib
import copy
import functools
import math
import warnings
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ..backend import check_backend
from ..checks import check_generator, check_int, check_number, check_seed, resolve_generator  # noqa: F401 - attack modules import them from here
from ..ops.units import UNITS, unit_scale  # noqa: F401 - re-exported for attack modules
from ..ops.validation import check_choice, check_unit_range
from ..ops.warp import warp
from ..reference import PADDING_MODES  # noqa: F401 - re-exported for attack modules

#: What a budget bounds (:attr:`FlowAttack.budget_kind`): 'linf' = every flow component, |u|, |v|
#: <= b; 'tnorm' = every pixel's flow vector, sqrt(u^2 + v^2) <= b (ADef's T-norm).
BUDGET_KINDS = ("linf", "tnorm")


def _rename_arguments(owner: str, renames: dict, kwargs: dict, stacklevel: int) -> dict:
    """``kwargs`` with each deprecated name of ``renames`` ({old: new}) replaced by its new one, a
    DeprecationWarning per old name; TypeError when both names are given."""
    for old, new in renames.items():
        if old not in kwargs:
            continue
        if new in kwargs:
            raise TypeError(f"{owner}() got both {new!r} and its deprecated spelling {old!r}: give {new!r} only")
        warnings.warn(f"{owner}({old}=...) is deprecated and will be removed in the next release: use {new}=... "
                      "(same meaning)", DeprecationWarning, stacklevel=stacklevel + 1)
        kwargs[new] = kwargs.pop(old)
    return kwargs


def renamed_arguments(**renames):
    """Decorator of an ``__init__`` whose keyword arguments were renamed: ``old=new`` pairs. An old
    name still works for one release, with a DeprecationWarning naming the new one; giving both
    names is a TypeError. The decorated function keeps the new signature (``inspect.signature``)
    and lists the pairs in its ``renamed_arguments`` attribute."""
    def decorate(init):
        @functools.wraps(init)
        def wrapper(self, *args, **kwargs):
            return init(self, *args, **_rename_arguments(type(self).__name__, renames, kwargs, 2))
        wrapper.renamed_arguments = dict(renames)
        return wrapper
    return decorate


def renamed_attribute(old: str, new: str) -> property:
    """A class property ``old`` that reads and writes attribute ``new`` with a DeprecationWarning."""
    def get(self):
        warnings.warn(f"{type(self).__name__}.{old} is deprecated and will be removed in the next release: use "
                      f".{new}", DeprecationWarning, stacklevel=2)
        return getattr(self, new)

    def put(self, value):
        warnings.warn(f"{type(self).__name__}.{old} is deprecated and will be removed in the next release: use "
                      f".{new}", DeprecationWarning, stacklevel=2)
        setattr(self, new, value)

    return property(get, put, doc=f"Deprecated spelling of ``{new}``.")


def check_units(units, owner: str, allowed=UNITS, why: str = "") -> str:
    """``units`` as one of :data:`UNITS`; ValueError naming ``owner`` (and ``why``) when it is not
    one of ``allowed`` (an attack whose distances only make sense in pixels)."""
    units = check_choice(units, UNITS, "units")
    if units not in allowed:
        raise ValueError(f"{owner} takes units={' or '.join(repr(u) for u in allowed)} only, got units={units!r}"
                         + (f": {why}" if why else ""))
    return units


@dataclass
class AttackResult:
    """What :meth:`FlowAttack.run` returns; every tensor is detached, on the images' device.

    ``result.norms`` gives {'tnorm', 'linf', 'l2'} -> (N,) tensors in pixels.

    Args:
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

    Example:
        >>> from flowtriton.attacks import RandomFlow
        >>> _ = torch.manual_seed(0)
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 3))
        >>> images, labels = torch.rand(2, 1, 8, 8), torch.tensor([0, 1])
        >>> result = RandomFlow(model, eps=0.05, samples=4, seed=0).run(images, labels)
        >>> result.images.shape, result.flow.shape
        (torch.Size([2, 1, 8, 8]), torch.Size([2, 2, 8, 8]))
        >>> result.success.dtype, result.predictions.dtype, result.iterations.tolist()
        (torch.bool, torch.int64, [4, 4])
        >>> sorted(result.norms), round(float(result.linf.max()), 3)  # 0.05 normalized = 0.175 px
        (['l2', 'linf', 'tnorm'], 0.175)
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
    """The norms of a flow: T-norm, L-inf and L2, per example.

    Args:
        flow: (N, 2, H, W) flow in pixels (detached before measuring).

    Returns:
        (tnorm, linf, l2), each (N,) in pixels: the largest Euclidean length of a pixel's flow
        vector (ADef's T-norm), the largest absolute flow component, the Euclidean norm of the
        whole flow.

    Example:
        >>> from flowtriton.attacks import flow_norms
        >>> flow = torch.zeros(1, 2, 4, 4)
        >>> flow[:, 0], flow[:, 1] = 3.0, 4.0  # every pixel moves by (3, 4) px
        >>> [t.tolist() for t in flow_norms(flow)]
        [[5.0], [4.0], [20.0]]
    """
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


def uniform(shape, like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """U[0, 1) draws of ``shape`` with ``like``'s dtype, on ``like``'s device, from ``generator``
    (None: torch's global generator of that device)."""
    device = like.device if generator is None else generator.device
    return torch.rand(shape, generator=generator, device=device, dtype=like.dtype).to(like.device)


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
    """Base class of the flow attacks: configure in ``__init__``, then ``adv = attack(images, labels)``
    ((N, C, H, W) adversarial images) or ``result = attack.run(images, labels)`` (an
    :class:`AttackResult`).

    ``images`` are (N, C, H, W); ``labels`` (N,) are the true labels (untargeted) or the target
    classes (``targeted=True``); ``labels=None`` (untargeted only) attacks the model's own
    predictions on ``images``. The model runs in eval mode during the attack and gets its modes back
    afterwards, even on an exception. Images must lie in [0, 1] (ValueError otherwise; normalization
    belongs inside the model). Works inside ``torch.no_grad()`` (gradients are switched on for the
    attack); raises a RuntimeError under ``torch.inference_mode()``. ``backend`` ('auto', 'triton',
    'torch' or None) is checked here, a ``seed`` (where an attack takes one) must be an integer in
    [-2**63, 2**64 - 1] (numpy integers accepted, bools refused). A model whose output does not
    depend on its input is a ValueError from the gradient attacks; an empty batch (N = 0) gives an
    empty result. Subclasses implement :meth:`_attack` (it runs with gradients enabled) and return
    ``(flow (N, 2, H, W) pixels, adversarial images, iterations (N,), info dict)``.

    The budget protocol: ``attack.budget_kind`` ('linf', 'tnorm' or None), ``attack.budget_units``
    and ``attack.with_budget(b)`` (a copy at budget ``b``) say what a budget is;
    ``Attack.preset(name, model, **overrides)`` builds a named setting.

    Args:
        model: classifier, (N, C, H, W) images in [0, 1] -> (N, classes) logits.
        targeted: ``labels`` are target classes instead of true labels.
        backend: flowtriton ops backend ('auto', 'triton', 'torch' or None: the setting in force).

    Example:
        >>> from flowtriton import warp
        >>> from flowtriton.attacks import FlowAttack, FlowPGD
        >>> _ = torch.manual_seed(0)
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 3))
        >>> images, labels = torch.rand(2, 1, 8, 8), torch.tensor([0, 1])
        >>> attack = FlowPGD(model, eps=0.05, steps=3, restarts=1)
        >>> isinstance(attack, FlowAttack), attack.budget_kind, attack.budget_units
        (True, 'linf', 'normalized')
        >>> attack(images, labels).shape
        torch.Size([2, 1, 8, 8])
        >>> class ShiftRight(FlowAttack):  # a subclass implements _attack
        ...     def _attack(self, images, labels):
        ...         flow = images.new_zeros((images.shape[0], 2) + images.shape[2:])
        ...         flow[:, 0] = 1.0  # one pixel along x
        ...         iterations = torch.ones(images.shape[0], dtype=torch.int64)
        ...         return flow, warp(images, flow, "zeros"), iterations, {}
        >>> ShiftRight(model).run(images, labels).linf.tolist()
        [1.0, 1.0]
    """

    #: True for attacks that search the smallest flow (ADef, StAdv): :func:`flowtriton.attacks.evaluate`
    #: runs them once and applies budgets after the fact to their T-norm; the others run once per budget
    #: (:meth:`with_budget`).
    minimum_norm = False
    #: True for attacks that follow the model's gradient inside a budget (FlowPGD): the
    #: gradient-masking check of :func:`flowtriton.attacks.evaluate` compares them with the others.
    gradient_budgeted = False
    #: Named settings: {name: constructor keyword arguments}; see :meth:`preset`.
    PRESETS: dict = {}
    #: The units of the attack's distance arguments ('normalized' or 'pixels'); every attack sets
    #: its own, this is the default of an attack that does not.
    units = "pixels"

    @classmethod
    def preset(cls, name: str, model, **overrides) -> "FlowAttack":
        """``cls(model, **cls.PRESETS[name], **overrides)``: a named setting of this attack
        (docs/attacks.md lists them); ``overrides`` replace the preset's values."""
        if not isinstance(name, str) or name not in cls.PRESETS:
            raise ValueError(f"preset must be one of {tuple(cls.PRESETS)} for {cls.__name__}, got {name!r}")
        renames = getattr(cls.__init__, "renamed_arguments", {})
        overrides = _rename_arguments(f"{cls.__name__}.preset", renames, dict(overrides), 2)
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

    # -- the budget protocol -------------------------------------------------------------------
    @property
    def budget_kind(self) -> str | None:
        """What this attack's budget bounds: 'linf' (every flow component), 'tnorm' (every pixel's
        flow vector length, ADef's T-norm) or None (no budget: the attack runs at its settings).
        Here: 'tnorm' for a ``minimum_norm`` attack, else None; attacks with a budget override it."""
        return "tnorm" if self.minimum_norm else None

    @property
    def budget_units(self) -> str | None:
        """The units of the budget ('normalized' or 'pixels', this attack's ``units``); None when
        ``budget_kind`` is None."""
        return None if self.budget_kind is None else self.units

    def with_budget(self, budget: float) -> "FlowAttack":
        """A copy of this attack at budget ``budget`` (a ``budget_kind`` norm in ``budget_units``).
        ValueError for an attack without a budget (``budget_kind`` None)."""
        if self.budget_kind is None:
            raise ValueError(f"{type(self).__name__} has no budget to set (budget_kind is None): it runs once at "
                             "its own settings")
        raise NotImplementedError(f"{type(self).__name__} declares budget_kind {self.budget_kind!r} but does not "
                                  "implement with_budget")

    def _copy_with(self, **changes) -> "FlowAttack":
        clone = copy.copy(self)
        for key, value in changes.items():
            setattr(clone, key, value)
        return clone

    def __repr__(self) -> str:
        skip = {"model"}
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if k not in skip and not k.startswith("_"))
        return f"{type(self).__name__}({fields})"
