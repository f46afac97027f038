"""Test set-up: the Triton interpreter on CPU-only machines, a private dataset cache, hypothesis
profiles, the gpu marker.

TRITON_INTERPRET must be set before any @triton.jit function is defined, i.e. before
flowtriton.kernels is imported; flowtriton imports its kernels lazily, so setting it here is early
enough.
"""

import atexit
import os
import shutil
import tempfile

import pytest

try:
    import torch

    _HAS_CUDA = torch.cuda.is_available()
except Exception:  # pragma: no cover
    _HAS_CUDA = False

if not _HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")

# Where tests put the tensors they hand to backend="triton": the GPU when there is one (the
# interpreter is off there), else the CPU (the interpreter). ``from conftest import DEVICE``.
DEVICE = torch.device("cuda" if _HAS_CUDA else "cpu")
# gradcheck's reentrancy tolerance: float atomics (the warp's image gradient) add in any order on
# CUDA, so two identical backward passes may differ in the last bits there; never on CPU.
NONDET_TOL = 1e-12 if _HAS_CUDA else 0.0

# Decoded dataset caches go to a folder of this test session, never into the user's
# ~/.cache/flowtriton (tests that need a specific folder set their own).
_SESSION_CACHE = tempfile.mkdtemp(prefix="flowtriton-test-cache-")
os.environ["FLOWTRITON_CACHE"] = _SESSION_CACHE
atexit.register(shutil.rmtree, _SESSION_CACHE, ignore_errors=True)

from hypothesis import HealthCheck, settings  # noqa: E402

settings.register_profile(
    "ci", max_examples=25, deadline=None, derandomize=True, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "dev", max_examples=60, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "thorough", max_examples=400, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", default=False, help="run tests marked slow")


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    skip_slow = pytest.mark.skip(reason="slow: pass --runslow")
    for item in items:
        if "gpu" in item.keywords and not _HAS_CUDA:
            item.add_marker(skip_gpu)
        if "slow" in item.keywords and not config.getoption("--runslow"):
            item.add_marker(skip_slow)


@pytest.fixture
def device():
    """The device the kernels run on: CUDA when present, else CPU through the interpreter."""
    return DEVICE
