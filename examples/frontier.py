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
   (``flowtriton.train.evaluation.build_attacks(size='full')``): FlowPGD (100 steps) at every
   budget of ``--pgd-budgets`` (normalized units, L-inf per flow component), ADef (100
   iterations, every candidate label) and stAdv as minimum-norm attacks judged at
   ``--tnorm-budgets`` (T-norm, pixels), rotation + translation (+-30 degrees, +-3 px, 5x5x5).
   Per-example masks are kept, so the worst case over attacks at any budgets can be computed
   afterwards (``EvaluationResult.worst_case``).
3. writes ``points/<tag>.json``: settings, validation curve, clean test accuracy (all 10,000),
   training time (the engine's step time summed over epochs, and the wall time of the fit
   sessions), evaluation time, the table and the masks.

Everything resumes: an interrupted training continues from its ``last.pt``, an interrupted
evaluation from its last finished attack. Several processes may work on one output folder: each
point is locked while a process trains or attacks it (``ckpt/.<tag>.lock``), others skip it and
take the next, so the same command started twice uses two cores (give each ``--threads 1``). ``--report`` (also run at the end) writes
``frontier.md``, ``frontier.json`` and ``frontier.png`` from whatever points are finished.
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
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from _common import (RunRecord, default_data_dir, eval_batch, evaluate_one_by_one, exclusive_lock,  # noqa: E402
                     load_best, load_splits, md_table, train_step_seconds, write_json, write_text_atomic)

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
ATTACKS = ("flowpgd", "adef", "stadv", "rt")
WORST = "worst case"
WORST_OVER = ("flowpgd", "adef", "stadv")
METHOD_ORDER = ("standard", "fgr", "igr", "at", "fgr+at")
COLORS = {"standard": "black", "fgr": "tab:red", "igr": "tab:blue", "at": "tab:green", "fgr+at": "tab:purple"}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog="See the module docstring.",
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="mnist", choices=sorted(PLANS))
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
    return p.parse_args(argv)


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
    cost = {"standard": 0, "fgr": 1, "igr": 1, "at": 2, "fgr+at": 3}
    points = [p for p in PLANS[args.dataset]["points"] if p[0] in args.methods]
    points = sorted(points, key=lambda p: cost[p[0]])
    return [(m, lam, eps, seed) for seed in args.seeds for (m, lam, eps) in points]


