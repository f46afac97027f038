#!/usr/bin/env python
"""Robustness frontiers: standard, IGR, FGR, AT and FGR+AT at several strengths and seeds, every
model attacked by FlowPGD, ADef, stAdv and rotation + translation at full strength; robust
accuracy plotted against clean accuracy, one curve per method, and the paper's claims judged on
the curves.

    python examples/frontier.py --dataset mnist --out-dir runs/frontier-mnist            # run (resumes)
    python examples/frontier.py --dataset mnist --out-dir runs/frontier-mnist --report   # tables and plots so far

A POINT is one (method, strength, seed). The plan (``PLANS``, per dataset) lists the strengths;
``--seeds`` the seeds. Points run seed by seed (every strength of seed 0 first, cheap methods
first), so a partial run already holds one whole frontier. Each point:

1. trains the small CNN on the training split minus a seeded 5,000-image VALIDATION split, for
   ``--epochs`` epochs (SGD momentum 0.9, weight decay 5e-4, lr ``--lr`` x0.1 at each of
   ``--milestones``); the checkpoint with the best validation accuracy is kept. AT and FGR+AT
   train on FlowPGD examples (``--at-steps`` steps) at their eps (normalized units).
2. attacks the first ``--eval-subset`` test images with each attack in turn at full strength
   (``flowtriton.app.evaluation.build_attacks(size='full')``, evaluated by
   ``flowtriton.attacks.evaluate(..., cache_dir=...)``): FlowPGD (100 steps) at every
   budget of ``--pgd-budgets`` (normalized units, L-inf per flow component), ADef (100
   iterations, every candidate label) and stAdv as minimum-norm attacks judged at
   ``--tnorm-budgets`` (T-norm, pixels), rotation + translation (+-30 degrees, +-3 px, 5x5x5).
   Per-example masks are kept, so the worst case over attacks at any budgets can be computed
   afterwards (``EvaluationResult.worst_case``).
3. writes ``points/<tag>.json``: settings, validation curve, clean test accuracy (all 10,000),
   training time (the engine's step time summed over epochs, and the wall time of the fit
   sessions), evaluation time, the table and the masks, every attack's settings and budgets
   (``attack_settings``, from the evaluation's protocol: ``FlowAttack.settings()``) and the
   library commit (``library_commit``; points written before these were stored report them as
   "not recorded").

``--plan rejudge`` (its ``--preset`` defaults to 'standard') re-judges the claims under the
standard evaluation preset (``flowtriton.attacks.evaluate(preset='standard')``: FlowPGD at full
strength, RandomFlow, ADef, stAdv at full strength, rotation + translation, each at the preset's
budgets, with its worst-case rows and gradient-masking check) on the points the claims and the
cost comparison need: standard, FGR and FGR finite-difference at lambda 300 and 1000, IGR 3e4, AT
eps 0.02 with 5 steps and with 2 ('at-2step'). Its featured columns are FlowPGD at 0.04, ADef
and stAdv at 1 px and the preset's two worst cases there; WORST is both at once.

    python examples/frontier.py --dataset mnist --plan rejudge --out-dir runs/frontier-mnist-standard

Each point keeps a slim copy of its best model (``models/<tag>.pt``). A point attacked under an
older version of the folder's preset is attacked again on that model, not retrained (its record
keeps the training results and lists the earlier evaluation under 'earlier_protocols').

Everything resumes: an interrupted training continues from its ``last.pt``, an interrupted
evaluation from its last finished attack. Several processes may work on one output folder: each
point is locked while a process trains or attacks it (``ckpt/.<tag>.lock``), others skip it and
take the next, so the same command started twice uses two cores (give each ``--threads 1``).
``--report`` (also run at the end) writes ``frontier.md``, ``frontier.json`` and ``frontier.png``
from whatever points are finished.
Checkpoints go under ``<out-dir>/ckpt/`` (not for version control).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from fractions import Fraction
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from _common import (RunRecord, default_data_dir, eval_batch, exclusive_lock, load_splits, md_table, portable,  # noqa: E402
                     train_step_seconds, write_json, write_text_atomic)

from flowtriton.attacks.presets import library_commit  # noqa: E402
from flowtriton.train import load_best  # noqa: E402

# (method, lam, at_eps): lam in the 'paper' scale, at_eps in normalized units.
POINTS_28 = [
    ("standard", None, None),
    ("fgr", 300.0, None), ("fgr", 1000.0, None), ("fgr", 3000.0, None),
    ("igr", 1e4, None), ("igr", 3e4, None), ("igr", 1e5, None),
    ("at", None, 0.02), ("at", None, 0.05), ("at", None, 0.1),
    ("fgr+at", 300.0, 0.05), ("fgr+at", 1000.0, 0.05),
    # a weaker combination: the two above cost more clean accuracy than AT alone at eps 0.05
    ("fgr+at", 100.0, 0.02),
]
# Fashion-MNIST: FGR and IGR cost more clean accuracy there (the weakest strengths above lose 2.5
# and 3.5 points), so one weaker strength each covers the range next to the standard model.
POINTS_FASHION = POINTS_28 + [("fgr", 100.0, None), ("igr", 3e3, None)]
PLANS = {
    # featured: the budget of each attack drawn in the plots and used for the worst case.
    # targets: worst-case robust accuracies of the cost table (training time to reach them).
    "mnist": dict(points=POINTS_28, featured={"flowpgd": 0.05, "adef": 1.0, "stadv": 1.0, "rt": None},
                  targets=[0.1, 0.2, 0.3, 0.5]),
    # Fashion-MNIST's standard model already holds 0.375 in the worst case: higher targets
    "fashion-mnist": dict(points=POINTS_FASHION, featured={"flowpgd": 0.02, "adef": 0.5, "stadv": 0.5, "rt": None},
                          targets=[0.4, 0.5, 0.6, 0.7]),
    # a seconds-long plan for the tests (mnist-subset: the embedded digits)
    "mnist-subset": dict(points=[("standard", None, None), ("fgr", 300.0, None), ("igr", 1e4, None),
                                 ("at", None, 0.05), ("fgr+at", 300.0, 0.05)],
                         featured={"flowpgd": 0.05, "adef": 1.0, "stadv": 1.0, "rt": None}, targets=[0.1, 0.5]),
}
# The re-judged frontier (``--plan rejudge``, run with ``--preset standard``): the claims' settings
# judged under the standard evaluation preset, with the two cheaper variants the cost comparison
# needs: FGR's finite-difference mode at the exact mode's strengths, and AT with 2 FlowPGD steps
# ('at-2step') beside AT with 5 at the same eps. IGR at the strength whose clean accuracy matches
# FGR lam 1000's on the first frontier (0.990 both).
POINTS_REJUDGE = [
    ("standard", None, None),
    ("fgr", 300.0, None), ("fgr", 1000.0, None), ("fgr-fd", 300.0, None), ("fgr-fd", 1000.0, None),
    ("igr", 3e4, None),
    ("at-2step", None, 0.02), ("at", None, 0.02),
]
# Featured under the standard preset: its largest L-inf budget and 1 px T-norm; the worst case is
# that of the preset itself (no run of any attack fooled the image within the L-inf box or within
# the T-norm ball), both budgets at once.
FEATURED_STANDARD = {"flowpgd": 0.04, "adef": 1.0, "stadv": 1.0, "rt": None, "worst-case-linf": 0.04,
                     "worst-case-tnorm": 1.0}
REJUDGE_PLANS = {
    "mnist": dict(points=POINTS_REJUDGE, featured=FEATURED_STANDARD, targets=[0.1, 0.2, 0.3, 0.4]),
    "fashion-mnist": dict(points=POINTS_REJUDGE, featured={**FEATURED_STANDARD, "adef": 0.5, "stadv": 0.5,
                                                           "worst-case-tnorm": 0.5, "flowpgd": 0.02,
                                                           "worst-case-linf": 0.02},
                          targets=[0.4, 0.5, 0.6, 0.7]),
    "mnist-subset": dict(points=[("standard", None, None), ("fgr", 300.0, None), ("fgr-fd", 300.0, None),
                                 ("igr", 1e4, None), ("at-2step", None, 0.05), ("at", None, 0.05)],
                         featured=FEATURED_STANDARD, targets=[0.1, 0.5]),
}
# Frontier methods that are a training method with other settings: {name: {make_config overrides}}.
METHOD_SPECS = {"at-2step": {"method": "at", "at_steps": 2}}
ATTACKS = ("flowpgd", "adef", "stadv", "rt")
NOT_RECORDED = "not recorded"  # attack settings / commit of points written before they were stored
WORST = "worst case"
WORST_OVER = ("flowpgd", "adef", "stadv")
METHOD_ORDER = ("standard", "fgr", "fgr-fd", "igr", "at-2step", "at", "fgr+at")
COLORS = {"standard": "black", "fgr": "tab:red", "fgr-fd": "tab:orange", "igr": "tab:blue", "at-2step": "tab:olive",
          "at": "tab:green", "fgr+at": "tab:purple"}
PLAN_NAMES = ("default", "rejudge")


def plan_spec(args) -> dict:
    """The plan ``args`` select: {'points', 'featured', 'targets'}."""
    plans = PLANS if args.plan == "default" else REJUDGE_PLANS
    if args.dataset not in plans:
        raise SystemExit(f"[frontier] plan {args.plan!r} has no points for dataset {args.dataset!r} "
                         f"(it has {sorted(plans)})")
    return plans[args.dataset]


def worst_over(featured: dict) -> tuple:
    """The rows the WORST column combines: a preset's worst-case rows when featured, else
    WORST_OVER (each attack at its featured budget)."""
    preset_rows = tuple(k for k in featured if k.startswith("worst-case"))
    return preset_rows or WORST_OVER


def metrics_of(points: list) -> tuple:
    """The metrics judged: each featured row of the points, then WORST."""
    featured = points[0]["featured"] if points and points[0].get("featured") else dict.fromkeys(ATTACKS)
    return tuple(featured) + (WORST,)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog="See the module docstring.",
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="mnist", choices=sorted(PLANS))
    p.add_argument("--plan", default="default", choices=PLAN_NAMES,
                   help="'rejudge': the claims' settings plus FGR finite-difference and 2-step AT (use with "
                        "--preset standard)")
    p.add_argument("--preset", default=None, choices=("paper", "standard", "fast"),
                   help="evaluation preset (default: 'standard' with --plan rejudge, else 'paper'): 'paper' (the "
                        "suite of the first frontiers, --attack-size picks full/"
                        "small), 'standard' (flowtriton.attacks.evaluate's full-strength ensemble and its budgets; "
                        "--pgd-budgets / --tnorm-budgets / --attack-size unused), 'fast' (tests)")
    p.add_argument("--data-dir", default=default_data_dir())
    p.add_argument("--out-dir", default=None, help="default runs/frontier-<dataset>")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--methods", nargs="+", default=list(METHOD_ORDER), choices=METHOD_ORDER,
                   help="only these methods' points")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--milestones", type=int, nargs="*", default=[6, 8])
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.02)
    p.add_argument("--at-steps", type=int, default=5)
    p.add_argument("--val-size", type=int, default=5000)
    p.add_argument("--train-subset", type=int, default=None, help="a seeded subset of the training images (tests)")
    p.add_argument("--max-steps-per-epoch", type=int, default=None, help="tests only")
    p.add_argument("--eval-subset", type=int, default=1000, help="first N test images are attacked")
    p.add_argument("--attack-size", choices=("full", "small"), default="full", help="'small': tests only")
    p.add_argument("--pgd-budgets", type=float, nargs="+", default=[0.01, 0.02, 0.05, 0.1])
    p.add_argument("--tnorm-budgets", type=float, nargs="+", default=[0.25, 0.5, 1.0, 2.0])
    p.add_argument("--eval-batch-size", type=int, default=500)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: torch's default)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--report", action="store_true", help="only write the report from the finished points")
    p.add_argument("--stop-after-min", type=float, default=None,
                   help="start no new point after this many minutes (the run resumes later)")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    if args.preset is None:
        args.preset = "standard" if args.plan == "rejudge" else "paper"
    return args


def point_tag(method: str, lam, at_eps, seed: int) -> str:
    parts = [method.replace("+", "_")]
    if lam is not None:
        parts.append(f"lam{lam:g}")
    if at_eps is not None:
        parts.append(f"eps{at_eps:g}")
    return "-".join(parts + [f"s{seed}"])


def setting_label(method: str, lam, at_eps) -> str:
    bits = ([f"lam {lam:g}"] if lam is not None else []) + ([f"eps {at_eps:g}"] if at_eps is not None else [])
    return method + (f" ({', '.join(bits)})" if bits else "")


def plan_points(args) -> list:
    """[(method, lam, at_eps, seed)], seed-major, cheap methods first within a seed."""
    cost = {"standard": 0, "fgr": 1, "fgr-fd": 1, "igr": 1, "at-2step": 2, "at": 2.5, "fgr+at": 3}
    points = [p for p in plan_spec(args)["points"] if p[0] in args.methods]
    points = sorted(points, key=lambda p: cost[p[0]])
    return [(m, lam, eps, seed) for seed in args.seeds for (m, lam, eps) in points]


def train_point(args, data, out: Path, method, lam, at_eps, seed):
    """(trainer, TrainResult, {'fit_wall_s': ...}); resumes an interrupted training."""
    from flowtriton.train import Trainer, make_config

    tag = point_tag(method, lam, at_eps, seed)
    spec = {"method": method, "at_steps": args.at_steps, **METHOD_SPECS.get(method, {})}
    cfg = make_config(None, dataset=args.dataset, data_dir=args.data_dir, model="small-cnn", method=spec["method"],
                      lam=lam, at_eps=at_eps, at_steps=spec["at_steps"], epochs=args.epochs, batch_size=args.batch_size,
                      lr=args.lr, momentum=0.9, weight_decay=5e-4,
                      milestones=[m for m in args.milestones if 0 < m < args.epochs], gamma=0.1, seed=seed,
                      device=args.device, amp="off", out_dir=str(out / "ckpt" / tag), resume=True,
                      max_steps_per_epoch=args.max_steps_per_epoch, progress=not args.no_progress,
                      val_size=args.val_size, augment="none")
    timing_path = out / "ckpt" / tag / "fit_sessions.json"
    sessions = json.loads(timing_path.read_text()) if timing_path.is_file() else []
    started = time.perf_counter()
    trainer = Trainer(cfg, data)
    try:
        result = trainer.fit()
    finally:
        sessions.append(round(time.perf_counter() - started, 1))
        write_json(timing_path, sessions)
    return trainer, result, {"fit_wall_s": round(sum(sessions), 1), "fit_sessions": len(sessions)}


def evaluate_point(args, model, images, labels, cache_dir: Path, num_classes: int):
    """(EvaluationResult of every attack, {attack: seconds}, {attack: its settings, budgets and
    commit}): ``flowtriton.attacks.evaluate`` with ``cache_dir=cache_dir/<preset>``, which saves
    each attack's outcome as it finishes, so an interrupted evaluation resumes at the next attack.
    The settings are the evaluation's protocol (``FlowAttack.settings()`` and the budgets)."""
    from flowtriton.attacks import evaluate
    from flowtriton.app.evaluation import build_attacks

    common = dict(batch_size=args.eval_batch_size, progress=not args.no_progress, cache_dir=cache_dir / args.preset)
    if args.preset != "paper":  # a preset's whole ensemble
        result = evaluate(model, (images, labels), preset=args.preset, **common)
    else:
        suite, budgets = build_attacks(model, ATTACKS, args.attack_size, num_classes, pgd_budgets=args.pgd_budgets,
                                       tnorm_budgets=args.tnorm_budgets)
        result = evaluate(model, (images, labels), suite, budgets, **common)
    library = result.protocol["library"]
    settings = {name: {**spec, "commit": library["commit"], "uncommitted_changes": library["uncommitted_changes"]}
                for name, spec in result.protocol["attacks"].items()}
    return result, {k: round(v, 1) for k, v in result.seconds.items()}, settings


