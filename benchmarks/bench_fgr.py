"""Time and peak memory of one FGR training step, and of the penalty alone.

Table 1 -- one full training step (forward, loss, backward, SGD step) per method:
  standard        cross-entropy only
  igr             flowtriton.InputGradReg (double backprop)
  fgr-exact       flowtriton.FlowGradReg, closed form + fused penalty (Triton on CUDA)
  fgr-functional  the same written as a custom loop: fgr_random_start + model + fgr_penalty
  fgr-exact-torch the same through the eager reference ops (CUDA only; on CPU it is fgr-exact)
  fgr-fd          FlowGradReg(mode='finite_difference'): first-order gradients only
  authors         the authors' formulation: gather-based bilinear sampler + double backprop
  grid-sample     the same through F.grid_sample's native double backward (torch >= 2.12)
Workloads: MNIST small CNN (batch 128, 1x28x28), CIFAR VGG-11-BN (batch 128, 3x32x32),
ImageNet-style ResNet-18 (batch 32, 3x224x224). All FGR variants use the paper's random start.
Times: all methods of a workload share one process and are run round-robin (median and min
over the rounds), so changes in machine load hit every method alike. Peak memory of one step
beyond the set-up (model, optimizer state, batch): CUDA max_memory_allocated; on CPU the peak RSS
growth of a fresh process per (workload, method).

Table 1 times are eager wall time per step with a synchronize on each side (host and device
together); the device time of a whole step replayed from a CUDA graph is
benchmarks/bench_graph_step.py's.

Table 2 -- the penalty with its backward w.r.t. grad_image, no network: fused Triton kernel (CUDA)
vs the eager torch composition and torch.compile of it (--compile; on by default on CUDA), at the
workloads' full sizes (plus 256x3x64x64 on CUDA; --penalty-shapes to choose). Labelled columns:
device_ms (CUDA: the case captured in a CUDA graph, replays timed with CUDA events, L2 flushed
before each), gbps / roofline_frac (5 image-sized float32 tensors moved / device time, against the
HBM peak from the device name), fwd_bwd_ms (eager wall time, synchronized), enqueue_us (host time
to issue one eager call). Speed-ups use device time where it was measured. On a CPU the device
columns are skipped (--timing device is refused there).

    python benchmarks/bench_fgr.py --device cuda
    python benchmarks/bench_fgr.py --device cuda --skip-steps --timing device   # table 2, device time
    python benchmarks/bench_fgr.py --device cpu --quick --threads 1   # reduced sizes, ~4 minutes
    python benchmarks/bench_fgr.py --device cpu --skip-steps --compile  # table 2 only

Writes benchmarks/results/<device>/fgr_<device>[_quick][_penalty_only].json (cpu/ or cuda/; --out-dir to
choose) and two CSVs beside it (_step, _penalty), with the device and versions.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import device_timing_error, hbm_peak_gbps, parse_shape, results_dir, shown  # noqa: E402

from flowtriton.models.resnet import BasicBlock  # noqa: E402
from flowtriton.regularizers import DEFAULT_FGR_LAM  # noqa: E402

METHODS = ("standard", "igr", "fgr-exact", "fgr-functional", "fgr-exact-torch", "fgr-fd", "authors", "grid-sample")
# name: (channels, size, batch, quick batch, quick size)
WORKLOADS = {
    "mnist-cnn": (1, 28, 128, 32, 28),
    "cifar-vgg11": (3, 32, 128, 16, 32),
    "imagenet-resnet18": (3, 224, 32, 2, 112),
}
LAM, SIGMA = DEFAULT_FGR_LAM, 0.01   # the values do not change the timing


# ----------------------------------------------------------------------------------------------
# Models
# ----------------------------------------------------------------------------------------------

class ImageNetResNet18(nn.Module):
    """torchvision's ResNet-18 layout (7x7 stride-2 stem, max-pool, 4 stages), for 224x224; the
    blocks are flowtriton's CIFAR ResNet-18 blocks."""

    def __init__(self, num_classes=1000):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
                                  nn.MaxPool2d(3, 2, 1))
        layers, cin = [], 64
        for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            layers += [BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1)]
            cin = cout
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x):
        return self.fc(F.adaptive_avg_pool2d(self.layers(self.stem(x)), 1).flatten(1))


