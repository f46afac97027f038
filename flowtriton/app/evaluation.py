"""Robustness evaluation of a trained checkpoint: attack suites, results.json / results.md, plots.

Budget units: FlowPGD eps in NORMALIZED flow units (the paper's, 1 unit = (size-1)/2 px, an
L-inf box per flow component); ADef and stAdv are minimum-norm attacks, judged at T-norm budgets
in PIXELS (max over pixels of the flow vector's length); rotation + translation has no budget.
"""

from __future__ import annotations

import json
import math
import numbers
import time
from pathlib import Path

import torch

from ..data import TensorLoader, evaluation_subset, load_dataset
from ..train.checkpoint import load_checkpoint, load_trained_model  # noqa: F401  (part of this module's API)
from ..train.config import TrainConfig
from ..train.distributed import resolve_device
from ..train.engine import resolve_augment

ATTACK_NAMES = ("flowpgd", "adef", "stadv", "rt")
PGD_BUDGETS = [0.005, 0.01, 0.02, 0.04]          # normalized units
TNORM_BUDGETS = [0.25, 0.5, 1.0, 2.0]             # pixels
#: ``size`` (the older spelling) -> evaluation preset: the same suites, bit for bit.
SIZE_PRESETS = {"full": "paper", "small": "fast"}
DEFAULT_PRESET = "standard"


def resolve_preset(preset: str | None = None, size: str | None = None) -> str:
    """The evaluation preset for ``preset`` / ``size`` ('full' = 'paper', 'small' = 'fast'); with
    neither, 'standard'. ValueError when both are given and disagree, or either is unknown."""
    from ..attacks.presets import check_preset

    if size is not None and size not in SIZE_PRESETS:
        raise ValueError(f"size must be 'full' or 'small', got {size!r}")
    if preset is not None:
        check_preset(preset)
        if size is not None and SIZE_PRESETS[size] != preset:
            raise ValueError(f"size {size!r} means preset {SIZE_PRESETS[size]!r}, which contradicts preset {preset!r}: "
                             "give one of them")
        return preset
    return SIZE_PRESETS[size] if size is not None else DEFAULT_PRESET


def check_budgets(values, name: str) -> list[float] | None:
    """Budgets given for a budget kind (``--pgd-budgets``, ``--tnorm-budgets``): None kept (the
    preset's), else a non-empty sequence of finite numbers > 0, each once; returned as floats in
    ascending order. ValueError (TypeError for a non-number) naming ``name``."""
    if values is None:
        return None
    if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
        raise TypeError(f"{name}: expected a list of budgets, got {type(values).__name__}")
    out = []
    for value in values:
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise TypeError(f"{name}: budgets must be numbers, got {value!r}")
        value = float(value)
        if not math.isfinite(value) or value <= 0:
            raise ValueError(f"{name}: budgets must be finite numbers > 0, got {value:g}")
        if value in out:
            raise ValueError(f"{name}: budget {value:g} is given twice")
        out.append(value)
    if not out:
        raise ValueError(f"{name}: give at least one budget")
    return sorted(out)


def build_attacks(model, names=None, size: str = "full", num_classes: int = 10,
                  pgd_budgets=None, tnorm_budgets=None, preset: str | None = None):
    """({name: attack}, {name: budgets}) of an evaluation preset (:mod:`flowtriton.attacks.presets`).

    ``preset``: 'standard' (the full-strength ensemble: FlowPGD's defaults, RandomFlow, ADef over
    every label, StAdv's defaults, the rotation + translation grid), 'paper' or 'fast'. Without a
    preset, ``size`` picks one as before: 'full' = 'paper' (the authors' 100-step FlowPGD, ADef 100
    iterations over every label, StAdv preset 'fast', foolbox's 5x5x5 rotation/translation grid:
    the suite this function built before the standard preset, bit for bit) and 'small' = 'fast'
    (a few steps each: demos and CI). ``names``: a subset of the preset's attacks (default: the
    four of ``ATTACK_NAMES`` without a preset, all of the preset's with one).
    ``pgd_budgets`` (normalized L-inf) and ``tnorm_budgets`` (pixels) replace the default budgets."""
    from ..attacks.presets import preset_suite

    name = resolve_preset(preset, None if preset is not None else size)
    if names is None and preset is None:
        names = ATTACK_NAMES
    return preset_suite(model, name, num_classes, names, linf_budgets=pgd_budgets, tnorm_budgets=tnorm_budgets)


