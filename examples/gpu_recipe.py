#!/usr/bin/env python
"""The authors' full CIFAR-10 recipe on one GPU, in time-boxed stages that resume.

    # one command per stage; repeat it until it exits 0 (75 = stage budget spent, resume):
    python examples/gpu_recipe.py --out-dir runs/gpu-recipe --stage-seconds 510
    # or loop:  until python examples/gpu_recipe.py --out-dir runs/gpu-recipe; do [ $? -eq 75 ] || break; done

Recipe (as examples/reproduce_cifar10_vgg11.py, docs/method.md): VGG-11-BN on images in [0, 1],
80 epochs, batch 128, SGD lr 0.01 / momentum 0.9 / weight decay 5e-4, MultiStepLR x0.1 at
[40, 60] (scaled to [E/2, 3E/4] for ``--epochs E``), train augmentation Resize(36) ->
RandomCrop(32) -> flip (test: Resize(36) -> CenterCrop(32)), FGR lambda 0/100/200/300 in the
'paper' scale with the sigma 0.01 random start (lambda 0: plain cross-entropy, no random start),
then the multi-step attack (FlowPGD, eps 0.01 normalized, K 100 sign steps of eps/K, zero padding)
on the full test set with the checkpoint of best VALIDATION accuracy (5,000 images held out of
the training set; the authors chose on the test set).

How it uses the GPU:
  * the uint8 dataset is copied to the device once; batches are gathered, converted and augmented
    there (``flowtriton.data.DeviceLoader``, random draws on the device): no DataLoader workers,
    no per-batch host-to-device copy;
  * all lambdas train in one process, interleaved step by step on the SAME augmented batch
    (one augmentation per step for all models; each model has its own optimizer, schedule and
    FGR random start), so one stage advances all of them and the GPU stays busy between the
    host's launches;
  * nothing is measured on the host that the device needs: per-step losses stay on the device
    and are read once per epoch.

Stages: the process stops itself when ``--stage-seconds`` (from its start) would be exceeded by
the next unit of work plus ``--reserve-seconds``, saves OUT_DIR/state.pt atomically, prints
"STAGE END" and exits with code 75; SIGTERM / Ctrl-C do the same at the next step boundary.
The same command resumes exactly where it stopped (data order and augmentation are functions of
(seed, epoch, step); RNG states are saved). After training, each lambda's best weights go to
OUT_DIR/models/, and the attack phase runs in chunks, resumable the same way. The last stage
writes results.json, results.md (beside the authors' numbers) and run.json (every stage's
command and wall time). Exit 0: finished; a further call prints the table again.

``--dataset synthetic`` replaces CIFAR-10 by the embedded MNIST subset, padded to 32x32 and
repeated to 3 channels (for tests on machines without CIFAR-10; its numbers mean nothing for
the paper).
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from _common import RunRecord, load_splits, register_vgg  # noqa: E402
from reproduce_cifar10_vgg11 import PAPER, add_recipe_arguments, recipe_milestones, write_results  # noqa: E402

STAGE_EXIT = 75  # EX_TEMPFAIL: the stage budget is spent, run the same command again
STATE_KEYS = ("dataset", "lams", "epochs", "milestones", "batch_size", "lr", "sigma", "width", "val_size",
              "train_subset", "max_per_class", "eval_subset", "eps", "attack_steps", "seed")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_recipe_arguments(p, eval_batch_size=1000)
    p.add_argument("--dataset", default="cifar10", choices=("cifar10", "synthetic"))
    p.add_argument("--out-dir", default="runs/gpu-recipe")
    p.add_argument("--stage-seconds", type=float, default=510.0, help="wall-clock budget of this process")
    p.add_argument("--reserve-seconds", type=float, default=30.0, help="kept free for saving and exiting")
    p.add_argument("--stage-units", type=int, default=0,
                   help="also end the stage after this many units of work (training steps of all lambdas, "
                        "attack chunks); 0: no limit (tests use it to stop at exact points)")
    p.add_argument("--save-every", type=int, default=10, help="also checkpoint every N epochs")
    args = p.parse_args(argv)
    for name in ("epochs", "batch_size", "attack_steps", "eval_batch_size", "save_every", "val_size"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.stage_seconds <= 0 or args.reserve_seconds < 0 or args.stage_units < 0:
        p.error("--stage-seconds must be > 0, --reserve-seconds and --stage-units >= 0")
    if any(lam < 0 for lam in args.lams) or len(set(args.lams)) != len(args.lams):
        p.error(f"--lams must be distinct and >= 0, got {args.lams}")
    args.milestones = recipe_milestones(args.epochs, args.milestones)
    return args


class Stage:
    """The budget of this process (wall-clock seconds, optionally a count of work units) and the
    stop request of SIGTERM / SIGINT."""

    def __init__(self, seconds: float, reserve: float, max_units: int = 0):
        self.start, self.seconds, self.reserve, self.max_units = time.perf_counter(), seconds, reserve, max_units
        self.longest_unit, self.units, self.signal = 0.0, 0, None
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)

    def _on_signal(self, signum, frame):
        if self.signal:  # a second signal: stop now, without saving
            raise KeyboardInterrupt(self.signal)
        self.signal = signal.Signals(signum).name

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def done(self, unit_seconds: float) -> None:
        """Count one unit of work; the longest unit is tracked from the second on (the first one
        also pays for kernel compilation and cuDNN's algorithm search)."""
        if self.units:
            self.longest_unit = max(self.longest_unit, unit_seconds)
        self.units += 1

    def should_stop(self) -> bool:
        """True on a signal, or when the next unit (as long as the longest so far) would run into the
        reserve, or the unit count is reached; never before this process has done one unit (every
        stage makes progress)."""
        if self.signal or (self.max_units and self.units >= self.max_units):
            return True
        return self.units > 0 and self.elapsed() + self.longest_unit + self.reserve > self.seconds


def synthetic_splits(val_size: int, train_subset: int | None, seed: int):
    """The embedded MNIST subset as 3 x 32 x 32 uint8 images (zero-padded, channels repeated)."""
    from flowtriton.data import ImageData, load_embedded_mnist, split_train_val
    from flowtriton.train.engine import DataSplits

    def rgb(split):
        images, labels = load_embedded_mnist(split)
        return ImageData(F.pad(images, (2, 2, 2, 2)).repeat(1, 3, 1, 1), labels, tuple(str(i) for i in range(10)),
                         "synthetic")

    train, val = split_train_val(rgb("train"), val_size, 0)
    if train_subset is not None and train_subset < len(train):
        order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))
        train = train.subset(order[:train_subset].sort().values)
    return DataSplits(train, val, rgb("test"))


