"""Compile every Triton kernel specialization the launchers build at run time, to real GPU binaries,
on a machine without a GPU; report registers, spills and shared memory.

Run in a process WITHOUT TRITON_INTERPRET (the interpreter replaces @triton.jit functions).
The launchers themselves are driven, on CPU tensors, for every op variant, dtype and padding
mode / scheme, at the shapes users run (28x28 with 1 channel, 32x32 and 224x224 with 3 channels,
an odd shape with unaligned pointers); ``flowtriton.kernels.utils.recording_launches`` records each
launch instead of running it, and each argument is specialized exactly as Triton's JIT does
(integers equal to 1 become constants, integers divisible by 16 and 16-byte aligned pointers get
the divisibility hint), so the cubins built here are the ones a GPU would JIT. ``ptxas -v`` on the
sm_90 PTX gives the register, spill and shared-memory figures; any spill fails the check.

    python tests/compile_kernels.py [--arch 80 90] [--json [PATH]]
    python tests/compile_kernels.py --arch 90 --json   # the committed report

``--json`` writes the sm_90 figures per kernel and dtype to PATH; a bare ``--json`` writes the
committed report, benchmarks/results/compile/kernels_sm90.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPORT = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "compile" / "kernels_sm90.json"
SHAPES = {  # name -> (N, C, H, W, pointer offset in elements)
    "mnist-28x28x1": (2, 1, 28, 28, 0),
    "cifar-32x32x3": (2, 3, 32, 32, 0),
    "imagenet-224x224x3": (1, 3, 224, 224, 0),
    "odd-5x7x2-unaligned": (2, 2, 5, 7, 1),
}


def _tensor(shape, dtype, offset):
    import torch

    flat = torch.zeros(int(torch.tensor(shape).prod()) + offset, dtype=dtype)
    return flat[offset:].view(shape)


def drive_launchers(dtypes):
    """Run every launcher variant under ``recording_launches``; return the records."""
    import torch

    from flowtriton.conventions import PADDING_MODES, SCHEMES
    from flowtriton.kernels import flow_gradient as kfg
    from flowtriton.kernels import warp as kw
    from flowtriton.kernels.utils import recording_launches

    with recording_launches() as records:
        for n, c, h, w, off in SHAPES.values():
            for dtype in dtypes:
                image = _tensor((n, c, h, w), dtype, off)
                other = _tensor((n, c, h, w), dtype, off)
                flow = _tensor((n, 2, h, w), dtype, off)
                tangent = _tensor((n, 2, h, w), dtype, off)
                for mode in PADDING_MODES:
                    kw.warp_gather(flow, mode, value_src=image)
                    kw.warp_gather(flow, mode, tangent_src=image, tangent=tangent)
                    kw.warp_gather(flow, mode, value_src=other, tangent_src=image, tangent=tangent)
                    kw.warp_grad_flow(flow, other, mode, src=image)
                    kw.warp_grad_flow(flow, other, mode, cross_src=image, tangent=tangent)
                    kw.warp_grad_flow(flow, other, mode, src=image, cross_src=other, tangent=tangent)
                    kw.warp_scatter(flow, other, mode)
                    kw.warp_scatter(flow, other, mode, tangent=tangent)
                coefs = (None, torch.ones(n, dtype=dtype), torch.ones((), dtype=dtype).expand(n))
                for scheme in SCHEMES:
                    kfg.penalty(image, other, scheme, (13.5, 13.5))
                    kfg.flow_gradient(image, other, scheme, (1.0, 1.0))
                    for coef in coefs:
                        kfg.flow_jvp(image, scheme, field=flow, coef=coef)
                        kfg.flow_jvp(image, scheme, grad_image=other, coef=coef, coef_scale=2.0)
                        kfg.image_vjp(other, flow, scheme, coef=coef, coef_scale=2.0)
                        if coef is not None:  # the penalty's backward: the same kernel, its own entry
                            kfg.penalty_grad(image, other, coef, scheme)
    return records


def specialize(kernel, args, constexprs):
    """(signature, constexprs, attrs) as Triton's JIT derives them from these arguments."""
    from triton.backends.compiler import BaseBackend
    from triton.runtime.jit import native_specialize_impl

    params = [p for p in kernel.params if not p.is_constexpr]
    assert len(params) == len(args), (kernel.__name__, len(params), len(args))
    signature, consts, attrs = {}, dict(constexprs), {}
    for index, p in enumerate(kernel.params):
        if p.is_constexpr:
            signature[p.name] = "constexpr"
    for p, value in zip(params, args):
        kind, hint = native_specialize_impl(BaseBackend, value, False, True, True)
        signature[p.name] = kind
        if kind == "constexpr":
            consts[p.name] = hint
        elif isinstance(hint, str) and hint:
            attrs[(kernel.arg_names.index(p.name),)] = BaseBackend.parse_attr(hint)
    ordered = {p.name: signature[p.name] for p in kernel.params}
    return ordered, consts, attrs


