"""flowtriton.checks: the library's one home for scalar argument checks. Each check accepts good
values (returning them in plain Python form) and refuses bad ones with a TypeError (wrong kind)
or ValueError (out of range) whose message names the argument."""

from __future__ import annotations

import math

import pytest
import torch

from flowtriton import checks
from flowtriton.checks import check_choice, check_generator, check_int, check_number, check_seed, resolve_generator

np = pytest.importorskip("numpy")


# check_number -----------------------------------------------------------------------------------

@pytest.mark.parametrize("value, kwargs, expected", [
    (0, {}, 0.0), (2.5, {}, 2.5), (np.float32(0.5), {}, 0.5), (np.int64(3), {}, 3.0),
    (-4.0, dict(minimum=None), -4.0), (1.0, dict(minimum=1.0), 1.0), (0.5, dict(maximum=1.0, strict_maximum=True), 0.5),
    (math.inf, dict(strict=True, allow_inf=True), math.inf), (1.0, dict(maximum=1.0), 1.0),
])
def test_check_number_accepts_real_numbers_in_range(value, kwargs, expected):
    out = check_number(value, "x", **kwargs)
    assert out == expected and type(out) is float


@pytest.mark.parametrize("value, shown", [("1", "str '1'"), (True, "bool True"), (None, "NoneType None"),
                                          ([1.0], "list"), (1 + 2j, "complex"), (torch.tensor(1.0), "Tensor")])
def test_check_number_refuses_what_is_not_a_real_number(value, shown):
    with pytest.raises(TypeError, match=r"^lam must be a real number >= 0, got " + shown):
        check_number(value, "lam")


@pytest.mark.parametrize("value, kwargs, message", [
    (-1.0, {}, r"^lam must be a finite number >= 0, got -1.0$"),
    (math.nan, {}, r"^lam must be a finite number >= 0, got nan$"),
    (math.inf, {}, r"^lam must be a finite number >= 0, got inf$"),
    (0.0, dict(strict=True), r"^lr must be a finite number > 0, got 0.0$"),
    (5.0, dict(maximum=1.0, strict_maximum=True), r"^momentum must be a finite number in \[0, 1\), got 5.0$"),
    (1.0, dict(maximum=1.0, strict_maximum=True), r"^momentum must be a finite number in \[0, 1\), got 1.0$"),
    (0.5, dict(minimum=1.0), r"^overshoot must be a finite number >= 1, got 0.5$"),
    (3.0, dict(minimum=None, maximum=2.0), r"^x must be a finite number <= 2, got 3.0$"),
    (math.nan, dict(strict=True, allow_inf=True), r"^max_norm must be a number > 0 \(inf allowed\), got nan$"),
    (-math.inf, dict(allow_inf=True), r"^eps must be a number >= 0 \(inf allowed\), got -inf$"),
])
def test_check_number_refuses_values_out_of_range_naming_the_argument(value, kwargs, message):
    name = message[1:].split(" ", 1)[0]
    with pytest.raises(ValueError, match=message):
        check_number(value, name, **kwargs)


def test_check_number_serves_the_attacks_call_sites():
    """attacks/base.py's check_number(value, name, minimum=0.0, strict=False, allow_inf=False)."""
    assert check_number(0.01, "eps") == 0.01
    assert check_number(0.5, "lr", strict=True) == 0.5
    assert check_number(math.inf, "max_norm", strict=True, allow_inf=True) == math.inf
    assert check_number(1.02, "overshoot", minimum=1.0) == 1.02
    with pytest.raises(ValueError, match="tau must be a finite number >= 0"):
        check_number(-0.1, "tau")
    with pytest.raises(TypeError, match=r"budgets\['pgd'\] must be a real number"):
        check_number("x", "budgets['pgd']")


# check_int --------------------------------------------------------------------------------------

SEEDS = dict(minimum=0, maximum=2**63, strict_maximum=True)  # a training run's seeds (TrainConfig)


@pytest.mark.parametrize("value, kwargs, expected", [
    (1, {}, 1), (np.int64(7), {}, 7), (np.uint8(3), {}, 3), (0, dict(minimum=0), 0), (-5, dict(minimum=None), -5),
    (2**63 - 1, dict(minimum=0, maximum=2**63, strict_maximum=True), 2**63 - 1), (4, dict(maximum=4), 4),
])
def test_check_int_accepts_integers_in_range(value, kwargs, expected):
    out = check_int(value, "n", **kwargs)
    assert out == expected and type(out) is int


@pytest.mark.parametrize("value, shown", [(1.0, "float 1.0"), (True, "bool True"), ("3", "str '3'"),
                                          (None, "NoneType None")])
def test_check_int_refuses_what_is_not_an_integer(value, shown):
    with pytest.raises(TypeError, match=r"^steps must be a whole number >= 1, got " + shown):
        check_int(value, "steps")


