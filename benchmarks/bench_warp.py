"""Speed and memory of the warp against the strongest alternatives, measured in one run: device
time and host time apart.

Cases (pixel-unit flow):
  fwd            out = warp(image, flow)
  fwd+bwd(flow)  ... backward to the flow only (attacks, the FGR penalty)
  fwd+bwd(both)  ... backward to image and flow
  dbl(jvp)       d ||grad_flow||^2 / d grad_output: the product FGR-style penalties need
Implementations, each with the parameterization a user of it would keep:
  flowtriton[triton]  the Triton kernels (CUDA only; the CPU interpreter is not a speed path)
  flowtriton[torch]   the pure-torch reference (what CPU users run)
  grid_sample         F.grid_sample(image, base + offset): the identity grid built once per shape
                      and cached, the displacement kept as a normalized (N, H, W, 2) offset, so a
                      call is one add and the sampler (torch >= 2.12 has its double backward)
  compiled[torch]     torch.compile of the reference (with --compile; no double backward)
Which gradients each computes is in the ``grads`` column: with 'zeros' padding grid_sample runs
cuDNN's sampler, whose backward always computes the image gradient too (``flow+image``), while
flowtriton's flow-only backward skips it; with 'border' padding ATen's own kernel skips it as well.
fwd+bwd(both) is the like-for-like comparison.

Flows: 'iid' (independent normal displacements of 1.5 px per pixel: scattered reads) and 'smooth'
(a random 4x4 field of displacements up to 3 px, upsampled bilinearly: neighbouring pixels read
neighbouring pixels, as adversarial and augmentation flows do).

Timing, each labelled in the rows:
  device_ms   (CUDA) the case captured in a CUDA graph, replays timed with CUDA events, L2 flushed
              before each: what the GPU spends, with the host out of the loop
  eager_ms    wall time of one eager call with a synchronize on each side (host and device)
  enqueue_us  host time to issue one eager call (the device idle at the start, no sync at the end)
Bandwidth (CUDA): ``gbps`` = bytes the case must move at least (each kernel reading its inputs and
writing its outputs once; float32) / device time, and ``roofline_frac`` = gbps / the HBM peak
(H100 3.35 TB/s, H200 4.8 TB/s, from the device name; --peak-gbps to override). On a CPU the
device-time columns are skipped (``--timing device`` is refused there).

    python benchmarks/bench_warp.py --device cuda [--quick] [--compile]
    python benchmarks/bench_warp.py --device cpu --threads 1

Writes benchmarks/results/<device type>/warp_<device type>.json and .csv (cpu/ or cuda/; --out and
--out-dir to choose), with the device and versions.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (parse_shape, device_time_cuda_graph, device_timing_error, environment, hbm_peak_gbps,  # noqa: E402
                    host_enqueue_us, markdown_table, measure, measure_round_robin, results_dir, shown, write_results)

import flowtriton  # noqa: E402
from flowtriton import reference  # noqa: E402
from flowtriton.ops.units import identity_grid  # noqa: E402

SHAPES = ("128x3x32x32", "256x3x64x64", "32x3x224x224")
CPU_SHAPES = ("128x3x32x32", "32x3x224x224")
CASES = ("fwd", "fwd+bwd(flow)", "fwd+bwd(both)", "dbl(jvp)")
FLOWS = ("iid", "smooth")
PADDINGS = ("zeros", "border")



def make_flow(kind: str, n: int, h: int, w: int, gen: torch.Generator) -> torch.Tensor:
    """(N, 2, H, W) pixel flow: i.i.d. normal (sd 1.5 px) or a smooth field (up to 3 px)."""
    if kind == "iid":
        return torch.randn(n, 2, h, w, generator=gen) * 1.5
    coarse = (torch.rand(n, 2, 4, 4, generator=gen) * 2 - 1) * 3.0
    return F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=True)


class GridSampleWarp:
    """grid_sample as its users call it: identity grid cached per (shape, dtype, device), the
    displacement a normalized (N, H, W, 2) offset, one add per call."""

    def __init__(self):
        self._base = {}

    def base(self, n, h, w, like):
        key = (n, h, w, like.dtype, like.device)
        if key not in self._base:
            self._base[key] = identity_grid(n, h, w, dtype=like.dtype, device=like.device)
        return self._base[key]

    def __call__(self, image, offset, padding_mode):
        n, _, h, w = image.shape
        return F.grid_sample(image, self.base(n, h, w, image) + offset, mode="bilinear",
                             padding_mode=padding_mode, align_corners=True)


def pixels_to_offset(flow: torch.Tensor) -> torch.Tensor:
    """(N, 2, H, W) pixel flow -> grid_sample's (N, H, W, 2) normalized offset (the same warp)."""
    _, _, h, w = flow.shape
    scale = torch.tensor([2.0 / max(w - 1, 1), 2.0 / max(h - 1, 1)], dtype=flow.dtype)
    return (flow.permute(0, 2, 3, 1) * scale).contiguous()


