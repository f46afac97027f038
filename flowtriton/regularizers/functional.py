"""The functional primitives under the regularizers, for training loops that compute their own loss.

``fgr_penalty(loss, images)`` is the flow gradient penalty of any scalar ``loss`` computed from
``images`` (a tensor that requires grad): the squared norm of ``d loss / d flow`` at zero flow,
reduced over the batch. ``igr_penalty(loss, images)`` is the input-gradient (double
backpropagation) penalty on the same scale. ``fgr_random_start(images)`` is FGR's random start.
:class:`~flowtriton.FlowGradReg` and :class:`~flowtriton.InputGradReg` are thin wrappers over
these three.

A custom loop (several loss terms, a model returning a dict)::

    import flowtriton, torch.nn.functional as F

    lam = flowtriton.DEFAULT_FGR_LAM
    for images, labels in loader:                         # images (N, C, H, W) in [0, 1]
        x = flowtriton.fgr_random_start(images).requires_grad_(True)
        out = model(x)
        ce = F.cross_entropy(out["logits"], labels)       # the batch mean
        penalty = flowtriton.fgr_penalty(ce, x)           # scalar, differentiable
        loss = ce + out["aux_loss"] + lam * penalty
        optimizer.zero_grad(); loss.backward(); optimizer.step()

The penalty uses the gradient of ``loss`` only (here the cross-entropy); add the other terms
after. ``fgr_random_start`` checks that the images lie in [0, 1] (its clamp would otherwise turn
[0, 255] images white, and the penalty's own check would then see nothing wrong). Scales
(``reduction``) are those of :mod:`flowtriton.regularizers.common`: with the default 'paper',
``loss`` should be the BATCH MEAN, as in the authors' code.
"""

from __future__ import annotations

import torch

from ..checks import check_choice, check_number
from ..ops import flow_gradient, flow_gradient_penalty, flow_jvp, warp
from ..ops.units import UNITS, unit_scale
from ..reference import SCHEMES
from .common import (
    MODEL_IGNORES_INPUT,
    REDUCTIONS,
    RangeCheck,
    check_images,
    check_images_in_range,
    input_gradient,
    reduce_squared_norms,
)

MODES = ("exact", "finite_difference")
FD_PERTURBATIONS = ("linear", "warp")
DEFAULT_SIGMA = 0.01      # random-start std, normalized units (the authors' value)
DEFAULT_FD_STEP = 0.01    # finite-difference step, in ``units``

LOSS_IGNORES_IMAGES = ("loss does not depend on images: compute it from them "
                       "(x = images.requires_grad_(True); loss = f(model(x))), with a model that uses its input")

# ``check_range=None`` on CUDA: each primitive checks the first CUDA batch of the process (one host
# sync), as a regularizer checks its first call; later CUDA calls stay sync-free.
_FIRST_CALL = {"fgr_random_start": RangeCheck(), "fgr_penalty": RangeCheck(), "igr_penalty": RangeCheck()}


def _check_range(images, check_range, caller: str) -> None:
    if check_range is None:
        if images.device.type == "cuda":
            _FIRST_CALL[caller](images)
        else:
            check_images_in_range(images, None)
    elif not isinstance(check_range, bool):
        raise TypeError(f"check_range must be True, False or None, got {type(check_range).__name__}")
    else:
        check_images_in_range(images, check_range)


def _check_loss_and_images(loss, images, per_example: bool) -> torch.Tensor:
    """The scalar loss to differentiate (the mean of per-example losses)."""
    check_images(images)
    if not images.requires_grad:
        raise ValueError("images must require grad and be the tensor loss was computed from "
                         "(x = images.requires_grad_(True); loss = f(model(x)))")
    if not isinstance(loss, torch.Tensor) or not loss.is_floating_point():
        raise TypeError(f"loss must be a floating torch.Tensor, got {type(loss).__name__}")
    if not torch.compiler.is_compiling() and torch.is_inference_mode_enabled():
        raise RuntimeError("the penalty cannot be computed under torch.inference_mode(): it needs d loss / d images, "
                           "which inference mode disables; compute it outside that block")
    if loss.grad_fn is None:
        hint = "" if torch.is_grad_enabled() else " (gradients are disabled here: torch.no_grad()?)"
        raise ValueError(f"loss has no autograd graph{hint}: compute it from images that require grad")
    batch = images.shape[0]
    if per_example and loss.shape != (batch,):
        raise ValueError(f"mode='finite_difference' needs per-example losses of shape ({batch},), "
                         f"got {tuple(loss.shape)}")
    if loss.dim() == 1 and loss.shape[0] == batch:
        return loss.mean()
    if loss.dim() != 0:
        raise ValueError(f"loss must be a scalar (the batch mean) or per-example losses ({batch},), "
                         f"got shape {tuple(loss.shape)}")
    return loss


