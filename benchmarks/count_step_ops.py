"""Count what one training step launches: Triton kernels and top-level torch ops, FGR vs plain.

One step = ``loss = reg(model, images, labels)`` (or plain cross-entropy), ``zero_grad``,
``backward``, ``optimizer.step`` of the small MNIST CNN, batch 8, after one warm-up step. Triton
launches are counted by wrapping the launch entry of the interpreter (on CPU: run with
TRITON_INTERPRET=1 and ``--backend triton``) or of the JIT (on a GPU: ``--device cuda``), so the count
does not depend on flowtriton's own bookkeeping; torch ops are the profiler's top-level ``aten::`` events (one per op
the code issues, forward and backward; ops nested inside another aten op are not counted again). The difference between
the FGR and the plain step is what the regularizer adds, the model's double backward included.

    TRITON_INTERPRET=1 python benchmarks/count_step_ops.py --backend triton [--json [out.json]]
    python benchmarks/count_step_ops.py --backend triton --device cuda --json

Prints the counts; ``--json PATH`` also writes them, with each op's name, to PATH, and a bare ``--json``
to benchmarks/results/<device type>/step_ops_<device type>.json (cpu/ or cuda/).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
from pathlib import Path

import torch
import torch.nn.functional as F


def _count_triton_launches():
    """Patch the launch entry of Triton's interpreter (TRITON_INTERPRET=1) or of its JIT (a GPU);
    return the live counter."""
    counts = collections.Counter()
    if os.environ.get("TRITON_INTERPRET") == "1":
        from triton.runtime.interpreter import InterpretedFunction as Launched
    else:
        from triton.runtime.jit import JITFunction as Launched
    original = Launched.run

    def run(self, *args, **kwargs):
        name = getattr(self, "__name__", None) or getattr(getattr(self, "fn", None), "__name__", "?")
        counts[name] += 1
        with torch.profiler.record_function(f"triton::{name}"):  # the interpreter's own torch calls hide below
            return original(self, *args, **kwargs)

    Launched.run = run
    return counts


# Ops that launch no device kernel (views, no-op casts, allocations): listed apart.
NO_KERNEL_OPS = frozenset(f"aten::{name}" for name in (
    "detach", "detach_", "view", "t", "expand", "reshape", "flatten", "select", "to", "empty", "empty_like",
    "new_empty", "new_empty_strided", "lift_fresh", "alias", "as_strided", "unsqueeze", "squeeze", "permute",
    "transpose", "set_", "_reshape_alias", "slice", "unflatten", "contiguous"))


def kernel_ops(names: dict) -> int:
    """How many of the counted ops launch device work (everything but views, casts, allocations)."""
    return sum(count for name, count in names.items() if name not in NO_KERNEL_OPS)


def _top_level_aten_ops(prof) -> collections.Counter:
    """``aten::`` events with no ``aten::`` ancestor, wherever they run (forward, inside custom
    ops and autograd Functions, in the backward engine): each op the code issues, once. What the
    Triton interpreter does with torch inside a launch is not counted (a GPU launch has none)."""
    counts = collections.Counter()
    for event in prof.events():
        if not event.name.startswith("aten::"):
            continue
        parent = event.cpu_parent
        while parent is not None and not parent.name.startswith(("aten::", "triton::")):
            parent = parent.cpu_parent
        if parent is None:
            counts[event.name] += 1
    return counts


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default="triton", choices=["triton", "torch", "auto"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--json", nargs="?", const="", default=None, metavar="PATH",
                        help="also write the counts here (bare --json: "
                             "benchmarks/results/<device type>/step_ops_<device type>.json)")
    args = parser.parse_args(argv)

    triton_counts = _count_triton_launches()
    import flowtriton
    from flowtriton.models import build_model

    torch.manual_seed(0)
    device = torch.device(args.device)
    model = build_model("small-cnn", in_channels=1, num_classes=10).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    images = torch.rand(args.batch, 1, 28, 28, device=device)
    labels = torch.randint(0, 10, (args.batch,), device=device)
    reg = flowtriton.FlowGradReg(backend=args.backend, seed=0)

    def fgr_step():
        loss, _ = reg(model, images, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def plain_step():
        loss = F.cross_entropy(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    result = {"torch": torch.__version__, "backend": args.backend, "device": str(device), "batch": args.batch}
    for name, step in (("plain", plain_step), ("fgr", fgr_step)):
        step()  # warm-up: compilation, caches, lazy state
        triton_counts.clear()
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            step()
        aten = _top_level_aten_ops(prof)
        result[name] = {"triton_launches": sum(triton_counts.values()), "triton_kernels": dict(triton_counts),
                        "torch_ops": sum(aten.values()), "torch_kernel_ops": kernel_ops(aten),
                        "torch_op_names": dict(aten.most_common())}
    result["fgr_extra_torch_ops"] = result["fgr"]["torch_ops"] - result["plain"]["torch_ops"]
    result["fgr_extra_torch_kernel_ops"] = result["fgr"]["torch_kernel_ops"] - result["plain"]["torch_kernel_ops"]
    print(json.dumps({k: v for k, v in result.items() if k not in ("plain", "fgr")}))
    for name in ("plain", "fgr"):
        r = result[name]
        print(f"{name}: {r['triton_launches']} Triton launches {r['triton_kernels']}, {r['torch_ops']} torch ops "
              f"({r['torch_kernel_ops']} that launch device work)")
    if args.json is not None:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from common import results_dir, shown

        path = Path(args.json) if args.json else results_dir(device) / f"step_ops_{device.type}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w") as fh:
            json.dump(result, fh, indent=1)
        print(f"wrote {shown(path)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
