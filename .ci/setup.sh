#!/usr/bin/env bash
# One-time set-up on a fresh machine: a virtual environment in .venv with torch (CPU build from
# the local wheel when offered: install torch==2.13.0 FIRST, or pip pulls a multi-GB CUDA build),
# triton, and flowtriton itself (editable) with its test extras.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check "torch==2.13.0" numpy 2>&1 | grep -v "^WARNING: Location" || true
.venv/bin/python -c "import torch"
.venv/bin/python -m pip install -q --disable-pip-version-check "triton==3.8.0" 2>&1 | grep -v "^WARNING: Location" || true
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".[test]" 2>&1 | grep -v "^WARNING: Location" || true
.venv/bin/python -c "import flowtriton, triton, hypothesis; print('flowtriton', flowtriton.__version__, 'triton', triton.__version__)"