def make_cases(impl, image, flow, padding):
    """Closures for each case of one implementation (``flow`` in that implementation's layout)."""
    gen = torch.Generator().manual_seed(1)
    go = torch.randn(image.shape, generator=gen).to(image.device, image.dtype)

    def fwd():
        with torch.no_grad():
            impl(image, flow, padding)

    def fwd_bwd_flow():
        f = flow.detach().requires_grad_(True)
        torch.autograd.grad(impl(image, f, padding), f, go)

    def fwd_bwd_both():
        x = image.detach().requires_grad_(True)
        f = flow.detach().requires_grad_(True)
        torch.autograd.grad(impl(x, f, padding), (x, f), go)

    def dbl():
        f = flow.detach().requires_grad_(True)
        g = go.detach().requires_grad_(True)
        (gf,) = torch.autograd.grad(impl(image, f, padding), f, g, create_graph=True)
        torch.autograd.grad(gf.square().sum(), g)

    return {"fwd": fwd, "fwd+bwd(flow)": fwd_bwd_flow, "fwd+bwd(both)": fwd_bwd_both, "dbl(jvp)": dbl}


def grads_computed(impl: str, case: str, padding: str, device_type: str) -> str:
    """Which gradients the case makes the implementation compute."""
    if case == "fwd":
        return "-"
    if case in ("fwd+bwd(both)", "dbl(jvp)"):
        return "flow+image" if case == "fwd+bwd(both)" else "flow, then d/d grad_out"
    if impl == "grid_sample" and padding == "zeros" and device_type == "cuda":
        return "flow+image (cuDNN computes both)"
    return "flow"


