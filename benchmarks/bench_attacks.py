"""Attacks side by side with their reference implementations, and every attack's throughput.

Side by side, interleaved chunk by chunk in one run so that machine load hits both alike, on the
same correctly classified MNIST test images of an undefended CNN (2 conv + 2 fc, trained here on
40,000 images and cached under ~/.cache/flowtriton/bench_attacks, never in the repository):
  * flowtriton ``StAdv(model)`` (its defaults) vs advertorch's SpatialTransformAttack
    (scipy L-BFGS-B, ``--advertorch-iters``), run in a SEPARATE Python (``--advertorch-python``,
    a throwaway venv: advertorch is no dependency of flowtriton) on the same traced model;
  * flowtriton ``ADef`` vs the authors' reference ADef (Alaifari et al.'s ``deformation.py``,
    imported unchanged from the folder given by ``--adef-reference``; never vendored) at the
    reference's MNIST settings (candidates 1-9, max_iter 100 (our steps=100), smooth 0.5, overshoot 1.2).
Reported per implementation: images/s, success rate on correctly classified images, median
T-norm of the successful flows (pixels), model evaluations per image, and the throughput ratio.
``--throughput`` adds the older table: every flowtriton attack on the small CNN and a VGG-11.

``--robust-checkpoint PATH`` (a flowtriton checkpoint of a model trained to resist flows, e.g.
``flowtriton train --dataset mnist --method at --at-eps 0.05 --epochs 2 --out-dir /tmp/at-mnist``)
adds what matters for evaluation, on its first ``--robust-images`` test images: every attack
preset (FlowPGD 'standard' = the defaults, 'fast', 'paper' = the authors' attack, at each
``--robust-eps``; StAdv 'standard' = the defaults and 'fast' = the old defaults; advertorch's stAdv
at its own defaults (constant 1, 1000 L-BFGS-B iterations) and at tau 0.05) and every evaluation
preset of ``flowtriton.attacks.evaluate`` ('standard', 'fast', 'paper'): robust accuracy, success on
correctly classified images, model forward passes per image (counted by a hook on the model;
all but the last pass of each gradient step come with a backward) and seconds per image; written
to benchmarks/results/<device>/attacks_robust_<device>.json (and .csv).

    python benchmarks/bench_attacks.py --adef-reference /tmp/adef_ref --images 200
    python benchmarks/bench_attacks.py --robust-checkpoint /tmp/at-mnist/best.pt --robust-only --threads 1

Writes benchmarks/results/<device>/attacks_<device>.json and .csv (cpu/ or cuda/; --out-dir to choose),
with the device and versions.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import math
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent


# -- advertorch worker (runs in the throwaway venv: imports nothing from flowtriton) ---------------
def advertorch_worker(path: str) -> None:
    """Load the traced model and batch from ``path``, run advertorch's stAdv, print JSON."""
    gradcheck = sys.modules["torch.autograd.gradcheck"]  # the module, not the function of that name
    notes = []
    if not hasattr(gradcheck, "zero_gradients"):
        # advertorch 0.2.3's package __init__ imports this helper, removed from torch in 1.9.
        def zero_gradients(x):
            if isinstance(x, torch.Tensor) and x.grad is not None:
                x.grad.detach_().zero_()

        gradcheck.zero_gradients = zero_gradients
        notes.append("shimmed torch.autograd.gradcheck.zero_gradients (removed from torch, imported by advertorch)")
    try:
        import torchvision  # noqa: F401
    except Exception:  # noqa: BLE001
        # advertorch.functional imports torchvision.transforms at package import; the spatial
        # attack never uses it. A stub stands in where no torchvision matching torch loads.
        import types

        stub = types.ModuleType("torchvision")
        stub.transforms = types.ModuleType("torchvision.transforms")
        stub.transforms.ToPILImage = stub.transforms.ToTensor = lambda *a, **k: None
        sys.modules["torchvision"], sys.modules["torchvision.transforms"] = stub, stub.transforms
        notes.append("stubbed torchvision (imported by advertorch.functional, unused by SpatialTransformAttack)")
    import advertorch
    from advertorch.attacks import SpatialTransformAttack

    blob = torch.load(path)
    torch.set_num_threads(blob.get("threads", torch.get_num_threads()))  # the same as the main process
    model = torch.jit.load(blob["model_path"]).eval()
    images, labels = blob["images"], blob["labels"]
    calls = []

    def predict(x):
        calls.append(x.shape[0])
        return model(x)

    attack = SpatialTransformAttack(predict, num_classes=blob["classes"], initial_const=blob["tau"],
                                    max_iterations=blob["max_iter"], search_steps=1)
    import warnings

    warnings.filterwarnings("ignore")
    attack.perturb(images[:2], labels[:2])  # warm-up
    calls.clear()
    start = time.perf_counter()
    adv = attack.perturb(images, labels)
    seconds = time.perf_counter() - start
    evaluations = len(calls)  # each call is one loss (+ gradient) evaluation of the whole batch
    with torch.no_grad():
        pred = model(adv).argmax(dim=1)
    # advertorch returns an all-zero image where it found nothing: that is a failure.
    found = adv.flatten(1).abs().amax(dim=1) > 0
    success = (pred != labels) & found
    print(json.dumps({"seconds": seconds, "success": success.tolist(), "advertorch": advertorch.__version__,
                      "evaluations": evaluations,
                      "torch": torch.__version__, "notes": notes}))


