#!/usr/bin/env bash
# One-time set-up on a fresh machine: a virtual environment in .venv with torch (CPU build from
# the local wheel when offered: install torch==2.13.0 FIRST, or pip pulls a multi-GB CUDA build),
# triton, and flowtriton itself (editable) with its test extras; and a second, small environment in
# .venv-triton36 (torch 2.13 CPU + triton 3.6.0, the oldest triton flowtriton supports, as on the
# GPU machine) in which the tests compile every kernel specialization once more.
# Set FLOWTRITON_SKIP_OLD_TRITON=1 to skip the second environment.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
quiet_pip() { "$@" 2>&1 | grep -v "^WARNING: Location" || true; }
PIP=(-m pip install -q --disable-pip-version-check)

[ -x .venv/bin/python ] || "$PY" -m venv .venv
quiet_pip .venv/bin/python "${PIP[@]}" "torch==2.13.0" numpy
.venv/bin/python -c "import torch"
quiet_pip .venv/bin/python "${PIP[@]}" "triton==3.8.0"
quiet_pip .venv/bin/python "${PIP[@]}" -e ".[test,app]"
.venv/bin/python -c "import flowtriton, triton, hypothesis; print('flowtriton', flowtriton.__version__, 'triton', triton.__version__)"

if [ "${FLOWTRITON_SKIP_OLD_TRITON:-0}" = "0" ]; then
  [ -x .venv-triton36/bin/python ] || "$PY" -m venv .venv-triton36
  quiet_pip .venv-triton36/bin/python "${PIP[@]}" "torch==2.13.0" "numpy<2.4" einops
  quiet_pip .venv-triton36/bin/python "${PIP[@]}" "triton==3.6.0"
  quiet_pip .venv-triton36/bin/python "${PIP[@]}" --no-deps --no-build-isolation -e .
  .venv-triton36/bin/python -c "import triton, flowtriton.kernels.utils; print('second environment: triton', triton.__version__)"
fi