def run_point(args, data, out: Path, point, images_cache: dict) -> dict | None:
    """The point's record: read back when finished, else trained and attacked (resuming what an
    earlier run left). None when another process holds the point's lock."""
    tag = point_tag(*point)
    path = out / "points" / f"{tag}.json"
    if path.is_file() and not outdated(args, json.loads(path.read_text()), out, tag):
        return json.loads(path.read_text())
    with exclusive_lock(out / "ckpt" / f".{tag}.lock", wait=False) as mine:
        if not mine:
            print(f"[frontier] {tag}: another process is on it; next point", flush=True)
            return None
        if path.is_file():  # finished by another process since the check above, or outdated
            record = json.loads(path.read_text())
            if not outdated(args, record, out, tag):
                return record
            return _attack_again(args, data, out, record, tag, path, images_cache)
        return _train_and_attack(args, data, out, point, tag, path, images_cache)


def outdated(args, record: dict, out: Path, tag: str) -> bool:
    """True when a finished point was attacked under an older version of the folder's preset and
    its model is kept (``models/<tag>.pt``): the point is attacked again, not retrained."""
    if args.preset == "paper" or not isinstance(record.get("preset"), dict):
        return False
    from flowtriton.attacks import EVALUATION_PRESETS

    current = EVALUATION_PRESETS[args.preset]["version"]
    return record["preset"].get("version") != current and (out / "models" / f"{tag}.pt").is_file()