def train_point(args, data, out: Path, method, lam, at_eps, seed):
    """(trainer, TrainResult, {'fit_wall_s': ...}); resumes an interrupted training."""
    from flowtriton.train import Trainer, make_config

    tag = point_tag(method, lam, at_eps, seed)
    cfg = make_config(None, dataset=args.dataset, data_dir=args.data_dir, model="small-cnn", method=method, lam=lam,
                      at_eps=at_eps, at_steps=args.at_steps, epochs=args.epochs, batch_size=args.batch_size,
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
    """EvaluationResult of every attack, one attack at a time, each cached with its masks."""
    from flowtriton.attacks import EvaluationResult
    from flowtriton.train.evaluation import build_attacks

    suite, budgets = build_attacks(model, ATTACKS, args.attack_size, num_classes, pgd_budgets=args.pgd_budgets,
                                   tnorm_budgets=args.tnorm_budgets)
    parts, seconds = evaluate_one_by_one(model, images, labels, suite, budgets, lambda name: cache_dir / f"{name}.json",
                                         args.eval_batch_size, progress=not args.no_progress)
    return EvaluationResult.merge(parts), seconds


def run_point(args, data, out: Path, point, images_cache: dict) -> dict | None:
    """The point's record: read back when finished, else trained and attacked (resuming what an
    earlier run left). None when another process holds the point's lock."""
    tag = point_tag(*point)
    path = out / "points" / f"{tag}.json"
    if path.is_file():
        return json.loads(path.read_text())
    with exclusive_lock(out / "ckpt" / f".{tag}.lock", wait=False) as mine:
        if not mine:
            print(f"[frontier] {tag}: another process is on it; next point", flush=True)
            return None
        if path.is_file():  # finished by another process since the check above
            return json.loads(path.read_text())
        return _train_and_attack(args, data, out, point, tag, path, images_cache)


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
    ev, eval_s = evaluate_point(args, model, images, labels, out / "ckpt" / tag / "eval", data.train.num_classes)
    n_train = len(data.train)
    featured = PLANS[args.dataset]["featured"]
    record = {
        "tag": tag, "method": method, "lam": lam, "at_eps": at_eps, "seed": seed, "dataset": args.dataset,
        "epochs": args.epochs, "best_epoch": res.best_epoch, "best_val_acc": res.best_val_acc,
        "val_acc_by_epoch": [h.get("val_acc") for h in res.history],
        "test_acc_full_test_set": res.test_acc, "train_images": n_train,
        "train_step_s": train_step_seconds(res.history, n_train), **timing, "eval_s": eval_s,
        "featured": featured, "featured_accuracy": featured_accuracy(ev, featured),
        "evaluation": ev.to_dict(masks=True),
    }
    write_json(path, record)
    fa = record["featured_accuracy"]
    print(f"[frontier] {tag}: clean {fa['clean']:.3f}, " + ", ".join(f"{k} {v:.3f}" for k, v in fa.items()
                                                                       if k != "clean")
          + f"; training {record['fit_wall_s']:.0f} s, evaluation {sum(eval_s.values()):.0f} s", flush=True)
    return record


def featured_accuracy(ev, featured: dict) -> dict:
    """{'clean', each attack at its featured budget, WORST: the worst case per example over the
    flow attacks (FlowPGD, ADef, stAdv) at those budgets}. Rotation + translation stays out of
    the worst case: at the full grid it fools nearly every model, which would hide every other
    difference; it has its own column."""
    out = {"clean": ev.clean_accuracy}
    for name, budget in featured.items():
        out[name] = ev.accuracy(name, budget)
    out[WORST] = ev.worst_case({k: v for k, v in featured.items() if k in WORST_OVER})
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


def curves(points: list, metric: str, seed=None) -> dict:
    """{method: [(clean_acc_full_test, robust)]} in order of strength (lambda, then AT eps); the
    standard model opens the IGR, FGR and AT curves (strength 0). seed None: means over the
    seeds each setting has."""
    groups = group_points([r for r in points if seed is None or r["seed"] == seed])
    out = {}
    for (method, lam, eps), records in groups.items():
        x = statistics.fmean(r["test_acc_full_test_set"] for r in records)
        y = statistics.fmean(r["featured_accuracy"][metric] for r in records)
        out.setdefault(method, []).append(((lam or 0.0, eps or 0.0), (x, y)))
    standard = out.get("standard")
    if standard:
        for method in out:
            if method not in ("standard", "fgr+at"):
                out[method] += standard
    return {m: [xy for _, xy in sorted(v)] for m, v in out.items()}


def clean_tolerance(x: float, n_test: int = 10000) -> float:
    """Two standard errors of a clean accuracy ``x`` measured on ``n_test`` images."""
    return 2 * math.sqrt(max(x * (1 - x), 1e-12) / n_test)


def gap_at_equal_clean(challenger: list, baseline: list, skip: tuple = ()):
    """Mean over the challenger's own points of: its robust accuracy minus the BEST robust
    accuracy of the baseline's points that are at least as accurate clean, within two standard
    errors of the clean accuracy (:func:`clean_tolerance`). Points in ``skip`` (the standard
    model both curves share) are neither compared nor rivals: a challenger point more accurate
    than every point the baseline method reached is outside the baseline's sampled range (a
    weaker baseline setting would sit between it and the standard model) and is left out; when
    all are, the baseline's points are compared the same way against the challenger's (sign
    flipped). Returns (gap, number of points compared) or None.

    Not an interpolation: clean accuracies of these models often differ by less than their
    noise, and curves are not monotone, so a line between two points says little."""
    for mine, other, sign in ((challenger, baseline, 1.0), (baseline, challenger, -1.0)):
        gaps = []
        for x, y in mine:
            if (x, y) in skip:
                continue
            rivals = [oy for ox, oy in other if ox >= x - clean_tolerance(x) and (ox, oy) not in skip]
            if rivals:
                gaps.append(sign * (y - max(rivals)))
        if gaps:
            return statistics.fmean(gaps), len(gaps)
    return None


def below_clean_range(challenger: list, baseline: list, skip: tuple = ()) -> bool:
    """True when every challenger point is less accurate clean than every baseline point, beyond
    :func:`clean_tolerance`. :func:`gap_at_equal_clean` then compares the challenger with the
    baseline's most robust point, which it beats at no equal clean accuracy: a gap there reads
    "more robust than anything the baseline was tried at, and less accurate", not "better"."""
    mine = [x for x, y in challenger if (x, y) not in skip]
    other = [x for x, y in baseline if (x, y) not in skip]
    return bool(mine and other) and max(mine) < min(other) - clean_tolerance(max(mine))


CLAIMS = [
    ("FGR above IGR at equal clean accuracy", "fgr", "igr", ATTACKS + (WORST,)),
    ("FGR above AT on the attacks AT did not train on", "fgr", "at", ("adef", "stadv", "rt")),
    ("FGR+AT above FGR", "fgr+at", "fgr", ATTACKS + (WORST,)),
    ("FGR+AT above AT", "fgr+at", "at", ATTACKS + (WORST,)),
]


def judge_claims(points: list, seeds: list, n_eval: int) -> list:
    """Per claim and attack: the challenger's points against the baseline's points at least as
    accurate clean, the standard model left out of both (:func:`gap_at_equal_clean`), on the
    seed-mean curves and per seed. A descriptive rule, not a significance test: 'above' / 'below'
    when every seed's gap has that sign and the mean gap exceeds twice the largest standard error
    of a difference of two accuracies measured on n_eval images each (sqrt(2) * 0.5 /
    sqrt(n_eval); paired images make the true error smaller); else 'no clear difference'. Two
    seeds agree in sign by chance half the time when there is no effect, so the size of the gap
    carries the weight. A verdict is flagged when the challenger's points all lie below the
    baseline's clean-accuracy range (:func:`below_clean_range`)."""
    se = math.sqrt(2) * 0.5 / math.sqrt(max(n_eval, 1))
    rows = []
    for claim, challenger, baseline, attacks in CLAIMS:
        for metric in attacks:
            mean = curves(points, metric)
            if challenger not in mean or baseline not in mean:
                continue
            standard = tuple(mean.get("standard", []))
            overall = gap_at_equal_clean(mean[challenger], mean[baseline], skip=standard)
            per_seed = []
            for seed in seeds:
                c = curves(points, metric, seed)
                if challenger in c and baseline in c:
                    g = gap_at_equal_clean(c[challenger], c[baseline], skip=tuple(c.get("standard", [])))
                    if g is not None:
                        per_seed.append(g[0])
            if overall is None:
                rows.append([claim, metric, "-", "-", "curves do not overlap in clean accuracy"])
                continue
            gap, compared = overall
            if per_seed and all(g > 0 for g in per_seed) and gap > 2 * se:
                verdict = "above"
            elif per_seed and all(g < 0 for g in per_seed) and gap < -2 * se:
                verdict = "below"
            else:
                verdict = "no clear difference"
            if len(per_seed) < 2:
                verdict += f" ({len(per_seed)} seed)"
            if below_clean_range(mean[challenger], mean[baseline], skip=standard):
                verdict += "; less accurate clean than every baseline point"
            rows.append([claim, metric, f"{gap:+.3f} ({compared} point{'s' if compared > 1 else ''})",
                         ", ".join(f"{g:+.3f}" for g in per_seed) or "-", verdict])
    return rows


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
    from flowtriton.plots import _pyplot

    plt = _pyplot()
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
        unit = {"flowpgd": " (normalized)", "adef": " px", "stadv": " px"}.get(metric, "")
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


def report(args, out: Path) -> str:
    featured = PLANS[args.dataset]["featured"]
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

    table = md_table(
        ["setting", "seeds", "clean (10k test)"] + [f"{m}" + ("" if featured.get(m) is None else f" @{featured[m]:g}")
                                                     for m in metrics[1:]] + ["training s (steps s)", "best epoch", "val acc last 3 epochs"],
        [[setting_label(*k), len(groups[k]), cell(groups[k], lambda r: r["test_acc_full_test_set"])]
         + [cell(groups[k], lambda r, m=m: r["featured_accuracy"][m]) for m in metrics[1:]]
         + [f"{statistics.fmean(r['fit_wall_s'] for r in groups[k]):.0f} "
            f"({statistics.fmean(r['train_step_s'] for r in groups[k]):.0f})",
            "/".join(str(r["best_epoch"]) for r in groups[k]),
            "; ".join("/".join(f"{v:.3f}" for v in r["val_acc_by_epoch"][-3:]) for r in groups[k])]
         for k in keys])
    claims = md_table(["claim", "attack", "mean gap, seed-mean curves (points compared)", "gap per seed", "verdict"],
                      judge_claims(points, seeds, n_eval))
    targets = PLANS[args.dataset]["targets"]
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
            f"Cells: mean over seeds (min-max). Featured budgets: FlowPGD in normalized units (L-inf per flow "
            f"component, 100 steps), ADef/stAdv as T-norm in pixels, rt the full rotation + translation grid; "
            f"'{WORST}': correct under each of {', '.join(WORST_OVER)} at its featured budget (rt has its own column: "
            f"its full grid fools nearly every model). Training s: wall time of the fit (including "
            f"validation passes; the machine and its load are in run.json), then the step time alone.\n\n" + table +
            "\n## The paper's claims on the frontiers\n\nGap: for each of the challenger's points, its robust accuracy minus "
            "the best robust accuracy among the baseline's points that are at least as accurate clean, within two "
            "standard errors of the clean accuracy on 10,000 test images; averaged over the challenger's points that "
            "have such a rival (else the baseline's points against the challenger's). The standard model both curves "
            "start from is neither compared nor a rival: a point more accurate than every setting of the other method "
            "is outside its sampled range. "
            f"Verdict (descriptive, not a significance test) 'above'/'below' needs every seed's gap to agree in sign "
            f"and the mean gap to exceed {2 * math.sqrt(2) * 0.5 / math.sqrt(n_eval):.3f} (twice the largest standard "
            f"error of a difference of two accuracies on {n_eval} images); with two seeds, sign agreement alone is "
            f"weak evidence.\n\n"
            + claims + "\n## Training time to reach a robustness (worst case over FlowPGD, ADef and stAdv at the featured budgets)\n\n"
            "Training step time (s) of the setting that reaches the target (seed-mean worst case) with the best "
            "clean accuracy, and that accuracy. Within a method the strength barely changes the cost.\n\n" + cost)
    write_text_atomic(out / "frontier.md", text)
    write_text_atomic(out / "frontier.json", json.dumps({
        "dataset": args.dataset, "featured": featured, "seeds": seeds, "eval_images": n_eval,
        "points": [{k: v for k, v in r.items() if k != "evaluation"} | {"rows": r["evaluation"]["rows"]}
                   for r in points],
        "claims": judge_claims(points, seeds, n_eval)}, indent=1))
    print(text, flush=True)
    return text