# -- models and data -------------------------------------------------------------------------------
def load_mnist(n_train: int, n_test: int, data_dir: str | None):
    from flowtriton.data import load_dataset

    for name, root in (("mnist", data_dir), ("mnist-subset", None)):
        try:
            train = load_dataset(name, "train", root)
            test = load_dataset(name, "test", root)
            return (train.float_images()[:n_train], train.labels[:n_train],
                    test.float_images()[:n_test], test.labels[:n_test], name)
        except Exception as error:  # noqa: BLE001 - fall through to the next source
            print(f"[bench_attacks] {name} not loaded: {error}", file=sys.stderr)
    raise SystemExit("no MNIST data found: pass --data-dir")


def mnist_cnn(device, data_dir: str | None, n_train: int = 40000, n_test: int = 1000, epochs: int = 2,
              seed: int = 0):
    """An undefended MNIST CNN (2 conv + 2 fc, plain torch, independent of flowtriton.models),
    trained with Adam on the first ``n_train`` training images and cached under
    ``$FLOWTRITON_CACHE`` (default ~/.cache/flowtriton)/bench_attacks; -> (model, test images,
    test labels, note)."""
    from flowtriton.data.paths import cache_dir

    x_train, y_train, x_test, y_test, source = load_mnist(n_train, n_test, data_dir)
    torch.manual_seed(seed)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 32, 5, padding=2), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(32, 64, 5, padding=2), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Flatten(), torch.nn.Linear(64 * 7 * 7, 256), torch.nn.ReLU(), torch.nn.Linear(256, 10))
    n_train = x_train.shape[0]
    path = Path(cache_dir()) / "bench_attacks" / f"mnist_cnn_{source}_{n_train}_{epochs}ep_seed{seed}.pt"
    if path.exists():
        model.load_state_dict(torch.load(path, map_location="cpu"))
    else:
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        gen = torch.Generator().manual_seed(seed)
        model.train()
        for _ in range(epochs):
            order = torch.randperm(n_train, generator=gen)
            for start in range(0, n_train, 128):
                index = order[start:start + 128]
                loss = torch.nn.functional.cross_entropy(model(x_train[index]), y_train[index])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), path)
    model = model.to(device).eval()
    with torch.no_grad():
        clean = float((model(x_test.to(device)).argmax(dim=1) == y_test.to(device)).float().mean())
    note = f"{source}, 2 conv + 2 fc, Adam {epochs} epochs on {n_train} images, clean {clean:.4f} on {n_test}"
    return model, x_test.to(device), y_test.to(device), note


