"""Robustness evaluation of a trained checkpoint: attack suites, results.json / results.md, plots.

Budget units: FlowPGD eps in NORMALIZED flow units (the paper's, 1 unit = (size-1)/2 px, an
L-inf box per flow component); ADef and stAdv are minimum-norm attacks, judged at T-norm budgets
in PIXELS (max over pixels of the flow vector's length); rotation + translation has no budget.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from ..data import TensorLoader, evaluation_subset, load_dataset
from ..models import build_model
from .checkpoint import load_checkpoint
from .config import TrainConfig
from .distributed import resolve_device
from .engine import resolve_augment

ATTACK_NAMES = ("flowpgd", "adef", "stadv", "rt")
PGD_BUDGETS = [0.005, 0.01, 0.02, 0.04]          # normalized units
TNORM_BUDGETS = [0.25, 0.5, 1.0, 2.0]             # pixels


def build_attacks(model, names=ATTACK_NAMES, size: str = "full", num_classes: int = 10,
                  pgd_budgets=None, tnorm_budgets=None):
    """({name: attack}, {name: budgets}) for the named attacks. ``size``: 'full' (the paper's
    100-step FlowPGD, ADef 100 iterations over every candidate label, foolbox's 5x5x5
    rotation/translation grid) or 'small' (a few steps each: demos and CI); stAdv runs at its
    defaults in both (the published loss and tau, Adam, 20 steps per tau, two tau search steps).
    ``pgd_budgets`` (normalized) and ``tnorm_budgets`` (pixels) replace the default budgets."""
    from ..attacks import ADef, FlowPGD, RotationTranslation, StAdv

    if size not in ("full", "small"):
        raise ValueError(f"size must be 'full' or 'small', got {size!r}")
    unknown = set(names) - set(ATTACK_NAMES)
    if unknown:
        raise ValueError(f"attack names must be among {ATTACK_NAMES}, got {sorted(unknown)}")
    small = size == "small"
    factories = {
        "flowpgd": lambda: FlowPGD(model, eps=0.01, steps=20 if small else 100, units="normalized"),
        "adef": lambda: ADef(model, candidates=range(1, min(num_classes, 4 if small else num_classes)),
                             max_iter=20 if small else 100, smooth=0.5, overshoot=1.2),
        "stadv": lambda: StAdv(model),  # its defaults are cheap (about 36 model passes per image)
        "rt": lambda: RotationTranslation(model, max_rotation=15.0 if small else 30.0,
                                          max_translation=2.0 if small else 3.0,
                                          num_rotations=5, num_translations=3 if small else 5),
    }
    pgd, tnorm = list(pgd_budgets or PGD_BUDGETS), list(tnorm_budgets or TNORM_BUDGETS)
    budgets = {"flowpgd": pgd, "adef": tnorm, "stadv": tnorm}
    attacks = {name: factories[name]() for name in names}
    return attacks, {name: budgets[name] for name in names if name in budgets}


def load_trained_model(checkpoint: str | Path, device="cpu"):
    """(model in eval mode, TrainConfig, class names) from a trainer checkpoint (last.pt/best.pt)."""
    state = load_checkpoint(checkpoint, map_location=device)
    if isinstance(state, torch.nn.Module):
        raise ValueError(f"checkpoint {checkpoint} is a pickled {type(state).__name__} module, not a checkpoint "
                         "written by flowtriton train; attack such a model from Python with "
                         "flowtriton.attacks.evaluate(model, (images, labels), ...)")
    if not isinstance(state, dict):
        raise ValueError(f"checkpoint {checkpoint} holds a {type(state).__name__}, not a checkpoint written by "
                         "flowtriton train")
    for key in ("model", "config"):
        if key not in state:
            raise ValueError(f"checkpoint {checkpoint} has no {key!r} entry: not written by flowtriton train")
    try:
        cfg = TrainConfig.from_dict(state["config"], saved=True)
    except (TypeError, ValueError) as err:
        raise ValueError(f"checkpoint {checkpoint} has an unusable config: {err}") from None
    classes = state.get("classes") or []
    weights = [k for k in state["model"] if k.endswith("weight")]
    if not weights:
        raise ValueError(f"checkpoint {checkpoint} holds no model weights")
    num_classes = len(classes) or state["model"][weights[-1]].shape[0]
    model = build_model(cfg.model, num_classes, state.get("in_channels", 3))
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0]
        raise ValueError(f"checkpoint {checkpoint}: its weights do not fit the model its config names "
                         f"({cfg.model!r}, {num_classes} classes): {first}") from None
    return model.to(device).eval(), cfg, classes


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


def gallery_rows(attacks: dict, images: torch.Tensor, labels: torch.Tensor, label: str, index: int = 0,
                 budgets: dict | None = None) -> list:
    """One gallery row per attack for example ``index``: (label, original, deformed, flow, caption).
    ``budgets``: {name: budget} to show an attack at another budget than it was built with."""
    rows = []
    x, y = images[index:index + 1], labels[index:index + 1]
    for name, attack in attacks.items():
        if budgets and name in budgets:
            attack = attack.with_budget(budgets[name])
        result = attack.run(x, y)
        caption = (f"{name}: pred {int(result.predictions[0])} (true {int(y[0])}), "
                   f"T-norm {float(result.tnorm[0]):.2f} px")
        rows.append((f"{label} / {name}", x[0], result.images[0], result.flow[0], caption))
    return rows


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
    scale = images.shape[0] / max(x.shape[0], 1)
    estimates = {}
    for name, attack in suite.items():
        runs = 1 if attack.minimum_norm or not budgets.get(name) else len(budgets[name])
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


def evaluate_checkpoint(checkpoint: str | Path, out_dir: str | Path, attacks=ATTACK_NAMES, size: str = "full",
                        split: str = "test", num_examples: int | None = 1000, batch_size: int = 256,
                        device: str = "auto", data_dir=None, plots: bool = True, progress: bool = True,
                        say=None):
    """Attack a checkpoint; write ``results.json`` and ``results.md`` (and plots) to ``out_dir``.
    ``say``: a callable given one line (e.g. ``print``): what is attacked and the estimated time
    (:func:`estimate_seconds`) before the attacks start. Returns the
    :class:`flowtriton.attacks.EvaluationResult`."""
    from ..attacks import evaluate

    dev = resolve_device(device)
    model, cfg, _ = load_trained_model(checkpoint, dev)
    images, labels = eval_images(cfg, split, num_examples, data_dir, dev)
    suite, budgets = build_attacks(model, attacks, size, int(labels.max()) + 1)
    if say is not None:
        estimates = estimate_seconds(suite, budgets, images, labels)
        parts = ", ".join(f"{name} {format_seconds(sec)}" for name, sec in estimates.items())
        say(f"attacking {labels.numel()} {split} images of {checkpoint} on {dev}: about "
            f"{format_seconds(sum(estimates.values()))} ({parts}; timed on {min(8, labels.numel())} images). "
            "For a quicker look: --size small, --num-examples, --attacks")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"checkpoint": str(checkpoint), "model": cfg.model, "method": cfg.method, "dataset": cfg.dataset,
            "split": split, "examples": int(labels.numel()), "size": size,
            "units": {"flowpgd": "normalized (L-inf per flow component)", "adef": "pixels (T-norm)",
                      "stadv": "pixels (T-norm)", "union": "pixels (T-norm) where budgeted: the worst case "
                      "per example over the attacks at that budget; no budget: over every attack run"}}
    title = f"# {cfg.method} {cfg.model} on {cfg.dataset} ({split}, {labels.numel()} examples)\n\n"

    def write(result, done: list) -> None:
        """results.json / results.md for the attacks finished so far (rewritten after each)."""
        complete = len(done) == len(suite)
        (out / "results.json").write_text(json.dumps({**meta, "attacks_done": done, "complete": complete,
                                                      **result.to_dict()}, indent=2))
        note = "" if complete else f"_partial: {', '.join(done)} of {', '.join(suite)} done_\n\n"
        (out / "results.md").write_text(title + note + result.to_markdown())

    finished = []

    def on_attack_done(name, partial) -> None:
        finished.append(name)
        write(partial, list(finished))

    result = evaluate(model, (images, labels), suite, budgets, batch_size=batch_size, progress=progress,
                      on_attack_done=on_attack_done)
    if plots:
        from ..plots import plot_accuracy_vs_budget, plot_gallery

        if any(row.budget is not None for row in result.rows):
            plot_accuracy_vs_budget(curves_from(result, cfg.method), out / "accuracy_vs_budget.png",
                                    xlabel={"flowpgd": "eps (normalized)", "adef": "T-norm (px)",
                                            "stadv": "T-norm (px)", "union": "T-norm (px)"})
        plot_gallery(gallery_rows(suite, images, labels, cfg.method), out / "gallery.png")
    return result
