"""``flowtriton demo``: standard vs FGR training on the embedded MNIST subset, attacked.

Trains the small CNN twice on the same data and seed (method 'standard', then 'fgr'), attacks
both on the same test images with FlowPGD at several budgets (normalized units), ADef and stAdv
(T-norm budgets in pixels) and rotation + translation, prints a side-by-side table and writes
``results.md``, ``results.json``, ``accuracy_vs_budget.png`` and ``gallery.png`` to ``out_dir``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from ..data import Augmentation, TensorLoader, load_dataset, split_train_val
from .config import make_config
from .engine import DataSplits, Trainer
from .evaluation import build_attacks, curves_from, gallery_rows

DEMO_MODEL = "small-cnn"
DEMO_LAM = 200.0           # FGR weight (paper reduction, batch 64) tuned on the embedded subset
DEMO_EPOCHS = 4
DEMO_PGD_BUDGETS = [0.01, 0.02, 0.05, 0.1]   # normalized: 0.135 ... 1.35 px on 28x28


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
            lines.append(f"| {name} | " + " | ".join(f"{results[label].median_tnorm[name]:.3f}" for label in labels) + " |")
    return "\n".join(lines) + "\n"


def run_demo(out_dir: str | Path = "flowtriton-demo", quick: bool = False, epochs: int | None = None,
             lam: float | None = None, eval_examples: int | None = None, seed: int = 0, device: str = "auto",
             progress: bool = True, threads: int = 1) -> dict:
    """Run the demo; returns {'table': markdown, 'results': {label: EvaluationResult}, 'seconds': float}.

    ``threads``: CPU threads for torch (0 keeps torch's default). The demo's small CNN runs
    fastest on one thread, and one thread does not fight other processes for cores.
    """
    from ..attacks import evaluate

    if threads:
        torch.set_num_threads(threads)
    started = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    epochs = epochs or (1 if quick else DEMO_EPOCHS)
    eval_examples = eval_examples or (64 if quick else 500)
    lam = DEMO_LAM if lam is None else lam
    train_all = load_dataset("mnist-subset", "train")
    test = load_dataset("mnist-subset", "test")
    train, val = split_train_val(train_all, 1000, seed=0)
    data = DataSplits(train, val, test)
    steps = 20 if quick else None
    models = {}
    for method in ("standard", "fgr"):
        cfg = make_config(None, dataset="mnist-subset", model=DEMO_MODEL, method=method, lam=lam if method == "fgr" else None,
                          epochs=epochs, batch_size=64, lr=0.02, momentum=0.9, weight_decay=5e-4,
                          milestones=[max(epochs - 1, 1)], seed=seed, device=device, max_steps_per_epoch=steps,
                          out_dir=str(out / method), progress=progress, val_size=1000)
        print(f"[demo] training {method}" + (f" (lam {lam:g})" if method == "fgr" else "") +
              f": {epochs} epoch(s) on {len(train)} images")
        trainer = Trainer(cfg, data)
        result = trainer.fit()
        print(f"[demo] {method}: best val acc {result.best_val_acc:.3f}, test acc {result.test_acc:.3f}")
        state = torch.load(out / method / "best.pt", map_location=trainer.ctx.device, weights_only=False)
        trainer.model.load_state_dict(state["model"])
        models[method] = trainer.model.eval()
    device_used = next(models["standard"].parameters()).device
    loader = TensorLoader(test.subset(torch.arange(eval_examples)), eval_examples, shuffle=False,
                          augment=Augmentation("none"), train=False, device=device_used)
    images, labels = next(iter(loader))
    results, curves, gallery = {}, {}, []
    size = "small"
    with torch.no_grad():
        both_right = (models["standard"](images).argmax(1) == labels) & (models["fgr"](images).argmax(1) == labels)
    pick = int(both_right.nonzero()[0]) if both_right.any() else 0
    for method, model in models.items():
        print(f"[demo] attacking {method} on {eval_examples} test images")
        suite, budgets = build_attacks(model, size=size, num_classes=10, pgd_budgets=DEMO_PGD_BUDGETS)
        results[method] = evaluate(model, (images, labels), suite, budgets, batch_size=256)
        curves.update(curves_from(results[method], method))
        gallery += gallery_rows(suite, images, labels, method, index=pick, budgets={"flowpgd": 0.05})
    table = demo_table(results)
    from ..plots import plot_accuracy_vs_budget, plot_gallery

    plot_accuracy_vs_budget(curves, out / "accuracy_vs_budget.png", title="Standard vs FGR, MNIST subset",
                            xlabel={"flowpgd": "eps (normalized)", "adef": "T-norm (px)", "stadv": "T-norm (px)"})
    plot_gallery(gallery, out / "gallery.png")
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
