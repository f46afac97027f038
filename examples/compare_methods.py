#!/usr/bin/env python
"""Standard vs IGR vs FGR vs AT vs FGR+AT on one dataset, attacked by FlowPGD, ADef, stAdv and
rotation + translation at several budgets.

    python examples/compare_methods.py --dataset mnist --epochs 2 --eval-subset 500 --out-dir runs/cmp-mnist

What it does, in order (every stage is resumable: run the same command again after an
interruption and finished stages are read back, an unfinished training resumes from its
``last.pt``):

1. Data: the training split minus a seeded VALIDATION split (``--val-size``, default 5000),
   optionally a seeded random ``--train-subset`` of what is left; the test split for evaluation
   (the first ``--eval-subset`` images).
2. Lambdas, chosen so clean accuracies are comparable: with ``--calibrate-steps N`` (default 150)
   every regularized method is trained for N steps at each lambda of its grid
   (``--igr-grid``, ``--fgr-grid``), a standard model likewise, and the LARGEST lambda whose
   VALIDATION accuracy stays within ``--clean-tol`` of the standard model's is kept (if none does,
   the smallest). FGR+AT is calibrated the same way against an AT model trained for N steps (its
   grid: ``--fgr-at-grid``, default the FGR grid), so it is compared with AT at comparable clean
   accuracy; ``--no-calibrate-fgr-at`` gives it FGR's lambda instead. ``--lam-igr`` / ``--lam-fgr`` /
   ``--lam-fgr-at`` fix a lambda instead. Lambdas are in
   the regularizers' 'paper' scale (the batch-mean loss's gradient, as the authors' code).
   Calibration never sees the test split.
3. Training: each method for ``--epochs`` epochs (SGD, momentum 0.9, weight decay 5e-4, lr
   ``--lr``, x0.1 at the last epoch when epochs > 1); the checkpoint with the best validation
   accuracy is kept. AT and FGR+AT train on FlowPGD examples at ``--at-eps`` (normalized units)
   with ``--at-steps`` steps.
4. Evaluation on the same test images for every model: FlowPGD at ``--pgd-budgets`` (normalized
   units, L-inf per flow component, ``--pgd-steps`` steps), ADef and stAdv as minimum-norm attacks
   judged at ``--tnorm-budgets`` (T-norm, pixels), rotation + translation (foolbox's grid: +-30
   degrees, +-3 px, 5x5x5; ``--attack-size small`` uses a coarser grid and fewer ADef/stAdv steps).

Writes to ``--out-dir``: results.json, results.md, accuracy_vs_budget.png, gallery.png,
calibration.json, run.json (command, seed, versions, wall time); checkpoints under ckpt/
(keep those out of version control).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from _common import RunRecord, default_data_dir, eval_batch, load_splits, md_table, train_step_seconds  # noqa: E402

from flowtriton.train import load_best  # noqa: E402

METHODS = ("standard", "igr", "fgr", "at", "fgr+at")
DEFAULTS = {  # per image size: FlowPGD budgets (normalized), AT budget (normalized)
    28: dict(pgd_budgets=[0.01, 0.02, 0.05, 0.1], at_eps=0.05),
    32: dict(pgd_budgets=[0.005, 0.01, 0.02, 0.04], at_eps=0.01),
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog="See the module docstring.",
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="mnist", choices=("mnist", "fashion-mnist", "cifar10", "mnist-subset"))
    p.add_argument("--data-dir", default=default_data_dir())
    p.add_argument("--out-dir", default=None, help="default runs/compare-<dataset>")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--model", default=None, help="default small-cnn (28x28), vgg11 (cifar10)")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.02)
    p.add_argument("--max-steps-per-epoch", type=int, default=None)
    p.add_argument("--val-size", type=int, default=5000)
    p.add_argument("--train-subset", type=int, default=None, help="train on a seeded subset of N images")
    p.add_argument("--eval-subset", type=int, default=1000, help="first N test images are attacked")
    p.add_argument("--test-size", type=int, default=None,
                   help="keep only the first N test images everywhere, clean accuracy included (quick checks)")
    p.add_argument("--calibrate-steps", type=int, default=150, help="0: no calibration (use the --lam-* values)")
    p.add_argument("--clean-tol", type=float, default=0.015, help="allowed validation-accuracy drop vs standard")
    p.add_argument("--igr-grid", type=float, nargs="+", default=[1e3, 1e4, 1e5])
    p.add_argument("--fgr-grid", type=float, nargs="+", default=[100.0, 300.0, 1000.0])
    p.add_argument("--fgr-at-grid", type=float, nargs="+", default=None, help="default: --fgr-grid")
    p.add_argument("--no-calibrate-fgr-at", dest="calibrate_fgr_at", action="store_false",
                   help="FGR+AT takes FGR's lambda instead of its own calibration against AT")
    p.add_argument("--lam-igr", type=float, default=None)
    p.add_argument("--lam-fgr", type=float, default=None)
    p.add_argument("--lam-fgr-at", type=float, default=None)
    p.add_argument("--at-eps", type=float, default=None, help="normalized; default 0.05 (28x28), 0.01 (32x32)")
    p.add_argument("--at-steps", type=int, default=5)
    p.add_argument("--attack-size", choices=("full", "small"), default="full")
    p.add_argument("--pgd-steps", type=int, default=None, help="FlowPGD steps (default 100 full, 20 small)")
    p.add_argument("--pgd-budgets", type=float, nargs="+", default=None, help="normalized units")
    p.add_argument("--tnorm-budgets", type=float, nargs="+", default=[0.25, 0.5, 1.0, 2.0], help="pixels")
    p.add_argument("--eval-batch-size", type=int, default=500)
    p.add_argument("--gallery-attacks", nargs="+", default=["flowpgd", "adef", "stadv", "rt"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: torch's default)")
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


def train_one(args, data, out: Path, method: str, lam, epochs: int, max_steps, tag: str):
    """Train (or resume, or read back) one model; returns (trainer, TrainResult)."""
    from flowtriton.train import Trainer, make_config

    size = data.train.images.shape[-1]
    cfg = make_config(None, dataset=args.dataset, data_dir=args.data_dir, model=args.model, method=method,
                      lam=lam, at_eps=args.at_eps, at_steps=args.at_steps, epochs=epochs,
                      batch_size=args.batch_size, lr=args.lr, momentum=0.9, weight_decay=5e-4,
                      milestones=[epochs - 1] if epochs > 1 else [], gamma=0.1, seed=args.seed,
                      device=args.device, amp="off", out_dir=str(out / "ckpt" / tag), resume=True,
                      max_steps_per_epoch=max_steps, progress=not args.no_progress, val_size=args.val_size,
                      augment="auto" if size == 32 else "none")
    started = time.perf_counter()
    trainer = Trainer(cfg, data)
    result = trainer.fit()
    if result.status != "finished":
        raise SystemExit(f"[compare] {tag} interrupted; run the same command again to resume")
    print(f"[compare] {tag}: best val acc {result.best_val_acc:.4f} (epoch {result.best_epoch}), "
          f"test acc {result.test_acc:.4f} ({time.perf_counter() - started:.0f} s this session)", flush=True)
    return trainer, result


def calibrate(args, data, out: Path) -> dict:
    """{'igr': lam, 'fgr': lam, 'fgr+at': lam, 'runs': {...}} (see the module docstring)."""
    path = out / "calibration.json"
    cal = json.loads(path.read_text()) if path.is_file() else {"runs": {}}
    cal.update(steps=args.calibrate_steps, clean_tol=args.clean_tol,
               rule="largest lambda whose validation accuracy >= the baseline's - clean_tol (else the smallest); "
                    "baseline: standard for igr and fgr, at for fgr+at")
    baseline = {"igr": "standard", "fgr": "standard", "fgr+at": "at"}
    grids = {"standard": [None], "at": [None], "igr": args.igr_grid, "fgr": args.fgr_grid,
             "fgr+at": args.fgr_at_grid or args.fgr_grid}
    need = set()
    if "igr" in args.methods and args.lam_igr is None:
        need.add("igr")
    if ("fgr" in args.methods or ("fgr+at" in args.methods and not args.calibrate_fgr_at)) and args.lam_fgr is None:
        need.add("fgr")
    if "fgr+at" in args.methods and args.calibrate_fgr_at and args.lam_fgr_at is None:
        need.add("fgr+at")
    if args.calibrate_steps and need:
        order = sorted({baseline[m] for m in need}, key=["standard", "at"].index) + sorted(need)
        for method in order:
            for lam in grids[method]:
                tag = f"{method}" if lam is None else f"{method}-{lam:g}"
                if tag not in cal["runs"]:
                    _, res = train_one(args, data, out, method, lam, 1, args.calibrate_steps,
                                       f"calib/{tag.replace('+', '_')}")
                    cal["runs"][tag] = {"method": method, "lam": lam, "val_acc": res.best_val_acc}
                    path.write_text(json.dumps(cal, indent=2))
        for method in need:
            base = cal["runs"][baseline[method]]["val_acc"]
            runs = sorted((r for r in cal["runs"].values() if r["method"] == method and r["lam"] in grids[method]),
                          key=lambda r: r["lam"])
            ok = [r for r in runs if r["val_acc"] >= base - args.clean_tol]
            cal[method] = (ok[-1] if ok else runs[0])["lam"]
    cal["igr"] = args.lam_igr if args.lam_igr is not None else cal.get("igr", args.igr_grid[0])
    cal["fgr"] = args.lam_fgr if args.lam_fgr is not None else cal.get("fgr", args.fgr_grid[0])
    if args.lam_fgr_at is not None:
        cal["fgr+at"] = args.lam_fgr_at
    elif not (args.calibrate_fgr_at and args.calibrate_steps and "fgr+at" in need):
        cal["fgr+at"] = cal["fgr"]
    cal["source"] = {m: ("flag" if getattr(args, "lam_" + m.replace("+", "_")) is not None
                         else "fgr's lambda" if m == "fgr+at" and not args.calibrate_fgr_at
                         else "calibration" if args.calibrate_steps else "grid default")
                     for m in ("igr", "fgr", "fgr+at")}
    path.write_text(json.dumps(cal, indent=2))
    return cal


def build_suite(args, model, num_classes: int):
    from flowtriton.attacks import FlowPGD
    from flowtriton.app.evaluation import build_attacks

    names = ("flowpgd", "adef", "stadv", "rt")
    suite, budgets = build_attacks(model, names, args.attack_size, num_classes, pgd_budgets=args.pgd_budgets,
                                   tnorm_budgets=args.tnorm_budgets)
    if args.pgd_steps:
        suite["flowpgd"] = FlowPGD.preset("paper", model, eps=args.pgd_budgets[0], steps=args.pgd_steps,
                                          units="normalized")
    return suite, budgets


def comparison_table(results: dict, lams: dict) -> str:
    labels = list(results)
    first = results[labels[0]]["rows"]
    header = ["attack", "budget", "units"] + [f"{m}" + (f" (lam {lams[m]:g})" if lams.get(m) else "") for m in labels]
    rows = []
    for i, row in enumerate(first):
        budget = "-" if row["budget"] is None else f"{row['budget']:g}"
        rows.append([row["attack"], budget, row["units"] or "-"]
                    + [f"{results[m]['rows'][i]['accuracy']:.3f}" for m in labels])
    text = md_table(header, rows)
    medians = list(results[labels[0]]["median_tnorm"])
    if medians:
        text += "\n" + md_table(["median successful T-norm (px)"] + labels,
                                [[name] + [("-" if results[m]["median_tnorm"][name] is None
                                            else f"{results[m]['median_tnorm'][name]:.3f}") for m in labels]
                                 for name in medians])
    return text


def mean_robust(result: dict) -> dict:
    """{attack: mean accuracy over its budgets} (rt: its one row), from an EvaluationResult dict."""
    per = {}
    for row in result["rows"]:
        if row["attack"] != "clean":
            per.setdefault(row["attack"], []).append(row["accuracy"])
    return {name: sum(v) / len(v) for name, v in per.items()}


CLAIMS = [  # (claim, challenger, [baselines], attacks compared)
    ("FGR beats IGR at comparable clean accuracy", "fgr", ["igr"], ("flowpgd", "adef", "stadv", "rt")),
    ("FGR beats AT on attacks AT did not train on (ADef, stAdv, rotation+translation)", "fgr", ["at"],
     ("adef", "stadv", "rt")),
    ("FGR+AT beats both FGR and AT", "fgr+at", ["fgr", "at"], ("flowpgd", "adef", "stadv", "rt")),
]


def claims_section(results: dict, train_info: dict) -> str:
    """The paper's three claims, judged on mean robust accuracy per attack (mean over budgets):
    'supported' when the challenger is ahead on every attack compared, 'not supported' when on
    none, 'mixed' otherwise; clean test accuracies shown beside, since a gap there confounds."""
    lines = ["| claim | attacks: challenger vs baseline(s), mean accuracy over budgets | clean test acc | verdict |",
             "|---|---|---|---|"]
    for claim, challenger, baselines, attacks in CLAIMS:
        if challenger not in results or any(b not in results for b in baselines):
            continue
        mine = mean_robust(results[challenger])
        others = {b: mean_robust(results[b]) for b in baselines}
        wins = [all(mine[a] > others[b][a] for b in baselines) for a in attacks]
        detail = "; ".join(f"{a} {mine[a]:.3f} vs " + "/".join(f"{others[b][a]:.3f}" for b in baselines)
                           for a in attacks)
        clean = f"{train_info[challenger]['test_acc_full_test_set']:.4f} vs " + "/".join(
            f"{train_info[b]['test_acc_full_test_set']:.4f}" for b in baselines)
        verdict = "supported" if all(wins) else "not supported" if not any(wins) else \
            f"mixed ({sum(wins)} of {len(wins)} attacks)"
        lines.append(f"| {claim} | {detail} | {clean} | {verdict} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out_dir or f"runs/compare-{args.dataset}")
    out.mkdir(parents=True, exist_ok=True)
    record = RunRecord(out, args.seed, vars(args))
    torch.manual_seed(args.seed)

    data = load_splits(args.dataset, args.data_dir, args.val_size, 0, args.train_subset, args.seed)
    if args.test_size is not None and args.test_size < len(data.test):
        data.test = data.test.subset(torch.arange(args.test_size))
    size = data.train.images.shape[-1]
    preset = DEFAULTS.get(size, DEFAULTS[32])
    args.model = args.model or ("small-cnn" if size == 28 else "vgg11")
    args.at_eps = args.at_eps if args.at_eps is not None else preset["at_eps"]
    args.pgd_budgets = args.pgd_budgets or preset["pgd_budgets"]
    print(f"[compare] {args.dataset}: train {len(data.train)}, val {len(data.val)}, test {len(data.test)} "
          f"(attacked: {min(args.eval_subset, len(data.test))}, see eval_batch); model {args.model}", flush=True)

    cal = calibrate(args, data, out)
    record.save()
    lams = {"standard": None, "igr": cal["igr"], "fgr": cal["fgr"], "at": None, "fgr+at": cal["fgr+at"]}
    print(f"[compare] lambdas: {json.dumps({m: lams[m] for m in args.methods})}", flush=True)

    evals_dir = out / "eval"
    models, results, train_info = {}, {}, {}
    from flowtriton.attacks import EvaluationResult, evaluate

    images = labels = None
    for method in args.methods:
        trainer, res = train_one(args, data, out, method, lams[method], args.epochs, args.max_steps_per_epoch,
                                 method)
        model = load_best(trainer)
        models[method] = model
        train_info[method] = {"lam": lams[method], "best_val_acc": res.best_val_acc, "best_epoch": res.best_epoch,
                              "test_acc_full_test_set": res.test_acc,
                              "train_s": train_step_seconds(res.history, len(data.train)),
                              "history": res.history}
        if images is None:
            images, labels = eval_batch(trainer.cfg, data, args.eval_subset, trainer.ctx.device)
        suite, budgets = build_suite(args, model, data.train.num_classes)
        print(f"[compare] attacking {method} on {len(labels)} test images (finished attacks are read back)",
              flush=True)
        # each attack's outcome is cached as it finishes: a rerun reads it back, an interrupted
        # evaluation resumes at the next attack
        ev = evaluate(model, (images, labels), suite, budgets, batch_size=args.eval_batch_size,
                      cache_dir=evals_dir / method.replace("+", "_"))
        results[method] = {**ev.to_dict(), "eval_s": round(sum(ev.seconds.values()), 3)}
        record.save()
        print(f"[compare] {method}: clean {ev.clean_accuracy:.3f}; evaluation {results[method]['eval_s']:.0f} s",
              flush=True)

    # plots: accuracy vs budget (one panel per attack, one line per method) and a gallery
    from flowtriton.app.plots import plot_accuracy_vs_budget, plot_gallery
    from flowtriton.app.demo import gallery_picks
    from flowtriton.app.evaluation import curves_from, gallery_rows

    curves = {}
    for method, res in results.items():
        curves.update(curves_from(EvaluationResult.from_dict(res), method))
    title = f"{args.dataset}: robust accuracy ({len(labels)} test images)"
    plot_accuracy_vs_budget(curves, out / "accuracy_vs_budget.png", title=title,
                            xlabel={"flowpgd": "eps (normalized)", "adef": "T-norm (px)", "stadv": "T-norm (px)"})
    pick = gallery_picks(models, images, labels, 1)[0]  # the first image every model gets right
    rows = []
    mid = args.pgd_budgets[len(args.pgd_budgets) // 2]
    for method, model in models.items():
        suite, _ = build_suite(args, model, data.train.num_classes)
        suite = {k: v for k, v in suite.items() if k in args.gallery_attacks}
        rows += gallery_rows(suite, images, labels, method, index=pick, budgets={"flowpgd": mid})
    plot_gallery(rows, out / "gallery.png", title=f"{args.dataset}: test image {pick}, FlowPGD at eps {mid:g}")

    table = comparison_table(results, lams)
    wall = record.finish()
    header = (f"# {args.dataset}: standard vs IGR vs FGR vs AT vs FGR+AT\n\n"
              f"{args.model}, {args.epochs} epoch(s) on {len(data.train)} training images (validation "
              f"{len(data.val)} held out from train selects the checkpoint), batch {args.batch_size}, lr {args.lr:g}; "
              f"attacked: {len(labels)} test images (the first ones when they hold every class, else a seeded "
              f"random subset), attack size '{args.attack_size}'. "
              f"AT / FGR+AT: FlowPGD eps {args.at_eps:g} (normalized), {args.at_steps} steps. "
              f"Lambdas ('paper' scale): {', '.join(f'{m} {lams[m]:g}' for m in args.methods if lams[m])} "
              f"({cal['source']}; rule: {cal['rule']}, calibration {cal['steps']} steps, tol {cal['clean_tol']}). "
              f"FlowPGD eps in normalized units (1 = (W-1)/2 px), L-inf per flow component; ADef/stAdv rows: "
              f"accuracy when deformations above that T-norm (px) do not count; rt: rotation + translation grid. "
              f"Seed {args.seed}; wall time {wall:.0f} s (all sessions).\n\n")
    clean = md_table(["method", "lambda", "best val acc", "test acc (full test set)"],
                     [[m, "-" if not lams[m] else f"{lams[m]:g}", f"{train_info[m]['best_val_acc']:.4f}",
                       f"{train_info[m]['test_acc_full_test_set']:.4f}"] for m in args.methods])
    claims = claims_section(results, train_info)
    (out / "results.md").write_text(header + clean + "\n" + table + "\n## The paper's claims on this run\n\n" + claims)
    payload = {"dataset": args.dataset, "model": args.model, "epochs": args.epochs, "train_images": len(data.train),
               "val_images": len(data.val), "eval_images": int(labels.numel()), "attack_size": args.attack_size,
               "pgd_steps": args.pgd_steps, "pgd_budgets": args.pgd_budgets, "tnorm_budgets": args.tnorm_budgets,
               "at_eps": args.at_eps, "at_steps": args.at_steps, "lambdas": lams, "calibration": cal,
               "units": {"flowpgd": "normalized (L-inf per flow component)", "adef": "pixels (T-norm)",
                         "stadv": "pixels (T-norm)"},
               "training": train_info, "results": results,
               "mean_robust_accuracy": {m: mean_robust(r) for m, r in results.items()}, "claims_markdown": claims,
               "seed": args.seed, "wall_s": wall}
    (out / "results.json").write_text(json.dumps(payload, indent=2))
    print(header + clean + "\n" + table + "\n" + claims)
    print(f"[compare] wrote {out}/results.md, results.json, accuracy_vs_budget.png, gallery.png, run.json", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
