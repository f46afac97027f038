"""Pieces shared by the gradient regularizers: batch checks, the classifier loss, reductions.

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

import torch
import torch.nn.functional as F

from ..checks import check_generator, check_seed, resolve_generator
from ..conventions import REDUCTIONS  # noqa: F401 - re-exported: flowtriton.regularizers.REDUCTIONS
from ..ops.validation import IMAGE_RANGE_TOLERANCE, check_unit_range


def _check_unit_range_compiled(images: torch.Tensor, name: str) -> None:
    """The [0, 1] check inside ``torch.compile``: no host sync, no graph break. Off CUDA an
    asynchronous assertion traced into the graph (a RuntimeError with the same message, without
    the values seen, raised when the graph runs); on CUDA nothing (a failed device-side assertion
    would poison the CUDA context): there the first eager call is the check."""
    if images.device.type == "cuda" or images.numel() == 0:
        return
    lo, hi = torch.aminmax(images.detach())
    tol = IMAGE_RANGE_TOLERANCE
    torch._assert_async((lo >= -tol) & (hi <= 1.0 + tol),
                        f"{name} must hold values in [0, 1] (normalize inside the model)")


def check_images_in_range(images: torch.Tensor, when: bool | None, name: str = "images") -> None:
    """The [0, 1] image check (one host sync): ``when=True`` always, ``False`` never, ``None``
    only for tensors off CUDA, where the sync costs nothing (a CUDA training step stays sync-free).

    Under ``torch.compile`` (``torch.compiler.is_compiling()``) the check reads nothing back, so
    it causes no graph break: see :func:`_check_unit_range_compiled`."""
    if not (when or (when is None and images.device.type != "cuda")):
        return
    if torch.compiler.is_compiling():
        _check_unit_range_compiled(images, name)
    else:
        check_unit_range(images, name)


class RangeCheck:
    """A regularizer's (or functional primitive's) data checks -- [0, 1] images, class labels in
    range: on its first call, and on every call for tensors off CUDA; later CUDA batches are not
    checked, so training steps never wait on the device."""

    def __init__(self):
        self.done = False

    def __call__(self, images: torch.Tensor) -> bool | None:
        """Check ``images``; returns the ``when`` it used (for :func:`check_label_values`)."""
        when = None if self.done else True
        check_images_in_range(images, when)
        self.done = True
        return when


def check_label_values(labels: torch.Tensor, classes: int, when: bool | None, name: str = "labels") -> None:
    """ValueError naming ``name`` unless the (N,) integer ``labels`` lie in [0, classes) (the
    logits' class count). A host sync, taken as :func:`check_images_in_range` takes it
    (``when``); compile-friendly the same way."""
    if labels.dim() != 1 or labels.numel() == 0 or labels.is_floating_point():
        return
    if not (when or (when is None and labels.device.type != "cuda")):
        return
    if torch.compiler.is_compiling():
        if labels.device.type != "cuda":
            lo, hi = torch.aminmax(labels)
            torch._assert_async((lo >= 0) & (hi < classes), f"{name} must lie in [0, {classes}) (class indices)")
        return
    lo, hi = (int(v) for v in torch.aminmax(labels))
    if lo < 0 or hi >= classes:
        raise ValueError(f"{name} must be class indices in [0, {classes}) for the model's {classes} logits, "
                         f"got values in [{lo}, {hi}]")


def per_example_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(N,) cross-entropy per example (the default ``loss_fn``)."""
    return F.cross_entropy(logits, labels, reduction="none")


def check_images(images, name: str = "images") -> None:
    """ValueError/TypeError unless ``images`` is a floating (N, C, H, W) tensor with N >= 1 (a
    loss over no examples is undefined: an empty batch is refused rather than giving NaN)."""
    if not isinstance(images, torch.Tensor) or images.dim() != 4:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"{name} must be a (N, C, H, W) tensor, got {shape}")
    if not images.is_floating_point():
        raise TypeError(f"{name} must be a floating tensor in [0, 1], got {images.dtype}")
    if images.shape[0] == 0:
        raise ValueError(f"{name} must hold at least one example, got an empty batch {tuple(images.shape)} "
                         "(the batch-mean loss of no examples is undefined)")


def check_batch(images, labels) -> None:
    check_images(images)
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"labels must be a torch.Tensor, got {type(labels).__name__}")
    if labels.shape[:1] != images.shape[:1]:
        raise ValueError(f"labels must have N={images.shape[0]} rows like images, got shape {tuple(labels.shape)}")
    if labels.dim() == 1 and (labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool):
        raise TypeError(f"labels of shape (N,) must be integer class indices, got {labels.dtype} "
                        "(float labels are not truncated: convert them with labels.long() if that is meant)")
    if labels.device != images.device:
        raise ValueError(f"labels are on {labels.device} but images are on {images.device}")


