#!/usr/bin/env bash
# One call on a lent GPU machine: install, run the gpu-marked tests (atomic contention, many
# programs, half precision, int64 offsets) and every benchmark; results land in
# benchmarks/results/ (and in $OUT when the device tool's OUT is set) to be committed.
#
#   bash benchmarks/gpu_suite.sh
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
stamp=$(date -u +%Y%m%dT%H%M%SZ)
log=benchmarks/results/gpu_suite_${stamp}.log
mkdir -p benchmarks/results
{
  nvidia-smi || true
  python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name())" \
    || python3 -m pip install -q "torch>=2.12" triton
  python3 -m pip install -q --no-deps -e . && python3 -m pip install -q einops hypothesis pytest tqdm matplotlib || true
  python3 -m pytest -q -m gpu tests
  HYPOTHESIS_PROFILE=thorough python3 -m pytest -q tests/test_warp.py -k "triton_matches_reference"
  for bench in benchmarks/bench_*.py; do
    echo "== $bench"
    python3 "$bench" --device cuda
  done
} 2>&1 | tee "$log"
if [ -n "${OUT:-}" ]; then cp benchmarks/results/*cuda* "$log" "$OUT"/ 2>/dev/null || true; fi
