"""Evaluation presets: fixed, versioned attack suites for :func:`flowtriton.attacks.evaluate`.

A preset names every attack, its settings and the default budgets of each budget kind; a result
evaluated with a preset records the preset's name and version, every attack's settings and the
library commit (:func:`library_commit`). A preset's version changes whenever anything it runs
changes, so two numbers quoted with the same name and version were measured the same way.

Budget kinds (each attack's ``budget_kind`` and ``budget_units``, :class:`~flowtriton.attacks.FlowAttack`):
'linf' (FlowPGD and RandomFlow: eps per flow component, NORMALIZED units, 1 unit = (size - 1) / 2 px
per axis), 'tnorm' (ADef and StAdv, minimum-norm: a T-norm in PIXELS), none (rotation +
translation: one run over its grid).
"""

from __future__ import annotations

import functools
import subprocess
from pathlib import Path

from .adef import ADef
from .flow_pgd import FlowPGD
from .random_flow import RandomFlow
from .spatial import RotationTranslation
from .stadv import StAdv

LINF_BUDGETS = [0.005, 0.01, 0.02, 0.04]   # normalized units, per flow component
TNORM_BUDGETS = [0.25, 0.5, 1.0, 2.0]      # pixels
#: The units of each budget kind's budgets (every preset attack's ``budget_units``).
BUDGET_UNITS = {"linf": "normalized", "tnorm": "pixels"}


def _standard(model, classes: int) -> dict:
    return {
        "flowpgd": FlowPGD.preset("standard", model, eps=0.01, units="normalized", seed=0),
        "random": RandomFlow.preset("standard", model, eps=0.01, units="normalized", seed=0),
        "adef": ADef(model, candidates=range(1, classes), steps=100, smooth=0.5, overshoot=1.2),
        "stadv": StAdv.preset("standard", model),
        # the cheap search finds small flows the full-strength one misses on some images (a 20-step
        # first tau step that fails lowers tau early): a second minimum-norm member, ~41 passes
        "stadv-fast": StAdv.preset("fast", model),
        "rt": RotationTranslation(model),
    }


def _paper(model, classes: int) -> dict:
    return {
        "flowpgd": FlowPGD.preset("paper", model, eps=0.01, steps=100, units="normalized"),
        "adef": ADef(model, candidates=range(1, classes), steps=100, smooth=0.5, overshoot=1.2),
        "stadv": StAdv.preset("fast", model),
        "rt": RotationTranslation(model),
    }


def _fast(model, classes: int) -> dict:
    return {
        "flowpgd": FlowPGD.preset("paper", model, eps=0.01, steps=20, units="normalized"),
        "adef": ADef(model, candidates=range(1, min(classes, 4)), steps=20, smooth=0.5, overshoot=1.2),
        "stadv": StAdv.preset("fast", model),
        "rt": RotationTranslation(model, max_rotation=15.0, max_translation=2.0, num_rotations=5,
                                  num_translations=3),
    }


#: name -> {'version', 'build' (model, classes) -> {attack name: attack}, 'kinds' {attack: budget
#: kind, as the attack's ``budget_kind`` says}, 'linf_budgets', 'tnorm_budgets', 'description'}.
EVALUATION_PRESETS = {
    "standard": {
        "version": 3, "build": _standard,
        "kinds": {"flowpgd": "linf", "random": "linf", "adef": "tnorm", "stadv": "tnorm", "stadv-fast": "tnorm",
                  "rt": None},
        "linf_budgets": LINF_BUDGETS, "tnorm_budgets": TNORM_BUDGETS,
        "description": "flow L-inf: FlowPGD at its defaults (APGD schedule, cross-entropy and margin, a zero and a "
                       "random start each, best iterate) and RandomFlow (64 random flows on the box's faces, the "
                       "gradient-masking canary); flow T-norm: ADef (every label, 100 iterations, smooth 0.5, "
                       "overshoot 1.2) and StAdv at its defaults (5 tau search steps x 100 Adam steps, "
                       "each from zero flow, keeping per image the successful flow of smallest T-norm; version 1: "
                       "warm starts and the smallest smoothness loss L_flow) and StAdv preset 'fast' (2 x 20 steps, "
                       "keeping the smoothest flow; added in version 3: it finds small flows the full search misses "
                       "on some images); rotation + translation: the 5 x 5 x 5 "
                       "grid (30 degrees, 3 px). Worst case per image at each budget over every attack whose "
                       "successful flow lies within it.",
    },
    "paper": {
        "version": 1, "build": _paper,
        "kinds": {"flowpgd": "linf", "adef": "tnorm", "stadv": "tnorm", "rt": None},
        "linf_budgets": LINF_BUDGETS, "tnorm_budgets": TNORM_BUDGETS,
        "description": "the suite flowtriton evaluate ran before the standard preset (--size full), bit for bit: "
                       "the FGR authors' 100-step FlowPGD, ADef as in 'standard', StAdv preset 'fast' (2 x 20 "
                       "Adam steps), the 5 x 5 x 5 rotation + translation grid. For comparisons with results "
                       "computed before; weak on robust models.",
    },
    "fast": {
        "version": 1, "build": _fast,
        "kinds": {"flowpgd": "linf", "adef": "tnorm", "stadv": "tnorm", "rt": None},
        "linf_budgets": LINF_BUDGETS, "tnorm_budgets": TNORM_BUDGETS,
        "description": "cheap, for smoke tests and quick looks (--size small before, bit for bit): the authors' "
                       "FlowPGD with 20 steps, ADef (3 labels, 20 iterations), StAdv preset 'fast', a 5 x 3 x 3 "
                       "rotation + translation grid (15 degrees, 2 px). Not for quoting.",
    },
}