@pytest.mark.parametrize("value, kwargs, message", [
    (0, {}, r"^steps must be a whole number >= 1, got 0$"),
    (-3, SEEDS, r"^seed must be a whole number in \[0, 2\*\*63\), got -3$"),
    (2**63, SEEDS, r"^seed must be a whole number in \[0, 2\*\*63\), got 9223372036854775808$"),
    (2, dict(minimum=0, maximum=2, strict_maximum=True), r"^rank must be a whole number in \[0, 2\), got 2$"),
    (9, dict(maximum=8), r"^k must be a whole number in \[1, 8\], got 9$"),
])
def test_check_int_refuses_values_out_of_range_naming_the_argument(value, kwargs, message):
    name = message[1:].split(" ", 1)[0]
    with pytest.raises(ValueError, match=message):
        check_int(value, name, **kwargs)


# check_choice -----------------------------------------------------------------------------------

def test_check_choice_returns_the_choice():
    assert check_choice("zeros", ("zeros", "border"), "padding_mode") == "zeros"
    assert check_choice(2, (1, 2), "k") == 2


@pytest.mark.parametrize("value", ["reflect", None, True, 1, ["zeros"]])
def test_check_choice_refuses_anything_else_naming_the_argument_and_the_choices(value):
    with pytest.raises(ValueError, match=r"^padding_mode must be one of \('zeros', 'border'\), got "):
        check_choice(value, ("zeros", "border"), "padding_mode")
    with pytest.raises(ValueError, match="flag must be one of"):
        check_choice(True, (1, 0), "flag")  # a bool is no choice, though True == 1


# check_seed -------------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", [0, 7, -(2**63), 2**64 - 1, np.int64(7), np.uint32(7)])
def test_check_seed_accepts_torch_generator_seeds(seed):
    out = check_seed(seed)
    assert out == int(seed) and type(out) is int
    torch.Generator().manual_seed(out)  # what the range promises


def test_check_seed_keeps_none():
    assert check_seed(None) is None


@pytest.mark.parametrize("seed, error, message", [
    (True, TypeError, r"^seed must be an int or None, got bool True$"),
    (1.5, TypeError, r"^seed must be an int or None, got float 1.5$"),
    ("1", TypeError, r"^seed must be an int or None, got str"),
    (2**64, ValueError,
     r"^seed must lie in \[-2\*\*63, 2\*\*64 - 1\] \(torch.Generator's range\), got 18446744073709551616$"),
    (-(2**63) - 1, ValueError, r"^seed must lie in \[-2\*\*63, 2\*\*64 - 1\]"),
])
def test_check_seed_refuses_bad_seeds_naming_the_argument(seed, error, message):
    with pytest.raises(error, match=message):
        check_seed(seed)
    with pytest.raises(error, match=message.replace("^seed", "^split_seed")):
        check_seed(seed, "split_seed")


# the seed-or-generator helper ------------------------------------------------------------------

def test_resolve_generator_gives_the_generator_a_seeded_one_or_none():
    gen = torch.Generator()
    assert resolve_generator(gen, None, "cpu") is gen
    assert resolve_generator(None, None, "cpu") is None
    a, b = resolve_generator(None, 3, "cpu"), resolve_generator(None, np.int64(3), torch.device("cpu"))
    assert isinstance(a, torch.Generator) and a.device.type == "cpu"
    assert torch.equal(torch.rand(4, generator=a), torch.rand(4, generator=b))
    assert resolve_generator(seed=3).device.type == "cpu"  # default device
    assert check_generator(gen) is gen and check_generator(None, 5) is None


def test_resolve_generator_refuses_both_a_non_generator_and_bad_seeds():
    with pytest.raises(ValueError, match=r"^give either generator or seed, not both"):
        resolve_generator(torch.Generator(), 1, "cpu")
    with pytest.raises(TypeError, match=r"^generator must be a torch.Generator, got int"):
        resolve_generator(5, None, "cpu")
    with pytest.raises(TypeError, match=r"^rng must be a torch.Generator, got str"):
        check_generator("gen", name="rng")
    with pytest.raises(TypeError, match="seed must be an int or None, got bool"):
        resolve_generator(None, True, "cpu")


def test_one_definition_serves_the_library():
    """ops and the regularizers use these very functions (no second copy to drift)."""
    from flowtriton.ops import validation
    from flowtriton.regularizers import common

    assert validation.check_choice is checks.check_choice
    assert common.check_seed is checks.check_seed


def test_attacks_refuse_a_generator_and_a_seed_together():
    """The attacks take their checkers from flowtriton.checks: a generator and a seed together is
    a ValueError at construction, not a silent choice of one."""
    from flowtriton.attacks import FlowPGD, RandomFlow, RotationTranslation

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 3))
    for make in (lambda **kw: FlowPGD(model, **kw), lambda **kw: RandomFlow(model, **kw),
                 lambda **kw: RotationTranslation(model, random_samples=4, **kw)):
        with pytest.raises(ValueError, match="generator or seed"):
            make(generator=torch.Generator(), seed=1)
        with pytest.raises(TypeError, match="generator must be a torch.Generator"):
            make(generator=3)