def _attack_again(args, data, out: Path, record: dict, tag: str, path: Path, images_cache: dict) -> dict:
    """Attack a finished point's kept model under the current preset version; the record keeps its
    training results and lists the summary of each earlier evaluation under 'earlier_protocols'."""
    from flowtriton.train import load_trained_model

    model, cfg, _ = load_trained_model(out / "models" / f"{tag}.pt", args.device)
    if "images" not in images_cache:
        images_cache["images"] = eval_batch(cfg, data, args.eval_subset, torch.device(args.device))
    images, labels = images_cache["images"]
    print(f"[frontier] {tag}: attacking its kept model again under preset {args.preset!r} "
          f"(was version {record['preset'].get('version')})", flush=True)
    ev, eval_s, settings = evaluate_point(args, model, images, labels, out / "ckpt" / tag / "eval",
                                          data.train.num_classes)
    earlier = record.get("earlier_protocols", []) + [{k: record.get(k) for k in (
        "preset", "library_commit", "eval_s", "featured_accuracy")}]
    record.update({**evaluation_fields(args, ev, eval_s, settings), "earlier_protocols": earlier})
    write_json(path, record)
    return record


def _train_and_attack(args, data, out: Path, point, tag: str, path: Path, images_cache: dict) -> dict:
    """Train and attack one point (``tag``), write its record to ``path``; the caller holds its lock."""
    method, lam, at_eps, seed = point
    torch.manual_seed(seed)
    trainer, res, timing = train_point(args, data, out, method, lam, at_eps, seed)
    if res.status != "finished":
        raise KeyboardInterrupt(f"{tag}: training interrupted; run the same command again to resume")
    model = load_best(trainer)
    if "images" not in images_cache:
        images_cache["images"] = eval_batch(trainer.cfg, data, args.eval_subset, trainer.ctx.device)
    images, labels = images_cache["images"]
    print(f"[frontier] {tag}: best val acc {res.best_val_acc:.4f} (epoch {res.best_epoch}), test acc "
          f"{res.test_acc:.4f}; attacking {len(labels)} test images", flush=True)
    ev, eval_s, settings = evaluate_point(args, model, images, labels, out / "ckpt" / tag / "eval",
                                          data.train.num_classes)
    n_train = len(data.train)
    record = {
        "tag": tag, "method": method, "lam": lam, "at_eps": at_eps, "seed": seed, "dataset": args.dataset,
        "epochs": args.epochs, "best_epoch": res.best_epoch, "best_val_acc": res.best_val_acc,
        "val_acc_by_epoch": [h.get("val_acc") for h in res.history],
        "test_acc_full_test_set": res.test_acc, "train_images": n_train,
        "train_step_s": train_step_seconds(res.history, n_train), **timing,
        **evaluation_fields(args, ev, eval_s, settings),
    }
    save_model(trainer, out / "models" / f"{tag}.pt")
    write_json(path, record)
    fa = record["featured_accuracy"]
    print(f"[frontier] {tag}: clean {fa['clean']:.3f}, " + ", ".join(f"{k} {v:.3f}" for k, v in fa.items()
                                                                       if k != "clean")
          + f"; training {record['fit_wall_s']:.0f} s, evaluation {sum(eval_s.values()):.0f} s", flush=True)
    return record


def evaluation_fields(args, ev, eval_s: dict, settings: dict) -> dict:
    """The fields of a point's record that its evaluation sets (the rest come from training)."""
    featured = plan_spec(args)["featured"]
    return {"eval_s": eval_s, "featured": featured, "featured_accuracy": featured_accuracy(ev, featured),
            "attack_settings": settings, "library_commit": dict(library_commit()),
            "preset": {"name": ev.protocol["preset"], "version": ev.protocol["version"]} if ev.protocol else None,
            "evaluation": ev.to_dict(masks=True)}


