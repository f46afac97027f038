"""``TransformGradReg``: the unified form -- regularize the loss gradient w.r.t. the parameters of
any differentiable image transformation, taken at the identity (zero parameters).

FGR is the instance "transformation = warp by a flow" (:meth:`TransformGradReg.flow`); an
affine warp (:meth:`TransformGradReg.affine`) regularizes against small rotations, scalings,
shears and translations. Built on :func:`flowtriton.warp`'s double backward; the closed-form
:class:`FlowGradReg` stays the fast path for flows.
"""

from __future__ import annotations

import torch

from ..checks import check_choice, check_number
from ..backend import check_backend
from ..ops import identity_grid, normalized_to_pixels, warp
from ..ops.units import UNITS
from ..reference import PADDING_MODES
from .common import (
    GradientRegularizer,
    REDUCTIONS,
    RangeCheck,
    classifier_losses,
    input_gradient,
    mean_norm,
    per_example_cross_entropy,
    reduce_squared_norms,
)

TRANSFORM_IGNORED = ("model's output does not depend on the transformation's parameters (does the model ignore "
                     "its input, or transform(images, params) not use params?)")


def affine_flow(theta: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Pixel flow of the affine map ``p -> p + theta @ [x, y, 1]`` in normalized coordinates.

    Args:
        theta: (N, 2, 3) affine parameters acting on normalized ([-1, 1], align_corners=True)
            coordinates; zero = identity.
        height: image height H, pixels.
        width: image width W, pixels.

    Returns:
        (N, 2, H, W) flow in pixels, for :func:`flowtriton.warp`.

    Example:
        >>> from flowtriton.regularizers import affine_flow
        >>> theta = torch.zeros(1, 2, 3)
        >>> theta[0, 0, 2] = 2 / 7  # x shift of 2/7 normalized = 1 px on 8 pixels
        >>> flow = affine_flow(theta, 8, 8)
        >>> flow.shape, flow[0, :, 3, 5].round(decimals=4).tolist()
        (torch.Size([1, 2, 8, 8]), [1.0, 0.0])
    """
    if theta.dim() != 3 or theta.shape[1:] != (2, 3):
        raise ValueError(f"theta must have shape (N, 2, 3), got {tuple(theta.shape)}")
    grid = identity_grid(1, height, width, dtype=theta.dtype, device=theta.device)[0]  # (H, W, 2)
    homogeneous = torch.cat((grid, torch.ones_like(grid[..., :1])), dim=-1)  # (H, W, 3)
    flow = torch.einsum("nij,hwj->nihw", theta, homogeneous)
    return normalized_to_pixels(flow)


class TransformGradReg(GradientRegularizer):
    """``loss, parts = reg(model, images, labels)``: ``loss = L + lam * reduction(||dL/dp||^2)``.

    ``transform(images, params) -> images`` must be differentiable twice in ``params``, and
    ``zero_params(images) -> params`` gives the identity parameters (leading dimension N, one set
    per example). ``L`` is the batch mean of ``loss_fn`` (per-example losses, default
    cross-entropy); ``reduction`` as in :class:`FlowGradReg` ('paper' by default, 1/B^2 times
    the per-example mean). ``parts`` (detached): 'ce', 'penalty', 'param_grad_norm', 'loss',
    'logits'. No random start. Images, labels, empty batches, ``torch.no_grad()`` /
    ``torch.inference_mode()`` and models that ignore their input are handled as
    :class:`FlowGradReg` handles them. ``TransformGradReg.flow(...)`` and
    ``TransformGradReg.affine(...)`` build the flow and affine instances.

    Args:
        transform: ``transform(images, params) -> images``, differentiable twice in ``params``.
        zero_params: ``zero_params(images) -> params``, the identity parameters (leading dimension
            N).
        lam: penalty weight (>= 0, default 1).
        loss_fn: ``loss_fn(logits, labels) -> (N,)`` per-example losses (default cross-entropy).
        reduction: 'paper' (default), 'mean' or 'sum', as in :class:`FlowGradReg`.

    Example:
        >>> from flowtriton.regularizers import TransformGradReg
        >>> _ = torch.manual_seed(0)
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 3))
        >>> images, labels = torch.rand(2, 1, 8, 8), torch.tensor([0, 1])
        >>> brightness = TransformGradReg(lambda x, p: x * (1 + p[:, :, None, None]),  # one gain per image
        ...                               lambda x: x.new_zeros(x.shape[0], 1), lam=1.0)
        >>> loss, parts = brightness(model, images, labels)
        >>> loss.shape, sorted(parts)
        (torch.Size([]), ['ce', 'logits', 'loss', 'param_grad_norm', 'penalty'])
        >>> loss, parts = TransformGradReg.affine(lam=1.0)(model, images, labels)  # small affine warps
        >>> loss.requires_grad, bool(parts["penalty"] >= 0)
        (True, True)
    """

    def __init__(self, transform, zero_params, lam: float = 1.0, loss_fn=None, reduction: str = "paper"):
        if not callable(transform) or not callable(zero_params):
            raise TypeError("transform and zero_params must be callables")
        self.transform = transform
        self.zero_params = zero_params
        self.lam = check_number(lam, "lam")
        self.reduction = check_choice(reduction, REDUCTIONS, "reduction")
        self.loss_fn = per_example_cross_entropy if loss_fn is None else loss_fn
        self._check_range = RangeCheck()

    @classmethod
    def flow(cls, lam: float = 1.0, units: str = "normalized", padding_mode: str = "border",
             backend: str | None = None, **kwargs) -> "TransformGradReg":
        """Flow gradient regularization through the warp itself (no closed form). With
        ``padding_mode='border'`` it equals ``FlowGradReg(sigma=0, scheme='forward')``."""
        check_choice(padding_mode, PADDING_MODES, "padding_mode")
        check_choice(units, UNITS, "units")
        check_backend(backend)

        def transform(images, flow):
            return warp(images, normalized_to_pixels(flow) if units == "normalized" else flow, padding_mode,
                        backend=backend)

        def zeros(images):
            n, _, h, w = images.shape
            return images.new_zeros((n, 2, h, w))

        return cls(transform, zeros, lam=lam, **kwargs)

    @classmethod
    def affine(cls, lam: float = 1.0, padding_mode: str = "zeros", backend: str | None = None,
               **kwargs) -> "TransformGradReg":
        """Regularize the gradient w.r.t. a per-example (2, 3) affine matrix (normalized
        coordinates, zero = identity; see :func:`affine_flow`)."""
        check_choice(padding_mode, PADDING_MODES, "padding_mode")
        check_backend(backend)

        def transform(images, theta):
            return warp(images, affine_flow(theta, images.shape[2], images.shape[3]), padding_mode, backend=backend)

        def zeros(images):
            return images.new_zeros((images.shape[0], 2, 3))

        return cls(transform, zeros, lam=lam, **kwargs)

    def _loss(self, model, images, labels, check):
        batch = images.shape[0]
        images = images.detach()
        params = self.zero_params(images)
        if not isinstance(params, torch.Tensor) or params.dim() < 1 or params.shape[0] != batch:
            shape = tuple(params.shape) if isinstance(params, torch.Tensor) else type(params).__name__
            raise ValueError(f"zero_params must return a tensor with leading dimension N={batch}, got {shape}")
        params = params.detach().requires_grad_(True)
        losses, logits = classifier_losses(model, self.transform(images, params), labels, self.loss_fn, check)
        ce = losses.mean()
        grad_params = input_gradient(ce, params, TRANSFORM_IGNORED, create_graph=True)
        squared = grad_params.flatten(1).square().sum(1)
        penalty = reduce_squared_norms(squared, self.reduction, batch)
        loss = ce + self.lam * penalty
        return loss, {"ce": ce.detach(), "penalty": penalty.detach(), "param_grad_norm": mean_norm(squared),
                      "loss": loss.detach(), "logits": logits.detach()}
