"""Throughput (images per second) of every flowtriton attack, and stAdv against advertorch.

Models: a small CNN on MNIST (flowtriton.models.SmallCNN, trained here for a few hundred steps so
that success rates mean something) and a CIFAR VGG-11 with BatchNorm (random weights: its rows
measure speed only). Each attack runs once on a batch after a warm-up; images/s = batch / seconds.
Success rates count the examples the model classified correctly.

advertorch's SpatialTransformAttack (scipy L-BFGS-B, float64, a host round trip per function
evaluation) runs side by side on the same traced model and images in a SEPARATE Python
(``--advertorch-python``, default /tmp/advvenv/bin/python) because advertorch is no dependency of
flowtriton; a row records why when it cannot run.

    python benchmarks/bench_attacks.py [--device cuda] [--quick] [--batch 64]

Writes benchmarks/results/attacks_<device>.json and .csv (with the device and versions).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
SHARED_MNIST = HERE.parent.parent / "shared" / "datasets"


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

    for name, root in (("mnist", data_dir or SHARED_MNIST), ("mnist-subset", None)):
        try:
            train = load_dataset(name, "train", root)
            test = load_dataset(name, "test", root)
            return (train.float_images()[:n_train], train.labels[:n_train],
                    test.float_images()[:n_test], test.labels[:n_test], name)
        except Exception as error:  # noqa: BLE001 - fall through to the next source
            print(f"[bench_attacks] {name} not loaded: {error}", file=sys.stderr)
    raise SystemExit("no MNIST data found: pass --data-dir")


def small_cnn(device, steps: int, data_dir: str | None, n_test: int, seed: int = 0):
    """SmallCNN trained for ``steps`` Adam steps (batch 64) on MNIST; -> (model, images, labels)."""
    from flowtriton.models import SmallCNN

    torch.manual_seed(seed)
    x_train, y_train, x_test, y_test, source = load_mnist(steps * 64, n_test, data_dir)
    model = SmallCNN(num_classes=10, in_channels=1).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    for step in range(steps):
        index = torch.randint(0, x_train.shape[0], (64,))
        loss = torch.nn.functional.cross_entropy(model(x_train[index].to(device)), y_train[index].to(device))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval(), x_test.to(device), y_test.to(device), f"{source}, {steps} Adam steps"


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

    return {
        "FlowPGD(eps=0.01 norm., K=%d)" % (20 if quick else 100): FlowPGD(model, steps=20 if quick else 100),
        "ADef(cand=1..9, iter<=%d, smooth=0.5, os=1.2)" % (30 if quick else 100):
            ADef(model, candidates=range(1, 10), max_iter=30 if quick else 100, smooth=0.5, overshoot=1.2),
        "StAdv(tau=0.05, Adam<=100)": StAdv(model, tau=0.05),
        "StAdv(tau=0.01, Adam<=100)": StAdv(model, tau=0.01),
        "StAdv(tau=0.01, L-BFGS<=100)": StAdv(model, tau=0.01, optimizer="lbfgs"),
        "RotationTranslation(5x5x5)": RotationTranslation(model),
    }


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_attack(attack, images, labels, device) -> dict:
    attack.run(images[:2], labels[:2])  # warm-up (allocations, kernel compilation)
    sync(device)
    start = time.perf_counter()
    result = attack.run(images, labels)
    sync(device)
    seconds = time.perf_counter() - start
    load = os.getloadavg()[0]
    with torch.no_grad():
        correct = attack.model(images).argmax(dim=1) == labels
    fooled = result.success & correct
    tnorms = result.tnorm[fooled]
    return {"seconds": seconds, "images_per_s": images.shape[0] / seconds,
            "success_rate": float(fooled.sum()) / max(int(correct.sum()), 1),
            "median_tnorm_px": float(tnorms.median()) if tnorms.numel() else math.nan,
            "mean_iterations": float(result.iterations.float().mean()), "load_avg_1min": load,
            "evaluations_per_image": float(result.info["evaluations"].float().mean())
            if "evaluations" in result.info else None}


def run_advertorch(python: str, model, images, labels, tau: float, max_iter: int) -> dict:
    """advertorch's stAdv in ``python`` (a separate venv) on the same traced model and images."""
    if not Path(python).exists():
        return {"error": f"{python} not found: create it with python3 -m venv /tmp/advvenv && "
                         "/tmp/advvenv/bin/pip install torch==<same> advertorch scipy"}
    with tempfile.TemporaryDirectory() as tmp:
        model_path = os.path.join(tmp, "model.pt")
        torch.jit.save(torch.jit.trace(model.cpu(), images[:2].cpu()), model_path)
        model.to(images.device)
        blob = os.path.join(tmp, "batch.pt")
        torch.save({"model_path": model_path, "images": images.cpu(), "labels": labels.cpu(),
                    "classes": 10, "tau": tau, "max_iter": max_iter}, blob)
        done = subprocess.run([python, __file__, "--advertorch-worker", blob], capture_output=True, text=True,
                              timeout=3600)
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}"}
    out = json.loads(done.stdout.strip().splitlines()[-1])
    with torch.no_grad():
        correct = (model(images).argmax(dim=1) == labels).cpu()
    success = torch.tensor(out["success"]) & correct
    return {"seconds": out["seconds"], "images_per_s": images.shape[0] / out["seconds"],
            "load_avg_1min": os.getloadavg()[0],
            "success_rate": float(success.sum()) / max(int(correct.sum()), 1),
            "evaluations_per_image": out["evaluations"],
            "advertorch": out["advertorch"], "notes": "; ".join(out["notes"])}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="small batches and fewer iterations (CPU)")
    parser.add_argument("--batch", type=int, default=None, help="images per attack run")
    parser.add_argument("--train-steps", type=int, default=None, help="Adam steps for the small CNN")
    parser.add_argument("--data-dir", default=None, help="folder holding mnist/ (default: ../shared/datasets)")
    parser.add_argument("--advertorch-python", default="/tmp/advvenv/bin/python")
    parser.add_argument("--advertorch-iters", type=int, default=1000, help="advertorch max_iterations (its default)")
    parser.add_argument("--no-advertorch", action="store_true")
    parser.add_argument("--advertorch-worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.advertorch_worker:
        advertorch_worker(args.advertorch_worker)
        return

    sys.path.insert(0, str(HERE))
    from common import environment, markdown_table, write_results

    device = torch.device(args.device)
    batch = args.batch or (32 if args.quick else 256)
    steps = args.train_steps or (300 if args.quick else 1500)
    env = environment(device)
    env.update({"quick": args.quick, "batch": batch})
    rows = []
    setups = [("small-cnn (MNIST 1x28x28)", small_cnn(device, steps, args.data_dir, batch)),
              ("vgg11 (3x32x32)", vgg11(device, max(batch // 2, 2) if args.quick else batch))]
    for model_name, (model, images, labels, note) in setups:
        with torch.no_grad():
            clean = float((model(images).argmax(dim=1) == labels).float().mean())
        print(f"[bench_attacks] {model_name}: {note}, clean accuracy {clean:.3f}", file=sys.stderr)
        for attack_name, attack in attacks_for(model, args.quick).items():
            row = {"model": model_name, "model_note": note, "attack": attack_name, "implementation": "flowtriton",
                   "batch": images.shape[0], "clean_accuracy": clean}
            row.update(time_attack(attack, images, labels, device))
            rows.append(row)
            print(f"  {attack_name}: {row['images_per_s']:.1f} img/s, success {row['success_rate']:.3f}",
                  file=sys.stderr)
        if model_name.startswith("small-cnn") and not args.no_advertorch:
            row = {"model": model_name, "model_note": note, "attack": "SpatialTransformAttack(const=0.05, "
                   f"L-BFGS-B<={args.advertorch_iters})", "implementation": "advertorch", "batch": images.shape[0],
                   "clean_accuracy": clean}
            row.update(run_advertorch(args.advertorch_python, model, images, labels, 0.05, args.advertorch_iters))
            rows.append(row)
            print(f"  advertorch: {row}", file=sys.stderr)
            if "images_per_s" in row:
                for ours in rows:
                    if ours["model"] == model_name and ours["attack"].startswith("StAdv"):
                        ours["speedup_vs_advertorch"] = ours["images_per_s"] / row["images_per_s"]
    path = write_results(f"attacks_{device.type}", env, rows)
    print(markdown_table(rows, ["model", "attack", "implementation", "batch", "images_per_s", "success_rate",
                                "median_tnorm_px", "mean_iterations", "evaluations_per_image",
                                "speedup_vs_advertorch"]))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