def save_model(trainer, path: Path) -> None:
    """A slim copy of the point's best checkpoint (weights, config, classes; no optimizer state,
    about 0.8 MB for the small CNN), committed beside the points so that a later protocol can
    attack the same models without retraining (``flowtriton.train.load_trained_model`` reads it)."""
    from flowtriton.io import save_atomic

    state = torch.load(Path(trainer.out_dir) / "best.pt", map_location="cpu", weights_only=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    slim = {k: state[k] for k in ("model", "config", "classes", "in_channels", "best_epoch", "best_val_acc")
            if k in state}
    slim["config"] = portable(slim["config"])  # no machine's absolute paths in a committed file
    save_atomic(slim, path)


def featured_accuracy(ev, featured: dict) -> dict:
    """{'clean', each attack at its featured budget, WORST: the worst case per example over the
    flow attacks (FlowPGD, ADef, stAdv) at those budgets}. Rotation + translation stays out of
    the worst case: at the full grid it fools nearly every model, which would hide every other
    difference; it has its own column."""
    out = {"clean": ev.clean_accuracy}
    for name, budget in featured.items():
        out[name] = ev.accuracy(name, budget)
    out[WORST] = ev.worst_case({k: v for k, v in featured.items() if k in worst_over(featured)})
    return out


# ---------------------------------------------------------------------------------------------
# report


def load_points(out: Path, featured: dict) -> list:
    """The finished points, their featured accuracies recomputed from the stored masks (so a
    change of featured budgets needs no new attack). A point file whose stored summary differs
    (written under an older definition of the worst case, say) is rewritten with the new one."""
    from flowtriton.attacks import EvaluationResult

    points = []
    for path in sorted((out / "points").glob("*.json")):
        record = json.loads(path.read_text())
        try:
            summary = featured_accuracy(EvaluationResult.from_dict(record["evaluation"]), featured)
        except KeyError as err:
            print(f"[frontier] {path.name} left out of the report: {err}", flush=True)
            continue
        if record.get("featured_accuracy") != summary or record.get("featured") != featured:
            record["featured"], record["featured_accuracy"] = featured, summary
            write_json(path, record)
        points.append(record)
    return points


def group_points(points: list) -> dict:
    """{(method, lam, at_eps): [records over seeds]}."""
    groups = {}
    for r in points:
        groups.setdefault((r["method"], r["lam"], r["at_eps"]), []).append(r)
    return groups


def summarize(records: list, key) -> tuple:
    """(mean, min, max) of key(record) over seeds."""
    values = [key(r) for r in records]
    return statistics.fmean(values), min(values), max(values)


def curve_records(points: list, metric: str, seed=None) -> dict:
    """:func:`curves` with the records behind each point: {method: [(clean, robust, records)]}."""
    groups = group_points([r for r in points if seed is None or r["seed"] == seed])
    out = {}
    for (method, lam, eps), records in groups.items():
        x = statistics.fmean(r["test_acc_full_test_set"] for r in records)
        y = statistics.fmean(r["featured_accuracy"][metric] for r in records)
        out.setdefault(method, []).append(((lam or 0.0, eps or 0.0), (x, y), records))
    standard = out.get("standard")
    if standard:
        for method in out:
            if method not in ("standard", "fgr+at"):
                out[method] += standard
    return {m: [(xy[0], xy[1], records) for _, xy, records in sorted(v, key=lambda item: item[:2])]
            for m, v in out.items()}


def curves(points: list, metric: str, seed=None) -> dict:
    """{method: [(clean_acc_full_test, robust)]} in order of strength (lambda, then AT eps); the
    standard model opens the IGR, FGR and AT curves (strength 0). seed None: means over the
    seeds each setting has."""
    return {m: [(x, y) for x, y, _ in v] for m, v in curve_records(points, metric, seed).items()}


def clean_tolerance(x: float, n_test: int = 10000) -> float:
    """Two standard errors of a clean accuracy ``x`` measured on ``n_test`` images."""
    return 2 * math.sqrt(max(x * (1 - x), 1e-12) / n_test)


def match_at_equal_clean(challenger: list, baseline: list, skip: tuple = ()) -> tuple:
    """The comparisons :func:`gap_at_equal_clean` averages: ([(i, j)], flipped), challenger
    point ``i`` against baseline point ``j``. Not flipped: each challenger point (but those in
    ``skip``) against the most robust baseline point at least as accurate clean; flipped (no
    challenger point had such a rival): each baseline point against the most robust challenger
    point at least as accurate clean. ([], False) when no point has a rival."""
    for mine, other, flipped in ((challenger, baseline, False), (baseline, challenger, True)):
        pairs = []
        for a, (x, y) in enumerate(mine):
            if (x, y) in skip:
                continue
            rivals = [b for b, (ox, oy) in enumerate(other) if ox >= x - clean_tolerance(x) and (ox, oy) not in skip]
            if rivals:
                best = max(rivals, key=lambda b: other[b][1])
                pairs.append((best, a) if flipped else (a, best))
        if pairs:
            return pairs, flipped
    return [], False


def gap_at_equal_clean(challenger: list, baseline: list, skip: tuple = ()):
    """Mean over the challenger's own points of: its robust accuracy minus the BEST robust
    accuracy of the baseline's points that are at least as accurate clean, within two standard
    errors of the clean accuracy (:func:`clean_tolerance`). Points in ``skip`` (the standard
    model both curves share) are neither compared nor rivals: a challenger point more accurate
    than every point the baseline method reached is outside the baseline's sampled range (a
    weaker baseline setting would sit between it and the standard model) and is left out; when
    all are, the baseline's points are compared the same way against the challenger's (sign
    flipped). Returns (gap, number of points compared) or None (:func:`match_at_equal_clean`
    gives the pairs).

    Not an interpolation: clean accuracies of these models often differ by less than their
    noise, and curves are not monotone, so a line between two points says little."""
    pairs, _ = match_at_equal_clean(challenger, baseline, skip)
    if not pairs:
        return None
    return statistics.fmean(challenger[i][1] - baseline[j][1] for i, j in pairs), len(pairs)


def below_clean_range(challenger: list, baseline: list, skip: tuple = ()) -> bool:
    """True when every challenger point is less accurate clean than every baseline point, beyond
    :func:`clean_tolerance`. :func:`gap_at_equal_clean` then compares the challenger with the
    baseline's most robust point, which it beats at no equal clean accuracy: a gap there reads
    "more robust than anything the baseline was tried at, and less accurate", not "better"."""
    mine = [x for x, y in challenger if (x, y) not in skip]
    other = [x for x, y in baseline if (x, y) not in skip]
    return bool(mine and other) and max(mine) < min(other) - clean_tolerance(max(mine))


# ---------------------------------------------------------------------------------------------
# paired tests on the shared attacked images

def mcnemar_p(b: int, c: int) -> float:
    """Exact two-sided McNemar test of ``b`` pairs won by one side against ``c`` won by the other
    (the discordant pairs; concordant ones carry no information): under no difference each
    discordant pair goes either way with probability 1/2, so p = 2 P(X <= min(b, c)) for X ~
    Binomial(b + c, 1/2), capped at 1; 1.0 without discordant pairs. Integer arithmetic
    (math.comb over 2**n, one rounding at the end): no underflow or cancellation at thousands
    of pairs (a p below the smallest double reads 0.0)."""
    for name, value in (("b", b), ("c", c)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{name} must be a count (int >= 0), got {value!r}")
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(b, c) + 1))
    return float(min(Fraction(1), Fraction(2 * tail, 2 ** n)))


def outcome_mask(record: dict, metric: str) -> list | None:
    """Per attacked image, True where the point's model is correct clean and under ``metric``:
    one attack at the record's featured budget, or WORST (every attack of WORST_OVER at its
    featured budget), read from the stored per-example masks. None when the record holds none."""
    from flowtriton.attacks.evaluate import row_key

    masks, featured = record.get("evaluation", {}).get("masks"), record.get("featured")
    if not masks or not featured or "clean" not in masks:
        return None
    names = worst_over(featured) if metric == WORST else (metric,)
    if any(name not in featured or row_key(name, featured[name]) not in masks for name in names):
        return None
    out = [c == "1" for c in masks["clean"]]
    for name in names:
        mask = masks[row_key(name, featured[name])]
        if len(mask) != len(out):
            return None
        out = [a and c == "1" for a, c in zip(out, mask)]
    return out


def discordant(challenger: list, baseline: list) -> tuple:
    """(images only the challenger gets right, images only the baseline gets right)."""
    return (sum(a and not b for a, b in zip(challenger, baseline)),
            sum(b and not a for a, b in zip(challenger, baseline)))


def paired_sign_test(comparisons: list) -> tuple:
    """One seed's paired test over a claim's comparisons [(challenger mask, baseline mask)] on the
    same images: per image the net count d = sum of (challenger correct) - (baseline correct) over
    the comparisons; (images with d > 0, images with d < 0, exact two-sided p of the two, by
    :func:`mcnemar_p`). A sign test on the images, which does not count one image twice when
    several comparisons share it; with one comparison it is McNemar's test itself."""
    ahead = behind = 0
    for outcomes in zip(*(pair for comparison in comparisons for pair in comparison)):
        d = sum(outcomes[0::2]) - sum(outcomes[1::2])
        ahead += d > 0
        behind += d < 0
    return ahead, behind, mcnemar_p(ahead, behind)


ALPHA = 0.01  # level of each seed's paired test (justified in the report by the seed noise it measures)
LARGE = 0.045  # a mean gap at least this large is labelled 'large' (the earlier verdict threshold)


def format_p(p) -> str:
    if p is None:
        return "-"
    if p == 0.0:
        return "<1e-300"
    return f"{p:.2f}" if p >= 0.01 else f"{p:.0e}"


