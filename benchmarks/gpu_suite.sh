#!/usr/bin/env bash
# The GPU checks, in stages that each end well inside 9 minutes, for a lent GPU machine with no
# package index (torch >= 2.11 and triton >= 3.6 already installed). Each stage sets flowtriton up
# from this source tree (an editable install) without touching an index, says clearly what is
# missing, logs to benchmarks/results/logs/, writes its results to benchmarks/results/cuda/ (the
# scripts' default folder on a CUDA device), and copies at most 8 result files into $OUT when it is
# set. (benchmarks/results/compile/ holds tests/compile_kernels.py's report, built on a CPU machine;
# no stage writes there. benchmarks/results/README.md indexes every committed result.)
#
#   bash benchmarks/gpu_suite.sh check       # environment, GPU, imports, the ops on the GPU    (~1 min)
#   bash benchmarks/gpu_suite.sh tests       # gpu-marked tests, CUDA-vs-reference tests          (~5 min)
#   bash benchmarks/gpu_suite.sh bench       # host overhead, warp and FGR (device + host time),
#                                            # graphed steps, attack benchmarks; op counts      (~9 min)
#   bash benchmarks/gpu_suite.sh reproduce   # the authors' CIFAR-10 recipe in stages (examples/gpu_recipe.py)
#   bash benchmarks/gpu_suite.sh all         # check + tests + bench, back to back
#   bash benchmarks/gpu_suite.sh lease       # every GPU figure of the README in one capped run
#                                            # (LEASE_S seconds, default 480): check, the eager/traced
#                                            # tests, host overhead, device-time warp and penalty,
#                                            # graphed steps, then the rest of the test suite
#
# Missing pure-Python packages can travel as wheels in .whl/ (see the README's GPU section); they
# are installed from there with --no-index.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
stage=${1:-check}
stamp=$(date -u +%Y%m%dT%H%M%SZ)
results=benchmarks/results/cuda
mkdir -p "$results" benchmarks/results/logs runs/gpu-logs
# The raw log stays out of the repository (it names this machine's folders); a copy with those
# folders masked goes to benchmarks/results/logs/ at the end.
raw_log=runs/gpu-logs/gpu_${stage}_${stamp}.log
log=benchmarks/results/logs/gpu_${stage}_${stamp}.log

