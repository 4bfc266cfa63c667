"""What a `validate:` section's values may be, beyond their declared types (`recipe.VALIDATE_FIELDS`).

A type check lets through values validation cannot use: a NaN tolerance (every comparison with NaN
is false, so nothing ever fails), a negative one (nothing ever passes), a quantile outside [0, 1], no
input sets, a seed NumPy refuses, an input shape with a negative dimension. `check_validate_value`
refuses them with a ValueError saying why; the recipe loader adds the file, line and key, `surgeon
compare` the option. This module does not import Polygraphy, so loading a recipe stays cheap.
"""
from __future__ import annotations

import math

#: NumPy's (and so Polygraphy's data loader's) seeds: 0 to 2**32 - 1.
MAX_SEED = 2**32 - 1
INPUT_KEYS = ("shape", "dtype", "range")


def check_validate_value(key: str, value) -> None:
    """Raise ValueError when `value` (already of the declared type) is no use as validate.`key`."""
    check = _CHECKS.get(key)
    if check is not None and value is not None:
        check(value)


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _tolerance(value) -> None:
    if isinstance(value, dict):
        for output, tol in value.items():
            if not isinstance(output, str):
                raise ValueError(f"output names must be strings, got {type(output).__name__} {output!r}")
            what = "the default tolerance ('')" if output == "" else f"the tolerance of output '{output}'"
            _finite_non_negative(tol, what)
    else:
        _finite_non_negative(value, "a tolerance")


def _finite_non_negative(value, what: str) -> None:
    if not _number(value) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{what} must be a finite number >= 0, got {value!r}")


def _quantile(value) -> None:
    if not _number(value) or not 0 <= value <= 1:  # NaN fails both comparisons
        raise ValueError(f"must be between 0 and 1, got {value!r}")


def _iterations(value) -> None:
    if value < 1:
        raise ValueError(f"must be at least 1, got {value!r}")


def _seed(value) -> None:
    if not 0 <= value <= MAX_SEED:
        raise ValueError(f"must be between 0 and {MAX_SEED} (2**32 - 1), got {value!r}")


def _inputs(value) -> None:
    for name, spec in value.items():
        if spec is None:  # `img:` with nothing under it: the model's own shape and dtype
            continue
        if not isinstance(spec, dict):
            raise ValueError(f"{name} must be a mapping with keys {', '.join(INPUT_KEYS)}, got {spec!r}")
        unknown = [k for k in spec if k not in INPUT_KEYS]
        if unknown:
            raise ValueError(f"{name} has unknown key '{unknown[0]}' (allowed: {', '.join(INPUT_KEYS)})")
        shape, dtype, bounds = spec.get("shape"), spec.get("dtype"), spec.get("range")
        if shape is not None and (not isinstance(shape, (list, tuple)) or not all(
                isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)):
            raise ValueError(f"{name}.shape must be a list of dimensions >= 0, got {shape!r}")
        if dtype is not None:
            check_dtype_name(dtype, f"{name}.dtype")
        if bounds is not None and (not isinstance(bounds, (list, tuple)) or len(bounds) != 2
                                   or not all(_number(b) and math.isfinite(b) for b in bounds)
                                   or bounds[0] > bounds[1]):
            raise ValueError(f"{name}.range must be [low, high], finite numbers with low <= high, got {bounds!r}")


#: dtype kinds random inputs can have: booleans, integers, floats.
_DTYPE_KINDS = "biuf"


def check_dtype_name(value, what: str):
    """The NumPy dtype `value` names, when random inputs can have it; else ValueError naming `what`."""
    import numpy as np

    try:
        dtype = np.dtype(value) if isinstance(value, str) else None
    except TypeError:
        dtype = None
    if dtype is None or dtype.kind not in _DTYPE_KINDS:
        raise ValueError(f"{what}: {value!r} is not a dtype random inputs can have "
                         "(e.g. float32, float16, int64, int32, uint8, bool)")
    return dtype


_CHECKS = {"atol": _tolerance, "rtol": _tolerance, "quantile": _quantile, "iterations": _iterations,
           "seed": _seed, "inputs": _inputs}