def min_bytes(case: str, shape, element: int = 4) -> int | None:
    """Bytes each kernel of the case must read and write at least (float32), summed."""
    n, c, h, w = shape
    img, flow = n * c * h * w * element, n * 2 * h * w * element
    fwd = 2 * img + flow                   # read image + flow, write out
    if case == "fwd":
        return fwd
    if case == "fwd+bwd(flow)":
        return fwd + 2 * img + 2 * flow    # read image, flow, grad_out; write grad_flow
    if case == "fwd+bwd(both)":
        return fwd + 3 * img + 2 * flow    # ... and write grad_image
    return None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="fewer repeats, 'zeros' padding only")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile of the reference")
    parser.add_argument("--timing", choices=["both", "device", "host"], default="both",
                        help="device: CUDA-graph replays only (CUDA); host: eager wall and enqueue time; both")
    parser.add_argument("--shapes", nargs="+", type=parse_shape, default=None, metavar="NxCxHxW",
                        help=f"default {' '.join(SHAPES)} (CPU: {' '.join(CPU_SHAPES)})")
    parser.add_argument("--flows", nargs="+", choices=FLOWS, default=list(FLOWS))
    parser.add_argument("--paddings", nargs="+", choices=reference.PADDING_MODES, default=None,
                        help="default zeros border (quick: zeros)")
    parser.add_argument("--cases", nargs="+", choices=CASES, default=list(CASES))
    parser.add_argument("--repeats", type=int, default=None, help="eager rounds (default 15, quick 5)")
    parser.add_argument("--replays", type=int, default=None, help="CUDA-graph replays (default 20, quick 10)")
    parser.add_argument("--peak-gbps", type=float, default=None, help="memory bandwidth roofline, GB/s")
    parser.add_argument("--out", default=None, help="results name (default warp_<device type>)")
    parser.add_argument("--out-dir", default=None,
                        help="folder for <name>.json and .csv (default benchmarks/results/<device type>)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (1 is steadier on a shared machine)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    problem = device_timing_error(device, args.timing)
    if problem:
        print(problem)
        return 2
    device_timing = device.type == "cuda" and args.timing in ("both", "device")
    host_timing = args.timing in ("both", "host")
    if device.type != "cuda" and args.timing == "both":
        print("device time: skipped (needs CUDA); host time only")
    if args.threads:
        torch.set_num_threads(args.threads)
    repeats = args.repeats or (5 if args.quick else 15)
    replays = args.replays or (10 if args.quick else 20)
    shapes = args.shapes or [parse_shape(s) for s in (SHAPES if device.type == "cuda" else CPU_SHAPES)]
    paddings = args.paddings or (["zeros"] if args.quick else list(PADDINGS))
    env = environment(device)
    peak = args.peak_gbps or hbm_peak_gbps(env["device"])
    env.update(timing=args.timing, repeats=repeats, replays=replays, peak_gbps=peak)

    grid_sample = GridSampleWarp()
    impls = {"flowtriton[torch]": lambda x, f, p: flowtriton.warp(x, f, p, backend="torch"),
             "grid_sample": grid_sample}
    if device.type == "cuda":
        impls = {"flowtriton[triton]": lambda x, f, p: flowtriton.warp(x, f, p, backend="triton"), **impls}
    if args.compile:
        compiled = torch.compile(reference.warp, dynamic=False)
        impls["compiled[torch]"] = lambda x, f, p: compiled(x, f, p)
    ours = next(iter(impls))

    rows = []
    for shape in shapes:
        for flow_kind in args.flows:
            gen = torch.Generator(device="cpu").manual_seed(0)
            image = torch.rand(shape, generator=gen).to(device)
            flow_px = make_flow(flow_kind, shape[0], shape[2], shape[3], gen)
            flows = {"pixels": flow_px.to(device), "offset": pixels_to_offset(flow_px).to(device)}
            for padding in paddings:
                fns = {(name, case): fn for name, impl in impls.items()
                       for case, fn in make_cases(impl, image, flows["offset" if name == "grid_sample" else "pixels"],
                                                  padding).items()
                       if case in args.cases and not (name.startswith("compiled") and case == "dbl(jvp)")}
                results = {key: {} for key in fns}
                if host_timing:
                    results = measure_round_robin(fns, device, warmup=2, repeats=repeats)
                    for key, fn in fns.items():
                        if results[key].get("ms") is None:
                            continue
                        results[key]["enqueue_us"] = host_enqueue_us(fn, device, repeats=repeats)
                        if device.type == "cuda":
                            results[key]["peak_mib"] = measure(fn, device, warmup=1, repeats=1)["peak_mib"]
                    results = {k: {("eager_ms" if m == "ms" else "eager_ms_min" if m == "ms_min" else m): v
                                   for m, v in r.items()} for k, r in results.items()}
                if device_timing:
                    for key, fn in fns.items():
                        if results[key].get("error"):
                            continue
                        results[key].update(device_time_cuda_graph(fn, device, replays=replays))
                for (name, case), r in results.items():
                    row = {"shape": "x".join(map(str, shape)), "flow": flow_kind, "padding": padding, "case": case,
                           "impl": name, "grads": grads_computed(name, case, padding, device.type), **r}
                    clock = "device_ms" if device_timing else "eager_ms"
                    base = results.get((ours, case), {}).get(clock)
                    row["time_vs_ours"] = (r[clock] / base) if (r.get(clock) and base) else None
                    row["time_vs_ours_clock"] = clock
                    moved = min_bytes(case, shape)
                    if r.get("device_ms") and moved:
                        row["gbps"] = moved / (r["device_ms"] * 1e-3) / 1e9
                        row["roofline_frac"] = row["gbps"] / peak if peak else None
                    rows.append(row)

    path = write_results(args.out or f"warp_{device.type}", env, rows,
                         Path(args.out_dir) if args.out_dir else results_dir(device))
    print(f"device: {env['device']}  torch {env['torch']}  triton {env['triton']}  HBM peak "
          f"{peak or 'unknown'} GB/s")
    clock = "device_ms (CUDA-graph replay)" if device_timing else "eager_ms (wall, synchronized)"
    print(f"time_vs_ours = that implementation's time / {ours}'s, on {clock} (> 1: {ours} is faster)\n")
    cols = ["shape", "flow", "padding", "case", "impl", "grads"]
    if device_timing:
        cols += ["device_ms", "gbps", "roofline_frac"]
    if host_timing:
        cols += ["eager_ms", "enqueue_us"]
    cols += ["time_vs_ours"]
    if device.type == "cuda" and host_timing:
        cols += ["peak_mib"]
    print(markdown_table(rows, cols))
    errors = [r for r in rows if r.get("error") or r.get("device_error")]
    for r in errors:
        print(f"  {r['shape']} {r['flow']} {r['padding']} {r['case']} {r['impl']}: "
              f"{r.get('error') or r.get('device_error')}")
    print(f"\nwrote {shown(path)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