def seed_noise(points: list, metrics: tuple | None = None) -> dict | None:
    """The training seed's own noise, image by image: every two seeds of one setting (the same
    method and strength, so no method difference) compared per metric with :func:`mcnemar_p`.
    Pairs without a discordant image are left out (rotation + translation fools every MNIST
    model: nothing to test). None without two seeds of a setting with masks. ``metrics``: default
    :func:`metrics_of` the points."""
    metrics = metrics_of(points) if metrics is None else metrics
    gaps, pvalues, counts = [], [], []
    for records in group_points(points).values():
        records = sorted(records, key=lambda r: r["seed"])
        for i, first in enumerate(records):
            for second in records[i + 1:]:
                for metric in metrics:
                    a, b = outcome_mask(first, metric), outcome_mask(second, metric)
                    if a is None or b is None or len(a) != len(b):
                        continue
                    n10, n01 = discordant(a, b)
                    if n10 + n01:
                        gaps.append(abs(n10 - n01) / len(a))
                        pvalues.append(mcnemar_p(n10, n01))
                        counts.append(n10 + n01)
    if not gaps:
        return None
    return {"pairs": len(gaps), "below_alpha": sum(p < ALPHA for p in pvalues),
            "below_0.05": sum(p < 0.05 for p in pvalues), "median_abs_gap": statistics.median(gaps),
            "max_abs_gap": max(gaps), "median_discordant": statistics.median(counts)}


def self_comparison(points: list, metrics: tuple | None = None) -> dict | None:
    """The matching's own noise: each method's curve of one seed judged against its curve of
    another seed (the standard model left out) exactly as a claim's seed is
    (:func:`match_at_equal_clean`, :func:`paired_sign_test`), both ways. No method difference
    exists, yet the compared points differ: a point dominated by a more accurate and more robust
    point of the same curve, or a rival accurate enough only by the other seed's clean-accuracy
    noise. {'rows' (seed rows with at least one discordant image), 'ahead', 'behind' (of those,
    p < ALPHA each way), 'floor': {'method/metric': the largest |gap| of those rows}}; None
    without two seeds of a method with two settings."""
    metrics = metrics_of(points) if metrics is None else metrics
    counts = {"rows": 0, "ahead": 0, "behind": 0, "floor": {}}
    for method in METHOD_ORDER[1:]:
        mine = [r for r in points if r["method"] == method]
        seeds = sorted({r["seed"] for r in mine})
        for metric in metrics:
            per_seed = {seed: curve_records(mine, metric, seed).get(method, []) for seed in seeds}
            for a in seeds:
                for b in seeds:
                    if a == b or len(per_seed[a]) < 2:
                        continue
                    first, second = per_seed[a], per_seed[b]
                    pairs, _ = match_at_equal_clean([xy[:2] for xy in first], [xy[:2] for xy in second])
                    masks = [(outcome_mask(first[i][2][0], metric), outcome_mask(second[j][2][0], metric))
                             for i, j in pairs]
                    if not pairs or any(m is None for pair in masks for m in pair):
                        continue
                    ahead, behind, p = paired_sign_test(masks)
                    if ahead + behind:
                        counts["rows"] += 1
                        counts["ahead"] += p < ALPHA and ahead > behind
                        counts["behind"] += p < ALPHA and behind > ahead
                        gap = abs(statistics.fmean(first[i][1] - second[j][1] for i, j in pairs))
                        key = f"{method}/{metric}"
                        counts["floor"][key] = max(counts["floor"].get(key, 0.0), gap)
    return counts if counts["rows"] else None


ALL = None  # a claim judged on every metric of the points (:func:`metrics_of`)
CLAIMS = [
    ("FGR above IGR at equal clean accuracy", "fgr", "igr", ALL),
    ("FGR above AT on the attacks AT did not train on", "fgr", "at", ("adef", "stadv", "rt")),
    ("FGR+AT above FGR", "fgr+at", "fgr", ALL),
    ("FGR+AT above AT", "fgr+at", "at", ALL),
    # the re-judged frontier's variants
    ("FGR finite-difference mode against exact FGR", "fgr-fd", "fgr", ALL),
    ("FGR above AT with 2 steps on the attacks AT did not train on", "fgr", "at-2step", ("adef", "stadv", "rt")),
    ("AT with 2 steps against AT with 5", "at-2step", "at", ALL),
]


def _seed_comparisons(points: list, metric: str, seed, challenger: str, baseline: str) -> dict | None:
    """One seed's side of a claim row: its gap (as :func:`gap_at_equal_clean` on the seed's
    curves), each comparison's McNemar test and the seed's paired sign test."""
    c = curve_records(points, metric, seed)
    if challenger not in c or baseline not in c:
        return None
    mine, other = c[challenger], c[baseline]
    skip = tuple((x, y) for x, y, _ in c.get("standard", []))
    pairs, flipped = match_at_equal_clean([(x, y) for x, y, _ in mine], [(x, y) for x, y, _ in other], skip)
    if not pairs:
        return None
    comparisons, masks = [], []
    for i, j in pairs:
        rc, rb = mine[i][2][0], other[j][2][0]
        mc, mb = outcome_mask(rc, metric), outcome_mask(rb, metric)
        label = {k: setting_label(r["method"], r["lam"], r["at_eps"])
                 for k, r in (("challenger", rc), ("baseline", rb))}
        entry = {**label, "matched": label["baseline" if flipped else "challenger"],
                 "gap": mine[i][1] - other[j][1], "ahead": None, "behind": None, "p": None}
        if mc is not None and mb is not None and len(mc) == len(mb):
            entry["ahead"], entry["behind"] = discordant(mc, mb)
            entry["p"] = mcnemar_p(entry["ahead"], entry["behind"])
            masks.append((mc, mb))
        comparisons.append(entry)
    ahead = behind = p = None
    if len(masks) == len(pairs) and len({len(m) for pair in masks for m in pair}) == 1:
        ahead, behind, p = paired_sign_test(masks)
    return {"seed": seed, "gap": statistics.fmean(e["gap"] for e in comparisons), "ahead": ahead, "behind": behind,
            "p": p, "comparisons": comparisons}


def _significant_everywhere(seeds: list, ahead: bool) -> list:
    """Settings compared at p < ALPHA in the same direction (challenger ahead, or behind) in
    every seed."""
    common = None
    for s in seeds:
        these = {e["matched"] for e in s["comparisons"]
                 if e["p"] is not None and e["p"] < ALPHA and e["ahead"] != e["behind"]
                 and (e["ahead"] > e["behind"]) == ahead}
        common = these if common is None else common & these
    return sorted(common or ())