def build(workload: str) -> nn.Module:
    if workload == "imagenet-resnet18":
        return ImageNetResNet18()
    from flowtriton.models import build_model

    return build_model("small-cnn", in_channels=1) if workload == "mnist-cnn" else build_model("vgg11")


# ----------------------------------------------------------------------------------------------
# The two non-flowtriton baselines: the authors' gather sampler, and F.grid_sample
# ----------------------------------------------------------------------------------------------

def identity_grid(n, h, w, like):
    theta = torch.tensor([[1.0, 0, 0], [0, 1.0, 0]], dtype=like.dtype, device=like.device).expand(n, 2, 3)
    return F.affine_grid(theta, (n, 1, h, w), align_corners=True)


def gather_bilinear(image, grid):
    """The authors' sampler: normalized grid, align_corners=True, clamped coordinates, 4 gathers."""
    n, c, h, w = image.shape
    x = ((grid[..., 0] + 1) * (w - 1) / 2).clamp(0, w - 1)
    y = ((grid[..., 1] + 1) * (h - 1) / 2).clamp(0, h - 1)
    x0, y0 = torch.floor(x.detach()).long(), torch.floor(y.detach()).long()
    x1, y1 = (x0 + 1).clamp(max=w - 1), (y0 + 1).clamp(max=h - 1)
    wx, wy = (x - x0).unsqueeze(1), (y - y0).unsqueeze(1)
    flat = image.reshape(n, c, h * w)

    def at(iy, ix):
        return torch.gather(flat, 2, (iy * w + ix).reshape(n, 1, -1).expand(n, c, -1)).reshape(n, c, h, w)

    return (at(y0, x0) * (1 - wx) + at(y0, x1) * wx) * (1 - wy) + (at(y1, x0) * (1 - wx) + at(y1, x1) * wx) * wy


def sampler_fgr_loss(model, images, labels, sampler):
    n, _, h, w = images.shape
    base = identity_grid(n, h, w, images)
    noise = torch.randn((n, h, w, 2), dtype=images.dtype, device=images.device) * SIGMA
    start = F.grid_sample(images, base + noise, align_corners=True).clamp(0, 1).detach()
    tau = torch.zeros_like(base, requires_grad=True)
    ce = F.cross_entropy(model(sampler(start, base + tau)), labels)
    (grad_tau,) = torch.autograd.grad(ce, tau, create_graph=True)
    return ce + LAM * grad_tau.square().sum(dim=(1, 2, 3)).mean()


def make_loss(method: str):
    import flowtriton

    if method == "standard":
        return lambda model, x, y: F.cross_entropy(model(x), y)
    if method == "authors":
        return lambda model, x, y: sampler_fgr_loss(model, x, y, gather_bilinear)
    if method == "grid-sample":
        return lambda model, x, y: sampler_fgr_loss(
            model, x, y, lambda img, grid: F.grid_sample(img, grid, padding_mode="border", align_corners=True))
    if method == "fgr-functional":
        def loss(model, x, y):
            start = flowtriton.fgr_random_start(x, SIGMA).requires_grad_(True)
            ce = F.cross_entropy(model(start), y)
            return ce + LAM * flowtriton.fgr_penalty(ce, start, check_range=False)

        return loss
    if method == "igr":
        reg = flowtriton.InputGradReg()
    elif method == "fgr-fd":
        reg = flowtriton.FlowGradReg(lam=LAM, sigma=SIGMA, mode="finite_difference")
    else:
        reg = flowtriton.FlowGradReg(lam=LAM, sigma=SIGMA, backend="torch" if method == "fgr-exact-torch" else None)
    return lambda model, x, y: reg(model, x, y)[0]


