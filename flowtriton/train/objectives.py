"""Training objectives: method name -> ``objective(model, images, labels) -> (loss, parts)``.

``parts`` maps names ('ce', 'penalty', 'flow_grad_norm', 'loss', ...) to scalar tensors for
logging. Methods: 'standard' (cross-entropy), 'igr' (input-gradient regularization), 'fgr' (flow
gradient regularization, exact double backward), 'fgr-fd' (FGR by a finite difference, first-order
only), 'at' (adversarial training on FlowPGD examples), 'fgr+at' (FGR applied at FlowPGD examples).
The attack in 'at' runs on ``attack_model`` (the bare module, not a DDP wrapper).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..regularizers.flow import DEFAULT_FGR_LAM
from ..regularizers.input import DEFAULT_IGR_LAM
from .config import METHODS, TrainConfig

# Default regularizer weights (``lam``) per method: the regularizers' own defaults.
DEFAULT_LAM = {"igr": DEFAULT_IGR_LAM, "fgr": DEFAULT_FGR_LAM, "fgr-fd": DEFAULT_FGR_LAM, "fgr+at": DEFAULT_FGR_LAM}


def method_lam(cfg: TrainConfig) -> float | None:
    return cfg.lam if cfg.lam is not None else DEFAULT_LAM.get(cfg.method)


def world_size_scale(reduction: str, world_size: int) -> float:
    """Factor on a regularizer weight that makes a penalty computed on each process's share of
    the batch (and averaged over processes by DDP) equal the penalty of the whole GLOBAL batch.

    With ``reduction='paper'`` the penalty is ``mean_b ||d mean(L) / d tau_b||^2``, so it scales as
    ``1 / B^2``: on a share ``B / W`` it is ``W^2`` times the global one, hence ``1 / W^2``. 'mean'
    is batch-size free (1); 'sum' adds over the share, and DDP's average divides by ``W`` (``W``).
    """
    if reduction == "paper":
        return 1.0 / world_size**2
    if reduction == "sum":
        return float(world_size)
    return 1.0


class Objective:
    """Callable ``(model, images, labels) -> (loss, parts)`` for one training method.

    ``world_size``: the number of DDP processes sharing each global batch; the regularizer weight
    is scaled by :func:`world_size_scale` so ``lam`` means the same at any world size (the logged
    'penalty' is each process's own, on its share of the batch)."""

    def __init__(self, cfg: TrainConfig, attack_model: torch.nn.Module | None = None, world_size: int = 1):
        if cfg.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {cfg.method!r}")
        self.method, self.lam = cfg.method, method_lam(cfg)
        self.regularizer = self.attack = None
        if cfg.method in ("igr", "fgr", "fgr-fd", "fgr+at"):
            from ..regularizers.flow import FlowGradReg
            from ..regularizers.input import InputGradReg

            lam = self.lam * world_size_scale("paper", world_size)  # both regularizers run reduction='paper'
            if cfg.method == "igr":
                self.regularizer = InputGradReg(lam=lam)
            else:
                mode = "finite_difference" if cfg.method == "fgr-fd" else "exact"
                self.regularizer = FlowGradReg(lam=lam, sigma=cfg.sigma, mode=mode)
        if cfg.method in ("at", "fgr+at"):
            if attack_model is None:
                raise ValueError(f"method {cfg.method!r} needs attack_model (the model the attack differentiates)")
            from ..attacks.flow_pgd import FlowPGD

            # The authors' cheap attack (eps / steps sign steps on the cross-entropy, one start, the
            # final iterate), not FlowPGD's evaluation-grade defaults: training stays as it was.
            self.attack = FlowPGD.preset("paper", attack_model, eps=cfg.at_eps, steps=cfg.at_steps, units="normalized")

    def __call__(self, model, images, labels):
        if self.attack is not None:
            images = self.attack(images, labels).detach()
        if self.regularizer is not None:
            loss, parts = self.regularizer(model, images, labels)
            parts = dict(parts)
            parts["loss"] = loss
            return loss, parts
        logits = model(images)
        loss = F.cross_entropy(logits, labels)
        return loss, {"ce": loss, "loss": loss, "logits": logits}
