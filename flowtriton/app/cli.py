"""The ``flowtriton`` command line: ``train``, ``evaluate``, ``demo``.

    flowtriton demo                      # standard vs FGR on embedded MNIST, attacked, on a CPU
    flowtriton train --method fgr --out-dir runs/fgr
    flowtriton evaluate runs/fgr/best.pt --out-dir runs/fgr/eval
    torchrun --nproc-per-node 2 -m flowtriton train --method fgr ...   # DistributedDataParallel
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

_EPILOG = """\
examples:
  flowtriton demo --quick                       # a short check that everything works
  flowtriton train --method fgr --epochs 5 --out-dir runs/fgr
  flowtriton train --method fgr --out-dir runs/fgr --overwrite   # replace that run
  flowtriton train --preset paper --dataset cifar10 --data-dir /data --method fgr --out-dir runs/vgg11-fgr
  flowtriton train --resume --out-dir runs/vgg11-fgr   # continue an interrupted run exactly
  flowtriton evaluate runs/fgr/best.pt --attacks flowpgd adef --num-examples 500 --out-dir runs/fgr/eval
  torchrun --nproc-per-node 2 -m flowtriton train --method fgr --out-dir runs/ddp

data: --data-dir, else $FLOWTRITON_DATA, else the cache folder ($FLOWTRITON_CACHE, else
~/.cache/flowtriton). 'mnist-subset' (8,000 + 2,000 MNIST images) ships inside the package.
"""


def _add_train_args(p: argparse.ArgumentParser) -> None:
    from ..data import DATASETS
    from ..models import list_models
    from ..regularizers import DEFAULT_FGR_LAM, DEFAULT_IGR_LAM
    from ..train import METHODS, PRESETS

    d = p.add_argument_group("data")
    d.add_argument("--dataset", choices=DATASETS, help="default: mnist-subset (embedded, no files needed)")
    d.add_argument("--data-dir", help="data root (else $FLOWTRITON_DATA, else the cache folder)")
    d.add_argument("--download", action="store_true", default=None,
                   help="download missing originals (md5-checked); needs internet")
    d.add_argument("--val-size", type=float, help="held-out validation share of train (<1) or count; default 0.1")
    d.add_argument("--split-seed", type=int, help="seed of the validation split (default 0)")
    d.add_argument("--augment", choices=("auto", "none", "paper", "crop"),
                   help="'paper': Resize(36)-RandomCrop(32)-Flip; 'auto' uses it for 32x32 colour images")
    d.add_argument("--max-per-class", type=_positive_int, help="image folders only: first N files per class")
    m = p.add_argument_group("model and method")
    m.add_argument("--model", type=_model_name,
                   help=f"one of {', '.join(list_models())}, or vgg<depth>-w<width> (e.g. vgg11-w0.25); "
                        "default small-cnn (28x28); paper: vgg11")
    m.add_argument("--method", choices=METHODS, help="default standard")
    m.add_argument("--lam", type=float, help=f"regularizer weight of igr/fgr/fgr-fd/fgr+at (default: fgr "
                                             f"{DEFAULT_FGR_LAM:g}, igr {DEFAULT_IGR_LAM:g}). Scale: the "
                                             "penalty is the authors' mean_b ||dL/dtau_b||^2 with L the batch-mean "
                                             "loss, so its effect goes as lam / batch_size^2 (halving --batch-size "
                                             "acts like 4x lam); the same at any number of DDP processes")
    m.add_argument("--sigma", type=float, help="FGR random-start std, normalized units (default 0.01)")
    m.add_argument("--at-eps", type=float, help="FlowPGD budget for adversarial training, normalized units")
    m.add_argument("--at-steps", type=_positive_int, help="FlowPGD steps for adversarial training")
    o = p.add_argument_group("optimization")
    o.add_argument("--preset", choices=sorted(PRESETS),
                   help="paper: SGD 0.01/0.9/5e-4, 80 epochs, steps at 40,60, batch 128, vgg11; cpu: 10 epochs; "
                        "smoke: 2 short epochs. Explicit flags override it")
    o.add_argument("--epochs", type=_positive_int)
    o.add_argument("--batch-size", type=_positive_int, help="GLOBAL batch size (split across DDP processes)")
    o.add_argument("--lr", type=float)
    o.add_argument("--momentum", type=float)
    o.add_argument("--weight-decay", type=float)
    o.add_argument("--milestones", type=int, nargs="*", help="epochs where the lr is multiplied by --gamma")
    o.add_argument("--gamma", type=float)
    o.add_argument("--max-steps-per-epoch", type=_positive_int, help="cap the steps of each epoch (quick runs)")
    r = p.add_argument_group("run")
    r.add_argument("--out-dir", help="checkpoints (last.pt, best.pt), config.json, log.jsonl (default runs/default)")
    r.add_argument("--resume", action="store_true", default=None,
                   help="continue the run in OUT_DIR (its config.json; flags given override it)")
    r.add_argument("--overwrite", action="store_true", default=None,
                   help="replace the run already in OUT_DIR (without it or --resume, an existing run is refused)")
    r.add_argument("--seed", type=int)
    r.add_argument("--device", help="auto (cuda if available), cpu, cuda, cuda:1")
    r.add_argument("--amp", choices=("auto", "bf16", "off"),
                   help="bfloat16 autocast: auto = bf16 on CUDA, off on CPU; bf16 also on CPU")
    r.add_argument("--no-progress", dest="progress", action="store_false", default=None, help="no progress bar")
    r.add_argument("--cuda-graph", action="store_true", default=None,
                   help="capture each training step (forward, the regularizer's double backward, backward, SGD "
                        "step) in a CUDA graph and replay it: no host overhead per kernel. One CUDA process; "
                        "methods standard, igr, fgr, fgr-fd")
    r.add_argument("--log-every", type=_positive_int, help="steps between JSON-lines step records and loss checks")
    r.add_argument("--checkpoint-every", type=_positive_int,
                   help="also save last.pt every N steps inside an epoch, so --resume loses at most N steps "
                        "(default: at the end of each epoch and on Ctrl-C / SIGTERM only)")
    r.add_argument("--threads", type=_threads, help=_THREADS_HELP)


_THREADS_HELP = ("CPU threads for torch in this process (default: 1, or $OMP_NUM_THREADS when set; one thread is "
                 "fastest for the small CNNs and leaves the other cores to other jobs; 0 = torch's default, one "
                 "per core, which pays for VGG-sized models)")


def _threads_wanted(value: int | None) -> int:
    """--threads as given, else 1 unless OMP_NUM_THREADS is set (then 0: leave torch's choice)."""
    if value is not None:
        return value
    return 0 if os.environ.get("OMP_NUM_THREADS") else 1


def _train_keys() -> tuple:
    """The ``train`` flags that are TrainConfig fields (every field but ``verbose``)."""
    from dataclasses import fields

    from ..train import TrainConfig

    return tuple(f.name for f in fields(TrainConfig) if f.name != "verbose")


def config_from_args(args):
    """TrainConfig from parsed ``train`` arguments (resume: the run's config.json underneath).
    A refused setting's error names its flag (``--at-eps: at_eps must be ...``)."""
    from ..train import TrainConfig, make_config

    given = {k: getattr(args, k) for k in _train_keys() if getattr(args, k, None) is not None}
    out_dir = Path(given.get("out_dir", "runs/default"))
    try:
        if args.resume:
            saved = out_dir / "config.json"
            if not saved.is_file():
                raise ValueError(f"--resume: {out_dir} holds no run to resume (no config.json); check --out-dir, "
                                 "or drop --resume to start a new run")
            values = TrainConfig.read_settings(saved)
            values.update(given)
            return TrainConfig.from_dict(values)
        return make_config(args.preset, **given)
    except ValueError as err:
        field = str(err).split(" ", 1)[0]
        if field in given and field not in ("out_dir",):
            raise ValueError(f"--{field.replace('_', '-')}: {err}") from None
        raise


def _interrupted_code(result) -> int:
    """The shell's convention for a process stopped by a signal: 128 + its number (SIGINT 130,
    SIGTERM 143)."""
    return 128 + int(result.signal or signal.SIGINT)


def cmd_train(args) -> int:
    from ..train import train

    from ..train.distributed import set_threads

    cfg = config_from_args(args)
    set_threads(_threads_wanted(args.threads), "--threads")
    result = train(cfg)
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun only rank 0 reports
        return 0 if result.status == "finished" else _interrupted_code(result)
    if result.status == "interrupted":
        print(f"interrupted at epoch {result.epoch + 1}; resume with: "
              f"flowtriton train --resume --out-dir {cfg.out_dir}")
        return _interrupted_code(result)
    if result.test_acc is not None:
        print(f"done: best val acc {result.best_val_acc:.4f} (epoch {result.best_epoch}), test acc of that "
              f"checkpoint {result.test_acc:.4f}; checkpoints in {cfg.out_dir}")
    return 0


def cmd_evaluate(args) -> int:
    from .._io import ensure_writable_dir
    from ..attacks.presets import EVALUATION_PRESETS
    from .evaluation import evaluate_checkpoint, resolve_preset

    from ..train.distributed import resolve_device, set_threads

    pgd_budgets = _budget_flag(args.pgd_budgets, "--pgd-budgets")
    tnorm_budgets = _budget_flag(args.tnorm_budgets, "--tnorm-budgets")
    if not Path(args.checkpoint).is_file():
        raise FileNotFoundError(f"checkpoint {args.checkpoint} does not exist")
    resolve_device(args.device, argument="--device")
    set_threads(_threads_wanted(args.threads), "--threads")
    out = args.out_dir or str(Path(args.checkpoint).parent / "eval")
    ensure_writable_dir(out, "--out-dir")  # before any attack runs
    try:
        preset = resolve_preset(args.preset, args.size)
        suite_names = list(EVALUATION_PRESETS[preset]["kinds"])
    except ValueError as err:
        raise ValueError(f"--preset / --size: {err}") from None
    if args.attacks is not None:
        unknown = [name for name in args.attacks if name not in suite_names]
        if unknown:
            raise ValueError(f"--attacks {' '.join(unknown)}: not in preset {preset!r} (its attacks: "
                             f"{' '.join(suite_names)})")
    result = evaluate_checkpoint(args.checkpoint, out, attacks=args.attacks, preset=preset, split=args.split,
                                 num_examples=args.num_examples, batch_size=args.batch_size, device=args.device,
                                 data_dir=args.data_dir, plots=not args.no_plots, progress=not args.no_progress,
                                 say=lambda line: print(line, flush=True), pgd_budgets=pgd_budgets,
                                 tnorm_budgets=tnorm_budgets)
    print(result.to_markdown())
    print(f"wrote {out}/results.json and {out}/results.md")
    return 0


def _budget_flag(texts, flag: str):
    """The numbers of a budget flag (None when not given), checked: finite, > 0, each once;
    ValueError naming ``flag`` (one line from :func:`main`)."""
    from .evaluation import check_budgets

    if texts is None:
        return None
    values = []
    for text in texts:
        try:
            values.append(float(text))
        except ValueError:
            raise ValueError(f"{flag}: budgets must be numbers, got {text!r}") from None
    return check_budgets(values, flag)


def cmd_demo(args) -> int:
    from .demo import run_demo

    run_demo(out_dir=args.out_dir, quick=args.quick, epochs=args.epochs, lam=args.lam, eval_examples=args.eval_examples,
             seed=args.seed, device=args.device, progress=not args.no_progress,
             threads=_threads_wanted(args.threads))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from ..attacks.presets import EVALUATION_PRESETS, LINF_BUDGETS, TNORM_BUDGETS
    from .evaluation import ATTACK_NAMES

    parser = argparse.ArgumentParser(
        prog="flowtriton", description="Flow gradient regularization (Xia & Li 2021): train image classifiers "
        "that resist adversarial deformations, and attack them with flow attacks.",
        epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", metavar="{demo,train,evaluate}")

    demo = sub.add_parser("demo", help="train a standard and an FGR model on embedded MNIST, attack both, plot",
                          description="Trains a standard and an FGR small CNN on the embedded MNIST subset, attacks "
                          "both (FlowPGD at several budgets, ADef, stAdv, rotation+translation), prints the table "
                          "and writes results.md, results.json, accuracy_vs_budget.png and gallery.png.")
    demo.add_argument("--out-dir", default="flowtriton-demo",
                      help="where results and plots go (default flowtriton-demo)")
    demo.add_argument("--quick", action="store_true", help="a much smaller run (20 steps per model): for CI and checks")
    demo.add_argument("--epochs", type=_positive_int, help="training epochs per model (default 4; --quick: 1)")
    demo.add_argument("--lam", type=float, help="FGR weight (default: flowtriton.DEFAULT_FGR_LAM)")
    demo.add_argument("--eval-examples", type=_positive_int, help="test images attacked (default 500; --quick: 64)")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--device", default="auto")
    demo.add_argument("--threads", type=_threads, help=_THREADS_HELP)
    demo.add_argument("--no-progress", action="store_true")
    demo.set_defaults(func=cmd_demo)

    train = sub.add_parser("train", help="train a model (standard, igr, fgr, fgr-fd, at, fgr+at)",
                           description="Train a classifier. Writes OUT_DIR/{config.json,log.jsonl,last.pt,best.pt}; "
                           "best.pt is chosen on the validation split held out from train. Ctrl-C saves and stops; "
                           "--resume continues exactly.", epilog=_EPILOG,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_train_args(train)
    _show_config_defaults(train)
    train.set_defaults(func=cmd_train)

    ev = sub.add_parser("evaluate", help="attack a checkpoint; write results.json, results.md and plots",
                        description="Robust accuracy of a checkpoint under a fixed, versioned ensemble of flow "
                        "attacks (a preset), the worst case per image at each budget, and a gradient-masking "
                        "check. Budgets: FlowPGD/RandomFlow eps in normalized units (1 = (size-1)/2 px, L-inf per "
                        "flow component); ADef/stAdv T-norm in pixels. docs/attacks.md lists each preset.")
    ev.add_argument("checkpoint", help="a best.pt / last.pt written by flowtriton train")
    ev.add_argument("--preset", choices=tuple(EVALUATION_PRESETS), default=None,
                    help="standard (default): the full-strength ensemble to quote (FlowPGD, RandomFlow, ADef, stAdv, "
                         "rotation+translation); paper: the suite before it (the authors' 100-step FlowPGD, weak "
                         "stAdv); fast: a few steps each, for smoke tests")
    ev.add_argument("--attacks", nargs="+", choices=ATTACK_NAMES + ("random",), default=None,
                    help="a subset of the preset's attacks (default: all of them)")
    ev.add_argument("--pgd-budgets", nargs="+", metavar="EPS", default=None,
                    help="L-inf budgets of FlowPGD and RandomFlow, normalized units (1 = (size-1)/2 px per axis), "
                         f"finite and > 0 (default: the preset's, {' '.join(f'{b:g}' for b in LINF_BUDGETS)})")
    ev.add_argument("--tnorm-budgets", nargs="+", metavar="PX", default=None,
                    help="T-norm budgets of ADef and stAdv, pixels, finite and > 0 (default: the preset's, "
                         f"{' '.join(f'{b:g}' for b in TNORM_BUDGETS)})")
    ev.add_argument("--size", choices=("full", "small"), default=None,
                    help="older spelling of --preset: full = paper, small = fast")
    ev.add_argument("--split", choices=("test", "val"), default="test")
    ev.add_argument("--num-examples", type=_positive_int, default=1000,
                    help="images attacked: the split's first N when they cover every class, else a fixed "
                         "(seed 0) random N in file order (default 1000)")
    ev.add_argument("--batch-size", type=_positive_int, default=256)
    ev.add_argument("--data-dir", help="data root (default: the one the run was trained with)")
    ev.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:1")
    ev.add_argument("--threads", type=_threads, help=_THREADS_HELP)
    ev.add_argument("--out-dir", help="default: <checkpoint folder>/eval")
    ev.add_argument("--no-plots", action="store_true")
    ev.add_argument("--no-progress", action="store_true", help="no progress bar")
    ev.set_defaults(func=cmd_evaluate)
    return parser


def _whole_number(text: str, minimum: int, note: str = "") -> int:
    """A whole number >= ``minimum`` from a flag's text; argparse's usage error otherwise."""
    try:
        value = int(text)
    except ValueError:
        value = text
    if not isinstance(value, int) or value < minimum:
        raise argparse.ArgumentTypeError(f"expected a whole number >= {minimum}{note}, got {value!r}")
    return value


def _positive_int(text: str) -> int:
    """argparse type: a whole number >= 1."""
    return _whole_number(text, 1)


def _threads(text: str) -> int:
    """argparse type: a whole number >= 0 (0: torch's default)."""
    return _whole_number(text, 0, " (0: torch's default)")


def _show_config_defaults(parser: argparse.ArgumentParser) -> None:
    """Append '(default X)' to each ``train`` flag's help from TrainConfig's own defaults, where
    the help does not already give one (flags default to None so the preset or the resumed run's
    config can fill them in)."""
    from dataclasses import MISSING, fields

    from ..train import TrainConfig

    defaults = {}
    for f in fields(TrainConfig):
        if f.default is not MISSING:
            defaults[f.name] = f.default
        elif f.default_factory is not MISSING:
            defaults[f.name] = f.default_factory()
    for action in parser._actions:
        if action.dest not in defaults or "default" in (action.help or ""):
            continue
        value = defaults[action.dest]
        if value is None or isinstance(value, bool):
            continue
        shown = " ".join(map(str, value)) if isinstance(value, list) else value
        action.help = f"{action.help} (default {shown})" if action.help else f"default {shown}"


def _model_name(name: str) -> str:
    """argparse type: a model name build_model accepts (checked now, not after data loading)."""
    from ..models import build_model

    try:
        build_model(name)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return name


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    from ..train import NonFiniteLoss

    try:
        return args.func(args)
    except (OSError, ValueError, NonFiniteLoss) as err:
        # what a user can fix (a path, a setting, a diverged run): one line. Anything else is a
        # bug or a system failure (CUDA out of memory, a Triton compile error): its traceback stays.
        print(f"error: {err}", file=sys.stderr)
        return 1
