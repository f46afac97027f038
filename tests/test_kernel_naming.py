"""The three layers of each op share one module name (``kernels/<op>.py``, ``flowtriton/ops/<op>.py``,
``flowtriton/reference/<op>.py``), and the names and integer codes the kernels use are those of
``flowtriton.conventions``."""

import importlib
import re
from pathlib import Path

import pytest
import torch

from flowtriton import conventions

ROOT = Path(__file__).resolve().parents[1]
OPS = ("warp", "flow_gradient")
LAYERS = {  # folder -> its modules that are not an op
    "kernels": {"__init__", "utils"},
    "flowtriton/ops": {"__init__", "units", "validation"},
    "flowtriton/reference": {"__init__"},
}


def test_each_op_has_one_module_name_in_all_three_layers():
    for folder, helpers in LAYERS.items():
        modules = {path.stem for path in (ROOT / folder).glob("*.py")} - helpers
        assert modules == set(OPS), (folder, sorted(modules))
    for op in OPS:
        for package in ("flowtriton.kernels", "flowtriton.ops", "flowtriton.reference"):
            importlib.import_module(f"{package}.{op}")


def test_the_public_names_are_the_conventions():
    modules = {name: importlib.import_module(name) for name in (
        "flowtriton.reference", "flowtriton.ops.warp", "flowtriton.ops.flow_gradient", "flowtriton.ops.units",
        "flowtriton.regularizers")}
    assert modules["flowtriton.reference"].PADDING_MODES is conventions.PADDING_MODES
    assert modules["flowtriton.reference"].SCHEMES is conventions.SCHEMES
    assert modules["flowtriton.ops.warp"].PADDING_MODES is conventions.PADDING_MODES
    assert modules["flowtriton.ops.flow_gradient"].SCHEMES is conventions.SCHEMES
    assert modules["flowtriton.ops.units"].UNITS is conventions.UNITS
    assert modules["flowtriton.regularizers"].REDUCTIONS is conventions.REDUCTIONS
    assert conventions.PADDING_MODES == ("zeros", "border", "reflection")
    assert conventions.SCHEMES == ("forward", "central")
    assert set(conventions.UNITS) == {"normalized", "pixels"}
    assert conventions.REDUCTIONS == ("paper", "mean", "sum")


def test_kernel_codes_equal_the_conventions():
    from flowtriton.kernels import flow_gradient as kfg
    from flowtriton.kernels import warp as kw

    assert set(conventions.PADDING_CODES) == set(conventions.PADDING_MODES)
    assert set(conventions.SCHEME_CODES) == set(conventions.SCHEMES)
    assert len(set(conventions.PADDING_CODES.values())) == len(conventions.PADDING_CODES)
    # what the launchers pass as the PAD / CENTRAL constexprs
    for mode in conventions.PADDING_MODES:
        cfg = kw._config(("gather", True, False), (1, 1, 4, 5), torch.float32, mode)
        assert cfg.constexprs["PAD"] == conventions.PADDING_CODES[mode], mode
    for scheme in conventions.SCHEMES:
        cfg = kfg._config(("flow_gradient",), (1, 1, 4, 5), torch.float32, scheme, (1.0, 1.0))
        assert cfg.constexprs["CENTRAL"] is (scheme == "central"), scheme
        assert cfg.constexprs["CENTRAL"] == bool(conventions.SCHEME_CODES[scheme])
    # the codes the kernel bodies compare PAD with (Triton kernels cannot read a dict): each
    # comparison names its mode in a comment
    source = (ROOT / "kernels" / "warp.py").read_text()
    compared = re.findall(r"PAD == (\d+):\s+# (\w+)", source)
    assert {name for _, name in compared} == {"zeros", "reflection"}, compared
    for code, name in compared:
        assert conventions.PADDING_CODES[name] == int(code), (name, code)
    assert not re.findall(r"PAD == \d+:(?!\s+# \w)", source), "every PAD comparison names its mode"


@pytest.mark.parametrize("name", ["PADDING_CODES", "SCHEME_CODES"])
def test_the_kernels_take_their_codes_from_the_conventions(name):
    module = "warp" if name == "PADDING_CODES" else "flow_gradient"
    kernels = importlib.import_module(f"flowtriton.kernels.{module}")
    assert getattr(kernels, name) is getattr(conventions, name)