# ----------------------------------------------------------------------------------------------
# Measurement
# ----------------------------------------------------------------------------------------------

def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _rss_mb(field="VmRSS"):
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def _reset_peak_rss():
    try:
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")
    except OSError:
        pass


def _setup(workload, device, batch, size, seed=0):
    torch.manual_seed(seed)
    channels = WORKLOADS[workload][0]
    model = build(workload).to(device).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, weight_decay=5e-4)
    images = torch.rand(batch, channels, size, size, device=device)
    labels = torch.randint(0, 1000 if workload == "imagenet-resnet18" else 10, (batch,), device=device)
    return model, optimizer, images, labels


def _stepper(method, model, optimizer, images, labels):
    loss_fn = make_loss(method)

    def step():
        loss = loss_fn(model, images, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss

    return step


def time_workload(workload, methods, device, batch, size, warmup, repeats) -> dict:
    """Seconds per training step of every method, measured round-robin in one process (one
    model and optimizer, methods interleaved, so a change in machine load hits all alike)."""
    model, optimizer, images, labels = _setup(workload, device, batch, size)
    steps, failed = {}, {}
    for method in methods:  # one probe step each: a method this torch cannot run is reported, not fatal
        step = _stepper(method, model, optimizer, images, labels)
        try:
            step()
            steps[method] = step
        except Exception as exc:  # e.g. grid_sample's double backward before torch 2.12
            failed[method] = {"error": repr(exc)[:300]}
    times = {m: [] for m in steps}
    for round_index in range(warmup + repeats):
        for method, step in steps.items():
            _sync(device)
            start = time.perf_counter()
            step()
            _sync(device)
            if round_index >= warmup:
                times[method].append(time.perf_counter() - start)
    return {**failed, **{m: {"step_ms": 1e3 * statistics.median(t), "step_ms_min": 1e3 * min(t), "repeats": len(t)}
                         for m, t in times.items()}}


def step_memory_mb(workload, method, device, batch, size) -> float:
    """Peak memory of one training step beyond what the set-up holds (model, optimizer state,
    batch), after one warm-up step. CUDA: max_memory_allocated; CPU: peak RSS growth (run it in
    a fresh process: freed memory stays in the process)."""
    model, optimizer, images, labels = _setup(workload, device, batch, size)
    step = _stepper(method, model, optimizer, images, labels)
    step()
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        step()
        _sync(device)
        return (torch.cuda.max_memory_allocated(device) - base) / 2**20
    base = _rss_mb()
    _reset_peak_rss()
    step()
    return _rss_mb("VmHWM") - base


def penalty_bytes(shape, element: int = 4) -> int:
    """Bytes the penalty's fwd + bwd (w.r.t. grad_image) must move at least, two kernels: the
    forward reads x and g, the backward reads x and g and writes d g (float32); the (N,) outputs
    are negligible."""
    n, c, h, w = shape
    return 5 * n * c * h * w * element


def penalty_isolated(device, shapes, repeats, use_compile, timing="host", replays=20, peak_gbps=None) -> list[dict]:
    """The penalty plus its backward w.r.t. grad_image, no network. ``shapes``: {name: (N, C, H, W)}.
    Host timing: ``fwd_bwd_ms`` (eager wall time, synchronized) and ``enqueue_us`` (host time to
    issue it); device timing (CUDA): ``device_ms`` from CUDA-graph replays, with bandwidth."""
    import flowtriton
    from flowtriton.reference.flow_gradient import flow_gradient_penalty as eager

    from common import device_time_cuda_graph, host_enqueue_us

    variants = {"eager": eager}
    if device.type == "cuda":
        variants["fused"] = lambda x, g: flowtriton.flow_gradient_penalty(x, g, backend="triton")
    if use_compile:
        variants["compiled"] = torch.compile(eager)
    rows = []
    for workload, (n, c, h, w) in shapes.items():
        image = torch.rand(n, c, h, w, device=device)
        seed_grad = torch.randn(n, c, h, w, device=device)
        for name, fn in variants.items():
            grad = seed_grad.clone().requires_grad_(True)

            def once(fn=fn, grad=grad):
                torch.autograd.grad(fn(image, grad).sum(), grad)

            row = {"workload": workload, "shape": [n, c, h, w], "variant": name}
            try:
                for _ in range(3):
                    once()
            except Exception as exc:  # e.g. a compile failure: report, go on
                rows.append({**row, "error": f"{type(exc).__name__}: {exc}"[:300]})
                continue
            _sync(device)
            if timing in ("host", "both"):
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
                    base = torch.cuda.memory_allocated(device)
                times = []
                for _ in range(repeats):
                    _sync(device)
                    start = time.perf_counter()
                    once()
                    _sync(device)
                    times.append(time.perf_counter() - start)
                peak = ((torch.cuda.max_memory_allocated(device) - base) / 2**20 if device.type == "cuda"
                        else float("nan"))
                row.update(fwd_bwd_ms=1e3 * statistics.median(times), enqueue_us=host_enqueue_us(once, device, repeats),
                           peak_extra_mb=peak)
            if timing in ("device", "both") and device.type == "cuda":
                row.update(device_time_cuda_graph(once, device, replays=replays))
                if row.get("device_ms"):
                    row["gbps"] = penalty_bytes((n, c, h, w)) / (row["device_ms"] * 1e-3) / 1e9
                    row["roofline_frac"] = row["gbps"] / peak_gbps if peak_gbps else None
            rows.append(row)
    return rows


# ----------------------------------------------------------------------------------------------
# Driver
# ----------------------------------------------------------------------------------------------

def _meta(device, args) -> dict:
    import triton

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or platform.machine())
    return {"device": str(device), "device_name": name, "torch": torch.__version__, "triton": triton.__version__,
            "python": platform.python_version(), "cpu_count": os.cpu_count(), "threads": torch.get_num_threads(),
            "loadavg_1min_at_end": os.getloadavg()[0], "quick": args.quick, "warmup": args.warmup,
            "repeats": args.repeats, "lam": LAM, "sigma": SIGMA,
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def _child(args) -> int:
    workload, method = args.case
    print("RESULT " + json.dumps(step_memory_mb(workload, method, torch.device(args.device), args.batch, args.size)))
    return 0


def _memory(args, workload, method, batch, size) -> float:
    device = torch.device(args.device)
    if device.type == "cuda":
        return step_memory_mb(workload, method, device, batch, size)
    cmd = [sys.executable, __file__, "--device", args.device, "--case", workload, method, "--batch", str(batch),
           "--size", str(size), "--threads", str(args.threads)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.case_timeout)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    raise RuntimeError((proc.stderr.strip().splitlines() or ["no output"])[-1])


def measure_workload(args, workload, methods, batch, size) -> list[dict]:
    rows = []
    try:
        timings = time_workload(workload, methods, torch.device(args.device), batch, size, args.warmup, args.repeats)
    except Exception as exc:  # e.g. out of memory: report it, go on with the next workload
        return [{"workload": workload, "method": m, "batch": batch, "size": size, "error": repr(exc)[:300]}
                for m in methods]
    for method in methods:
        row = {"workload": workload, "method": method, "batch": batch, "size": size, **timings[method]}
        if "error" in row:
            rows.append(row)
            print(f"  {workload} {method}: failed: {row['error']}", flush=True)
            continue
        try:
            row["peak_extra_mb"] = _memory(args, workload, method, batch, size)
        except Exception as exc:
            row["peak_extra_mb"] = float("nan")
            row["memory_error"] = repr(exc)[:300]
        rows.append(row)
        print(f"  {workload} {method}: {row['step_ms']:.1f} ms (min {row['step_ms_min']:.1f}), "
              f"{row['peak_extra_mb']:.1f} MB", flush=True)
    return rows


def _print_steps(rows):
    print(f"\n{'workload':<19}{'method':<17}{'batch':>6}{'size':>6}{'ms/step':>11}{'x std':>8}{'x authors':>10}"
          f"{'peak MB':>10}{'x authors':>10}")
    for workload in dict.fromkeys(r["workload"] for r in rows):
        group = {r["method"]: r for r in rows if r["workload"] == workload}
        std, authors = group.get("standard", {}), group.get("authors", {})
        for method, r in group.items():
            if "error" in r:
                print(f"{workload:<19}{method:<17}{r['batch']:>6}{r['size']:>6}  failed: {r['error']}")
                continue
            t_std = r["step_ms"] / std["step_ms"] if "step_ms" in std else float("nan")
            t_auth = r["step_ms"] / authors["step_ms"] if "step_ms" in authors else float("nan")
            m_auth = r["peak_extra_mb"] / authors["peak_extra_mb"] if authors.get("peak_extra_mb") else float("nan")
            r.update(time_vs_standard=t_std, time_vs_authors=t_auth, memory_vs_authors=m_auth)
            print(f"{workload:<19}{method:<17}{r['batch']:>6}{r['size']:>6}{r['step_ms']:>11.1f}{t_std:>8.2f}"
                  f"{t_auth:>10.2f}{r['peak_extra_mb']:>10.1f}{m_auth:>10.2f}")


def _print_penalty(rows):
    """Table 2 with speed-ups against the eager and compiled penalty, on device time where
    measured (CUDA) and on eager wall time otherwise."""
    print(f"\n{'workload':<19}{'shape':<20}{'variant':<10}{'device ms':>10}{'GB/s':>8}{'roof':>6}{'eager ms':>10}"
          f"{'enq us':>8}{'x eager':>8}{'x compiled':>11}{'peak MB':>9}")
    for r in rows:
        group = {e["variant"]: e for e in rows if e["workload"] == r["workload"]}
        clock = "device_ms" if r.get("device_ms") is not None else "fwd_bwd_ms"
        r["speedup_clock"] = clock
        for other, field in (("eager", "speedup_vs_eager"), ("compiled", "speedup_vs_compiled")):
            base = group.get(other, {}).get(clock)
            r[field] = base / r[clock] if (base and r.get(clock)) else None
        if "error" in r:
            print(f"{r['workload']:<19}{str(tuple(r['shape'])):<20}{r['variant']:<10}  failed: {r['error']}")
            continue

        def fmt(v, spec):
            return format(v, spec) if isinstance(v, (int, float)) and v == v else "-".rjust(int(spec.split(".")[0]))

        print(f"{r['workload']:<19}{str(tuple(r['shape'])):<20}{r['variant']:<10}{fmt(r.get('device_ms'), '10.3f')}"
              f"{fmt(r.get('gbps'), '8.0f')}{fmt(r.get('roofline_frac'), '6.2f')}{fmt(r.get('fwd_bwd_ms'), '10.3f')}"
              f"{fmt(r.get('enqueue_us'), '8.0f')}{fmt(r.get('speedup_vs_eager'), '8.2f')}"
              f"{fmt(r.get('speedup_vs_compiled'), '11.2f')}{fmt(r.get('peak_extra_mb'), '9.1f')}")
        if r.get("device_error"):
            print(f"    device time: {r['device_error']}")


def _write(rows, penalty_rows, meta, tag, folder):
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / f"fgr_{tag}.json", "w") as out:
        json.dump({"meta": meta, "training_step": rows, "penalty_isolated": penalty_rows}, out, indent=1)
    for name, table in (("step", rows), ("penalty", penalty_rows)):
        if not table:
            continue
        keys = list(dict.fromkeys(k for r in table for k in r))
        with open(folder / f"fgr_{tag}_{name}.csv", "w", newline="") as out:
            writer = csv.DictWriter(out, fieldnames=keys)
            writer.writeheader()
            writer.writerows(table)
    print(f"\nwrote {shown(folder / f'fgr_{tag}.json')}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="FGR training-step and penalty benchmark")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="reduced batches/sizes and repeats (CPU smoke run)")
    parser.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=list(WORKLOADS))
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--warmup", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(),
                        help="CPU threads; on a shared machine use 1 (OpenMP threads spin against other jobs)")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                        help="add torch.compile(reference) to table 2 (default: on for CUDA, off for CPU)")
    parser.add_argument("--skip-steps", action="store_true", help="only table 2")
    parser.add_argument("--timing", choices=["both", "device", "host"], default="both",
                        help="table 2: device time from CUDA-graph replays (CUDA), host time (eager wall and "
                             "enqueue), or both; table 1 is always eager wall time")
    parser.add_argument("--penalty-shapes", nargs="+", type=parse_shape, default=None, metavar="NxCxHxW",
                        help="table 2 shapes (default: the workloads' full sizes, plus 256x3x64x64 on CUDA)")
    parser.add_argument("--replays", type=int, default=20, help="CUDA-graph replays per table-2 case")
    parser.add_argument("--peak-gbps", type=float, default=None, help="HBM roofline for table 2, GB/s")
    parser.add_argument("--out-dir", default=None,
                        help="folder for the JSON and CSV results (default benchmarks/results/<device>)")
    parser.add_argument("--case-timeout", type=int, default=1200)
    parser.add_argument("--case", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.quick else 3)
    args.repeats = args.repeats if args.repeats is not None else (2 if args.quick else 10)
    if args.warmup < 0 or args.repeats < 1 or args.replays < 1:
        parser.error("--warmup must be >= 0, --repeats and --replays >= 1")
    torch.set_num_threads(args.threads)
    if args.case:
        return _child(args)
    device = torch.device(args.device)
    problem = device_timing_error(device, args.timing)
    if problem:
        print(problem)
        return 2
    if args.timing == "both" and device.type != "cuda":
        print("table 2 device time: skipped (needs CUDA); host time only")
    methods = [m for m in args.methods if not (m == "fgr-exact-torch" and device.type != "cuda")]
    rows = []
    if not args.skip_steps:
        print("table 1: step_ms = eager wall time per step, synchronized (host + device); the device time of a "
              "whole step, replayed from a CUDA graph: benchmarks/bench_graph_step.py")
        for workload in args.workloads:
            channels, size, batch, quick_batch, quick_size = WORKLOADS[workload]
            if args.quick:
                batch, size = quick_batch, quick_size
            rows += measure_workload(args, workload, methods, batch, size)
        _print_steps(rows)
    if args.penalty_shapes:
        shapes = {"x".join(map(str, s)): s for s in args.penalty_shapes}
    else:  # full size: cheap
        shapes = {w: (WORKLOADS[w][2], WORKLOADS[w][0], WORKLOADS[w][1], WORKLOADS[w][1]) for w in args.workloads}
        if device.type == "cuda":
            shapes["256x3x64x64"] = (256, 3, 64, 64)
    use_compile = device.type == "cuda" if args.compile is None else args.compile
    meta = _meta(device, args)
    peak = args.peak_gbps or hbm_peak_gbps(meta["device_name"])
    meta.update(timing=args.timing, replays=args.replays, peak_gbps=peak)
    penalty_rows = penalty_isolated(device, shapes, max(args.repeats, 5), use_compile, args.timing, args.replays, peak)
    _print_penalty(penalty_rows)
    tag = device.type + ("_quick" if args.quick else "") + ("_penalty_only" if args.skip_steps else "")
    _write(rows, penalty_rows, meta, tag, args.out_dir or results_dir(device))
    return 0


if __name__ == "__main__":
    sys.exit(main())