def load_data(args, out: Path):
    """Train / validation / test splits (uint8), cached in OUT_DIR/data.pt: later stages skip decoding."""
    from flowtriton.io import save_atomic

    if args.dataset == "synthetic":
        return synthetic_splits(args.val_size, args.train_subset, args.seed)
    key = {k: getattr(args, k) for k in ("val_size", "train_subset", "max_per_class", "seed")}
    cache = out / "data.pt"
    if cache.is_file():
        stored = torch.load(cache, weights_only=False)
        if stored["key"] == key:
            return stored["splits"]
    splits = load_splits("cifar10", args.data_dir, args.val_size, 0, args.train_subset, args.seed, args.max_per_class)
    save_atomic({"key": key, "splits": splits}, cache)
    return splits


def build(args, lam: float, device):
    """(model, optimizer, scheduler, objective) of one lambda, on ``device``."""
    import flowtriton
    from flowtriton.models import build_model

    model = build_model(register_vgg(args.width), num_classes=10, in_channels=3).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, weight_decay=5e-4)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, args.milestones, gamma=0.1)
    if lam == 0:
        def objective(net, images, labels):
            return F.cross_entropy(net(images), labels)
    else:
        reg = flowtriton.FlowGradReg(lam=lam, sigma=args.sigma)

        def objective(net, images, labels):
            return reg(net, images, labels)[0]
    return model, optimizer, scheduler, objective


