"""``InputGradReg``: input-gradient regularization (double backpropagation; Drucker & LeCun,
Ross & Doshi-Velez 2018), the baseline FGR is compared with."""

from __future__ import annotations

import torch

from ..checks import check_choice, check_number
from ..backend import check_backend
from ..ops import flow_gradient
from .common import (
    GradientRegularizer,
    REDUCTIONS,
    RangeCheck,
    classifier_losses,
    mean_norm,
    per_example_cross_entropy,
)
from .functional import igr_exact

DEFAULT_IGR_LAM = 3000.0
"""The library's one default IGR weight (``reduction='paper'``): ``InputGradReg()`` and
``flowtriton train --method igr`` use it. Small weights do nothing measurable (lam 1 left the
small CNN's input-gradient norm on MNIST unchanged); 3000 lowers it by about a tenth at batch 128
and a fifth at batch 64 without costing clean accuracy."""


class InputGradReg(GradientRegularizer):
    """``loss, parts = reg(model, images, labels)`` with ``loss = L + lam * penalty``.

    ``L`` is the batch mean of ``loss_fn`` (per-example losses, default cross-entropy);
    ``penalty`` the squared L2 norm of ``dL/dimages`` (pixel values in [0, 1]), reduced over the
    batch by ``reduction`` exactly as :class:`FlowGradReg` does ('paper': ``mean_b ||dL/dx_b||^2``
    of the batch-mean loss, i.e. 1/B^2 times the per-example mean; 'mean': batch-size free;
    'sum': Ross & Doshi-Velez's sum over the batch, without their 1/2). The penalty is
    backpropagated through the network by double backpropagation (``create_graph=True``).

    ``parts`` (detached): 'ce', 'penalty', 'input_grad_norm' (mean per-example L2 norm of the
    summed loss's input gradient), 'flow_grad_norm' (the same gradient seen as a flow gradient,
    normalized units, forward scheme: lets IGR and FGR runs be compared), 'loss', 'logits'.
    Images, labels, empty batches, ``torch.no_grad()`` / ``torch.inference_mode()`` and models
    that ignore their input are handled as :class:`FlowGradReg` handles them. The penalty itself
    is :func:`flowtriton.igr_penalty`.

    Args:
        lam: penalty weight (>= 0; default :data:`DEFAULT_IGR_LAM`).
        loss_fn: ``loss_fn(logits, labels) -> (N,)`` per-example losses (default cross-entropy).
        reduction: 'paper' (default), 'mean' or 'sum', as above.
        backend: backend of the flowtriton ops behind 'flow_grad_norm' ('auto', 'triton', 'torch'
            or None).

    Example:
        >>> from flowtriton.regularizers import InputGradReg
        >>> _ = torch.manual_seed(0)
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 3))
        >>> images, labels = torch.rand(2, 1, 8, 8), torch.tensor([0, 1])
        >>> loss, parts = InputGradReg(lam=3000.0)(model, images, labels)
        >>> loss.shape, loss.requires_grad, sorted(parts)
        (torch.Size([]), True, ['ce', 'flow_grad_norm', 'input_grad_norm', 'logits', 'loss', 'penalty'])
        >>> bool(torch.isclose(loss, parts["ce"] + 3000.0 * parts["penalty"]))
        True
        >>> loss.backward()  # then optimizer.step()
    """

    def __init__(self, lam: float = DEFAULT_IGR_LAM, loss_fn=None, reduction: str = "paper",
                 backend: str | None = None):
        self.lam = check_number(lam, "lam")
        self.reduction = check_choice(reduction, REDUCTIONS, "reduction")
        self.loss_fn = per_example_cross_entropy if loss_fn is None else loss_fn
        self.backend = check_backend(backend)
        self._check_range = RangeCheck()

    def __repr__(self) -> str:
        return f"InputGradReg(lam={self.lam}, reduction={self.reduction!r})"

    def _loss(self, model, images, labels, check):
        z = images.detach().requires_grad_(True)
        losses, logits = classifier_losses(model, z, labels, self.loss_fn, check)
        ce = losses.mean()
        if self.lam == 0:
            nan = torch.full((), float("nan"), device=ce.device)
            return ce, {"ce": ce.detach(), "penalty": torch.zeros((), device=ce.device), "input_grad_norm": nan,
                        "flow_grad_norm": nan, "loss": ce.detach(), "logits": logits.detach()}
        penalty, squared, grad_image = igr_exact(ce, z, self.reduction)
        loss = ce + self.lam * penalty
        with torch.no_grad(), torch.autocast(images.device.type, enabled=False):
            field = flow_gradient(z.detach(), grad_image.detach().to(z.dtype), "forward", backend=self.backend,
                                  units="normalized")
            flow_sq = field.flatten(1).square().sum(1)
        return loss, {"ce": ce.detach(), "penalty": penalty.detach(), "input_grad_norm": mean_norm(squared),
                      "flow_grad_norm": mean_norm(flow_sq), "loss": loss.detach(), "logits": logits.detach()}