def fgr_random_start(images: torch.Tensor, sigma: float = DEFAULT_SIGMA, units: str = "normalized",
                     generator: torch.Generator | None = None, backend: str | None = None, *,
                     check_range: bool | None = None) -> torch.Tensor:
    """FGR's random start: the images warped by a small random flow (the authors' random start).

    The images are checked as :func:`fgr_penalty` checks them (ValueError naming ``images``
    outside [0, 1]; the clamp would otherwise turn [0, 255] images white and hide them from every
    later check).

    Args:
        images: (N, C, H, W) in [0, 1].
        sigma: std of the random flow, in ``units`` (default 0.01); 0: no random start.
        units: 'normalized' (default; x: (W-1)/2 px, y: (H-1)/2 px) or 'pixels'.
        generator: a ``torch.Generator`` for the draw (default: torch's global generator).
        backend: backend of the warp ('auto', 'triton', 'torch' or None).
        check_range: True always, False never (the caller checked), None: every call off CUDA and
            the first CUDA call of the process (one host sync; later CUDA calls stay sync-free).

    Returns:
        Detached (N, C, H, W) ``clamp(warp(images, n, 'zeros'), 0, 1)``, ``n ~ N(0, sigma^2)``
        drawn per pixel and flow component in ``units``; ``images``, detached, when ``sigma`` is 0.

    Example:
        >>> from flowtriton.regularizers import fgr_random_start
        >>> _ = torch.manual_seed(0)
        >>> images = torch.rand(2, 1, 8, 8)
        >>> moved = fgr_random_start(images, sigma=0.01)
        >>> moved.shape, moved.requires_grad, bool(moved.min() >= 0 and moved.max() <= 1)
        (torch.Size([2, 1, 8, 8]), False, True)
        >>> torch.equal(fgr_random_start(images, sigma=0.0), images)
        True
    """
    check_images(images)
    sigma = check_number(sigma, "sigma")
    check_choice(units, UNITS, "units")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    _check_range(images, check_range, "fgr_random_start")
    images = images.detach()
    if not torch.compiler.is_compiling() and images.is_inference():
        images = images.clone()
    if sigma == 0:
        return images
    n, _, h, w = images.shape
    if generator is None:
        noise = torch.randn((n, 2, h, w), dtype=images.dtype, device=images.device)
    else:
        noise = torch.randn((n, 2, h, w), generator=generator, dtype=images.dtype, device=generator.device)
        noise = noise.to(images.device)
    with torch.no_grad():
        flow = noise.mul_(unit_scale(h, w, units, noise, factor=sigma))  # one kernel
        return warp(images, flow, "zeros", backend=backend).clamp_(0.0, 1.0)


