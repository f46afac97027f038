"""Every kernel specialization the launchers build at run time compiles to sm_80 and sm_90 cubins
on this CPU machine, with no register spills, under this environment's triton and under the
oldest supported triton (3.6, the GPU machine's) when its environment is present.

The interpreter accepts constructs the GPU compiler rejects; this keeps them from landing.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = Path(__file__).with_name("compile_kernels.py")
COMMITTED = ROOT / "benchmarks" / "results" / "compile" / "kernels_sm90.json"
KERNELS = {"_warp_gather_kernel", "_warp_grad_flow_kernel", "_warp_scatter_kernel", "_penalty_partial_kernel",
           "_flow_gradient_kernel", "_flow_jvp_kernel", "_image_vjp_kernel"}
# The second environment .ci/setup.sh builds (torch 2.13 CPU + triton 3.6.0); override with
# FLOWTRITON_OLD_TRITON_PYTHON=/path/to/python.
OLD_TRITON_PYTHON = Path(os.environ.get("FLOWTRITON_OLD_TRITON_PYTHON", ROOT / ".venv-triton36" / "bin" / "python"))


def _compile(python, archs, json_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([str(python), str(SCRIPT), "--arch", *map(str, archs), "--json", str(json_path)],
                          env=env, capture_output=True, text=True, timeout=1500, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert ", 0 failures" in proc.stdout and "spilled bytes 0" in proc.stdout, proc.stdout[-3000:]
    record = json.loads(Path(json_path).read_text())
    assert set(record["kernels"]) == KERNELS, sorted(record["kernels"])
    for name, per_dtype in record["kernels"].items():
        assert set(per_dtype) == {"fp32", "fp64", "fp16", "bf16"}, (name, sorted(per_dtype))
        for dtype, entry in per_dtype.items():
            assert entry["spill_bytes"] == 0 and 0 < entry["max_registers"] <= 255, (name, dtype, entry)
    return proc.stdout, record


def test_all_kernels_compile_for_sm80_and_sm90(tmp_path):
    stdout, record = _compile(sys.executable, [80, 90], tmp_path / "kernels_sm90.json")
    # Divisibility-hinted variants (28x28x1, 32x32x3, 224x224x3 inputs) and the unhinted one are built.
    assert "distinct specializations" in stdout
    assert sum(e["specializations"] for per in record["kernels"].values() for e in per.values()) >= 400


@pytest.mark.skipif(not OLD_TRITON_PYTHON.exists(), reason="no triton 3.6 environment (.ci/setup.sh builds one)")
def test_all_kernels_compile_for_sm90_under_triton_3_6(tmp_path):
    version = subprocess.run([str(OLD_TRITON_PYTHON), "-c", "import triton; print(triton.__version__)"],
                             capture_output=True, text=True, timeout=300).stdout.strip()
    assert version.startswith("3.6"), version
    stdout, record = _compile(OLD_TRITON_PYTHON, [90], tmp_path / "kernels_sm90_triton36.json")
    assert record["triton"].startswith("3.6")


def test_committed_register_report_is_complete_and_spill_free():
    """benchmarks/results/compile/kernels_sm90.json: written by
    ``python tests/compile_kernels.py --arch 90 --json`` (a bare --json writes it there)."""
    record = json.loads(COMMITTED.read_text())
    assert set(record["kernels"]) == KERNELS
    for name, per_dtype in record["kernels"].items():
        assert set(per_dtype) == {"fp32", "fp64", "fp16", "bf16"}
        assert all(e["spill_bytes"] == 0 and e["max_registers"] > 0 for e in per_dtype.values()), name