setup() {
  "$PY" - <<'EOF' || return 1
import importlib, sys
need = ["torch", "triton", "numpy", "einops", "tqdm", "pytest", "hypothesis", "matplotlib"]
missing = [m for m in need if importlib.util.find_spec(m) is None]
import torch, triton
print(f"python {sys.version.split()[0]}  torch {torch.__version__}  triton {triton.__version__}  "
      f"cuda {torch.version.cuda}  gpu {torch.cuda.get_device_name() if torch.cuda.is_available() else 'NONE'}")
if missing:
    print("MISSING python packages:", " ".join(missing), "(carry wheels in .whl/; see README, GPU section)")
tv = tuple(int(x) for x in torch.__version__.split("+")[0].split(".")[:2])
rv = tuple(int(x) for x in triton.__version__.split(".")[:2])
if tv < (2, 11) or rv < (3, 6):
    print("UNSUPPORTED: flowtriton needs torch >= 2.11 and triton >= 3.6"); sys.exit(1)
if not torch.cuda.is_available():
    print("NO CUDA DEVICE visible to torch"); sys.exit(1)
EOF
  if ls .whl/*.whl >/dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/ft-site .whl/*.whl \
      && export PYTHONPATH=/tmp/ft-site${PYTHONPATH:+:$PYTHONPATH}
  fi
  # flowtriton.kernels is kernels/ through pyproject.toml's package-dir mapping: an editable install
  # of this tree (no index, no build isolation: the machine's own setuptools) provides it.
  local this_tree='import os, sys, flowtriton.kernels as k; r = os.path.realpath
sys.exit(r(os.path.dirname(k.__file__)) != r("kernels"))'
  if ! "$PY" -c "$this_tree" 2>/dev/null; then
    if ! "$PY" -m pip install -q --no-index --no-deps --no-build-isolation -e .; then
      echo "SET-UP FAILED: 'pip install --no-index --no-deps --no-build-isolation -e .' did not install flowtriton"
      echo "(it needs setuptools >= 70.1, or >= 64 with wheel, in this Python: carry them in .whl/, see docs/gpu.md)"
      return 1
    fi
  fi
  "$PY" -c "import flowtriton, flowtriton.kernels as k; print('flowtriton', flowtriton.__version__, 'from', \
flowtriton.__file__, 'kernels from', k.__file__)"
}

check() {
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
  "$PY" - <<'EOF'
import torch, flowtriton
from flowtriton.kernels import utils as ku
x = torch.rand(4, 3, 32, 32, device="cuda"); f = torch.randn(4, 2, 32, 32, device="cuda").requires_grad_()
g = torch.randn_like(x).requires_grad_()
for attempt in ("JIT launch", "cached handle"):  # the second call of each kernel takes the handle path
    out = flowtriton.warp(x, f, backend="triton"); ref = flowtriton.warp(x, f.detach(), backend="torch")
    (gf,) = torch.autograd.grad(out.sum(), f); (gr,) = torch.autograd.grad(ref.sum(), f)
    p = flowtriton.flow_gradient_penalty(x, g, backend="triton"); q = flowtriton.flow_gradient_penalty(x, g, backend="torch")
    (dp,) = torch.autograd.grad(p.sum(), g); (dq,) = torch.autograd.grad(q.sum(), g)
    print(f"{attempt} (handles {'on' if ku.USE_HANDLES else 'off'}): warp max |triton - torch| = "
          f"{(out - ref).abs().max().item():.2e}, flow grad {(gf - gr).abs().max().item():.2e}; penalty rel. "
          f"{((p - q).abs().max() / q.abs().max()).item():.2e}, grad rel. {((dp - dq).abs().max() / dq.abs().max()).item():.2e}")
EOF
}

tests() {
  timeout 240 "$PY" -m pytest -q -m gpu tests -p no:cacheprovider
  HYPOTHESIS_PROFILE=thorough timeout 240 "$PY" -m pytest -q -p no:cacheprovider \
    tests/test_warp.py tests/test_flow_gradient.py tests/test_kernel_layout.py tests/test_library_ops.py -x
}

bench() {
  timeout 60 "$PY" benchmarks/bench_host_overhead.py --device cuda
  timeout 240 "$PY" benchmarks/bench_warp.py --device cuda
  timeout 300 "$PY" benchmarks/bench_fgr.py --device cuda --case-timeout 60
  timeout 120 "$PY" benchmarks/bench_graph_step.py --device cuda
  timeout 60 "$PY" benchmarks/count_step_ops.py --backend triton --device cuda --json "$results/step_ops_cuda.json"
  # No advertorch or ADef reference code there: flowtriton's own attack throughput only.
  timeout 120 "$PY" benchmarks/bench_attacks.py --device cuda --no-advertorch --throughput --quick \
    || echo "bench_attacks: see its message above"
}

# Seconds left before the lease stage's deadline, less a reserve for copying results back.
left() { echo $(( deadline - $(date +%s) - 20 )); }
capped() {  # capped SECONDS CMD...: run CMD under min(SECONDS, time left); skip it when none is left
  local cap=$1; shift
  local t; t=$(left); [ "$t" -lt "$cap" ] && cap=$t
  if [ "$cap" -lt 10 ]; then echo "SKIPPED (lease time used up): $*"; return 0; fi
  echo "-- [$(date -u +%H:%M:%S), cap ${cap}s] $*"
  timeout "$cap" "$@"; local code=$?
  [ "$code" -eq 124 ] && echo "TIMED OUT after ${cap}s: $*"
  return "$code"
}

lease() {
  # Every GPU figure the README quotes, most important first, inside LEASE_S seconds (default 480):
  # the ops work on the GPU (check, then the tests that compare the eager and traced routes and
  # the GPU-marked ones), host overhead on the real driver, device time (CUDA-graph replays) of
  # the warp and the penalty at GPU-bound sizes, the graphed training steps; then the rest of the
  # test suite with the time left (packaging and the CPU cubin-build checks left out: they test
  # this machine's set-up, not the GPU), op counts and attacks if time remains.
  deadline=$(( $(date +%s) + ${LEASE_S:-480} ))
  check
  local xdist=(); "$PY" -c "import xdist" 2>/dev/null && xdist=(-n 8)
  # LEASE_SKIP: items to leave out (first host warp fgr graph tests ops attacks), e.g. on a second
  # lease that only re-checks fixes; LEASE_TESTS: test files or node ids for the suite (default all).
  local skip=" ${LEASE_SKIP:-} "
  [[ $skip == *" first "* ]] || CI=true capped 60 "$PY" -m pytest -q -p no:cacheprovider -x \
    tests/test_eager_path.py tests/test_library_ops.py tests/test_warp_gpu.py -rfE
  [[ $skip == *" host "* ]] || capped 40 "$PY" benchmarks/bench_host_overhead.py --device cuda
  [[ $skip == *" warp "* ]] || capped 90 "$PY" benchmarks/bench_warp.py --device cuda --quick --paddings zeros border
  [[ $skip == *" fgr "* ]] || capped 90 "$PY" benchmarks/bench_fgr.py --device cuda --skip-steps --repeats 5 \
    --replays 10
  [[ $skip == *" graph "* ]] || capped 70 "$PY" benchmarks/bench_graph_step.py --device cuda --steps 20
  # shellcheck disable=SC2086
  [[ $skip == *" tests "* ]] || CI=true capped 200 "$PY" -m pytest -q -p no:cacheprovider "${xdist[@]}" \
    ${LEASE_TESTS:-tests} --ignore=tests/test_packaging.py --ignore=tests/test_kernels_compile.py \
    --junitxml="$results/tests_cuda.xml" -rfE
  [[ $skip == *" ops "* ]] || capped 30 "$PY" benchmarks/count_step_ops.py --backend triton --device cuda \
    --json "$results/step_ops_cuda.json"
  [[ $skip == *" attacks "* ]] || capped 60 "$PY" benchmarks/bench_attacks.py --device cuda --no-advertorch \
    --throughput --quick
  if [ -n "${LEASE_FRONTIER:-}" ]; then
    # What is left of the lease: MNIST frontier points on the GPU (cost per point on this card);
    # needs MNIST under $FLOWTRITON_DATA. Finished points come back in the results archive.
    capped 600 "$PY" examples/frontier.py --dataset mnist --out-dir runs/frontier-mnist-gpu --device cuda \
      --threads 0 --seeds 0 --methods ${LEASE_FRONTIER} --no-progress \
      --stop-after-min $(( ($(left) - 90) / 60 ))
  fi
  return 0
}

reproduce() {
  # The authors' full CIFAR-10 recipe (examples/gpu_recipe.py): the 4 lambdas trained together on
  # the GPU, the attack on the full test set. It stops itself before 8.5 minutes (exit 75, state
  # saved) and the same command resumes; 0 = finished. CIFAR-10 must be on that machine
  # (FLOWTRITON_DATA or data/ holding cifar10-jpeg/ or cifar-10-batches-py/): the datasets folder
  # does not travel with the working tree.
  timeout 560 "$PY" examples/gpu_recipe.py --device cuda --out-dir runs/gpu-recipe --data-dir "${FLOWTRITON_DATA:-data}"
  local code=$?
  [ "$code" -eq 75 ] && echo "stage ended: run 'bash benchmarks/gpu_suite.sh reproduce' again to resume"
  ls runs/gpu-recipe || true
  return $([ "$code" -eq 75 ] && echo 0 || echo "$code")
}

{
  echo "== gpu_suite $stage  $stamp"
  setup || { echo "set-up failed: see above"; exit 1; }
  case "$stage" in
    check) check ;;
    tests) tests ;;
    bench) bench ;;
    reproduce) reproduce ;;
    all) check; tests; bench ;;
    lease) lease ;;
    *) echo "unknown stage '$stage': check | tests | bench | reproduce | all"; exit 2 ;;
  esac
} 2>&1 | tee "$raw_log"
status=${PIPESTATUS[0]}
# Every absolute path is masked, not only this machine's folders: the checkout, site-packages and
# the interpreter by name, anything else to <path>.
sed -E -e "s#$PWD/##g" -e 's#/[^[:space:]"'"'"':]*/site-packages/#<site-packages>/#g' \
  -e 's#/[^[:space:]"'"'"':]*/bin/python[0-9.]*#<python>#g' \
  -e 's#(^|[^[:alnum:]_.<>/])/(tmp|work|root|home|opt|usr|var|srv|mnt|pytorch)/[^[:space:]"'"'"':,)]*#\1<path>#g' \
  "$raw_log" > "$log"
if [ -n "${OUT:-}" ]; then
  # The log, and every CUDA result (benchmarks/results/cuda/, paths kept) in one archive (at most 8
  # files come back from a lease): unpack it in the repository root to put them in place.
  cp "$log" "$OUT"/ 2>/dev/null || true
  tar czf "$OUT/gpu_results_${stamp}.tar.gz" $(ls "$results"/* runs/gpu-recipe/*.json runs/gpu-recipe/*.md \
    runs/frontier-mnist-gpu/points/*.json runs/frontier-mnist-gpu/*.json runs/frontier-mnist-gpu/*.md 2>/dev/null) 2>/dev/null || true
fi
exit "$status"
