"""``flowtriton demo``: standard vs FGR training on the embedded MNIST subset, attacked.

Trains the small CNN twice on the same data and seed (method 'standard', then 'fgr'), attacks
both on the same test images with FlowPGD at several budgets (normalized units), ADef and stAdv
(T-norm budgets in pixels) and rotation + translation, prints a side-by-side table and writes
``results.md``, ``results.json``, ``accuracy_vs_budget.png`` and ``gallery.png`` (a grid:
a row per (test image, model), a column per attack, success marked) to ``out_dir``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from ..checks import check_number
from ..data import Augmentation, TensorLoader, load_dataset, split_train_val
from ..regularizers.flow import DEFAULT_FGR_LAM
from ..train.checkpoint import load_best
from ..train.config import make_config
from ..train.engine import DataSplits, Trainer
from .evaluation import build_attacks, curves_from, gallery_rows

DEMO_MODEL = "small-cnn"
DEMO_EPOCHS = 4
DEMO_PGD_BUDGETS = [0.01, 0.02, 0.05, 0.1]   # normalized: 0.135 ... 1.35 px on 28x28
GALLERY_IMAGES = 3                           # test images in the gallery, of different classes
GALLERY_PGD_BUDGET = 0.05                    # normalized, the gallery's FlowPGD budget


def demo_table(results: dict) -> str:
    """Markdown table, one column per model: {label: EvaluationResult} with identical rows."""
    labels = list(results)
    first = results[labels[0]]
    lines = ["| attack | budget | units | " + " | ".join(labels) + " |",
             "|---|---|---|" + "---|" * len(labels)]
    for i, row in enumerate(first.rows):
        budget = "-" if row.budget is None else f"{row.budget:g}"
        accs = " | ".join(f"{results[label].rows[i].accuracy:.3f}" for label in labels)
        lines.append(f"| {row.attack} | {budget} | {row.units or '-'} | {accs} |")
    medians = [name for name in first.median_tnorm]
    if medians:
        lines += ["", "| median successful T-norm (px) | " + " | ".join(labels) + " |",
                  "|---|" + "---|" * len(labels)]
        for name in medians:
            cells = " | ".join(f"{results[label].median_tnorm[name]:.3f}" for label in labels)
            lines.append(f"| {name} | {cells} |")
    return "\n".join(lines) + "\n"


def run_demo(out_dir: str | Path = "flowtriton-demo", quick: bool = False, epochs: int | None = None,
             lam: float | None = None, eval_examples: int | None = None, seed: int = 0, device: str = "auto",
             progress: bool = True, threads: int = 1) -> dict:
    """Run the demo; returns {'table': markdown, 'results': {label: EvaluationResult}, 'seconds': float}.

    ``lam``: the FGR weight (default :data:`flowtriton.DEFAULT_FGR_LAM`). ``threads``: CPU
    threads for torch (0 keeps torch's default). The demo's small CNN runs fastest on one
    thread, and one thread does not fight other processes for cores. The folder is the demo's
    own: a rerun replaces what an earlier run wrote there.
    """
    from ..attacks import evaluate
    from ..train.distributed import resolve_device, set_threads

    # every setting is checked before the first model trains (a bad lam used to surface only
    # after the standard model had trained)
    if lam is not None:
        check_number(lam, "lam")
    set_threads(threads)
    resolve_device(device)
    started = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    epochs = epochs or (1 if quick else DEMO_EPOCHS)
    eval_examples = eval_examples or (64 if quick else 500)
    lam = DEFAULT_FGR_LAM if lam is None else lam
    train_all = load_dataset("mnist-subset", "train")
    test = load_dataset("mnist-subset", "test")
    train, val = split_train_val(train_all, 1000, seed=0)
    data = DataSplits(train, val, test)
    steps = 20 if quick else None
    models = {}
    for method in ("standard", "fgr"):
        cfg = make_config(None, dataset="mnist-subset", model=DEMO_MODEL, method=method,
                          lam=lam if method == "fgr" else None,
                          epochs=epochs, batch_size=64, lr=0.02, momentum=0.9, weight_decay=5e-4,
                          milestones=[max(epochs - 1, 1)], seed=seed, device=device, max_steps_per_epoch=steps,
                          out_dir=str(out / method), progress=progress, val_size=1000, overwrite=True)
        print(f"[demo] model {len(models) + 1}/2: {method}", flush=True)
        trainer = Trainer(cfg, data)
        result = trainer.fit()
        print(f"[demo] {method}: best val acc {result.best_val_acc:.3f}, test acc {result.test_acc:.3f}")
        models[method] = load_best(trainer)
    device_used = next(models["standard"].parameters()).device
    loader = TensorLoader(test.subset(torch.arange(eval_examples)), eval_examples, shuffle=False,
                          augment=Augmentation("none"), train=False, device=device_used)
    images, labels = next(iter(loader))
    results, curves, fixed, suites = {}, {}, {}, {}
    picks = gallery_picks(models, images, labels, GALLERY_IMAGES)
    for method, model in models.items():
        attack_started = time.perf_counter()
        print(f"[demo] attacking {method} on {eval_examples} test images: FlowPGD at {len(DEMO_PGD_BUDGETS)} "
              "budgets, ADef, stAdv, rotation+translation", flush=True)
        suite, budgets = build_attacks(model, size="small", num_classes=10, pgd_budgets=DEMO_PGD_BUDGETS)
        results[method] = evaluate(model, (images, labels), suite, budgets, batch_size=256, progress=progress)
        suites[method] = suite
        curves.update(curves_from(results[method], method))
        fixed.update({(method, row.attack): row.accuracy for row in results[method].rows
                      if row.attack != "clean" and row.budget is None})
        print(f"[demo] {method}: clean {results[method].clean_accuracy:.3f}, attacked in "
              f"{time.perf_counter() - attack_started:.0f} s", flush=True)
    table = demo_table(results)
    from .plots import plot_accuracy_vs_budget, plot_gallery

    plot_accuracy_vs_budget(curves, out / "accuracy_vs_budget.png",
                            title=f"Standard vs FGR (lam {lam:g}), {eval_examples} MNIST test images",
                            xlabel={"flowpgd": "eps (normalized)", "adef": "T-norm (px)", "stadv": "T-norm (px)"},
                            fixed=fixed)
    per_model = [gallery_rows(suite, images, labels, method, picks, {"flowpgd": GALLERY_PGD_BUDGET})
                 for method, suite in suites.items()]
    plot_gallery([row for rows in zip(*per_model) for row in rows], out / "gallery.png",
                 title=f"{len(picks)} MNIST test images x standard / FGR (FlowPGD at eps {GALLERY_PGD_BUDGET:g})")
    seconds = time.perf_counter() - started
    header = (f"# flowtriton demo: standard vs FGR (lam {lam:g}), {DEMO_MODEL}, {epochs} epoch(s), "
              f"{eval_examples} MNIST test images, {seconds:.0f} s\n\n"
              "FlowPGD eps in normalized units (1 = 13.5 px on 28x28), L-inf per flow component; ADef/stAdv "
              "rows: accuracy when deformations above that T-norm (px) do not count.\n\n")
    (out / "results.md").write_text(header + table)
    (out / "results.json").write_text(json.dumps(
        {"lam": lam, "epochs": epochs, "examples": eval_examples, "seconds": seconds,
         "results": {k: v.to_dict() for k, v in results.items()}}, indent=2))
    print(table)
    print(f"[demo] wrote {out}/results.md, results.json, accuracy_vs_budget.png, gallery.png ({seconds:.0f} s)")
    return {"table": table, "results": results, "seconds": seconds}


def gallery_picks(models: dict, images: torch.Tensor, labels: torch.Tensor, count: int) -> list[int]:
    """Indices of up to ``count`` test images of different classes that every model classifies
    correctly (the first such images), else the first images."""
    with torch.no_grad():
        right = torch.stack([model(images).argmax(1) == labels for model in models.values()]).all(0)
    picks, seen = [], set()
    for index in right.nonzero().flatten().tolist():
        if int(labels[index]) not in seen:
            picks.append(index)
            seen.add(int(labels[index]))
        if len(picks) == count:
            return picks
    return picks or list(range(min(count, len(labels))))