def check_preset(name) -> dict:
    if not isinstance(name, str) or name not in EVALUATION_PRESETS:
        raise ValueError(f"preset must be one of {tuple(EVALUATION_PRESETS)}, got {name!r}")
    return EVALUATION_PRESETS[name]


def preset_suite(model, name: str = "standard", num_classes: int = 10, names=None, linf_budgets=None,
                 tnorm_budgets=None) -> tuple[dict, dict]:
    """The attacks and budgets of an evaluation preset (:data:`EVALUATION_PRESETS`), built on ``model``.

    Args:
        model: the classifier the attacks are built on.
        name: the preset: 'standard' (default), 'paper' or 'fast'.
        num_classes: the model's class count (ADef's candidate labels).
        names: a subset of the preset's attacks (default all, in the preset's order).
        linf_budgets: L-inf budgets (normalized units) replacing the preset's.
        tnorm_budgets: T-norm budgets (pixels) replacing the preset's.

    Returns:
        ({attack name: attack}, {attack name: budgets}): the budgets of every attack that has a
        budget kind (none for rotation + translation), ready for :func:`evaluate`.

    Example:
        >>> from flowtriton.attacks import preset_suite
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 3))
        >>> attacks, budgets = preset_suite(model, "fast", num_classes=3)
        >>> list(attacks), budgets["flowpgd"], budgets["adef"]
        (['flowpgd', 'adef', 'stadv', 'rt'], [0.005, 0.01, 0.02, 0.04], [0.25, 0.5, 1.0, 2.0])
        >>> attacks, budgets = preset_suite(model, "standard", names=["flowpgd"], linf_budgets=[0.02])
        >>> budgets
        {'flowpgd': [0.02]}
    """
    spec = check_preset(name)
    attacks = spec["build"](model, int(num_classes))
    if names is not None:
        if isinstance(names, str):
            names = [names]
        unknown = [n for n in names if n not in attacks]
        if unknown:
            raise ValueError(f"preset {name!r} has no attack {unknown}; its attacks: {list(attacks)}")
        attacks = {n: attacks[n] for n in attacks if n in set(names)}
    budgets = {"linf": list(spec["linf_budgets"] if linf_budgets is None else linf_budgets),
               "tnorm": list(spec["tnorm_budgets"] if tnorm_budgets is None else tnorm_budgets)}
    plan = {}
    for n, attack in attacks.items():
        kind = attack.budget_kind
        if kind != spec["kinds"][n] or (kind is not None and attack.budget_units != BUDGET_UNITS[kind]):
            raise RuntimeError(f"preset {name!r}: attack {n!r} has budget kind {kind!r} in {attack.budget_units!r}, "
                               f"the preset declares {spec['kinds'][n]!r}")
        if kind is not None:
            plan[n] = budgets[kind]
    return attacks, plan


@functools.lru_cache(maxsize=1)
def library_commit() -> dict:
    """The git commit of the flowtriton checkout in use, as evaluation protocols record it.

    Looked up once per process.

    Returns:
        {'commit': ``git rev-parse HEAD`` of the checkout flowtriton is imported from, else
        'unknown'; 'uncommitted_changes': whether ``git status`` lists changes in the package
        folder or, in a source checkout, in ``kernels/`` (True / False), 'unknown' without git}.

    Example:
        >>> from flowtriton.attacks import library_commit
        >>> info = library_commit()
        >>> sorted(info)
        ['commit', 'uncommitted_changes']
        >>> info["commit"] == "unknown" or len(info["commit"]) == 40
        True
    """
    package = Path(__file__).resolve().parents[1]
    out = {"commit": "unknown", "uncommitted_changes": "unknown"}
    try:
        head = subprocess.run(["git", "-C", str(package), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10)
        if head.returncode == 0 and head.stdout.strip():
            out["commit"] = head.stdout.strip()
            # the package and, in a source checkout, the kernels installed as flowtriton.kernels
            paths = ["."] + (["../kernels"] if (package.parent / "kernels").is_dir() else [])
            status = subprocess.run(["git", "-C", str(package), "status", "--porcelain", "--", *paths],
                                    capture_output=True, text=True, timeout=30)
            if status.returncode == 0:
                out["uncommitted_changes"] = bool(status.stdout.strip())
    except (OSError, subprocess.SubprocessError):
        pass
    return out


def protocol(attacks: dict, budgets: dict, preset: str | None = None) -> dict:
    """What an evaluation ran, JSON-ready: the preset's name and version (None without one), every
    attack's class and settings and budgets, the library version and commit, torch's version."""
    import torch

    from .. import __version__

    spec = EVALUATION_PRESETS.get(preset) if preset is not None else None
    return {
        "preset": preset, "version": spec["version"] if spec else None,
        "description": spec["description"] if spec else None,
        "attacks": {name: {**attack.settings(), "budgets": [float(b) for b in budgets.get(name, [])]}
                    for name, attack in attacks.items()},
        "library": {"flowtriton": __version__, **library_commit()},
        "torch": torch.__version__,
    }
