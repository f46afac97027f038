"""The application (flowtriton.app: CLI, demo, checkpoint evaluation, plots) sits on top of the
library; no library module imports it."""

import re
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "flowtriton"
# the two entry shims that forward to the application
ENTRY_POINTS = {"cli.py", "__main__.py"}


def test_no_library_module_imports_the_application():
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE)
        if relative.parts[0] == "app" or str(relative) in ENTRY_POINTS:
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