def vgg11(device, n: int, seed: int = 0):
    """Random-weight CIFAR VGG-11 (BatchNorm) and smooth random 3x32x32 images labelled by it."""
    try:
        from flowtriton.models import VGG

        model = VGG("vgg11", num_classes=10, in_channels=3)
    except Exception:  # noqa: BLE001 - the models package is another engineer's; define one here
        from torch import nn

        layers, channels = [], 3
        for width in (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"):
            if width == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [nn.Conv2d(channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU()]
                channels = width
        model = nn.Sequential(*layers, nn.Flatten(), nn.Linear(512, 10))
    torch.manual_seed(seed)
    model = model.to(device)
    coarse = torch.rand(n, 3, 8, 8)
    images = torch.nn.functional.interpolate(coarse, size=(32, 32), mode="bilinear", align_corners=True).to(device)
    # Calibrate BatchNorm's running statistics on the batch: with the initial ones a random deep
    # net maps every input to nearly the same logits and no attack has anything to work with.
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.momentum = None
    with torch.no_grad():
        model.train()(images)
        labels = model.eval()(images).argmax(dim=1)
    return model, images, labels, "random weights, BatchNorm calibrated on the batch (speed only)"


# -- measuring -------------------------------------------------------------------------------------
def attacks_for(model, quick: bool):
    from flowtriton.attacks import ADef, FlowPGD, RotationTranslation, StAdv

    from flowtriton.attacks import RandomFlow

    return {
        "FlowPGD.preset('paper') (eps=0.01 norm., K=%d)" % (20 if quick else 100):
            FlowPGD.preset("paper", model, steps=20 if quick else 100),
        "FlowPGD() defaults (APGD 40 x 6 starts x CE+margin)": FlowPGD(model, seed=0),
        "FlowPGD.preset('fast') (APGD 20, CE, 1 start)": FlowPGD.preset("fast", model),
        "ADef(cand=1..9, iter<=%d, smooth=0.5, os=1.2)" % (30 if quick else 100):
            ADef(model, candidates=range(1, 10), steps=30 if quick else 100, smooth=0.5, overshoot=1.2),
        "StAdv() defaults (Adam<=100, tau 0.05, 5 warm search steps)": StAdv(model),
        "StAdv.preset('fast') (Adam<=20, 2 search steps)": StAdv.preset("fast", model),
        "StAdv(optimizer='lbfgs')": StAdv(model, optimizer="lbfgs"),
        "RandomFlow(64 samples)": RandomFlow(model, seed=0),
        "RotationTranslation(5x5x5)": RotationTranslation(model),
    }


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def summary(seconds: float, images: int, fooled: torch.Tensor, tnorm: torch.Tensor | None, evaluations=None) -> dict:
    """Throughput and strength of one implementation over ``images`` correctly classified images."""
    fooled = fooled.cpu()
    row = {"seconds": seconds, "images": images, "images_per_s": images / seconds,
           "success_rate": float(fooled.float().mean()), "load_avg_1min": os.getloadavg()[0]}
    if tnorm is not None:
        norms = tnorm.cpu()[fooled]
        row["median_tnorm_px"] = float(norms.median()) if norms.numel() else math.nan
    if evaluations is not None:
        row["evaluations_per_image"] = float(evaluations)
    return row


def time_attack(attack, images, labels, device) -> dict:
    attack.run(images[:2], labels[:2])  # warm-up (allocations, kernel compilation)
    sync(device)
    start = time.perf_counter()
    result = attack.run(images, labels)
    sync(device)
    seconds = time.perf_counter() - start
    with torch.no_grad():
        correct = attack.model(images).argmax(dim=1) == labels
    evaluations = result.info.get("evaluations")
    row = summary(seconds, images.shape[0], (result.success & correct)[correct], result.tnorm[correct],
                  None if evaluations is None else evaluations.float().mean())
    row["mean_iterations"] = float(result.iterations.float().mean())
    return row


def run_advertorch(python: str, model, images, labels, tau: float, max_iter: int) -> dict:
    """advertorch's stAdv in ``python`` (a separate venv) on the same traced model and images:
    {'seconds', 'success' (list of bool), 'evaluations', ...} or {'error'}."""
    if not Path(python).exists():
        return {"error": f"{python} not found: create it with python3 -m venv /tmp/advenv, a .pth file "
                         "pointing at this venv's site-packages (for torch), and "
                         "/tmp/advenv/bin/pip install --no-deps advertorch==0.2.3 scipy"}
    with tempfile.TemporaryDirectory() as tmp:
        model_path = os.path.join(tmp, "model.pt")
        torch.jit.save(torch.jit.trace(model.cpu(), images[:2].cpu()), model_path)
        model.to(images.device)
        blob = os.path.join(tmp, "batch.pt")
        torch.save({"model_path": model_path, "images": images.cpu(), "labels": labels.cpu(),
                    "classes": 10, "tau": tau, "max_iter": max_iter,
                    "threads": torch.get_num_threads()}, blob)
        done = subprocess.run([python, __file__, "--advertorch-worker", blob], capture_output=True, text=True,
                              timeout=3600)
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


@contextlib.contextmanager
def torch04_grid_sample():
    """The reference ADef was written for torch 0.4, whose grid_sample had align_corners=True
    semantics (its grid is built for them); restore that default while it runs."""
    import torch.nn.functional as F

    original = F.grid_sample
    F.grid_sample = functools.partial(original, align_corners=True)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.range deprecation, printed once per call
            yield
    finally:
        F.grid_sample = original


def load_reference_adef(path: str):
    """The ``ADef`` function of the authors' ``deformation.py`` in folder (or file) ``path``."""
    folder = Path(path)
    if folder.is_file():
        folder = folder.parent
    if not (folder / "deformation.py").exists():
        raise SystemExit(f"--adef-reference {path}: no deformation.py there (Alaifari et al.'s ADef code)")
    sys.path.insert(0, str(folder))
    import deformation

    return deformation.ADef


def side_by_side(model, images, labels, chunk: int, args, device) -> list[dict]:
    """stAdv vs advertorch and ADef vs the reference, interleaved chunk by chunk."""
    from flowtriton.attacks import ADef, StAdv

    ours_stadv = StAdv(model)
    ours_adef = ADef(model, candidates=range(1, 10), steps=100, smooth=0.5, overshoot=1.2)
    reference = load_reference_adef(args.adef_reference) if args.adef_reference else None
    totals = {key: {"seconds": 0.0, "fooled": [], "tnorm": [], "evaluations": []}
              for key in ("stadv", "advertorch", "adef", "reference")}
    ours_stadv.run(images[:2], labels[:2])
    ours_adef.run(images[:2], labels[:2])
    advertorch_info, errors = {}, {}
    for number, start in enumerate(range(0, images.shape[0], chunk)):
        x, y = images[start:start + chunk], labels[start:start + chunk]
        jobs = ["stadv", "advertorch", "adef", "reference"]
        if number % 2:  # alternate who goes first
            jobs = ["advertorch", "stadv", "reference", "adef"]
        for job in jobs:
            record = totals[job]
            if job in ("stadv", "adef"):
                attack = ours_stadv if job == "stadv" else ours_adef
                sync(device)
                begin = time.perf_counter()
                result = attack.run(x, y)
                sync(device)
                record["seconds"] += time.perf_counter() - begin
                record["fooled"].append(result.success.cpu())
                record["tnorm"].append(result.tnorm.cpu())
                record["evaluations"].append(result.info["evaluations"].float().cpu())
            elif job == "advertorch" and not args.no_advertorch and "advertorch" not in errors:
                out = run_advertorch(args.advertorch_python, model, x, y, 0.05, args.advertorch_iters)
                if "error" in out:
                    errors["advertorch"] = out["error"]
                    continue
                record["seconds"] += out["seconds"]
                record["fooled"].append(torch.tensor(out["success"]))
                record["evaluations"].append(torch.full((x.shape[0],), float(out["evaluations"])))
                advertorch_info = {k: out[k] for k in ("advertorch", "notes", "torch")}
            elif job == "reference" and reference is not None:
                with torch04_grid_sample():
                    sync(device)
                    begin = time.perf_counter()
                    _, data = reference(x, model, ind_candidates=list(range(1, 10)), max_iter=100, max_norm="inf",
                                        overshoot=1.2, smooth=0.5, verbose=False)
                    sync(device)
                record["seconds"] += time.perf_counter() - begin
                record["fooled"].append((data["deformed_labels"] != y).cpu())
                record["tnorm"].append(data["norms"].cpu())
        print(f"[bench_attacks] chunk {number + 1}: {min(start + chunk, images.shape[0])} images done",
              file=sys.stderr)

    n = images.shape[0]
    names = {"stadv": ("flowtriton", "StAdv() defaults: Adam<=100 (0.05 px), tau 0.05, 5 warm tau search steps"),
             "advertorch": ("advertorch", f"SpatialTransformAttack(const=0.05, L-BFGS-B<={args.advertorch_iters})"),
             "adef": ("flowtriton", "ADef(cand=1..9, iter<=100, smooth=0.5, os=1.2)"),
             "reference": ("reference (Alaifari et al.)", "ADef(cand=1..9, iter<=100, smooth=0.5, os=1.2)")}
    rows = {}
    for key, record in totals.items():
        implementation, attack = names[key]
        row = {"comparison": "stadv" if key in ("stadv", "advertorch") else "adef",
               "implementation": implementation, "attack": attack}
        if not record["fooled"]:
            row["error"] = errors.get(key, "not run (pass --adef-reference)" if key == "reference" else "not run")
        else:
            evaluations = torch.cat(record["evaluations"]).mean() if record["evaluations"] else None
            row.update(summary(record["seconds"], n, torch.cat(record["fooled"]),
                               torch.cat(record["tnorm"]) if record["tnorm"] else None, evaluations))
            if key == "advertorch":
                row.update(advertorch_info)
                row["median_tnorm_px"] = None  # advertorch returns images only, not its flow
        rows[key] = row
    for ours, theirs in (("stadv", "advertorch"), ("adef", "reference")):
        if "images_per_s" in rows[ours] and "images_per_s" in rows[theirs]:
            rows[ours]["throughput_ratio"] = rows[ours]["images_per_s"] / rows[theirs]["images_per_s"]
    if reference is not None:
        rows["reference"]["notes"] = ("run unchanged, with torch 0.4's grid_sample default (align_corners=True) "
                                      "restored for it: its sampling grid is built for those semantics")
    return list(rows.values())


class PassCounter:
    """Counts the images the model sees (forward passes x batch size) through a forward pre-hook."""

    def __init__(self, model):
        self.images = 0
        self.handle = model.register_forward_pre_hook(self._count)

    def _count(self, module, args):
        self.images += int(args[0].shape[0])

    def close(self):
        self.handle.remove()


def robust_section(args, device) -> tuple[list[dict], dict]:
    """Attack presets and evaluation presets on a model trained to resist flows (``--robust-checkpoint``):
    robust accuracy, success on correctly classified images, forward passes and seconds per image."""
    from flowtriton.attacks import FlowPGD, StAdv, evaluate
    from flowtriton.app.evaluation import eval_images, load_trained_model

    model, cfg, _ = load_trained_model(args.robust_checkpoint, device)
    images, labels = eval_images(cfg, "test", args.robust_images, args.data_dir, device)
    n = int(labels.numel())
    with torch.no_grad():
        correct = model(images).argmax(dim=1) == labels
    note = (f"{cfg.method} {cfg.model} on {cfg.dataset} (at_eps {cfg.at_eps} normalized, {cfg.at_steps} steps, "
            f"{cfg.epochs} epochs), clean {float(correct.float().mean()):.4f} on its first {n} test images")
    print(f"[bench_attacks] robust model: {note}", file=sys.stderr)
    rows = []

    def measure(kind, name, run):
        counter = PassCounter(model)
        sync(device)
        start = time.perf_counter()
        try:
            out = run()
        finally:
            sync(device)
            counter.close()
        seconds = time.perf_counter() - start
        row = {"comparison": kind, "implementation": "flowtriton", "attack": name, "images": n,
               "forward_passes_per_image": counter.images / n, "seconds_per_image": seconds / n,
               "load_avg_1min": os.getloadavg()[0]}
        row.update(out)
        rows.append(row)
        print(f"[bench_attacks] {kind} {name}: " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                                            for k, v in out.items() if not isinstance(v, dict)),
              file=sys.stderr)

    def attack_outcome(attack):
        def run():
            fooled = torch.zeros(n, dtype=torch.bool, device=device)
            for start in range(0, n, args.chunk):
                fooled[start:start + args.chunk] = attack.run(images[start:start + args.chunk],
                                                              labels[start:start + args.chunk]).success
            return {"robust_accuracy": float((correct & ~fooled).float().mean()),
                    "success_rate": float(fooled[correct].float().mean())}
        return run

    for eps in args.robust_eps:
        for preset in ("standard", "fast", "paper"):
            attack = FlowPGD.preset(preset, model, eps=eps, seed=0)
            measure("robust: FlowPGD preset", f"FlowPGD.preset({preset!r}) eps={eps:g} normalized",
                    attack_outcome(attack))
    for preset in ("standard", "fast"):
        measure("robust: StAdv preset", f"StAdv.preset({preset!r})", attack_outcome(StAdv.preset(preset, model)))
    if not args.no_advertorch:
        keep = correct.nonzero().squeeze(1)
        for tau, iters in ((1.0, 1000), (0.05, 1000)):
            out = run_advertorch(args.advertorch_python, model, images[keep], labels[keep], tau, iters)
            row = {"comparison": "robust: StAdv preset", "implementation": "advertorch",
                   "attack": f"SpatialTransformAttack(initial_const={tau:g}, max_iterations={iters}, search_steps=1)",
                   "images": n}
            if "error" in out:
                row["error"] = out["error"]
            else:
                fooled = torch.tensor(out["success"])
                row.update({"success_rate": float(fooled.float().mean()),
                            "robust_accuracy": float(correct.sum().item() - fooled.sum().item()) / n,
                            "seconds_per_image": out["seconds"] / max(len(keep), 1),
                            "batch_evaluations": out["evaluations"], "advertorch": out["advertorch"]})
            rows.append(row)
            print(f"[bench_attacks] advertorch tau {tau}: {row.get('success_rate', row.get('error'))}", file=sys.stderr)
    for preset in args.robust_presets:
        def run(preset=preset):
            result = evaluate(model, (images, labels), preset=preset, batch_size=args.chunk)
            worst = {f"{r.attack}@{r.budget:g}": r.accuracy for r in result.rows if r.attack.startswith("worst-case")}
            return {"worst_case": worst, "union_accuracy": result.accuracy("union"),
                    "masking_flagged": result.masking_flagged,
                    "masking_missed": {f"{e['budget']:g}": e["missed"] for e in result.masking},
                    "preset_version": result.protocol["version"]}
        measure("robust: evaluation preset", f"evaluate(preset={preset!r})", run)
    path = Path(args.robust_checkpoint)
    recipe = (f"flowtriton train --dataset {cfg.dataset} --model {cfg.model} --method {cfg.method} "
              f"--at-eps {cfg.at_eps} --at-steps {cfg.at_steps} --epochs {cfg.epochs} --seed {cfg.seed}")
    # the checkpoint's folder and name only: result files hold no machine paths
    return rows, {"robust_model": note, "robust_checkpoint": f"{path.parent.name}/{path.name}",
                  "robust_recipe": recipe, "robust_images": n}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--images", type=int, default=200, help="test images attacked (correctly classified ones)")
    parser.add_argument("--chunk", type=int, default=50, help="images per interleaved chunk")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--data-dir", default=None,
                        help="folder holding mnist/ (default: $FLOWTRITON_DATA, else the embedded subset)")
    parser.add_argument("--advertorch-python", default="/tmp/advenv/bin/python")
    parser.add_argument("--advertorch-iters", type=int, default=100, help="advertorch max_iterations")
    parser.add_argument("--no-advertorch", action="store_true")
    parser.add_argument("--adef-reference", default=None,
                        help="folder holding the authors' ADef deformation.py (Alaifari et al.)")
    parser.add_argument("--throughput", action="store_true", help="also time every flowtriton attack")
    parser.add_argument("--quick", action="store_true", help="with --throughput: small batches, fewer iterations")
    parser.add_argument("--robust-checkpoint", default=None,
                        help="a flowtriton checkpoint of a model trained against flows: adds the presets' cost and "
                             "success on it (attacks_robust_<device>.json)")
    parser.add_argument("--robust-images", type=int, default=200, help="its test images attacked")
    parser.add_argument("--robust-eps", type=float, nargs="+", default=[0.02, 0.05],
                        help="FlowPGD budgets on it, normalized units")
    parser.add_argument("--robust-presets", nargs="*", default=["standard", "fast", "paper"],
                        help="evaluation presets run on it")
    parser.add_argument("--robust-only", action="store_true", help="skip the side-by-side comparison")
    parser.add_argument("--out-dir", default=None,
                        help="folder for the JSON and CSV results (default benchmarks/results/<device>)")
    parser.add_argument("--advertorch-worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.advertorch_worker:
        advertorch_worker(args.advertorch_worker)
        return
    if args.threads:
        torch.set_num_threads(args.threads)

    sys.path.insert(0, str(HERE))
    from common import environment, markdown_table, results_dir, shown, write_results

    device = torch.device(args.device)
    out_dir = Path(args.out_dir) if args.out_dir else results_dir(device)
    env = environment(device)
    if args.robust_checkpoint:
        robust_rows, robust_env = robust_section(args, device)
        print(markdown_table(robust_rows, ["attack", "implementation", "images", "robust_accuracy", "success_rate",
                                           "forward_passes_per_image", "seconds_per_image", "masking_flagged",
                                           "error"]))
        path = write_results(f"attacks_robust_{device.type}", {**env, **robust_env}, robust_rows, out_dir)
        print(f"wrote {shown(path)}")
        if args.robust_only:
            return
    model, x_test, y_test, note = mnist_cnn(device, args.data_dir, n_test=max(args.images * 2, 1000))
    with torch.no_grad():
        correct = model(x_test).argmax(dim=1) == y_test
    images, labels = x_test[correct][:args.images], y_test[correct][:args.images]
    env.update({"model": note, "images": int(images.shape[0]), "chunk": args.chunk,
                "selection": "the first correctly classified MNIST test images"})
    print(f"[bench_attacks] {note}; attacking {images.shape[0]} correctly classified test images", file=sys.stderr)
    rows = side_by_side(model, images, labels, args.chunk, args, device)
    columns = ["comparison", "implementation", "attack", "images", "images_per_s", "success_rate",
               "median_tnorm_px", "evaluations_per_image", "throughput_ratio", "error"]
    print(markdown_table(rows, columns))
    if args.throughput:
        batch = 32 if args.quick else 256
        extra = [("mnist-cnn (1x28x28)", (model, images[:batch], labels[:batch], note)),
                 ("vgg11 (3x32x32)", vgg11(device, max(batch // 2, 2)))]
        for model_name, (net, x, y, model_note) in extra:
            for attack_name, attack in attacks_for(net, args.quick).items():
                row = {"comparison": "throughput", "model": model_name, "model_note": model_note,
                       "implementation": "flowtriton", "attack": attack_name}
                row.update(time_attack(attack, x, y, device))
                rows.append(row)
        print(markdown_table([r for r in rows if r["comparison"] == "throughput"],
                             ["model", "attack", "images", "images_per_s", "success_rate", "median_tnorm_px",
                              "evaluations_per_image"]))
    path = write_results(f"attacks_{device.type}", env, rows, out_dir)
    print(f"wrote {shown(path)}")


if __name__ == "__main__":
    main()
