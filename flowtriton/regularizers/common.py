"""Pieces shared by the gradient regularizers: argument checks, the classifier loss, reductions.

Scale convention (``reduction``), for a batch of B examples, per-example losses ``l_b``, batch
loss ``L = mean_b l_b`` and ``G_b`` the gradient of ``L`` w.r.t. example b's input (or flow):

* ``'paper'``: ``mean_b ||G_b||^2`` -- what the FGR authors' code computes; since
  ``G_b = grad l_b / B`` (examples treated independently), this is ``1/B^2`` times the mean
  per-example squared gradient, so the effective weight changes with the batch size.
* ``'mean'``: ``mean_b ||B G_b||^2`` -- the mean per-example squared gradient (B G_b is the
  gradient of the summed loss; equal to grad l_b when examples do not interact, e.g. no
  train-mode BatchNorm). Independent of the batch size: lam_mean = lam_paper / B^2.
* ``'sum'``: ``sum_b ||B G_b||^2`` (Ross & Doshi-Velez's IGR sum, without their 1/2).
"""

from __future__ import annotations

import math
import numbers

import torch
import torch.nn.functional as F

from ..ops.validation import check_unit_range

REDUCTIONS = ("paper", "mean", "sum")


def check_nonnegative(value, name: str) -> float:
    """``value`` as a float; TypeError unless it is a real number (not a bool or a string),
    ValueError naming ``name`` unless it is finite and >= 0."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__} {value!r}")
    number = float(value)
    if not math.isfinite(number) or number < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return number


def check_positive(value, name: str) -> float:
    number = check_nonnegative(value, name)
    if number == 0:
        raise ValueError(f"{name} must be > 0, got {value!r}")
    return number


def check_images_in_range(images: torch.Tensor, when: bool | None, name: str = "images") -> None:
    """The [0, 1] image check (one host sync): ``when=True`` always, ``False`` never, ``None``
    only for tensors off CUDA, where the sync costs nothing (a CUDA training step stays sync-free)."""
    if when or (when is None and images.device.type != "cuda"):
        check_unit_range(images, name)


class RangeCheck:
    """A regularizer's [0, 1] image check: on its first call, and on every call for tensors off
    CUDA; later CUDA batches are not checked, so training steps never wait on the device."""

    def __init__(self):
        self.done = False

    def __call__(self, images: torch.Tensor) -> None:
        check_images_in_range(images, None if self.done else True)
        self.done = True


def per_example_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(N,) cross-entropy per example (the default ``loss_fn``)."""
    return F.cross_entropy(logits, labels, reduction="none")


def check_images(images) -> None:
    """ValueError/TypeError unless ``images`` is a floating (N, C, H, W) tensor."""
    if not isinstance(images, torch.Tensor) or images.dim() != 4:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"images must be a (N, C, H, W) tensor, got {shape}")
    if not images.is_floating_point():
        raise TypeError(f"images must be a floating tensor in [0, 1], got {images.dtype}")


def check_batch(images, labels) -> None:
    check_images(images)
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"labels must be a torch.Tensor, got {type(labels).__name__}")
    if labels.shape[:1] != images.shape[:1]:
        raise ValueError(f"labels must have N={images.shape[0]} rows like images, got shape {tuple(labels.shape)}")


def check_logits(logits, labels: torch.Tensor, batch: int) -> None:
    """The model's output must be (N, classes) logits that ``labels`` index (or match in shape)."""
    if not isinstance(logits, torch.Tensor):
        raise ValueError(f"model must return a (N, classes) logits tensor, got {type(logits).__name__}")
    if logits.dim() != 2 or logits.shape[0] != batch:
        raise ValueError(
            f"model must return (N, classes) logits with N={batch} for a classifier, got shape {tuple(logits.shape)}")
    if labels.dim() == 1:
        if labels.dtype.is_floating_point or labels.dtype == torch.bool:
            raise TypeError(f"labels of shape (N,) must be integer class indices, got {labels.dtype}")
    elif labels.shape != logits.shape:
        raise ValueError(
            f"labels must be (N,) class indices or (N, classes) probabilities matching the logits "
            f"{tuple(logits.shape)}, got {tuple(labels.shape)}")


def classifier_losses(model, inputs: torch.Tensor, labels: torch.Tensor, loss_fn):
    """(per-example losses (N,), logits (N, classes)) of ``model`` on ``inputs``."""
    logits = model(inputs)
    check_logits(logits, labels, inputs.shape[0])
    losses = loss_fn(logits, labels)
    if not isinstance(losses, torch.Tensor) or losses.shape != (inputs.shape[0],):
        shape = tuple(losses.shape) if isinstance(losses, torch.Tensor) else type(losses).__name__
        raise ValueError(f"loss_fn must return per-example losses of shape ({inputs.shape[0]},), got {shape}")
    return losses, logits


def reduce_squared_norms(squared: torch.Tensor, reduction: str, batch: int) -> torch.Tensor:
    """Scalar from per-example squared norms of gradients of the BATCH-MEAN loss (see module doc)."""
    if reduction == "paper":
        return squared.mean()
    scaled = squared * float(batch) ** 2
    return scaled.mean() if reduction == "mean" else scaled.sum()


def mean_norm(squared: torch.Tensor, batch: int) -> torch.Tensor:
    """Mean over examples of the per-example gradient norm of the SUMMED loss (for logging):
    ``mean_b(B sqrt(squared_b)) = sum_b sqrt(squared_b)``, two small kernels."""
    return squared.detach().sqrt().sum()


def make_generator(generator, seed):
    if generator is not None and seed is not None:
        raise ValueError("give either generator or seed, not both")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    if seed is not None and not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    return generator


class SeededNoise:
    """Gaussian draws from a generator (given, or created from ``seed`` on first use on the images'
    device), else from torch's global generator."""

    def __init__(self, generator=None, seed=None):
        self.generator = make_generator(generator, seed)
        self.seed = seed

    def generator_for(self, like: torch.Tensor) -> torch.Generator | None:
        """The generator (made from ``seed`` on ``like``'s device on first use), or None."""
        if self.generator is None and self.seed is not None:
            self.generator = torch.Generator(device=like.device)
            self.generator.manual_seed(self.seed)
        return self.generator
