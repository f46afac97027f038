"""Flow attacks: FlowPGD (an APGD-style evaluation attack by default; ``FlowPGD.preset('paper')``
is the FGR authors' multi-step attack), ADef, stAdv, rotation + translation, RandomFlow (the
gradient-free canary), and :func:`evaluate` for robust-accuracy tables (``preset='standard'``: the
fixed, versioned ensemble of :mod:`flowtriton.attacks.presets`).

Every attack: ``attack = Attack(model, ...)``; ``adv = attack(images, labels)`` or
``result = attack.run(images, labels)`` (:class:`AttackResult`: images, flow in pixels
(N, 2, H, W), success, predictions, T-norm / L-inf / L2 of the flow in pixels, iterations).
One vocabulary (docs/attacks.md): ``steps`` is every attack's iteration count (ADef's and StAdv's
``max_iter`` is its deprecated spelling); every distance argument is in the attack's ``units``;
``attack.budget_kind`` ('linf', 'tnorm' or None), ``attack.budget_units`` and
``attack.with_budget(b)`` say what a budget is, and :func:`evaluate` asks them.
"""

from .adef import ADef
from .base import AttackResult, FlowAttack, flow_norms
from .evaluate import EvaluationResult, EvaluationRow, evaluate, masking_check
from .flow_pgd import FlowPGD
from .presets import EVALUATION_PRESETS, library_commit, preset_suite
from .random_flow import RandomFlow
from .spatial import RotationTranslation, rigid_flow
from .stadv import StAdv, flow_smoothness

__all__ = [
    "ADef",
    "AttackResult",
    "EVALUATION_PRESETS",
    "EvaluationResult",
    "EvaluationRow",
    "FlowAttack",
    "FlowPGD",
    "RandomFlow",
    "RotationTranslation",
    "StAdv",
    "evaluate",
    "flow_norms",
    "flow_smoothness",
    "library_commit",
    "masking_check",
    "preset_suite",
    "rigid_flow",
]