@torch.no_grad()
def accuracy(model, loader) -> float:
    model.eval()
    correct = torch.zeros((), dtype=torch.int64, device=loader.device)
    for images, labels in loader:
        correct += (model(images).argmax(1) == labels).sum()
    return correct.item() / loader.images.shape[0]


def tag_of(lam: float) -> str:
    return f"lam{lam:g}"


def train_phase(args, state, data, device, stage: Stage, out: Path) -> bool:
    """Train every lambda, interleaved on the same batches, until done (True) or the stage ends (False)."""
    from flowtriton.io import save_atomic
    from flowtriton.data import Augmentation, DeviceLoader
    from flowtriton.train.checkpoint import rng_state, set_rng_state

    augment = Augmentation("paper", 32)
    train = DeviceLoader(data.train, args.batch_size, device, augment, train=True, drop_last=False, seed=args.seed)
    val = DeviceLoader(data.val, args.eval_batch_size, device, augment, train=False)
    runs = {}
    torch.manual_seed(args.seed)
    for lam in args.lams:
        tag = tag_of(lam)
        model, optimizer, scheduler, objective = build(args, lam, device)
        run = state["runs"].setdefault(tag, {"lam": lam, "history": [], "best_val_acc": -1.0, "best_epoch": None})
        if "model" in run:
            model.load_state_dict(run["model"])
            optimizer.load_state_dict(run["optimizer"])
            scheduler.load_state_dict(run["scheduler"])
        runs[tag] = (model, optimizer, scheduler, objective)
    if state.get("rng") is not None:
        set_rng_state(state["rng"])

    def save():
        for tag, (model, optimizer, scheduler, _) in runs.items():
            state["runs"][tag].update(model=model.state_dict(), optimizer=optimizer.state_dict(),
                                      scheduler=scheduler.state_dict())
        state["rng"] = rng_state()
        save_atomic(state, out / "state.pt")

    while state["epoch"] < args.epochs:
        epoch, started = state["epoch"], time.perf_counter()
        first_step = state["step"]
        train.set_epoch(epoch, first_step)
        losses = {tag: torch.zeros((), device=device) for tag in runs}
        for models in runs.values():
            models[0].train()
        for images, labels in train:
            if stage.should_stop():
                state["train_s"] = state.get("train_s", 0.0) + time.perf_counter() - started
                save()
                return False
            unit = time.perf_counter()
            for tag, (model, optimizer, _, objective) in runs.items():
                loss = objective(model, images, labels)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                losses[tag] += loss.detach()
            state["step"] += 1
            stage.done(time.perf_counter() - unit)
        for tag, (model, _, scheduler, _) in runs.items():
            run = state["runs"][tag]
            val_acc = accuracy(model, val)
            # train_loss: mean over the epoch's steps run by the process that finished it
            run["history"].append({"epoch": epoch + 1, "lr": scheduler.get_last_lr()[0], "val_acc": val_acc,
                                   "train_loss": losses[tag].item() / max(1, state["step"] - first_step)})
            if val_acc > run["best_val_acc"]:
                run.update(best_val_acc=val_acc, best_epoch=epoch + 1,
                           best={k: v.detach().clone() for k, v in model.state_dict().items()})
            scheduler.step()
        state["epoch"], state["step"] = epoch + 1, 0
        state["train_s"] = state.get("train_s", 0.0) + time.perf_counter() - started
        print(f"[gpu-recipe] epoch {epoch + 1}/{args.epochs}: val acc "
              + ", ".join(f"{t} {state['runs'][t]['history'][-1]['val_acc']:.4f}" for t in runs)
              + f" ({stage.elapsed():.0f} s into this stage)", flush=True)
        if (epoch + 1) % args.save_every == 0 and state["epoch"] < args.epochs:
            save()
    (out / "models").mkdir(exist_ok=True)
    for tag, run in state["runs"].items():
        save_atomic({"lam": run["lam"], "model": register_vgg(args.width), "best_epoch": run["best_epoch"],
                     "best_val_acc": run["best_val_acc"], "state_dict": run["best"]}, out / "models" / f"{tag}.pt")
        for key in ("model", "optimizer", "scheduler", "best"):
            run.pop(key, None)
    state.update(phase="attack", rng=None)
    save_atomic(state, out / "state.pt")
    return True