def judge(points: list, seeds: list, matching: dict | None = None) -> list:
    """Per claim and attack, a dict: the gap on the seed-mean curves (:func:`gap_at_equal_clean`,
    the standard model left out of both), and per seed its gap, every comparison's discordant
    images and McNemar p, and the seed's paired sign test (:func:`paired_sign_test`), the
    verdict and the size label.

    Verdict: 'above' ('below') when in EVERY seed the paired test gives p < ALPHA with the
    challenger ahead (behind) and that seed's gap has the same sign, and the seed-mean gap too;
    else 'no clear difference'. The paired test sees the test images' noise, not the training
    seed's; each seed is one test, and requiring all of them to pass is what guards against a
    seed's own difference (the report measures that noise, :func:`seed_noise`). Notes: a
    setting compared at p < ALPHA in the other direction in every seed (the curves cross); a
    verdict whose |gap| is no larger than the challenger's largest gap to its own other seed
    under the same matching (``matching``, :func:`self_comparison`: computed when None); the
    challenger less accurate clean than every baseline point (:func:`below_clean_range`).
    Size: 'large' when |seed-mean gap| >= LARGE, else 'small'."""
    floor = (self_comparison(points) if matching is None else matching) or {}
    floor = floor.get("floor", {})
    rows = []
    for claim, challenger, baseline, attacks in CLAIMS:
        for metric in (metrics_of(points) if attacks is ALL else attacks):
            mean = curves(points, metric)
            if challenger not in mean or baseline not in mean:
                continue
            standard = tuple(mean.get("standard", []))
            overall = gap_at_equal_clean(mean[challenger], mean[baseline], skip=standard)
            row = {"claim": claim, "attack": metric, "gap": None, "compared": 0, "seeds": [], "size": "-"}
            if overall is None:
                rows.append({**row, "verdict": "curves do not overlap in clean accuracy"})
                continue
            row["gap"], row["compared"] = overall
            row["seeds"] = [s for s in (_seed_comparisons(points, metric, seed, challenger, baseline)
                                        for seed in seeds) if s is not None]
            tested = row["seeds"]
            if not tested or any(s["p"] is None for s in tested):
                verdict = "not tested (per-example masks missing)"
            else:
                def passes(sign):
                    return sign * row["gap"] > 0 and all(
                        s["p"] < ALPHA and sign * s["gap"] > 0 and sign * (s["ahead"] - s["behind"]) > 0
                        for s in tested)
                verdict = "above" if passes(1) else "below" if passes(-1) else "no clear difference"
                ahead, behind = _significant_everywhere(tested, True), _significant_everywhere(tested, False)
                every = "in every seed" if len(tested) > 1 else "in its seed"
                if verdict == "above" and behind:
                    verdict += f"; curves cross: {', '.join(behind)} behind its rival {every}"
                elif verdict == "below" and ahead:
                    verdict += f"; curves cross: {', '.join(ahead)} ahead of its rival {every}"
                elif verdict == "no clear difference" and ahead and behind:
                    verdict += f"; curves cross: {', '.join(ahead)} ahead, {', '.join(behind)} behind {every}"
            if len(tested) < 2:
                verdict = verdict.replace(";", f" ({len(tested)} seed);", 1) if ";" in verdict else \
                    f"{verdict} ({len(tested)} seed)"
            own = floor.get(f"{challenger}/{metric}")
            if verdict.startswith(("above", "below")) and own is not None and abs(row["gap"]) <= own:
                verdict += f"; no larger than {challenger}'s gap to its own other seed ({own:.3f})"
            if below_clean_range(mean[challenger], mean[baseline], skip=standard):
                verdict += "; less accurate clean than every baseline point"
            row["size"] = "large" if abs(row["gap"]) >= LARGE else "small"
            rows.append({**row, "verdict": verdict})
    return rows


def claim_rows(judged: list) -> list:
    """The claims table's rows from :func:`judge`."""
    out = []
    for r in judged:
        if r["gap"] is None:
            out.append([r["claim"], r["attack"], "-", "-", "-", "-", r["verdict"]])
            continue
        tests = "; ".join(f"s{s['seed']}: {s['ahead']}:{s['behind']}, p {format_p(s['p'])}" if s["p"] is not None
                          else f"s{s['seed']}: -" for s in r["seeds"])
        out.append([r["claim"], r["attack"],
                    f"{r['gap']:+.3f} ({r['compared']} point{'s' if r['compared'] > 1 else ''})",
                    ", ".join(f"{s['gap']:+.3f}" for s in r["seeds"]) or "-", tests or "-", r["size"], r["verdict"]])
    return out


def comparison_rows(judged: list) -> list:
    """One row per claim, attack and seed: each comparison's gap, discordant images and McNemar p."""
    out = []
    for r in judged:
        for s in r["seeds"]:
            out.append([r["claim"], r["attack"], s["seed"], "; ".join(
                f"{e['challenger']} vs {e['baseline']}: {e['gap']:+.3f}"
                + ("" if e["p"] is None else f", {e['ahead']}:{e['behind']}, p {format_p(e['p'])}")
                for e in s["comparisons"])])
    return out


def judge_claims(points: list, seeds: list, n_eval: int = 0) -> list:
    """The claims table's rows (:func:`judge`, :func:`claim_rows`): claim, attack, seed-mean gap,
    gap per seed, paired test per seed, size, verdict. ``n_eval`` is unused (kept for callers)."""
    return claim_rows(judge(points, seeds))


def cost_table(points: list, targets: list, metric: str = WORST) -> list:
    """Per method and target robust accuracy: among the settings whose seed-mean ``metric``
    reaches the target, the one with the best clean accuracy, with its mean training step time
    (s, the engine's time in training steps summed over epochs; validation passes and restarts
    not counted). Strength barely changes a method's cost; the method does."""
    groups = group_points(points)
    rows = []
    for method in METHOD_ORDER:
        settings = [(k, v) for k, v in groups.items() if k[0] == method]
        if not settings:
            continue
        row = [method]
        for target in targets:
            ok = [(statistics.fmean(r["train_step_s"] for r in v), k,
                   statistics.fmean(r["test_acc_full_test_set"] for r in v)) for k, v in settings
                  if statistics.fmean(r["featured_accuracy"][metric] for r in v) >= target]
            if ok:
                seconds, key, clean = max(ok, key=lambda item: item[2])
                row.append(f"{seconds:.0f} s ({setting_label(*key)}, clean {clean:.3f})")
            else:
                row.append("not reached")
        rows.append(row)
    return rows


def plot_frontiers(points: list, path: Path, title: str, featured: dict) -> None:
    from flowtriton.app.plots import pyplot

    plt = pyplot()
    metrics = list(featured) + [WORST]
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.3 * len(metrics), 3.4), squeeze=False)
    groups = group_points(points)
    for ax, metric in zip(axes[0], metrics):
        for method, curve in curves(points, metric).items():
            xs, ys = zip(*curve)
            ax.plot(xs, ys, "-", color=COLORS[method], alpha=0.8, label=method)
        for (method, lam, eps), records in groups.items():
            x = summarize(records, lambda r: r["test_acc_full_test_set"])
            y = summarize(records, lambda r: r["featured_accuracy"][metric])
            ax.errorbar(x[0], y[0], xerr=[[x[0] - x[1]], [x[2] - x[0]]], yerr=[[y[0] - y[1]], [y[2] - y[0]]],
                        fmt="o", ms=4, color=COLORS[method], capsize=2, lw=1)
        budget = featured.get(metric)
        unit = {"flowpgd": " (normalized)", "adef": " px", "stadv": " px", "worst-case-linf": " (normalized)",
                "worst-case-tnorm": " px"}.get(metric, "")
        ax.set_title(metric + ("" if budget is None else f" at {budget:g}{unit}"), fontsize=9)
        ax.set_xlabel("clean test accuracy", fontsize=8)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=7)
    axes[0][0].set_ylabel("robust accuracy", fontsize=8)
    axes[0][0].legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # atomic: another process may write it too
    fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    os.replace(tmp, path)


