"""Scalar argument checks, one home for the whole library: numbers, whole numbers, choices, seeds,
and the seed-or-generator helper.

Every check returns the value in its plain Python form (a float, an int, the choice, the seed)
and raises naming the argument: a TypeError for a value of the wrong kind (a string, a bool where
a number is meant), a ValueError for a value of the right kind outside its range. Tensor checks
(images, flows, labels) live beside the code that takes tensors (:mod:`flowtriton.ops.validation`,
:mod:`flowtriton.regularizers.common`, :mod:`flowtriton.attacks.base`).
"""

from __future__ import annotations

import math
import numbers

import torch

#: What ``torch.Generator.manual_seed`` accepts.
SEED_MIN, SEED_MAX = -(2**63), 2**64 - 1


def _show(bound) -> str:
    """A bound as the message shows it: ``0``, ``0.5``, ``2**63``, ``2**64 - 1``, ``-2**63``."""
    if isinstance(bound, int) and abs(bound) >= 2**32:
        sign = "-" if bound < 0 else ""
        size = abs(bound)
        if size & (size - 1) == 0:
            return f"{sign}2**{size.bit_length() - 1}"
        if (size + 1) & size == 0:
            return f"{sign}2**{size.bit_length()} - 1"
        return str(bound)
    return f"{bound:g}" if isinstance(bound, float) else str(bound)


def _range_text(minimum, maximum, strict: bool, strict_maximum: bool) -> str:
    """' >= 0', ' > 0', ' <= 1', ' in [0, 1)' or '' for no bound."""
    if minimum is not None and maximum is not None:
        return (f" in {'(' if strict else '['}{_show(minimum)}, {_show(maximum)}"
                f"{')' if strict_maximum else ']'}")
    if minimum is not None:
        return f" {'>' if strict else '>='} {_show(minimum)}"
    if maximum is not None:
        return f" {'<' if strict_maximum else '<='} {_show(maximum)}"
    return ""


def _outside(value, minimum, maximum, strict: bool, strict_maximum: bool) -> bool:
    if minimum is not None and (value < minimum or (strict and value == minimum)):
        return True
    return maximum is not None and (value > maximum or (strict_maximum and value == maximum))


def check_number(value, name: str, minimum: float | None = 0.0, maximum: float | None = None, *,
                 strict: bool = False, strict_maximum: bool = False, allow_inf: bool = False) -> float:
    """``value`` as a float: a real number (ints and numpy scalars included; bools and strings
    refused) within ``[minimum, maximum]`` -- ``> minimum`` when ``strict``, ``< maximum`` when
    ``strict_maximum``; None: no bound on that side. NaN is always refused, +-inf unless
    ``allow_inf`` (then the bounds still apply). TypeError / ValueError naming ``name``, e.g.
    ``lr must be a finite number > 0, got nan``."""
    where = _range_text(minimum, maximum, strict, strict_maximum)
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number{where}, got {type(value).__name__} {value!r}")
    number = float(value)
    if math.isnan(number) or (math.isinf(number) and not allow_inf) \
            or _outside(number, minimum, maximum, strict, strict_maximum):
        what = "a number" if allow_inf else "a finite number"
        extra = " (inf allowed)" if allow_inf else ""
        raise ValueError(f"{name} must be {what}{where}{extra}, got {number!r}")
    return number


def check_int(value, name: str, minimum: int | None = 1, maximum: int | None = None, *,
              strict_maximum: bool = False) -> int:
    """``value`` as an int: an integer (numpy integers included; bools, floats and strings
    refused) in ``[minimum, maximum]`` (``< maximum`` when ``strict_maximum``; None: no bound on
    that side). TypeError / ValueError naming ``name``, e.g. ``steps must be a whole number >= 1,
    got 0``."""
    where = _range_text(minimum, maximum, False, strict_maximum)
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be a whole number{where}, got {type(value).__name__} {value!r}")
    number = int(value)
    if _outside(number, minimum, maximum, False, strict_maximum):
        raise ValueError(f"{name} must be a whole number{where}, got {number!r}")
    return number


def check_choice(value, choices, name: str):
    """``value`` if it is one of ``choices``, else a ValueError naming ``name`` and the choices (a
    bool is never a choice: ``True == 1``)."""
    if isinstance(value, bool) or value not in choices:
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {value!r}")
    return value


def check_seed(seed, name: str = "seed") -> int | None:
    """``seed`` as a Python int (None stays None): any integer, numpy's included, in
    [-2**63, 2**64 - 1] (``torch.Generator.manual_seed``'s range); TypeError for a bool or a
    non-integer, ValueError outside that range, both naming ``name``."""
    if seed is None:
        return None
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"{name} must be an int or None, got {type(seed).__name__} {seed!r}")
    seed = int(seed)
    if not SEED_MIN <= seed <= SEED_MAX:
        raise ValueError(f"{name} must lie in [{_show(SEED_MIN)}, {_show(SEED_MAX)}] (torch.Generator's range), "
                         f"got {seed}")
    return seed


def check_generator(generator, seed=None, name: str = "generator", seed_name: str = "seed"):
    """``generator`` (a ``torch.Generator`` or None) once it is known not to come with a seed:
    ValueError when both are given, TypeError for anything but a generator."""
    if generator is not None and seed is not None:
        raise ValueError(f"give either {name} or {seed_name}, not both (got {name}={generator!r}, "
                         f"{seed_name}={seed!r})")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"{name} must be a torch.Generator, got {type(generator).__name__}")
    return generator


def resolve_generator(generator=None, seed=None, device: torch.device | str | None = None,
                      name: str = "generator") -> torch.Generator | None:
    """The generator random draws come from: ``generator`` when given, else a new one on
    ``device`` (default the CPU) seeded with ``seed``, else None (torch's global generator, so
    ``torch.manual_seed`` reproduces a run). Both given: ValueError; a ``generator`` that is not a
    ``torch.Generator``: TypeError; a bad ``seed``: as :func:`check_seed`."""
    generator = check_generator(generator, seed, name)
    if generator is not None:
        return generator
    seed = check_seed(seed)
    if seed is None:
        return None
    return torch.Generator(device=device if device is not None else "cpu").manual_seed(seed)