def attack_phase(args, state, data, device, stage: Stage, out: Path) -> bool:
    """Attack every lambda's best model in chunks until done (True) or the stage ends (False)."""
    from flowtriton.io import save_atomic
    from flowtriton.attacks import FlowPGD
    from flowtriton.data import Augmentation, DeviceLoader, evaluation_subset
    from flowtriton.models import build_model

    test = DeviceLoader(evaluation_subset(data.test, args.eval_subset), args.eval_batch_size, device,
                        Augmentation("paper", 32), train=False)
    for tag, run in state["runs"].items():
        progress = run.setdefault("attack", {"done": 0, "clean": 0, "robust": 0, "seconds": 0.0})
        if progress["done"] == len(test):
            continue
        model = build_model(register_vgg(args.width), num_classes=10, in_channels=3).to(device)
        model.load_state_dict(torch.load(out / "models" / f"{tag}.pt", map_location=device)["state_dict"])
        model.eval()
        attack = FlowPGD.preset("paper", model, eps=args.eps, steps=args.attack_steps, units="normalized",
                                padding_mode="zeros")  # the authors' multi-step attack
        test.set_epoch(0, progress["done"])
        for images, labels in test:
            if stage.should_stop():
                return False
            unit = time.perf_counter()
            adversarial = attack(images, labels)
            with torch.no_grad():
                clean = (model(images).argmax(1) == labels).sum()
                robust = (model(adversarial).argmax(1) == labels).sum()
            progress["clean"] += clean.item()
            progress["robust"] += robust.item()
            progress["done"] += 1
            progress["seconds"] += time.perf_counter() - unit
            stage.done(time.perf_counter() - unit)
            save_atomic(state, out / "state.pt")
        print(f"[gpu-recipe] {tag}: attacked {test.images.shape[0]} test images", flush=True)
    state["phase"] = "done"
    save_atomic(state, out / "state.pt")
    return True