def verdict_text(noise: dict | None, n_eval: int, n_seeds: int, n_rows: int, matching: dict | None = None) -> str:
    """The report's statement of the verdict rule, with the seed noise it rests on."""
    text = (f"Paired test per seed: the claim's comparisons are on the same {n_eval} attacked images, so per image "
            f"the net count of compared points the challenger's model gets right and its rival's does not is taken, "
            f"and the images where it is positive (ahead) are tested against those where it is negative (behind) by "
            f"an exact two-sided binomial test (McNemar's test when one point is compared; per comparison in the "
            f"last section). Verdict 'above' ('below'): in every seed p < {ALPHA:g} with the challenger ahead "
            f"(behind) and that seed's gap of the same sign, and the seed-mean gap too; else 'no clear difference'. "
            f"Size: 'large' when the mean gap is at least {LARGE:g} (the earlier verdict threshold, twice the "
            f"standard error of a difference of two unpaired accuracies on 1,000 images), else 'small'. ")
    if noise is None:
        return text + (f"With {n_seeds} seed the training seed's own noise is not measured here: the paired test "
                       "sees only the test images' noise, so a verdict on one seed is weak evidence.")
    hits = max(noise["below_alpha"], 1)  # none below: bound the rate by one pair
    chance = (hits / noise["pairs"]) ** 2 / 2
    bound = "" if noise["below_alpha"] else "at most "
    versus_seeds = ("it also exceeds the largest seed-to-seed difference above" if LARGE > noise["max_abs_gap"] else
                    "the largest seed-to-seed difference above reaches it, so 'large' alone is no evidence")
    return text + (
        f"Why this rule, from the measured noise: the paired test sees the test images' noise, not the training "
        f"seed's. Two seeds of one setting (the same method and strength, so no method difference), compared image "
        f"by image on each metric, differ by a median {noise['median_abs_gap']:.3f} and at most "
        f"{noise['max_abs_gap']:.3f} in robust accuracy ({noise['median_discordant']:g} discordant images at the "
        f"median), with McNemar p < {ALPHA:g} in {noise['below_alpha']} of {noise['pairs']} such pairs and p < 0.05 in "
        f"{noise['below_0.05']} (pairs with at least one discordant image), against {ALPHA:.0%} and 5% were the test "
        f"images the only noise" + ("; retraining adds its own" if noise["below_alpha"] > ALPHA * noise["pairs"]
                                    or noise["below_0.05"] > 0.05 * noise["pairs"] else "") +
        f". One seed's test does not see the seed's noise, so each seed counts as one test: requiring every seed to "
        f"pass in the same direction makes a false "
        f"verdict {bound}about ({hits}/{noise['pairs']})^2/2 = {chance:.4f} per row with two seeds "
        f"(independent trainings), about {chance * n_rows:.2f} over this table's {n_rows} rows, so neither a stricter "
        f"level nor a Bonferroni correction over the compared points is needed. The earlier rule's threshold "
        f"({LARGE:g}) was set by unpaired noise; the paired test is sharper, so a small gap can be a clear one, and "
        f"'large' keeps the old threshold as a separate label: {versus_seeds}." + ("" if matching is None else
        f" What the test does not cover: which points the gap compares. The same matching applied to each method "
        f"against its own other seed (no method difference) gives p < {ALPHA:g} in "
        f"{matching['ahead'] + matching['behind']} of {matching['rows']} seed rows ({matching['behind']} behind, "
        f"{matching['ahead']} ahead): a curve's point "
        f"dominated by a more accurate and more robust point of the same curve (robustness to one attack falling at "
        f"the largest strengths), or a rival accurate enough only by a seed's clean-accuracy noise, is compared "
        f"with a different operating point. A 'below' verdict says the baseline has points at least as accurate "
        f"and more robust than the challenger's points (the matching favours the baseline), not that the "
        f"challenger's best point is worse; a verdict whose gap is no larger than the challenger's largest gap to "
        f"its own other seed on that metric says so; read the comparisons in the last section."))


def protocol_text(points: list) -> str:
    """Which points carry their attack settings and library commit (points written before they
    were stored: 'not recorded'), and the distinct settings and commits among those that do."""
    recorded = [r for r in points if isinstance(r.get("attack_settings"), dict)]
    missing = len(points) - len(recorded)
    text = "## Protocol record\n\n"
    if not recorded:
        return text + (f"Attack settings and library commit: {NOT_RECORDED} for all {len(points)} points (written "
                       "before points stored them); the attacks are those the module docstring describes.\n")
    text += (f"Attack settings and library commit recorded for {len(recorded)} of {len(points)} points"
             + (f" ({NOT_RECORDED} for the other {missing}, written before points stored them)" if missing else "")
             + ".\n\n")
    seen = {}
    for r in recorded:
        for name, settings in r["attack_settings"].items():
            if isinstance(settings, dict):
                body = {k: v for k, v in settings.items() if k not in ("commit", "uncommitted_changes")}
                key = (name, json.dumps(body, sort_keys=True))
            else:
                key = (name, json.dumps(settings))
            seen.setdefault(key, []).append(r["tag"])
    rows = [[name, f"`{body}`", len(tags)] for (name, body), tags in sorted(seen.items())]
    commits = {}
    for r in recorded:
        c = r.get("library_commit")
        label = (f"{c.get('commit')}{' (uncommitted changes)' if c.get('uncommitted_changes') is True else ''}"
                 if isinstance(c, dict) else str(c))
        commits[label] = commits.get(label, 0) + 1
    return (text + md_table(["attack", "settings (class, constructor arguments, budgets)", "points"], rows)
            + "\nLibrary commit (points): " + ", ".join(f"{c} ({n})" for c, n in sorted(commits.items())) + "\n")


def report(args, out: Path) -> str:
    featured = plan_spec(args)["featured"]
    points = load_points(out, featured)
    if not points:
        print(f"[frontier] no finished point under {out}/points yet", flush=True)
        return ""
    seeds = sorted({r["seed"] for r in points})
    n_eval = points[0]["evaluation"]["rows"][0]["examples"]
    groups = group_points(points)
    order = {m: i for i, m in enumerate(METHOD_ORDER)}
    keys = sorted(groups, key=lambda k: (order[k[0]], k[1] or 0, k[2] or 0))
    metrics = ["clean"] + list(featured) + [WORST]

    def cell(records, fn):
        mean, lo, hi = summarize(records, fn)
        return f"{mean:.3f}" if len(records) == 1 else f"{mean:.3f} ({lo:.3f}-{hi:.3f})"

    headers = [f"{m}" + ("" if featured.get(m) is None else f" @{featured[m]:g}") for m in metrics[1:]]
    table = md_table(
        ["setting", "seeds", "clean (10k test)"] + headers
        + ["training s (steps s)", "best epoch", "val acc last 3 epochs"],
        [[setting_label(*k), len(groups[k]), cell(groups[k], lambda r: r["test_acc_full_test_set"])]
         + [cell(groups[k], lambda r, m=m: r["featured_accuracy"][m]) for m in metrics[1:]]
         + [f"{statistics.fmean(r['fit_wall_s'] for r in groups[k]):.0f} "
            f"({statistics.fmean(r['train_step_s'] for r in groups[k]):.0f})",
            "/".join(str(r["best_epoch"]) for r in groups[k]),
            "; ".join("/".join(f"{v:.3f}" for v in r["val_acc_by_epoch"][-3:]) for r in groups[k])]
         for k in keys])
    noise, matching = seed_noise(points), self_comparison(points)
    judged = judge(points, seeds, matching)
    claims = md_table(["claim", "attack", "mean gap, seed-mean curves (points compared)", "gap per seed",
                       "paired test per seed: images ahead:behind, p", "size", "verdict"], claim_rows(judged))
    comparisons = md_table(["claim", "attack", "seed", "challenger vs baseline point: gap, images only the "
                            "challenger gets right : only the baseline, McNemar p"], comparison_rows(judged))
    targets = plan_spec(args)["targets"]
    cost = md_table(["method"] + [f"worst case >= {t:g}" for t in targets], cost_table(points, targets))
    full_rows = []
    for k in keys:
        for r in groups[k]:
            for row in r["evaluation"]["rows"]:
                if row["attack"] not in ("clean", "union"):
                    full_rows.append((setting_label(*k), r["seed"], row))
    title = f"{args.dataset}: robust vs clean accuracy ({n_eval} attacked test images, seeds {seeds})"
    plot_frontiers(points, out / "frontier.png", title, featured)
    text = (f"# {args.dataset}: robustness frontiers\n\n"
            f"Small CNN, {points[0]['epochs']} epochs on {points[0]['train_images']} training images, checkpoint by "
            f"validation accuracy; {n_eval} attacked test images; seeds {seeds}; {len(points)} finished points. "
            "Cells: mean over seeds (min-max). " + featured_text(args, featured)
            + " Training s: wall time of the fit (including validation passes; the machine and its load are in "
            "run.json), then the step time alone.\n\n" + table +
            "\n## The paper's claims on the frontiers\n\nGap: for each of the challenger's points, its robust "
            "accuracy minus the best robust accuracy among the baseline's points that are at least as accurate "
            "clean, within two standard errors of the clean accuracy on 10,000 test images; averaged over the "
            "challenger's points that have such a rival (else the baseline's points against the challenger's). "
            "The standard model both curves start from is neither compared nor a rival: a point more accurate "
            "than every setting of the other method is outside its sampled range. "
            + verdict_text(noise, n_eval, len(seeds), len(judged), matching) + "\n\n"
            + claims + f"\n## Training time to reach a robustness ('{WORST}')\n\n"
            "Training step time (s) of the setting that reaches the target (seed-mean worst case) with the best "
            "clean accuracy, and that accuracy. Within a method the strength barely changes the cost.\n\n" + cost
            + "\n## Paired comparisons behind the verdicts\n\nPer seed, each compared point against its rival on the "
            f"{n_eval} attacked images (the same images for every point): the gap, the images only the challenger's "
            "point gets right and those only the baseline's (the discordant pairs), and the exact two-sided McNemar "
            "p (binomial on the discordant pairs).\n\n" + comparisons + "\n" + protocol_text(points))
    write_text_atomic(out / "frontier.md", text)
    write_text_atomic(out / "frontier.json", json.dumps({
        "dataset": args.dataset, "plan": args.plan, "preset": args.preset, "featured": featured,
 "seeds": seeds, "eval_images": n_eval,
        "points": [{"attack_settings": NOT_RECORDED, "library_commit": NOT_RECORDED}
                   | {k: v for k, v in r.items() if k != "evaluation"} | {"rows": r["evaluation"]["rows"]}
                   for r in points],
        "verdict_rule": {"alpha_per_seed": ALPHA, "large": LARGE, "seed_noise": noise,
                         "self_comparison": matching},
        "claims": claim_rows(judged), "claims_detail": judged}, indent=1))
    print(text, flush=True)
    return text