# Settings every finished point and cached attack of an output folder depends on: a resumed run
# must use the same ones (else its caches would mix two protocols).
MUST_MATCH = ("dataset", "epochs", "milestones", "batch_size", "lr", "at_steps", "val_size", "train_subset",
              "max_steps_per_epoch", "eval_subset", "attack_size", "pgd_budgets", "tnorm_budgets")


def check_settings(args, out: Path) -> None:
    """Record MUST_MATCH in OUT/settings.json on the first run; refuse a later run that differs."""
    path = out / "settings.json"
    mine = {k: getattr(args, k) for k in MUST_MATCH}
    if path.is_file():
        saved = json.loads(path.read_text())
        differ = {k: (saved.get(k), mine[k]) for k in MUST_MATCH if saved.get(k) != mine[k]}
        if differ:
            raise SystemExit(f"[frontier] {out} was run with other settings {differ} (saved, now): its points and "
                             "cached attacks belong to those; use the same settings or a new --out-dir")
    else:
        write_json(path, mine, indent=2)
    featured = PLANS[args.dataset]["featured"]
    allowed = {"flowpgd": args.pgd_budgets, "adef": args.tnorm_budgets, "stadv": args.tnorm_budgets, "rt": [None]}
    for name, budget in featured.items():
        if budget not in allowed[name]:
            raise SystemExit(f"[frontier] the plan features {name} at {budget}, which is not among its budgets "
                             f"{allowed[name]}: add it to --pgd-budgets / --tnorm-budgets")


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out_dir or f"runs/frontier-{args.dataset}")
    out.mkdir(parents=True, exist_ok=True)
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
