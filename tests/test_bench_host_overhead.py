"""benchmarks/bench_host_overhead.py runs on a CPU (Triton's real JIT launch path against the
stand-in driver, the interpreter off) and writes the documented JSON: a smoke run with tiny repeat
counts (its numbers are not judged here), the --before comparison, argument errors, and the
committed result's schema."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "bench_host_overhead.py"
CASES = {"warp", "warp_fwd_bwd_flow", "penalty_fwd_bwd", "flow_gradient", "flow_jvp"}
TARGETS = {"warp": 1.5, "warp_fwd_bwd_flow": 1.6, "penalty_fwd_bwd": 1.6}


def _run(*args, interpret="1"):
    env = dict(os.environ, TRITON_INTERPRET=interpret)  # the script must switch the interpreter off itself
    return subprocess.run([sys.executable, str(SCRIPT), *args], env=env, capture_output=True, text=True,
                          timeout=300, cwd=ROOT)


def _check_schema(result):
    env = result["environment"]
    for key in ("device", "device_name", "launch_path", "torch", "triton", "python", "cpus", "shape", "number",
                "repeats", "flowtriton_source", "time"):
        assert key in env, key
    floors = result["floors"]
    assert floors["launch_us"] > 0 and floors["autograd_us"] > 0
    assert floors["launch_us_min"] <= floors["launch_us"] and floors["autograd_us_min"] <= floors["autograd_us"]
    assert set(result["cases"]) == CASES
    for name, row in result["cases"].items():
        assert row["us_per_call"] > 0 and row["us_min"] <= row["us_per_call"] and row["ratio"] > 0
        fwd_bwd = name in ("warp_fwd_bwd_flow", "penalty_fwd_bwd")
        assert row["ratio_to"] == ("autograd + 2 launches" if fwd_bwd else "launch")
        if name in TARGETS:
            assert row["target"] == TARGETS[name] and row["pass"] == (row["ratio"] <= row["target"])
        else:
            assert "target" not in row
    assert result["targets_met"] == all(result["cases"][k]["pass"] for k in TARGETS)


def test_smoke_run_writes_the_documented_json(tmp_path):
    out = tmp_path / "first.json"
    proc = _run("--number", "20", "--repeats", "2", "--shape", "2", "3", "8", "8", "--label", "smoke",
                "--out", str(out))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "TRITON_INTERPRET unset" in proc.stdout and "floors: bare JIT launch" in proc.stdout
    result = json.loads(out.read_text())
    _check_schema(result)
    assert result["label"] == "smoke" and result["environment"]["shape"] == [2, 3, 8, 8]
    assert "stand-in driver" in result["environment"]["launch_path"]
    second = tmp_path / "second.json"
    proc = _run("--number", "10", "--repeats", "1", "--before", str(out), "--out", str(second))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    result = json.loads(second.read_text())
    _check_schema(result)
    assert result["before"]["label"] == "smoke" and set(result["before"]["cases"]) == CASES
    assert set(result["speedup_vs_before"]) == CASES and "before us/call" in proc.stdout


@pytest.mark.parametrize("args", [["--number", "0"], ["--repeats", "0"], ["--shape", "2", "3", "0", "8"],
                                  ["--device", "tpu"]])
def test_bad_arguments_are_refused(args, tmp_path):
    proc = _run(*args, "--out", str(tmp_path / "x.json"))
    assert proc.returncode == 2 and not (tmp_path / "x.json").exists()


def test_committed_result_has_the_schema_and_a_before_run():
    """benchmarks/results/cpu/host_overhead_cpu.json: this machine's numbers, with the run before the
    lean eager path beside them (the README's before/after comes from it)."""
    result = json.loads((ROOT / "benchmarks" / "results" / "cpu" / "host_overhead_cpu.json").read_text())
    _check_schema(result)
    assert result["before"]["cases"] and set(result["speedup_vs_before"]) == CASES
    assert all(v > 1 for v in result["speedup_vs_before"].values())
