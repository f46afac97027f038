"""pyproject.toml's explicit package list covers every package folder (or installs would miss code)."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _package_dirs(text):
    """pyproject's ``package-dir`` mapping: package name -> folder (``flowtriton.kernels`` -> ``kernels``)."""
    block = re.search(r"^package-dir = \{(.*?)\}", text, re.S | re.M).group(1)
    return dict(re.findall(r'"([\w.]+)"\s*=\s*"([\w./]+)"', block))


def test_every_package_folder_is_listed():
    text = (ROOT / "pyproject.toml").read_text()
    block = re.search(r"packages = \[(.*?)\]", text, re.S).group(1)
    listed = set(re.findall(r'"([\w.]+)"', block))
    dirs = _package_dirs(text)
    assert dirs.get("flowtriton.kernels") == "kernels", dirs  # the kernel layer lives at the top level
    found = set()
    for package, folder in dirs.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            found.add(".".join((package, *init.parent.relative_to(ROOT / folder).parts)))
    assert found <= listed, f"missing from pyproject packages: {sorted(found - listed)}"
    assert listed <= found, f"listed but absent: {sorted(listed - found)}"


def test_kernels_import_from_the_top_level_folder():
    """``flowtriton.kernels`` is ``kernels/`` through the package-dir mapping (an editable install
    here, as on the GPU machine: benchmarks/gpu_suite.sh installs the tree the same way)."""
    import flowtriton.kernels

    assert Path(flowtriton.kernels.__file__).resolve().parent == ROOT / "kernels"
    suite = (ROOT / "benchmarks" / "gpu_suite.sh").read_text()
    assert "--no-index --no-deps --no-build-isolation -e ." in suite and "ln -s" not in suite


def test_the_library_runs_without_the_application_extra():
    """``pip install flowtriton`` brings torch, triton, numpy and einops only: FlowGradReg, the
    attacks and evaluate (no progress bar) must work without tqdm, matplotlib and Pillow, and what
    needs them says which extra to install."""
    import subprocess
    import sys

    script = """
import sys
for name in ("tqdm", "matplotlib", "PIL"):
    sys.modules[name] = None          # as if not installed: importing it raises ImportError
import torch, flowtriton
from flowtriton.attacks import FlowPGD, evaluate
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.Flatten(), torch.nn.Linear(4 * 6 * 6, 10))
images, labels = torch.rand(4, 1, 8, 8), torch.tensor([0, 1, 2, 3])
loss, parts = flowtriton.FlowGradReg()(model, images, labels)
loss.backward()
table = evaluate(model, (images, labels), {"pgd": FlowPGD(model, steps=2)}, {"pgd": [0.01]})
from flowtriton.app import plots
try:
    plots.plot_gallery([], "x.png")
except ValueError as err:
    assert "flowtriton[app]" in str(err), err
else:
    raise AssertionError("plots without matplotlib must say which extra to install")
assert "matplotlib" not in sys.modules or sys.modules["matplotlib"] is None
print("ok", float(loss))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.startswith("ok")


def test_extras_hold_the_application_packages():
    text = (ROOT / "pyproject.toml").read_text()
    deps = re.search(r"^dependencies = \[(.*?)\]", text, re.S | re.M).group(1)
    for name in ("tqdm", "matplotlib", "pillow"):
        assert name not in deps.lower(), f"{name} must be in the 'app' extra, not a core dependency"
    assert re.search(r'^app = \[.*"tqdm.*"matplotlib.*"pillow', text, re.M)