def ptxas_stats(ptx: str, arch: int) -> dict:
    """Registers, spill bytes and shared memory of the PTX's kernel, from ``ptxas -v``."""
    from triton.backends.nvidia.compiler import get_ptxas

    ptxas = get_ptxas(arch).path
    gpu = f"sm_{arch}a" if arch >= 90 else f"sm_{arch}"
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "k.ptx"
        src.write_text(ptx)
        proc = subprocess.run([ptxas, "-v", f"--gpu-name={gpu}", str(src), "-o", str(Path(tmp) / "k.cubin")],
                              capture_output=True, text=True)
    text = proc.stdout + proc.stderr
    if proc.returncode != 0:
        raise RuntimeError(f"ptxas failed: {text[-500:]}")
    regs = re.search(r"Used (\d+) registers", text)
    stores = re.search(r"(\d+) bytes spill stores", text)
    loads = re.search(r"(\d+) bytes spill loads", text)
    smem = re.search(r"(\d+) bytes smem", text)
    return {"registers": int(regs.group(1)) if regs else None,
            "spill_stores": int(stores.group(1)) if stores else 0,
            "spill_loads": int(loads.group(1)) if loads else 0,
            "ptxas_smem": int(smem.group(1)) if smem else 0}


_WORK: list = []  # the distinct specializations, shared with forked workers


def _compile_one(job):
    """Compile specialization ``index`` for ``arch``: (label, kernel, dtype, arch, stats, error)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    index, arch = job
    kernel, signature, consts, attrs, num_warps = _WORK[index]
    dtype = next(v for k, v in signature.items() if k.endswith("_ptr")).lstrip("*")
    label = f"{kernel.__name__} {dtype} sm_{arch} {sorted(consts.items())} hints={sorted(k[0] for k in attrs)}"
    try:
        compiled = triton.compile(ASTSource(fn=kernel, signature=signature, constexprs=consts, attrs=attrs),
                                  target=GPUTarget("cuda", arch, 32), options={"num_warps": num_warps})
        assert len(compiled.asm["cubin"]) > 0, "empty cubin"
        info = None
        if arch == 90:
            info = ptxas_stats(compiled.asm["ptx"], arch)
            info["shared"] = int(compiled.metadata.shared)
        return label, kernel.__name__, dtype, arch, info, None
    except Exception as exc:  # report every failure, not just the first
        cause = exc.__cause__ or exc
        return label, kernel.__name__, dtype, arch, None, f"{type(cause).__name__}: {str(cause)[:300]}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, nargs="+", default=[80, 90])
    parser.add_argument("--dtypes", nargs="+", default=["float32", "float64", "float16", "bfloat16"])
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="compiler processes")
    parser.add_argument("--json", type=Path, nargs="?", const=REPORT, default=None, metavar="PATH",
                        help="write per-kernel, per-dtype sm_90 registers/spills/shared memory here "
                             "(bare --json: benchmarks/results/compile/kernels_sm90.json)")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        print("unset TRITON_INTERPRET to compile kernels", file=sys.stderr)
        return 2
    import torch
    import triton

    dtypes = [getattr(torch, name) for name in args.dtypes]
    start = time.time()
    unique = {}
    for kernel, kargs, constexprs, num_warps in drive_launchers(dtypes):
        signature, consts, attrs = specialize(kernel, kargs, constexprs)
        key = (kernel.__name__, json.dumps(signature), json.dumps(sorted(consts.items())),
               json.dumps(sorted((k[0], v) for k, v in attrs.items())), num_warps)
        unique.setdefault(key, (kernel, signature, consts, attrs, num_warps))
    print(f"{len(unique)} distinct specializations from the launchers")

    jobs = [(index, arch) for index in range(len(unique)) for arch in args.arch]
    _WORK[:] = list(unique.values())
    workers = max(1, min(args.jobs, len(jobs)))
    if workers > 1:
        import multiprocessing

        with multiprocessing.get_context("fork").Pool(workers) as pool:
            results = pool.map(_compile_one, jobs, chunksize=4)
    else:
        results = [_compile_one(job) for job in jobs]

    failures, count, stats = [], 0, {}
    for label, name, dtype, arch, info, error in results:
        if error is not None:
            failures.append(f"{label}: {error}")
            continue
        count += 1
        if arch != 90:
            continue
        entry = stats.setdefault(name, {}).setdefault(dtype, {"specializations": 0, "max_registers": 0,
                                                              "spill_bytes": 0, "max_shared": 0})
        entry["specializations"] += 1
        entry["max_registers"] = max(entry["max_registers"], info["registers"] or 0)
        entry["spill_bytes"] += info["spill_stores"] + info["spill_loads"]
        entry["max_shared"] = max(entry["max_shared"], info["shared"], info["ptxas_smem"])
        if info["spill_stores"] or info["spill_loads"]:
            failures.append(f"{label}: spills {info}")
    for line in failures:
        print("FAILED", line)
    total_spill = sum(e["spill_bytes"] for per in stats.values() for e in per.values())
    print(f"compiled {count} cubins for sm_{'/sm_'.join(map(str, args.arch))} in {time.time() - start:.1f}s "
          f"with triton {triton.__version__}, spilled bytes {total_spill}, {len(failures)} failures")
    if 90 in args.arch:
        for name, per in sorted(stats.items()):
            print(f"  {name}: " + ", ".join(f"{d} {e['max_registers']} regs" for d, e in sorted(per.items())))
    if args.json is not None:
        record = {"target": "sm_90 (cuda, 32 threads per warp)", "triton": triton.__version__,
                  "torch": torch.__version__, "python": platform.python_version(),
                  "shapes": {k: list(v[:4]) for k, v in SHAPES.items()},
                  "note": "per kernel and dtype, over every specialization the launchers build: the "
                          "largest register count, total spill bytes (stores + loads), the largest "
                          "shared memory in bytes",
                  "kernels": stats}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
        root, path = REPORT.parents[3], args.json.resolve()
        print(f"wrote {path.relative_to(root) if path.is_relative_to(root) else path}")
    return 1 if failures or count == 0 else 0


if __name__ == "__main__":
    sys.exit(main())
