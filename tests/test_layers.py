"""The application (flowtriton.app: CLI, demo, checkpoint evaluation, plots) sits on top of the
library; no library module imports it."""

import re
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "flowtriton"
# the entry shims and the moved modules' old names (one release, with a DeprecationWarning),
# which forward to the application
SHIMS = {"cli.py", "__main__.py", "plots.py", "train/evaluation.py", "train/demo.py"}


def test_no_library_module_imports_the_application():
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE)
        if relative.parts[0] == "app" or relative.as_posix() in SHIMS:
            continue
        text = path.read_text()
        if re.search(r"^\s*(from\s+(\.+app\b|flowtriton\.app\b)|import\s+flowtriton\.app\b)", text, re.M):
            offenders.append(str(relative))
    assert not offenders, f"library modules importing flowtriton.app: {offenders}"


def test_importing_the_library_loads_no_application_module():
    code = ("import sys, flowtriton, flowtriton.attacks, flowtriton.regularizers, flowtriton.train, flowtriton.data, "
            "flowtriton.models\nprint(sorted(m for m in sys.modules if m.startswith('flowtriton.app')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"


def test_the_moved_modules_old_names_warn_and_still_work():
    code = ("import warnings\nwarnings.simplefilter('error', DeprecationWarning)\n"
            "for old in ('flowtriton.plots', 'flowtriton.train.evaluation', 'flowtriton.train.demo'):\n"
            "    try:\n        __import__(old)\n    except DeprecationWarning as w:\n        print(w)\n"
            "warnings.simplefilter('ignore')\n"
            "from flowtriton.train.evaluation import evaluate_checkpoint\nfrom flowtriton.plots import plot_gallery\n"
            "from flowtriton.app.evaluation import evaluate_checkpoint as new\nprint(evaluate_checkpoint is new)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.splitlines()
    assert len(out) == 4 and out[-1] == "True" and all("moved to flowtriton.app." in line for line in out[:3]), out
