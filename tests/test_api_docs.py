"""The public API is documented: docs/api.md lists every public name (kept by this test), every
public function and class of the core packages has Args / Returns / Example sections, and the
examples run (doctests)."""

import doctest
import importlib.util
import inspect
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).resolve().parent
spec = importlib.util.spec_from_file_location("make_api_doc", HERE / "make_api_doc.py")
make_api_doc = importlib.util.module_from_spec(spec)
spec.loader.exec_module(make_api_doc)

CORE_OBJECTS = [(f"{module}.{name}", obj) for module in make_api_doc.CORE
                for name, obj in make_api_doc.public_names(module) if inspect.isclass(obj) or callable(obj)]
ALL_OBJECTS = [(f"{module}.{name}", obj) for module in make_api_doc.PACKAGES
               for name, obj in make_api_doc.public_names(module) if inspect.isclass(obj) or callable(obj)]


def test_api_page_is_up_to_date():
    assert make_api_doc.API_PAGE.read_text() == make_api_doc.render(), \
        "docs/api.md is out of date: run python tests/make_api_doc.py"


@pytest.mark.parametrize("name,obj", ALL_OBJECTS, ids=[n for n, _ in ALL_OBJECTS])
def test_every_public_name_has_a_docstring(name, obj):
    assert (inspect.getdoc(obj) or "").strip(), f"{name} has no docstring"


def _takes_arguments(obj) -> bool:
    try:
        params = inspect.signature(obj).parameters
    except (TypeError, ValueError):
        return False
    return any(p.name not in ("self", "cls") for p in params.values())


@pytest.mark.parametrize("name,obj", CORE_OBJECTS, ids=[n for n, _ in CORE_OBJECTS])
def test_core_names_document_args_returns_and_an_example(name, obj):
    doc = inspect.getdoc(obj) or ""
    if _takes_arguments(obj):
        assert "Args:" in doc, f"{name}: no 'Args:' section"
    if not inspect.isclass(obj):
        assert "Returns:" in doc or "Yields:" in doc, f"{name}: no 'Returns:' section"
    assert "Example:" in doc and ">>>" in doc, f"{name}: no 'Example:' with a doctest"


@pytest.mark.parametrize("name,obj", CORE_OBJECTS, ids=[n for n, _ in CORE_OBJECTS])
def test_core_examples_run(name, obj):
    finder = doctest.DocTestFinder(recurse=False)
    tests = [t for t in finder.find(obj, name, globs={"torch": torch}) if t.examples]
    assert tests, f"{name}: no doctest found"
    torch.manual_seed(0)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    for test in tests:
        runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, f"{name}: {result.failed} of {result.attempted} doctest examples failed (run with -s)"