def fgr_penalty(loss: torch.Tensor, images: torch.Tensor, *, scheme: str = "forward", units: str = "normalized",
                reduction: str = "paper", mode: str = "exact", loss_at=None, fd_step: float = DEFAULT_FD_STEP,
                fd_perturbation: str = "linear", backend: str | None = None,
                check_range: bool | None = None) -> torch.Tensor:
    """Scalar flow gradient penalty of ``loss`` w.r.t. a flow warping ``images``, at zero flow.

    ValueError when ``loss`` does not depend on ``images``; RuntimeError under
    ``torch.inference_mode()``. See :class:`~flowtriton.FlowGradReg` for the details.

    Args:
        loss: a scalar computed from ``images`` (for ``reduction='paper'`` the batch mean) or (N,)
            per-example losses (their mean is used).
        images: (N, C, H, W) in [0, 1] that require grad.
        scheme: 'forward' (default: the authors' clamped-sampler derivative) or 'central'.
        units: 'normalized' (default) or 'pixels': the unit of the flow.
        reduction: 'paper' (default), 'mean' or 'sum' (see Returns).
        mode: 'exact' (default): differentiable (double backpropagation: the input gradient is
            taken with ``create_graph=True``); nothing is accumulated into ``.grad``.
            'finite_difference' (first-order gradients only): ``loss`` must be the (N,) per-example
            losses; ``d_b = (l_b(moved) - l_b) / fd_step`` along the detached, normalized flow
            gradient estimates each example's gradient norm.
        loss_at: ``loss_at(moved_images) -> (N,)`` re-evaluates the per-example losses
            ('finite_difference' only).
        fd_step: finite-difference step, in ``units`` (default 0.01).
        fd_perturbation: 'linear' (default: the scheme's first-order image change) or 'warp' (a
            real warp with border padding).
        backend: backend of the flowtriton ops ('auto', 'triton', 'torch' or None).
        check_range: the [0, 1] check on ``images`` (True always, False never, None: every call
            off CUDA and the first CUDA call of the process, so later CUDA training steps need no
            host sync; under ``torch.compile`` it adds no graph break).

    Returns:
        Scalar: ``reduction`` over examples of ``||d loss / d flow_b||^2`` (loss^2 per
        ``units``^2): 'paper' the mean, 'mean' ``B^2`` times it (batch-size free), 'sum' ``B^2``
        times the sum.

    Example:
        >>> import torch.nn.functional as F
        >>> from flowtriton.regularizers import fgr_penalty
        >>> _ = torch.manual_seed(0)
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 3))
        >>> x = torch.rand(2, 1, 8, 8).requires_grad_(True)
        >>> labels = torch.tensor([0, 1])
        >>> ce = F.cross_entropy(model(x), labels)  # the batch mean
        >>> penalty = fgr_penalty(ce, x)
        >>> penalty.shape, penalty.requires_grad, bool(penalty >= 0)
        (torch.Size([]), True, True)
        >>> (ce + 200.0 * penalty).backward()  # then optimizer.step()
    """
    scheme = check_choice(scheme, SCHEMES, "scheme")
    units = check_choice(units, UNITS, "units")
    reduction = check_choice(reduction, REDUCTIONS, "reduction")
    mode = check_choice(mode, MODES, "mode")
    mean_loss = _check_loss_and_images(loss, images, per_example=mode == "finite_difference")
    _check_range(images, check_range, "fgr_penalty")
    if mode == "exact":
        return fgr_exact(mean_loss, images, scheme, units, reduction, backend, LOSS_IGNORES_IMAGES)[0]
    if not callable(loss_at):
        raise TypeError("mode='finite_difference' needs loss_at(moved_images) -> (N,) per-example losses")
    return fgr_finite_difference(loss, images, loss_at, scheme, units, reduction,
                                 check_number(fd_step, "fd_step", strict=True),
                                 check_choice(fd_perturbation, FD_PERTURBATIONS, "fd_perturbation"), backend,
                                 LOSS_IGNORES_IMAGES)[0]


def fgr_exact(mean_loss, images, scheme, units, reduction, backend, ignored=MODEL_IGNORES_INPUT):
    """(penalty, per-example squared flow-gradient norms (N,), input gradient (N, C, H, W)); no
    checks but one: ValueError(``ignored``) when the loss does not depend on ``images``."""
    grad_image = input_gradient(mean_loss, images, ignored, create_graph=True)
    with torch.autocast(images.device.type, enabled=False):
        # A leaf image gets no gradient from the penalty (skip that work); images computed by
        # trainable layers keep their path, so those layers see the penalty's full gradient.
        x = images if images.grad_fn is not None else images.detach()
        squared = flow_gradient_penalty(x, grad_image.to(images.dtype), scheme, backend=backend,
                                        units=units)
        penalty = reduce_squared_norms(squared, reduction, images.shape[0])
    return penalty, squared, grad_image


