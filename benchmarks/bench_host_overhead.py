"""Host time of one call of each public op on the Triton path, beside two floors measured in the
same run.

On a machine without a GPU (the default, ``--device cpu``) Triton's real JIT launch path runs
against a stand-in driver (``benchmarks/standin_driver.py``): argument binding, the specialization
key, the kernel-cache lookup, the grid and the Python half of triton's ``CudaLauncher`` all run;
compilation and the C launch (``cuLaunchKernelEx``) are stubbed. CPU tensors stand in for CUDA
tensors, so what is timed is everything flowtriton and Triton do in Python around a launch. The
interpreter must be off (TRITON_INTERPRET replaces this path): the script unsets it for itself.
With ``--device cuda`` everything is real (small tensors, so the GPU is never the bottleneck).

Floors (same process, same round-robin):
  launch    a bare JIT launch of a tiny kernel: ``tiny[(1,)](x, n, BLOCK=16)``
  autograd  an autograd.Function whose forward allocates its output (``empty_like``) and whose
            backward passes the gradient through, then ``torch.autograd.grad``
Cases (shape --shape, backend='triton'; inputs need no gradient unless said):
  warp                     flowtriton.warp forward
  warp_fwd_bwd_flow        warp forward + autograd.grad w.r.t. the flow (2 kernels)
  penalty_fwd_bwd          flow_gradient_penalty forward + autograd.grad w.r.t. grad_image (2 kernels)
  flow_gradient            flow_gradient forward
  flow_jvp                 flow_jvp forward
Ratios: forward-only cases against the launch floor, fwd+bwd cases against autograd + 2 launches;
each is the median over rounds of the ratio within a round (load changes between rounds cancel).
Targets (issue 19, 2-core CPU machine): warp <= 1.5, warp_fwd_bwd_flow and penalty_fwd_bwd <= 1.6.

    python benchmarks/bench_host_overhead.py [--device cpu|cuda] [--before benchmarks/results/cpu/old.json]

Writes benchmarks/results/<device>/host_overhead_<device>.json (cpu/ or cuda/; --out to choose):
environment, floors, cases, ratios, targets; with --before, the earlier run's cases beside the new
ones.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"  # the output goes to its cpu/ or cuda/ subfolder, by --device
TARGETS = {"warp": 1.5, "warp_fwd_bwd_flow": 1.6, "penalty_fwd_bwd": 1.6}
CASES = ("warp", "warp_fwd_bwd_flow", "penalty_fwd_bwd", "flow_gradient", "flow_jvp")
FWD_BWD = ("warp_fwd_bwd_flow", "penalty_fwd_bwd")

TINY_SRC = '''
import triton
import triton.language as tl


@triton.jit
def tiny(x_ptr, n, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    tl.store(x_ptr + offs, 0.0, mask=offs < n)
'''


def _tiny_kernel():
    """The floor's kernel, from a file of its own (``@triton.jit`` reads its source)."""
    import importlib.util
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="ft-tiny-"))
    (folder / "ft_tiny_kernel.py").write_text(TINY_SRC)
    spec = importlib.util.spec_from_file_location("ft_tiny_kernel", folder / "ft_tiny_kernel.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.tiny


def build(device: str, shape: tuple[int, int, int, int]) -> dict:
    """Closures: the two floors and every case."""
    import torch

    import flowtriton

    tiny = _tiny_kernel()
    n, c, h, w = shape
    gen = torch.Generator().manual_seed(0)
    image = torch.rand(shape, generator=gen).to(device)
    flow = (torch.randn(n, 2, h, w, generator=gen) * 1.5).to(device)
    other = torch.randn(shape, generator=gen).to(device)
    go = torch.randn(shape, generator=gen).to(device)
    ones = torch.ones(n, device=device)
    scratch = torch.zeros(16, device=device)
    flow_leaf = flow.clone().requires_grad_(True)
    grad_leaf = other.clone().requires_grad_(True)
    x_leaf = torch.zeros(shape, device=device, requires_grad=True)

    class Empty(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return torch.empty_like(x)

        @staticmethod
        def backward(ctx, grad):
            return grad

    def floor_launch():
        tiny[(1,)](scratch, 16, BLOCK=16)

    def floor_autograd():
        torch.autograd.grad(Empty.apply(x_leaf), x_leaf, go)

    def warp():
        flowtriton.warp(image, flow, backend="triton")

    def warp_fwd_bwd_flow():
        torch.autograd.grad(flowtriton.warp(image, flow_leaf, backend="triton"), flow_leaf, go)

    def penalty_fwd_bwd():
        torch.autograd.grad(flowtriton.flow_gradient_penalty(image, grad_leaf, backend="triton"), grad_leaf, ones)

    def flow_gradient():
        flowtriton.flow_gradient(image, other, backend="triton")

    def flow_jvp():
        flowtriton.flow_jvp(image, flow, backend="triton")

    return {"floor_launch": floor_launch, "floor_autograd": floor_autograd, "warp": warp,
            "warp_fwd_bwd_flow": warp_fwd_bwd_flow, "penalty_fwd_bwd": penalty_fwd_bwd,
            "flow_gradient": flow_gradient, "flow_jvp": flow_jvp}


def time_round_robin(fns: dict, number: int, repeats: int, sync=None) -> dict:
    """Microseconds per call of each closure: ``repeats`` rounds, each timing ``number`` calls of
    every closure in turn (so load changes on a shared machine hit all alike). Returns each
    closure's per-round samples. Garbage collection is off while timing, as in ``timeit``."""
    for fn in fns.values():  # warm-up: compile (stubbed), caches, lazy imports
        for _ in range(max(3, number // 10)):
            fn()
    if sync:
        sync()
    samples = {k: [] for k in fns}
    enabled = gc.isenabled()
    gc.disable()
    try:
        for _ in range(repeats):
            for key, fn in fns.items():
                start = time.perf_counter()
                for _ in range(number):
                    fn()
                if sync:
                    sync()
                samples[key].append((time.perf_counter() - start) / number * 1e6)
    finally:
        if enabled:
            gc.enable()
    return samples


def summarize(samples: dict) -> dict:
    """Medians over the rounds; each ratio is the median over rounds of (case / floor) measured in
    the same round, so a load change between rounds cancels out."""
    launch, autograd = samples["floor_launch"], samples["floor_autograd"]
    cases = {}
    for name in CASES:
        us = samples[name]
        fwd_bwd = name in FWD_BWD
        floor = [a + 2 * b for a, b in zip(autograd, launch)] if fwd_bwd else launch
        ratio = statistics.median(u / f for u, f in zip(us, floor))
        row = {"us_per_call": round(statistics.median(us), 3), "us_min": round(min(us), 3),
               "ratio": round(ratio, 3), "ratio_to": "autograd + 2 launches" if fwd_bwd else "launch",
               "floor_us": round(statistics.median(floor), 3)}
        if name in TARGETS:
            row["target"] = TARGETS[name]
            row["pass"] = bool(ratio <= TARGETS[name])
        cases[name] = row
    floors = {"launch_us": round(statistics.median(launch), 3), "launch_us_min": round(min(launch), 3),
              "autograd_us": round(statistics.median(autograd), 3), "autograd_us_min": round(min(autograd), 3)}
    return {"floors": floors, "cases": cases, "targets_met": all(cases[k]["pass"] for k in TARGETS)}


def _source() -> dict:
    """The commit of the flowtriton tree being timed, and whether it had uncommitted changes."""
    import subprocess

    import flowtriton

    root = Path(flowtriton.__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except Exception:  # no git: not recorded
        return {"commit": None, "modified": None}
    return {"commit": commit or None, "modified": bool(dirty) if commit else None}


def environment(device: str, args) -> dict:
    import torch
    import triton

    name = torch.cuda.get_device_name() if device == "cuda" else (platform.processor() or platform.machine())
    return {"device": device, "device_name": name,
            "launch_path": ("real driver and GPU" if device == "cuda" else
                            "Triton JIT launch path with a stand-in driver (compile and C launch stubbed), "
                            "CPU tensors, TRITON_INTERPRET unset"),
            "torch": torch.__version__, "triton": triton.__version__, "python": platform.python_version(),
            "cpus": os.cpu_count(), "threads": torch.get_num_threads(), "shape": list(args.shape),
            "number": args.number, "repeats": args.repeats,
            "loadavg_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
            "flowtriton_source": _source(),
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def print_table(result: dict, before: dict | None = None) -> None:
    f = result["floors"]
    print(f"floors: bare JIT launch {f['launch_us']:.2f} us (min {f['launch_us_min']:.2f}), "
          f"empty autograd.Function fwd + autograd.grad {f['autograd_us']:.2f} us (min {f['autograd_us_min']:.2f})")
    head = "| case | us/call | min | floor us | ratio | target |"
    if before:
        head += " before us/call | before ratio |"
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    for name, r in result["cases"].items():
        target = f"<= {r['target']} {'PASS' if r['pass'] else 'FAIL'}" if "target" in r else ""
        line = (f"| {name} | {r['us_per_call']:.2f} | {r['us_min']:.2f} | {r['floor_us']:.2f} | {r['ratio']:.2f} "
                f"| {target} |")
        if before:
            b = before["cases"].get(name, {})
            line += f" {b.get('us_per_call', float('nan')):.2f} | {b.get('ratio', float('nan')):.2f} |"
        print(line)
    print("targets met" if result["targets_met"] else "targets NOT met")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                        help="cpu: stand-in driver, no GPU needed (default); cuda: the real thing")
    parser.add_argument("--shape", type=int, nargs=4, default=(8, 3, 32, 32), metavar=("N", "C", "H", "W"))
    parser.add_argument("--number", type=int, default=500, help="calls per timed round")
    parser.add_argument("--repeats", type=int, default=21, help="timed rounds (median reported)")
    parser.add_argument("--before", default=None, help="an earlier result JSON to show beside this one")
    parser.add_argument("--label", default=None, help="free text stored with the result (e.g. 'before', a commit)")
    parser.add_argument("--out", default=None,
                        help="output JSON (default benchmarks/results/<device>/host_overhead_<device>.json)")
    args = parser.parse_args(argv)
    if args.number < 1 or args.repeats < 1:
        parser.error("--number and --repeats must be >= 1")
    if min(args.shape) < 1:
        parser.error("--shape needs four positive sizes")

    if os.environ.pop("TRITON_INTERPRET", "0") not in ("", "0"):
        print("note: TRITON_INTERPRET unset for this process (the interpreter replaces the launch path)")
    import torch

    sync = None
    if args.device == "cpu":
        sys.path.insert(0, str(HERE))
        import standin_driver

        standin_driver.install()
        import flowtriton.backend

        # 'triton' on CPU tensors: the stand-in driver takes the place of a GPU.
        flowtriton.backend.triton_interpreted = lambda: True
    else:
        if not torch.cuda.is_available():
            print("--device cuda: no CUDA device visible; run with --device cpu (stand-in driver)")
            return 2
        sync = torch.cuda.synchronize

    fns = build(args.device, tuple(args.shape))
    samples = time_round_robin(fns, args.number, args.repeats, sync)
    result = {"environment": environment(args.device, args), "label": args.label, **summarize(samples)}
    before = None
    if args.before:
        before = json.loads(Path(args.before).read_text())
        result["before"] = {"label": before.get("label"), "environment": before.get("environment"),
                            "floors": before.get("floors"), "cases": before.get("cases"),
                            "targets_met": before.get("targets_met")}
        result["speedup_vs_before"] = {
            k: round(before["cases"][k]["us_per_call"] / v["us_per_call"], 2)
            for k, v in result["cases"].items() if k in before.get("cases", {})}
    out = Path(args.out) if args.out else RESULTS / args.device / f"host_overhead_{args.device}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    env = result["environment"]
    print(f"device: {env['device_name']} ({env['launch_path']}); torch {env['torch']}, triton {env['triton']}, "
          f"shape {tuple(args.shape)}, {args.repeats} rounds x {args.number} calls")
    print_table(result, before)
    root = HERE.parent
    print(f"wrote {out.resolve().relative_to(root) if out.resolve().is_relative_to(root) else out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
