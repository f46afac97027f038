"""Shared benchmark helpers: timing with device sync, peak memory, environment record, writers."""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
#: benchmarks/results: cpu/ and cuda/ hold the benchmark outputs by the device they ran on,
#: compile/ the kernel compile report (tests/compile_kernels.py), logs/ the GPU suite's logs;
#: benchmarks/results/README.md indexes every file.
RESULTS = ROOT / "benchmarks" / "results"
DEVICE_FOLDERS = ("cpu", "cuda")


def results_dir(device) -> Path:
    """The default folder for a benchmark's outputs on ``device`` (a torch.device, or a string such
    as 'cpu', 'cuda' or 'cuda:1'): benchmarks/results/cpu or benchmarks/results/cuda."""
    kind = device.type if isinstance(device, torch.device) else torch.device(device).type
    if kind not in DEVICE_FOLDERS:
        raise ValueError(f"no results folder for device type {kind!r} (have: {', '.join(DEVICE_FOLDERS)})")
    return RESULTS / kind


def shown(path) -> str:
    """``path`` as a message should name it: relative to the repository root when inside it."""
    path = Path(path).resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(fn, device: torch.device, warmup: int = 3, repeats: int = 10) -> dict:
    """Median wall time (ms) of ``fn()`` and its peak extra memory (MiB, CUDA only)."""
    for _ in range(warmup):
        fn()
    sync(device)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync(device)
        times.append((time.perf_counter() - start) * 1e3)
    peak = None
    if device.type == "cuda":
        peak = (torch.cuda.max_memory_allocated(device) - base) / 2**20
    return {"ms": statistics.median(times), "ms_min": min(times), "peak_mib": peak}


def measure_round_robin(fns: dict, device: torch.device, warmup: int = 2, repeats: int = 10) -> dict:
    """Median wall time (ms) of each closure in ``fns``, timed in interleaved rounds so that load
    changes on a shared machine hit every entry alike. Closures that raise are reported, not timed."""
    errors, times = {}, {k: [] for k in fns}
    for key, fn in fns.items():
        try:
            for _ in range(warmup):
                fn()
        except Exception as exc:  # record, keep going
            errors[key] = f"{type(exc).__name__}: {exc}"[:200]
    live = [k for k in fns if k not in errors]
    for _ in range(repeats):
        for key in live:
            sync(device)
            start = time.perf_counter()
            fns[key]()
            sync(device)
            times[key].append((time.perf_counter() - start) * 1e3)
    out = {k: {"ms": statistics.median(times[k]), "ms_min": min(times[k])} for k in live}
    out.update({k: {"ms": None, "error": e} for k, e in errors.items()})
    return out


def environment(device: torch.device) -> dict:
    info = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "device_type": device.type,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    try:
        import triton

        info["triton"] = triton.__version__
    except Exception:  # pragma: no cover
        info["triton"] = None
    return info


def write_results(name: str, env: dict, rows: list[dict], folder: Path | None = None) -> Path:
    """Write ``<folder>/<name>.json`` (environment + rows) and ``<folder>/<name>.csv`` (rows);
    ``folder`` defaults to benchmarks/results/<device type> (cpu/ or cuda/), the device type taken
    from ``env['device_type']`` (what :func:`environment` records)."""
    folder = Path(folder) if folder is not None else results_dir(env["device_type"])
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.json"
    path.write_text(json.dumps({"environment": env, "rows": rows}, indent=2) + "\n")
    keys = sorted({k for row in rows for k in row})
    with open(folder / f"{name}.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)
    return path


def markdown_table(rows: list[dict], columns: list[str]) -> str:
    def fmt(v):
        if isinstance(v, float):
            return f"{v:.3g}"
        return "" if v is None else str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# Device time (CUDA graphs) and host time, measured apart
# ----------------------------------------------------------------------------------------------

#: HBM bandwidth (GB/s) by device-name fragment, most specific first: the roofline of
#: memory-bound kernels. Pass --peak-gbps for another card.
HBM_PEAK_GBPS = (("H200", 4800.0), ("H100 NVL", 3900.0), ("H100 PCIe", 2000.0), ("H100", 3350.0),
                 ("A100-SXM4-80GB", 2039.0), ("A100 80GB", 1935.0), ("A100", 1555.0))


def hbm_peak_gbps(device_name: str | None) -> float | None:
    """The HBM roofline of the named device (GB/s), or None when unknown."""
    for fragment, gbps in HBM_PEAK_GBPS:
        if device_name and fragment in device_name:
            return gbps
    return None


def host_enqueue_us(fn, device: torch.device, repeats: int = 10) -> float:
    """Median host time (us) to issue one call of ``fn``: the device is idle when each call
    starts (synchronized), and the clock stops when the call returns, before its work finishes.
    On a CPU device this is the whole call."""
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e6)
    sync(device)
    return statistics.median(times)


def device_time_cuda_graph(fn, device: torch.device, replays: int = 20, warmup: int = 3,
                           flush_mib: int = 256) -> dict:
    """Device time of ``fn``: captured once in a CUDA graph (after ``warmup`` eager calls on a
    side stream), then replayed ``replays`` times, each replay timed with CUDA events and preceded
    (outside the events) by a write of ``flush_mib`` MiB, so no replay finds its inputs in L2.
    Returns ``device_ms`` (median), ``device_ms_min``, or ``device_error`` when ``fn`` cannot be
    captured. The host is out of the loop: this is what the GPU spends on the case."""
    if device.type != "cuda":
        return {"device_ms": None, "device_error": "device time needs CUDA"}
    try:
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(warmup):
                fn()
        torch.cuda.current_stream(device).wait_stream(side)
        torch.cuda.synchronize(device)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            fn()
        flush = torch.empty(flush_mib * 2**20, dtype=torch.int8, device=device)
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(replays)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(replays)]
        graph.replay()  # first replay: uploads the graph
        for start, end in zip(starts, ends):
            flush.zero_()
            start.record()
            graph.replay()
            end.record()
        torch.cuda.synchronize(device)
        times = [s.elapsed_time(e) for s, e in zip(starts, ends)]
        del graph, flush
        return {"device_ms": statistics.median(times), "device_ms_min": min(times)}
    except Exception as exc:  # report, keep going
        try:
            torch.cuda.synchronize(device)
        except Exception:  # pragma: no cover - a broken capture may leave an error behind
            pass
        return {"device_ms": None, "device_error": f"{type(exc).__name__}: {exc}"[:300]}


def parse_shape(text: str) -> tuple[int, int, int, int]:
    """argparse type: 'NxCxHxW' -> (N, C, H, W), every size >= 1."""
    try:
        shape = tuple(int(v) for v in text.lower().split("x"))
    except ValueError:
        shape = ()
    if len(shape) != 4 or min(shape) < 1:
        raise argparse.ArgumentTypeError(f"shape must be NxCxHxW with positive sizes, got {text!r}")
    return shape


def device_timing_error(device, timing: str) -> str | None:
    """Why ``--device`` / ``--timing`` cannot run here (the message to print), or None: a CUDA
    device that is not visible, or device time (CUDA-graph replay) asked for off CUDA."""
    if device.type == "cuda" and not torch.cuda.is_available():
        return "--device cuda: no CUDA device is visible; use --device cpu"
    if timing == "device" and device.type != "cuda":
        return ("--timing device needs a CUDA device (device time is measured by replaying CUDA graphs); "
                "on a CPU use --timing host")
    return None