def report(args, state, data, out: Path, wall: float, device) -> str:
    n_eval = len(data.test) if args.eval_subset is None else min(args.eval_subset, len(data.test))
    rows, runs = [], {}
    for tag, run in state["runs"].items():
        a = run["attack"]
        clean, robust = a["clean"] / n_eval, a["robust"] / n_eval
        paper = PAPER.get(float(run["lam"])) if args.dataset == "cifar10" else None
        runs[tag] = {"lam": run["lam"], "best_val_acc": run["best_val_acc"], "best_epoch": run["best_epoch"],
                     "clean_acc": clean, "robust_acc": robust, "examples": n_eval, "attack_s": a["seconds"],
                     "history": run["history"],
                     "paper": {"clean_acc": paper[0], "robust_acc": paper[1]} if paper else None}
        rows.append([f"{run['lam']:g}", f"{run['best_val_acc']:.4f} (epoch {run['best_epoch']})", f"{clean:.4f}",
                     f"{robust:.4f}", f"{paper[0]:.4f}" if paper else "-", f"{paper[1]:.4f}" if paper else "-"])
    full = (args.dataset == "cifar10" and args.epochs == 80 and args.width == 1.0 and args.train_subset is None
            and args.max_per_class is None and args.eval_subset is None and args.attack_steps == 100)
    data_name = "CIFAR-10" if args.dataset == "cifar10" else "SYNTHETIC data (embedded MNIST subset as 32x32 RGB)"
    header = (f"# {data_name}, VGG-11-BN, FGR lambda sweep "
              f"({'full recipe' if full else 'REDUCED, not the paper setting'})\n\n"
              f"{register_vgg(args.width)}, {args.epochs} epochs, milestones {args.milestones}, "
              f"batch {args.batch_size}, "
              f"lr {args.lr:g}, {len(data.train)} training images, checkpoint of best accuracy on {len(data.val)} "
              f"VALIDATION images (the authors chose on the test set); multi-step attack eps {args.eps:g} normalized, "
              f"K {args.attack_steps}, zero padding, on {n_eval} test images. Seed {args.seed}, device {device}, "
              f"{state['stages']} stages, wall time {wall:.0f} s in all "
              f"(training {state.get('train_s', 0):.0f} s).\n\n")
    return write_results(out, header, rows, {
        "dataset": args.dataset, "model": register_vgg(args.width), "epochs": args.epochs,
        "milestones": args.milestones, "batch_size": args.batch_size, "train_images": len(data.train),
        "val_images": len(data.val), "eval_images": n_eval, "eps_normalized": args.eps,
        "attack_steps": args.attack_steps, "full_recipe": full, "stages": state["stages"],
        "train_s": state.get("train_s", 0.0), "runs": runs, "seed": args.seed, "wall_s": wall})


def main(argv=None) -> int:
    args = parse_args(argv)
    stage = Stage(args.stage_seconds, args.reserve_seconds, args.stage_units)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available()
                          else "cpu" if args.device == "auto" else args.device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit("[gpu-recipe] --device cuda, but torch sees no CUDA device; use --device cpu or auto")
        torch.backends.cudnn.benchmark = True
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    settings = {k: getattr(args, k) for k in STATE_KEYS}
    state_path = out / "state.pt"
    if state_path.is_file():
        state = torch.load(state_path, map_location="cpu", weights_only=False)  # RNG states must stay on the CPU
        if state["settings"] != settings:
            changed = sorted(k for k in settings if state["settings"].get(k) != settings[k])
            raise SystemExit(f"[gpu-recipe] {state_path} was written with other settings ({', '.join(changed)}); "
                             f"use another --out-dir or the original arguments")
    else:
        state = {"settings": settings, "phase": "train", "epoch": 0, "step": 0, "runs": {}, "stages": 0, "rng": None}
    record = RunRecord(out, args.seed, vars(args))
    if state["phase"] != "done":
        state["stages"] += 1
    data = load_data(args, out)
    print(f"[gpu-recipe] stage {state['stages']}, phase {state['phase']} (epoch {state['epoch']}, step "
          f"{state['step']}), device {device}, lambdas {args.lams}; train {len(data.train)}, val {len(data.val)}, "
          f"test {len(data.test)}; data ready after {stage.elapsed():.1f} s", flush=True)

    finished = True
    if state["phase"] == "train":
        finished = train_phase(args, state, data, device, stage, out)
    if finished and state["phase"] == "attack":
        finished = attack_phase(args, state, data, device, stage, out)
    if not finished:
        if device.type == "cuda":
            torch.cuda.synchronize()
        record.finish(status="stage-end")
        why = (f"signal {stage.signal}" if stage.signal else f"stage budget of {args.stage_units} units"
               if args.stage_units and stage.units >= args.stage_units else f"stage budget {args.stage_seconds:g} s")
        print(f"[gpu-recipe] STAGE END ({why}) after {stage.elapsed():.0f} s in phase {state['phase']}, epoch "
              f"{state['epoch']}, step {state['step']}: saved {state_path}; run the same command again to resume "
              f"(exit code {STAGE_EXIT})", flush=True)
        return STAGE_EXIT
    wall = record.finish(status="finished")
    print(report(args, state, data, out, wall, device), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
