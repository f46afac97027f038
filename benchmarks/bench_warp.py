"""Speed and memory of the warp against the strongest alternatives, measured in one run.

Cases (pixel-unit flow, zeros padding):
  fwd            out = warp(image, flow)
  fwd+bwd(flow)  ... backward to the flow only (attacks, the FGR penalty)
  fwd+bwd(both)  ... backward to image and flow
  dbl(jvp)       d ||grad_flow||^2 / d grad_output: the product the FGR penalty's training needs
Implementations:
  flowtriton[triton]  the Triton kernels (CUDA only; the CPU interpreter is not a speed path)
  flowtriton[torch]   the pure-torch reference (what CPU users run)
  grid_sample         pixel flow -> normalized grid + F.grid_sample (torch >= 2.12 double backward)
  compiled[torch]     torch.compile of the reference (with --compile; no double backward)
Ratios are "alternative time / flowtriton time" for the fastest flowtriton path on the device,
so > 1 means flowtriton is faster. On a GPU it also reports achieved memory bandwidth for
fwd+bwd(flow) (bytes that must move at least once / time) and its fraction of --peak-gbps.

    python benchmarks/bench_warp.py [--device cuda] [--quick] [--compile]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import environment, markdown_table, measure, measure_round_robin, write_results  # noqa: E402

import flowtriton  # noqa: E402
from flowtriton import reference  # noqa: E402
from flowtriton.ops.units import flow_to_grid  # noqa: E402

SHAPES = [(128, 3, 32, 32), (32, 3, 224, 224)]
PEAK_GBPS = {"H100": 3350.0, "H200": 4800.0, "A100": 2039.0}


def grid_sample_warp(image, flow, padding_mode="zeros"):
    return F.grid_sample(image, flow_to_grid(flow), mode="bilinear", padding_mode=padding_mode, align_corners=True)


def make_cases(impl, image, flow):
    """Closures for each case of one implementation."""
    go = torch.randn_like(image)

    def fwd():
        with torch.no_grad():
            impl(image, flow)

    def fwd_bwd_flow():
        f = flow.detach().requires_grad_(True)
        torch.autograd.grad(impl(image, f), f, go)

    def fwd_bwd_both():
        x = image.detach().requires_grad_(True)
        f = flow.detach().requires_grad_(True)
        torch.autograd.grad(impl(x, f), (x, f), go)

    def dbl():
        f = flow.detach().requires_grad_(True)
        g = go.detach().requires_grad_(True)
        (gf,) = torch.autograd.grad(impl(image, f), f, g, create_graph=True)
        torch.autograd.grad(gf.square().sum(), g)

    return {"fwd": fwd, "fwd+bwd(flow)": fwd_bwd_flow, "fwd+bwd(both)": fwd_bwd_both, "dbl(jvp)": dbl}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="fewer repeats (CPU smoke runs)")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile of the reference")
    parser.add_argument("--peak-gbps", type=float, default=None, help="memory bandwidth roofline, GB/s")
    parser.add_argument("--out", default=None, help="results name (default warp_<device type>)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (1 is steadier on a shared machine)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    repeats, warmup = (5, 1) if args.quick else (15, 3)
    env = environment(device)
    peak = args.peak_gbps or next((v for k, v in PEAK_GBPS.items() if k in env["device"]), None)

    impls = {"flowtriton[torch]": lambda x, f: flowtriton.warp(x, f, backend="torch"),
             "grid_sample": grid_sample_warp}
    if device.type == "cuda":
        impls = {"flowtriton[triton]": lambda x, f: flowtriton.warp(x, f, backend="triton"), **impls}
    if args.compile:
        impls["compiled[torch]"] = torch.compile(reference.warp, dynamic=False)
    ours = next(iter(impls))

    rows = []
    for shape in SHAPES:
        gen = torch.Generator(device="cpu").manual_seed(0)
        image = torch.rand(shape, generator=gen).to(device)
        flow = (torch.randn(shape[0], 2, *shape[2:], generator=gen) * 1.5).to(device)
        fns = {(name, case): fn for name, impl in impls.items()
               for case, fn in make_cases(impl, image, flow).items()
               if not (name.startswith("compiled") and case == "dbl(jvp)")}  # compile: no double backward
        results = measure_round_robin(fns, device, warmup=warmup, repeats=repeats)
        if device.type == "cuda":  # peak memory, one closure at a time
            for key, fn in fns.items():
                if results[key].get("ms") is not None:
                    results[key]["peak_mib"] = measure(fn, device, warmup=1, repeats=1)["peak_mib"]
        for (name, case), r in results.items():
            base = results.get((ours, case), {}).get("ms")
            row = {"shape": "x".join(map(str, shape)), "case": case, "impl": name, **r,
                   "time_vs_ours": (r["ms"] / base) if (r.get("ms") and base) else None}
            if device.type == "cuda" and case == "fwd+bwd(flow)" and r.get("ms"):
                n, c, h, w = shape
                # image read twice (fwd, bwd), flow read twice, out written, go read, grad_flow written
                moved = 4 * (2 * n * c * h * w + 2 * 2 * n * h * w + n * c * h * w + n * c * h * w + 2 * n * h * w)
                row["gbps"] = moved / (r["ms"] * 1e-3) / 1e9
                row["roofline_frac"] = row["gbps"] / peak if peak else None
            rows.append(row)

    path = write_results(args.out or f"warp_{device.type}", env, rows)
    print(f"device: {env['device']}  torch {env['torch']}  triton {env['triton']}")
    print(f"time_vs_ours = that implementation's time / {ours}'s time (> 1: {ours} is faster)\n")
    cols = ["shape", "case", "impl", "ms", "peak_mib", "time_vs_ours"]
    if device.type == "cuda":
        cols += ["gbps", "roofline_frac"]
    print(markdown_table(rows, cols))
    print(f"\nwrote benchmarks/results/{path.name}")


if __name__ == "__main__":
    main()
