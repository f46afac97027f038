"""``flowtriton.backend.check_backend``: constructors reject a bad backend name where it is written."""

import pytest

from flowtriton import backend as bk


@pytest.mark.parametrize("name", [None, "auto", "triton", "torch"])
def test_valid_names_and_none_pass_through(name):
    assert bk.check_backend(name) == name
    assert bk.check_backend(name, "eval_backend") == name


@pytest.mark.parametrize("name", ["cuda", "Torch", "", 0, True, ("torch",)])
def test_invalid_names_raise_naming_the_argument_and_the_choices(name):
    with pytest.raises(ValueError, match=r"attack_backend must be one of \('auto', 'triton', 'torch'\)"):
        bk.check_backend(name, "attack_backend")
    with pytest.raises(ValueError, match=r"^backend must be one of"):
        bk.check_backend(name)


def test_an_unhashable_name_is_a_value_error_too():
    with pytest.raises(ValueError, match="backend must be one of"):
        bk.check_backend(["torch"])
