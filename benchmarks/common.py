"""Shared benchmark helpers: timing with device sync, peak memory, environment record, writers."""

from __future__ import annotations

import csv
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"


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


def write_results(name: str, env: dict, rows: list[dict]) -> Path:
    """Write ``results/<name>.json`` (environment + rows) and ``results/<name>.csv`` (rows)."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps({"environment": env, "rows": rows}, indent=2) + "\n")
    keys = sorted({k for row in rows for k in row})
    with open(RESULTS / f"{name}.csv", "w", newline="") as fh:
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