def fgr_finite_difference(losses, images, loss_at, scheme, units, reduction, fd_step, fd_perturbation, backend,
                          ignored=MODEL_IGNORES_INPUT):
    """(penalty, per-example squared flow-gradient norms (N,), input gradient); no checks but
    one: ValueError(``ignored``) when the losses do not depend on ``images``."""
    batch = images.shape[0]
    grad_image = input_gradient(losses.mean(), images, ignored, retain_graph=True)
    x = images.detach()
    with torch.no_grad(), torch.autocast(x.device.type, enabled=False):
        field = flow_gradient(x, grad_image.to(x.dtype), scheme, backend=backend, units=units)
        squared = field.flatten(1).square().sum(1)
        norms = squared.sqrt().view(-1, 1, 1, 1)
        direction = torch.where(norms > 0, field / norms.clamp_min(torch.finfo(field.dtype).tiny), 0.0)
        step = direction.mul_(unit_scale(x.shape[2], x.shape[3], units, direction, factor=fd_step))
        if fd_perturbation == "warp":
            moved = warp(x, step, "border", backend=backend)
        else:
            moved = x + flow_jvp(x, step, scheme, backend=backend)
    moved_losses = loss_at(moved)
    if not isinstance(moved_losses, torch.Tensor) or moved_losses.shape != (batch,):
        shape = tuple(moved_losses.shape) if isinstance(moved_losses, torch.Tensor) else type(moved_losses).__name__
        raise ValueError(f"loss_at must return per-example losses of shape ({batch},), got {shape}")
    slopes = (moved_losses - losses) / fd_step  # (N,), ~ per-example flow gradient norm
    penalty = reduce_squared_norms(slopes.square() / batch**2, reduction, batch)
    return penalty, squared, grad_image


def igr_penalty(loss: torch.Tensor, images: torch.Tensor, *, reduction: str = "paper",
                check_range: bool | None = None) -> torch.Tensor:
    """Scalar input-gradient penalty (double backpropagation), on the scale of :func:`fgr_penalty`.

    Args:
        loss: a scalar computed from ``images`` (for ``reduction='paper'`` the batch mean) or (N,)
            per-example losses (their mean is used), as in :func:`fgr_penalty`.
        images: (N, C, H, W) in [0, 1] that require grad.
        reduction: 'paper' (default), 'mean' or 'sum', as in :func:`fgr_penalty`.
        check_range: the [0, 1] check on ``images``, as in :func:`fgr_penalty`.

    Returns:
        Scalar: ``reduction`` over examples of ``||d loss / d images_b||^2`` (pixel values in
        [0, 1]), differentiable.

    Example:
        >>> import torch.nn.functional as F
        >>> from flowtriton.regularizers import igr_penalty
        >>> _ = torch.manual_seed(0)
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 3))
        >>> x = torch.rand(2, 1, 8, 8).requires_grad_(True)
        >>> ce = F.cross_entropy(model(x), torch.tensor([0, 1]))
        >>> penalty = igr_penalty(ce, x)  # 'paper': mean_b ||d ce / d x_b||^2
        >>> (grad,) = torch.autograd.grad(ce, x, retain_graph=True)
        >>> bool(torch.isclose(penalty, grad.flatten(1).square().sum(1).mean())), penalty.requires_grad
        (True, True)
    """
    reduction = check_choice(reduction, REDUCTIONS, "reduction")
    mean_loss = _check_loss_and_images(loss, images, per_example=False)
    _check_range(images, check_range, "igr_penalty")
    return igr_exact(mean_loss, images, reduction, LOSS_IGNORES_IMAGES)[0]


def igr_exact(mean_loss, images, reduction, ignored=MODEL_IGNORES_INPUT):
    """(penalty, per-example squared input-gradient norms (N,), input gradient); no checks but
    one: ValueError(``ignored``) when the loss does not depend on ``images``."""
    grad_image = input_gradient(mean_loss, images, ignored, create_graph=True)
    squared = grad_image.flatten(1).square().sum(1)
    return reduce_squared_norms(squared, reduction, images.shape[0]), squared, grad_image
