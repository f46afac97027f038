"""Flow attacks: the paper's multi-step attack (FlowPGD), ADef, stAdv, rotation + translation,
and :func:`evaluate` for robust-accuracy tables.

Every attack: ``attack = Attack(model, ...)``; ``adv = attack(images, labels)`` or
``result = attack.run(images, labels)`` (:class:`AttackResult`: images, flow in pixels
(N, 2, H, W), success, predictions, T-norm / L-inf / L2 of the flow in pixels, iterations).
"""

from .adef import ADef
from .base import AttackResult, FlowAttack, flow_norms
from .evaluate import EvaluationResult, EvaluationRow, evaluate
from .flow_pgd import FlowPGD
from .spatial import RotationTranslation, rigid_flow
from .stadv import StAdv, flow_smoothness

__all__ = [
    "ADef",
    "AttackResult",
    "EvaluationResult",
    "EvaluationRow",
    "FlowAttack",
    "FlowPGD",
    "RotationTranslation",
    "StAdv",
    "evaluate",
    "flow_norms",
    "flow_smoothness",
    "rigid_flow",
]
