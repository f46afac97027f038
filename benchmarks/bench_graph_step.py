"""One training step, eager vs replayed from a CUDA graph, per method and model.

Methods: standard, igr (InputGradReg), fgr (FlowGradReg exact: closed form + fused penalty, double
backward through the network), fgr-fd (FlowGradReg finite difference, first order). Models: the
MNIST small CNN (batch 128, 1x28x28) and CIFAR VGG-11-BN (batch 128, 3x32x32). Each step is the
trainer's: the objective, backward, SGD step (momentum 0.9, weight decay 5e-4), through
:class:`flowtriton.train.graphed.StaticStep` for the graphed column.

What each column isolates:
  eager_ms      wall time per step over ``--steps`` back-to-back eager steps, one synchronize at
                the end (host launch overhead and device time together, as a training loop sees it)
  graph_ms      the same for graph replays (CUDA only): with the host out of the loop, this is
                device time (CUDA events around the replays give the same number; both are kept)
  graph_event_ms  CUDA-event time per replay
  speedup       eager_ms / graph_ms; fgr_over_igr  the FGR step's cost relative to IGR's, per column

On a CPU only the eager column is measured (a CPU cannot capture); the graphed columns say why.

    python benchmarks/bench_graph_step.py --device cuda
    python benchmarks/bench_graph_step.py --device cpu --quick --threads 1

Writes benchmarks/results/<device>/graph_step_<device>[_quick].json and .csv (cpu/ or cuda/; --name and
--out-dir to choose).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import environment, markdown_table, results_dir, shown, sync, write_results  # noqa: E402

from flowtriton.models import build_model  # noqa: E402
from flowtriton.train import Objective, make_config  # noqa: E402
from flowtriton.train.graphed import StaticStep  # noqa: E402

METHODS = ("standard", "igr", "fgr", "fgr-fd")
# name: (model, channels, size, batch, quick batch)
WORKLOADS = {"mnist-cnn": ("small-cnn", 1, 28, 128, 16), "cifar-vgg11": ("vgg11", 3, 32, 128, 4)}


def make_step(workload: str, method: str, device: torch.device, batch: int, capture: bool):
    """(step(images, labels), images, labels) for one (workload, method), seeded."""
    model_name, channels, size, _, _ = WORKLOADS[workload]
    torch.manual_seed(0)
    model = build_model(model_name, 10, channels).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    cfg = make_config(None, method=method, lam=1.0 if method != "standard" else None)
    objective = Objective(cfg, attack_model=model)
    images = torch.rand(batch, channels, size, size, device=device)
    labels = torch.randint(0, 10, (batch,), device=device)
    if capture:
        return StaticStep(model, objective, optimizer, capture=True), images, labels

    def eager(x, y):
        loss, parts = objective(model, x, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.detach(), parts

    return eager, images, labels


def time_steps(step, images, labels, device, steps: int, warmup: int) -> dict:
    """Wall ms per step over ``steps`` steps (one sync at the end), and CUDA-event ms on CUDA."""
    for _ in range(warmup):
        step(images, labels)
    sync(device)
    events = None
    if device.type == "cuda":
        events = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        events[0].record()
    started = time.perf_counter()
    for _ in range(steps):
        step(images, labels)
    if events is not None:
        events[1].record()
    sync(device)
    out = {"ms": (time.perf_counter() - started) * 1e3 / steps}
    if events is not None:
        out["event_ms"] = events[0].elapsed_time(events[1]) / steps
    return out


def run(args) -> list[dict]:
    device = torch.device(args.device)
    rows = []
    for workload in args.workloads:
        batch = WORKLOADS[workload][4] if args.quick else WORKLOADS[workload][3]
        for method in args.methods:
            row = {"workload": workload, "method": method, "batch": batch}
            step, images, labels = make_step(workload, method, device, batch, capture=False)
            row["eager_ms"] = time_steps(step, images, labels, device, args.steps, args.warmup)["ms"]
            if device.type == "cuda":
                try:
                    graphed, images, labels = make_step(workload, method, device, batch, capture=True)
                    # StaticStep's own warm-up (3 eager side-stream steps) and the capture come first
                    timed = time_steps(graphed, images, labels, device, args.steps, args.warmup + 4)
                    row["graph_ms"], row["graph_event_ms"] = timed["ms"], timed["event_ms"]
                    row["speedup"] = row["eager_ms"] / row["graph_ms"]
                except Exception as exc:  # record what failed, keep the other rows
                    row["graph_error"] = f"{type(exc).__name__}: {exc}"[:300]
            else:
                row["graph_error"] = "needs CUDA (a CPU cannot capture a graph)"
            rows.append(row)
            print(f"{workload} {method}: " + ", ".join(f"{k} {v:.3f}" for k, v in row.items()
                                                       if isinstance(v, float)), flush=True)
    for workload in args.workloads:
        by = {r["method"]: r for r in rows if r["workload"] == workload}
        if "fgr" in by and "igr" in by:
            for column in ("eager_ms", "graph_ms"):
                if by["fgr"].get(column) and by["igr"].get(column):
                    by["fgr"][f"fgr_over_igr_{column[:-3]}"] = by["fgr"][column] / by["igr"][column]
    return rows


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--workloads", nargs="+", choices=sorted(WORKLOADS), default=list(WORKLOADS))
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--steps", type=int, default=50, help="timed steps per case")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="small batches (CPU checks)")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    parser.add_argument("--name", help="results file stem (default graph_step_<device>[_quick])")
    parser.add_argument("--out-dir", type=Path, default=None,
                        help="results folder (default benchmarks/results/<device>)")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.warmup < 0:
        parser.error("--steps must be >= 1 and --warmup >= 0")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: CUDA is not available here")
    return args


def main(argv=None) -> Path:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = run(args)
    device = torch.device(args.device)
    name = args.name or f"graph_step_{device.type}" + ("_quick" if args.quick else "")
    path = write_results(name, environment(device), rows, args.out_dir or results_dir(device))
    print(markdown_table(rows, ["workload", "method", "batch", "eager_ms", "graph_ms", "graph_event_ms", "speedup",
                                "fgr_over_igr_eager", "fgr_over_igr_graph"]))
    print(f"wrote {shown(path)}")
    return path


if __name__ == "__main__":
    main()