def eval_images(cfg: TrainConfig, split: str, num_examples: int | None, data_dir=None,
                device="cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """(float images (N, C, H, W) in [0, 1] after the test transform, labels) of the first
    ``num_examples`` of ``split`` ('test', or 'val': the held-out part of train)."""
    if split not in ("test", "val"):
        raise ValueError(f"split must be 'test' or 'val', got {split!r}")
    data_dir = data_dir if data_dir is not None else cfg.data_dir
    if split == "test":
        data = load_dataset(cfg.dataset, "test", data_dir, False, cfg.max_per_class)
    else:
        from ..data import split_train_val

        data = split_train_val(load_dataset(cfg.dataset, "train", data_dir, False, cfg.max_per_class),
                               cfg.val_size, cfg.split_seed)[1]
    data = evaluation_subset(data, num_examples)
    loader = TensorLoader(data, len(data), shuffle=False, augment=resolve_augment(cfg, data), train=False,
                          device=device)
    return next(iter(loader))


def gallery_rows(attacks: dict, images: torch.Tensor, labels: torch.Tensor, label: str, index=0,
                 budgets: dict | None = None) -> list:
    """Rows for :func:`flowtriton.app.plots.plot_gallery`, the library's one way of building them:
    every attack of ``attacks`` ({name: attack}, one model's suite) run once on the examples
    ``index`` (an index or a list of them), then per example ``(f"{label}, test image {i} (label
    {y})", original, [GalleryCell per attack: deformed image, flow, success, 'pred P', name])``.
    ``budgets``: {name: budget} to show an attack at another budget than it was built with. For
    several models, call it per model and interleave the rows (``zip``)."""
    from .plots import GalleryCell

    if isinstance(index, torch.Tensor):
        index = index.reshape(-1).tolist()
    picks = [int(i) for i in index] if isinstance(index, (list, tuple, range)) else [int(index)]
    x, y = images[picks], labels[picks]
    results = {}
    for name, attack in attacks.items():
        if budgets and name in budgets:
            attack = attack.with_budget(budgets[name])
        results[name] = attack.run(x, y)
    return [(f"{label}, test image {pick} (label {int(y[i])})", x[i],
             [GalleryCell(r.images[i], r.flow[i], bool(r.success[i]), f"pred {int(r.predictions[i])}", name)
              for name, r in results.items()])
            for i, pick in enumerate(picks)]


def curves_from(result, label: str) -> dict:
    """{(label, attack): (budgets, accuracies)} for the budgeted rows of an EvaluationResult,
    with the clean accuracy at budget 0."""
    curves = {}
    for row in result.rows:
        if row.attack == "clean" or row.budget is None:
            continue
        budgets, accs = curves.setdefault((label, row.attack), ([0.0], [result.clean_accuracy]))
        budgets.append(row.budget)
        accs.append(row.accuracy)
    return curves


def estimate_seconds(suite: dict, budgets: dict, images: torch.Tensor, labels: torch.Tensor,
                     probe: int = 8) -> dict:
    """{attack name: estimated seconds} for attacking all of ``images`` with ``suite``, timed on
    the first ``probe`` images (one run per attack; a budgeted attack that is not minimum-norm runs
    once per budget). Rough: batching makes large batches cheaper per image than the probe."""
    x, y = images[:probe], labels[:probe].long()
    from ..attacks.evaluate import runs_per_batch

    scale = images.shape[0] / max(x.shape[0], 1)
    estimates = {}
    for name, attack in suite.items():
        runs = runs_per_batch(attack, budgets.get(name))
        started = time.perf_counter()
        attack.run(x, y)
        estimates[name] = (time.perf_counter() - started) * scale * runs
    return estimates


def format_seconds(seconds: float) -> str:
    """'42 s', '7.5 min' or '2.1 h'."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def evaluate_checkpoint(checkpoint: str | Path, out_dir: str | Path, attacks=None, size: str | None = None,
                        split: str = "test", num_examples: int | None = 1000, batch_size: int = 256,
                        device: str = "auto", data_dir=None, plots: bool = True, progress: bool = True,
                        say=None, preset: str | None = None, pgd_budgets=None, tnorm_budgets=None):
    """Attack a checkpoint with an evaluation preset; write ``results.json`` and ``results.md``
    (and plots) to ``out_dir``. ``preset``: 'standard' (default), 'paper' or 'fast'; ``size``, the
    older spelling, maps 'full' to 'paper' and 'small' to 'fast'. ``attacks``: a subset of the
    preset's attack names (default all). ``pgd_budgets``: L-inf budgets of FlowPGD and RandomFlow
    (normalized units), ``tnorm_budgets``: T-norm budgets of ADef and StAdv (pixels); each a list
    of finite numbers > 0 (:func:`check_budgets`), default the preset's. results.json holds the
    table, the budgets ('budgets': those used, 'budgets_given': the arguments), the gradient-masking
    check ('masking_check') and the protocol ('protocol': preset name and version, every attack's
    settings and budgets, library version and commit). ``say``: a callable given one line (e.g.
    ``print``): what is attacked and the estimated time (:func:`estimate_seconds`) before the
    attacks start, and a warning when the masking check fires. Returns the
    :class:`flowtriton.attacks.EvaluationResult`."""
    from ..attacks import evaluate
    from ..attacks.presets import EVALUATION_PRESETS

    name = resolve_preset(preset, size)
    pgd_budgets = check_budgets(pgd_budgets, "pgd_budgets")
    tnorm_budgets = check_budgets(tnorm_budgets, "tnorm_budgets")
    spec = EVALUATION_PRESETS[name]
    plan = {"linf": list(spec["linf_budgets"]) if pgd_budgets is None else pgd_budgets,
            "tnorm": list(spec["tnorm_budgets"]) if tnorm_budgets is None else tnorm_budgets}
    dev = resolve_device(device)
    model, cfg, _ = load_trained_model(checkpoint, dev)
    images, labels = eval_images(cfg, split, num_examples, data_dir, dev)
    classes = int(labels.max()) + 1
    with torch.no_grad():
        classes = max(classes, int(model(images[:1]).shape[1]))
    suite, budgets = build_attacks(model, attacks, num_classes=classes, preset=name, pgd_budgets=plan["linf"],
                                   tnorm_budgets=plan["tnorm"])
    if say is not None:
        estimates = estimate_seconds(suite, budgets, images, labels)
        parts = ", ".join(f"{n} {format_seconds(sec)}" for n, sec in estimates.items())
        say(f"attacking {labels.numel()} {split} images of {checkpoint} on {dev} with preset {name!r}: about "
            f"{format_seconds(sum(estimates.values()))} ({parts}; timed on {min(8, labels.numel())} images). "
            "For a quicker look: --preset fast, --num-examples, --attacks")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"checkpoint": str(checkpoint), "model": cfg.model, "method": cfg.method, "dataset": cfg.dataset,
            "split": split, "examples": int(labels.numel()), "preset": name, "size": size,
            "budgets": {"linf": plan["linf"], "tnorm": plan["tnorm"]},
            "budgets_given": {"pgd_budgets": pgd_budgets, "tnorm_budgets": tnorm_budgets},
            "units": {"flowpgd": "normalized (L-inf per flow component)", "random": "normalized (L-inf per flow "
                      "component)", "adef": "pixels (T-norm)", "stadv": "pixels (T-norm)",
                      "stadv-fast": "pixels (T-norm)",
                      "union": "pixels (T-norm) where budgeted: the worst case per example over the attacks at that "
                      "budget; no budget: over every attack run",
                      "worst-case-linf": "normalized (L-inf per flow component): no attack's successful flow "
                      "within the box", "worst-case-tnorm": "pixels (T-norm): no attack's successful flow within "
                      "the ball"}}
    title = f"# {cfg.method} {cfg.model} on {cfg.dataset} ({split}, {labels.numel()} examples, preset {name})\n\n"

    def write(result, done: list) -> None:
        """results.json / results.md for the attacks finished so far (rewritten after each)."""
        complete = len(done) == len(suite)
        (out / "results.json").write_text(json.dumps({**meta, "attacks_done": done, "complete": complete,
                                                      **result.to_dict()}, indent=2))
        note = "" if complete else f"_partial: {', '.join(done)} of {', '.join(suite)} done_\n\n"
        (out / "results.md").write_text(title + note + result.to_markdown())

    finished = []

    def on_attack_done(attack_name, partial) -> None:
        finished.append(attack_name)
        write(partial, list(finished))

    result = evaluate(model, (images, labels), list(suite), plan, batch_size=batch_size, progress=progress,
                      on_attack_done=on_attack_done, preset=name)
    if say is not None and result.masking_flagged:
        say("WARNING (gradient-masking check): " + next(e["advice"] for e in result.masking if e["flagged"]))
    if plots:
        from .plots import plot_accuracy_vs_budget, plot_gallery

        if any(row.budget is not None for row in result.rows):
            plot_accuracy_vs_budget(curves_from(result, cfg.method), out / "accuracy_vs_budget.png",
                                    xlabel={"flowpgd": "eps (normalized)", "random": "eps (normalized)",
                                            "adef": "T-norm (px)", "stadv": "T-norm (px)", "stadv-fast": "T-norm (px)",
                                            "union": "T-norm (px)",
                                            "worst-case-linf": "eps (normalized)",
                                            "worst-case-tnorm": "T-norm (px)"})
        plot_gallery(gallery_rows(suite, images, labels, cfg.method), out / "gallery.png")
    return result
