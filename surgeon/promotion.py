"""torch's type promotion for the elementwise ATen ops the passes rewrite (maximum, atan2, ...): the
dtype torch computes a node in (`Rewrite.cast` then brings the operands there)."""
from __future__ import annotations

import itertools

import numpy as np

from surgeon.rewrite import dtype_of

#: torch's floating types, narrowest first (float16 and bfloat16 promote to float32, see _promote).
TORCH_FLOATS = ("float16", "bfloat16", "float32", "float64")
#: Non-float types torch promotes with each other (uint16/32/64 promote with floats only).
TORCH_PROMOTABLE = ("bool", "uint8", "int8", "int16", "int32", "int64")


def aten_result_dtype(node) -> np.dtype | None:
    """The dtype torch computes an elementwise ATen node in: its output's recorded type (the exporter
    writes what torch returned), else torch.result_type of its first two inputs; None when unknown."""
    recorded = dtype_of(node.outputs[0])
    return recorded if recorded is not None else torch_result_type(node.inputs[:2])


def torch_result_type(tensors) -> np.dtype | None:
    """torch.result_type of tensors (not Python scalars), or None where a dtype is unknown, torch refuses
    the pair (uint16 with int8), or the answer hangs on a rank that is unknown.

    As in torch, 0-d tensors count only when their category (bool < integer < float) is above that of
    every dimensioned tensor: maximum(int32[n], int64[]) is int32, maximum(int32[n], float64[]) float64.
    """
    dtypes = [dtype_of(t) for t in tensors]
    if any(dtype is None for dtype in dtypes):  # not `None in dtypes`: np.dtype("float64") == None is True
        return None
    if len(set(dtypes)) == 1:
        return dtypes[0]
    ranks = [None if t.shape is None else len(t.shape) for t in tensors]
    unknown = [i for i, rank in enumerate(ranks) if rank is None]
    # Each unknown rank is tried as 0-d and as dimensioned: the answer stands only if all agree.
    answers = set()
    for guess in itertools.product((False, True), repeat=len(unknown)):
        zero_d = [rank == 0 for rank in ranks]
        for i, is_zero_d in zip(unknown, guess):
            zero_d[i] = is_zero_d
        try:
            answers.add(_combine_categories(_promote_all(d for d, z in zip(dtypes, zero_d) if not z),
                                            _promote_all(d for d, z in zip(dtypes, zero_d) if z)))
        except TypeError:  # torch refuses the pair
            return None
    return answers.pop() if len(answers) == 1 else None


def _combine_categories(dimensioned, zero_d):
    """c10's combine_categories: a 0-d dtype wins only from a lower category (none < bool < int < float)."""
    if dimensioned is None or zero_d is None:
        return zero_d if dimensioned is None else dimensioned
    if dimensioned.name in TORCH_FLOATS:
        return dimensioned
    if dimensioned == np.bool_ or zero_d.name in TORCH_FLOATS:
        return _promote(dimensioned, zero_d)
    return dimensioned


def _promote_all(dtypes):
    """torch.promote_types over `dtypes`; None for none."""
    result = None
    for dtype in dtypes:
        result = dtype if result is None else _promote(result, dtype)
    return result


def _promote(a, b):
    """torch.promote_types(a, b); TypeError where torch raises."""
    if a == b:
        return a
    a_float, b_float = a.name in TORCH_FLOATS, b.name in TORCH_FLOATS
    if a_float and b_float:
        if {a.name, b.name} == {"float16", "bfloat16"}:
            return np.dtype(np.float32)
        return max(a, b, key=lambda d: TORCH_FLOATS.index(d.name))
    if a_float or b_float:
        return a if a_float else b
    if a.name not in TORCH_PROMOTABLE or b.name not in TORCH_PROMOTABLE:
        raise TypeError(f"torch does not promote {a} with {b}")
    return np.promote_types(a, b)  # NumPy and torch agree here: uint8 with int8 is int16, bool with int8 int8