# Settings every finished point and cached attack of an output folder depends on: a resumed run
# must use the same ones (else its caches would mix two protocols).
MUST_MATCH = ("dataset", "plan", "preset", "epochs", "milestones", "batch_size", "lr", "at_steps", "val_size",
              "train_subset", "max_steps_per_epoch", "eval_subset", "attack_size", "pgd_budgets", "tnorm_budgets")


def check_settings(args, out: Path) -> None:
    """Check that the plan's featured rows exist under the chosen preset, then record MUST_MATCH in
    OUT/settings.json on the first run; refuse a later run that differs."""
    featured = plan_spec(args)["featured"]
    linf, tnorm = args.pgd_budgets, args.tnorm_budgets
    allowed = {"flowpgd": linf, "adef": tnorm, "stadv": tnorm, "rt": [None]}
    advice = "add it to --pgd-budgets / --tnorm-budgets"
    if args.preset != "paper":
        from flowtriton.attacks import EVALUATION_PRESETS

        spec = EVALUATION_PRESETS[args.preset]
        linf, tnorm = spec["linf_budgets"], spec["tnorm_budgets"]
        allowed = {"flowpgd": linf, "adef": tnorm, "stadv": tnorm, "rt": [None], "worst-case-linf": linf,
                   "worst-case-tnorm": tnorm}
        advice = f"preset {args.preset!r} runs its own budgets; use the plan made for it (--plan rejudge)"
    missing = [name for name in featured if name not in allowed]
    if missing:
        raise SystemExit(f"[frontier] the plan features {missing}, which preset {args.preset!r} does not report: "
                         "the 'rejudge' plan needs a preset with worst-case rows (--preset standard)")
    for name, budget in featured.items():
        if budget not in allowed[name]:
            raise SystemExit(f"[frontier] the plan features {name} at {budget}, which is not among its budgets "
                             f"{allowed[name]}: {advice}")
    path = out / "settings.json"
    mine = {k: getattr(args, k) for k in MUST_MATCH}
    if path.is_file():
        saved = {**SETTINGS_BEFORE_PRESETS, **json.loads(path.read_text())}
        differ = {k: (saved.get(k), mine[k]) for k in MUST_MATCH if saved.get(k) != mine[k]}
        if differ:
            raise SystemExit(f"[frontier] {out} was run with other settings {differ} (saved, now): its points and "
                             "cached attacks belong to those; use the same settings or a new --out-dir")
    else:
        write_json(path, mine, indent=2)


# What a settings.json written before --plan and --preset existed ran.
SETTINGS_BEFORE_PRESETS = {"plan": "default", "preset": "paper"}


def featured_text(args, featured: dict) -> str:
    """The report's sentence on what the featured columns and WORST mean."""
    if args.preset == "paper":
        return (f"Featured budgets: FlowPGD in normalized units (L-inf per flow component, 100 steps), ADef/stAdv "
                f"as T-norm in pixels, rt the full rotation + translation grid; '{WORST}': correct under each of "
                f"{', '.join(worst_over(featured))} at its featured budget (rt has its own column: its full grid "
                f"fools nearly every model).")
    return (f"Attacks: evaluation preset '{args.preset}' (flowtriton.attacks.evaluate, docs/attacks.md: FlowPGD at "
            f"full strength, RandomFlow, ADef, stAdv at full strength, rotation + translation). Featured budgets: "
            f"flowpgd and worst-case-linf in normalized units (L-inf per flow component), adef, stadv and "
            f"worst-case-tnorm as T-norm in pixels; worst-case-linf (-tnorm): correct and fooled by no run of any "
            f"attack with a flow within that L-inf box (T-norm ball); '{WORST}': both at once (rt has its own "
            f"column and stays out: its full grid fools nearly every model).")


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out_dir or f"runs/frontier-{args.dataset}")
    out.mkdir(parents=True, exist_ok=True)
    saved = out / "settings.json"
    if args.report and saved.is_file():  # report what the folder ran
        recorded = {**SETTINGS_BEFORE_PRESETS, **json.loads(saved.read_text())}
        args.plan, args.preset = recorded["plan"], recorded["preset"]
    if args.report:
        report(args, out)
        return 0
    check_settings(args, out)
    record = RunRecord(out, args.seeds[0], vars(args))
    data = load_splits(args.dataset, args.data_dir, args.val_size, 0, args.train_subset, 0)
    plan = plan_points(args)
    print(f"[frontier] {args.dataset}: train {len(data.train)}, val {len(data.val)}, test {len(data.test)}; "
          f"{len(plan)} points", flush=True)
    started, images = time.perf_counter(), {}
    status, elsewhere = "finished", []
    try:
        for i, point in enumerate(plan):
            if args.stop_after_min is not None and (time.perf_counter() - started) / 60 > args.stop_after_min:
                status = "stopped (time limit)"
                print(f"[frontier] --stop-after-min reached before point {i + 1}/{len(plan)}; run again to go on",
                      flush=True)
                break
            if run_point(args, data, out, point, images) is None:
                elsewhere.append(point_tag(*point))
            record.save()
        if status == "finished" and elsewhere:
            status = "finished; other processes were on " + ", ".join(elsewhere)
            print(f"[frontier] {len(elsewhere)} point(s) were left to other processes: {', '.join(elsewhere)}; "
                  "the last process to finish writes the full report (or run --report)", flush=True)
    except KeyboardInterrupt as err:
        status = "interrupted"
        print(f"[frontier] {err}" if str(err) else "[frontier] interrupted; run the same command again to resume",
              flush=True)
    record.finish(status=status)
    report(args, out)
    return 0 if status.startswith("finished") else 75


if __name__ == "__main__":
    sys.exit(main())
