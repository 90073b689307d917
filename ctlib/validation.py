"""Range checks of settings (methods' ``XSettings`` and ``RunConfig``), done when they are built.

``check_settings(owner, checks)`` takes ``(name, value, ok, rule)`` tuples and raises one ValueError
listing every setting that is not ok as ``name=value (must be rule)``. The small constructors below
build such tuples for the usual kinds of setting; they never raise on a value of the wrong type (it is
simply not ok), so ``K=2.5`` or ``lr="0.1"`` is reported like any out-of-range value.
"""
from __future__ import annotations

import math
import numbers
from typing import Iterable

Check = tuple  # (name, value, ok: bool, rule: str — what the value must be)


def check_settings(owner: str, checks: Iterable[Check]) -> None:
    bad = [f"{name}={value!r} (must be {rule})" for name, value, ok, rule in checks if not ok]
    if bad:
        raise ValueError(f"invalid {owner} setting(s): " + "; ".join(bad))


def is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_real(value) -> bool:
    """A finite number (an int or a float; not a bool)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def integer(name: str, value, lo: int | None = None, hi: int | None = None, none: bool = False) -> Check:
    """An integer in [lo, hi] (either bound may be left out); ``none``: None is also accepted."""
    ok = (none and value is None) or (is_int(value) and (lo is None or value >= lo) and (hi is None or value <= hi))
    if lo is not None and hi is not None:
        rule = f"an integer in [{lo}, {hi}]"
    else:
        rule = "an integer" + (f" >= {lo}" if lo is not None else f" <= {hi}" if hi is not None else "")
    return name, value, bool(ok), ("None or " if none else "") + rule


def real(name: str, value, lo: float | None = None, hi: float | None = None, lo_open: bool = False,
         hi_open: bool = False, none: bool = False) -> Check:
    """A finite number in the interval from lo to hi, each end closed unless ``*_open``."""
    ok = (none and value is None) or (
        is_real(value) and (lo is None or (value > lo if lo_open else value >= lo))
        and (hi is None or (value < hi if hi_open else value <= hi)))
    if lo is not None and hi is not None:
        rule = f"in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
    elif lo is not None:
        rule = f"a finite number {'>' if lo_open else '>='} {lo}"
    elif hi is not None:
        rule = f"a finite number {'<' if hi_open else '<='} {hi}"
    else:
        rule = "a finite number"
    return name, value, bool(ok), ("None or " if none else "") + rule


def flag(name: str, value) -> Check:
    return name, value, isinstance(value, bool), "True or False"


def choice(name: str, value, choices: Iterable) -> Check:
    choices = list(choices)
    ok = any(type(value) is type(c) and value == c for c in choices)
    return name, value, ok, f"one of {choices}"
