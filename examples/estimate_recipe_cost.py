#!/usr/bin/env python
"""Count the work of the authors' CIFAR-10 recipe (examples/gpu_recipe.py) on the CPU, for a GPU
time estimate: floating-point operations and torch ops that do device work per training step (standard
and FGR) and per attack step, for VGG-11-BN at batch 1 and 8 (the counts grow linearly in the
batch; ops per step do not), then totals for the whole recipe.

    python examples/estimate_recipe_cost.py [--json counts.json]

Nothing here is timed: what the estimate adds (a GPU's sustained FLOP rate and host time per
launched op) is an assumption, printed as such. Ops are counted at torch's dispatch level (every
aten op, the backward's included; views, no-op casts and allocations left out as in
benchmarks/count_step_ops.py); on the CPU the flow penalty runs its pure-torch reference, where the
GPU launches 3 Triton kernels, so the FGR count is an upper bound for the GPU (input-gradient
regularization, the same double backward without the warp, is printed beside it).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from count_step_ops import NO_KERNEL_OPS  # noqa: E402  (views, no-op casts, allocations: no device work)


class WorkCounter(TorchDispatchMode):
    """Counts aten ops dispatched while active: all (``ops``) and those that do device work
    (``kernel_ops``: not views, no-op casts or allocations), and their FLOPs (torch's own FLOP
    formulas: matmuls and convolutions, forward and backward)."""

    def __init__(self):
        super().__init__()
        self.ops, self.kernel_ops, self.flops = 0, 0, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        self.ops += 1
        self.kernel_ops += f"aten::{func._overloadpacket.__name__}" not in NO_KERNEL_OPS
        if func._overloadpacket in flop_registry:
            self.flops += flop_registry[func._overloadpacket](*args, **kwargs, out_val=out)
        return out


def measure(step, batch: int) -> tuple[int, int]:
    """(FLOPs, ops doing device work) of one call of ``step(images, labels)`` at ``batch``."""
    images = torch.rand(batch, 3, 32, 32)
    labels = torch.arange(batch) % 10
    step(images, labels)  # warm-up: lazy initializations are not part of a step
    with WorkCounter() as counter:
        step(images, labels)
    return counter.flops, counter.kernel_ops


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--json", default=None, help="also write the counts here")
    args = p.parse_args(argv)
    torch.manual_seed(0)
    import flowtriton
    from flowtriton.attacks import FlowPGD
    from flowtriton.models import build_model

    model = build_model("vgg11")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4,
                                foreach=True)  # as on CUDA: one op per update, not one per tensor
    reg = flowtriton.FlowGradReg(lam=100.0, sigma=0.01)

    def train_step(loss_of):
        def step(images, labels):
            model.train()
            loss = loss_of(images, labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        return step

    def attack(steps):
        def run(images, labels):
            model.eval()
            FlowPGD.preset("paper", model, eps=0.01, steps=steps)(images, labels)  # adversarial training's attack
        return run

    igr = flowtriton.InputGradReg(lam=1.0)
    steps = {"standard": train_step(lambda x, y: F.cross_entropy(model(x), y)),
             "fgr": train_step(lambda x, y: reg(model, x, y)[0]),
             "igr (same double backward, no warp)": train_step(lambda x, y: igr(model, x, y)[0]),
             "attack K=1": attack(1), "attack K=3": attack(3)}
    counts = {}
    for name, step in steps.items():
        (f1, ops1), (f8, ops8) = measure(step, 1), measure(step, 8)
        counts[name] = {"flops_per_image": (f8 - f1) / 7, "ops": ops8}
        print(f"{name}: {(f8 - f1) / 7 / 1e9:.3f} GFLOP per image, {ops8} ops with device work per call "
              f"({ops1} at batch 1)", flush=True)
    per_attack_step = {k: (counts["attack K=3"][k] - counts["attack K=1"][k]) / 2 for k in ("flops_per_image", "ops")}
    counts["attack, one more step"] = per_attack_step
    print(f"one attack step: {per_attack_step['flops_per_image'] / 1e9:.3f} GFLOP per image, "
          f"{per_attack_step['ops']:.0f} ops", flush=True)

    # The recipe: 45,000 training images, batch 128, 80 epochs, lambdas 0 / 100 / 200 / 300 interleaved
    # (1 standard + 3 FGR steps per batch); 5,000 validation images per lambda and epoch (forward only);
    # the attack K = 100 on 10,000 test images per lambda (batches of 1,000).
    steps_per_run = 80 * -(-45000 // 128)
    std, fgr = counts["standard"], counts["fgr"]
    fwd = std["flops_per_image"] / 3  # a forward is about a third of forward + backward
    val = 4 * 80 * 5000 * fwd
    attack_flops = 4 * 10000 * (100 * per_attack_step["flops_per_image"] + 2 * fwd)
    attack_ops = 4 * 10 * 100 * per_attack_step["ops"]
    totals = {"train_steps_per_lambda": steps_per_run, "batch": 128,
              "train_flops": 80 * 45000 * (std["flops_per_image"] + 3 * fgr["flops_per_image"]),
              "val_flops": val, "attack_flops": attack_flops,
              "train_ops": steps_per_run * (std["ops"] + 3 * fgr["ops"]), "attack_ops": attack_ops}
    print(f"recipe: {steps_per_run} steps a lambda; training {totals['train_flops'] / 1e15:.1f} PFLOP and "
          f"{totals['train_ops'] / 1e6:.0f} M ops, validation {val / 1e15:.2f} PFLOP, attack "
          f"{attack_flops / 1e15:.2f} PFLOP and {attack_ops / 1e6:.2f} M ops", flush=True)
    scenarios = []
    for rate, per_op in ((100e12, 4e-6), (50e12, 8e-6), (25e12, 12e-6)):
        # a step costs the longer of its arithmetic and its host-side launching (they overlap)
        step_s = sum(max(128 * c["flops_per_image"] / rate, c["ops"] * per_op) for c in (std, fgr, fgr, fgr))
        total = steps_per_run * step_s + (val + attack_flops) / rate + attack_ops * per_op
        scenarios.append({"tflops": rate / 1e12, "us_per_op": per_op * 1e6, "interleaved_step_ms": step_s * 1e3,
                          "total_min": total / 60})
        print(f"  ASSUMING {rate / 1e12:.0f} TFLOP/s sustained and {per_op * 1e6:.0f} us per op with device work: "
              f"{step_s * 1e3:.1f} ms per interleaved step, {total / 60:.1f} min in all", flush=True)
    totals["scenarios"] = scenarios
    if args.json:
        Path(args.json).write_text(json.dumps({"per_step": counts, "recipe": totals}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