def check_grad_mode(caller: str) -> None:
    """RuntimeError under ``torch.inference_mode()``, naming the caller: a gradient regularizer
    differentiates the loss w.r.t. the images, which inference mode forbids. (Not asked under
    torch.compile, where the question itself is a graph break.)"""
    if not torch.compiler.is_compiling() and torch.is_inference_mode_enabled():
        raise RuntimeError(f"{caller} cannot run under torch.inference_mode(): it needs the gradient of the loss "
                           "w.r.t. the images, which inference mode disables; call it outside that block "
                           "(under torch.no_grad() it runs and returns detached values)")


def prepare_batch(caller: str, images, labels):
    """The checks every regularizer call starts with; -> (images, labels) ready for autograd:
    inference tensors (made under ``torch.inference_mode()``) copied, (N,) integer labels as int64
    (what cross-entropy indexes with)."""
    check_grad_mode(caller)
    check_batch(images, labels)
    if not torch.compiler.is_compiling():  # (is_inference() breaks a compiled graph)
        if images.is_inference():
            images = images.clone()
        if labels.is_inference():
            labels = labels.clone()
    if labels.dim() == 1 and labels.dtype != torch.int64:
        labels = labels.long()
    return images, labels


MODEL_IGNORES_INPUT = ("model's output does not depend on images (does the model ignore or detach its input?): "
                       "a gradient regularizer needs d loss / d images")


def input_gradient(loss: torch.Tensor, inputs: torch.Tensor, message: str = MODEL_IGNORES_INPUT,
                   **kwargs) -> torch.Tensor:
    """``d loss / d inputs`` by ``torch.autograd.grad`` (``kwargs``: create_graph, retain_graph);
    ValueError(``message``) when ``loss`` does not depend on ``inputs`` (instead of torch's
    'does not require grad' / 'appears to not have been used in the graph')."""
    if loss.requires_grad:
        (grad,) = torch.autograd.grad(loss, inputs, allow_unused=True, **kwargs)
        if grad is not None:
            return grad
    raise ValueError(message)


def check_logits(logits, labels: torch.Tensor, batch: int, when: bool | None = False) -> None:
    """The model's output must be (N, classes) logits that ``labels`` index (or match in shape);
    (N,) labels are checked to lie in [0, classes) as :func:`check_label_values` does (``when``)."""
    if not isinstance(logits, torch.Tensor):
        raise ValueError(f"model must return a (N, classes) logits tensor, got {type(logits).__name__}")
    if logits.dim() != 2 or logits.shape[0] != batch:
        raise ValueError(
            f"model must return (N, classes) logits with N={batch} for a classifier, got shape {tuple(logits.shape)}")
    if labels.dim() == 1:
        if labels.dtype.is_floating_point or labels.dtype == torch.bool:
            raise TypeError(f"labels of shape (N,) must be integer class indices, got {labels.dtype}")
        check_label_values(labels, logits.shape[1], when)
    elif labels.shape != logits.shape:
        raise ValueError(
            f"labels must be (N,) class indices or (N, classes) probabilities matching the logits "
            f"{tuple(logits.shape)}, got {tuple(labels.shape)}")


def classifier_losses(model, inputs: torch.Tensor, labels: torch.Tensor, loss_fn, check: bool | None = False):
    """(per-example losses (N,), logits (N, classes)) of ``model`` on ``inputs``; ``check``: the
    label-range check's ``when`` (see :func:`check_label_values`)."""
    logits = model(inputs)
    check_logits(logits, labels, inputs.shape[0], check)
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


def mean_norm(squared: torch.Tensor) -> torch.Tensor:
    """Mean over examples of the per-example gradient norm of the SUMMED loss (for logging):
    ``mean_b(B sqrt(squared_b)) = sum_b sqrt(squared_b)``, two small kernels."""
    return squared.detach().sqrt().sum()


class SeededNoise:
    """Gaussian draws from a generator (given, or created from ``seed`` on first use on the images'
    device), else from torch's global generator. Both arguments are checked here, as
    :func:`flowtriton.checks.resolve_generator` checks them."""

    def __init__(self, generator=None, seed=None):
        self.generator = check_generator(generator, seed)
        self.seed = check_seed(seed)

    def generator_for(self, like: torch.Tensor) -> torch.Generator | None:
        """The generator (made from ``seed`` on ``like``'s device on first use), or None."""
        if self.generator is None and self.seed is not None:
            self.generator = resolve_generator(None, self.seed, like.device)
        return self.generator


class GradientRegularizer:
    """The call every gradient regularizer shares: ``reg(model, images, labels) -> (loss, parts)``.

    Checks the batch (:func:`prepare_batch`; the [0, 1] range and labels as ``self._check_range``,
    a :class:`RangeCheck`, decides), then returns ``self._loss(model, images, labels, check)``.
    Under ``torch.no_grad()`` the input gradient is still taken and the loss comes back detached.
    """

    def __call__(self, model, images: torch.Tensor, labels: torch.Tensor):
        images, labels = prepare_batch(type(self).__name__, images, labels)
        check = self._check_range(images)
        if torch.is_grad_enabled():
            return self._loss(model, images, labels, check)
        with torch.enable_grad():  # under torch.no_grad(): the values, detached
            loss, parts = self._loss(model, images, labels, check)
        return loss.detach(), parts
