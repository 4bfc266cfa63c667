"""CPU references of the ATen fallback ops and the custom grid-sampler, Atan2 and inverse ops found in exported BEV
models.

Each function receives the node's inputs as NumPy arrays (ATen passes its scalar arguments as
constant inputs) and its attributes as Python values; it returns one array per node output. Every
reference matches PyTorch (tested in tests/test_reference_aten.py).
"""
from __future__ import annotations

import numpy as np

from surgeon.promotion import torch_result_type
from surgeon.reference import ANY_DOMAIN, reference_op
from surgeon.reference.numpy_ops import grid_sample, multi_scale_deformable_attention
from surgeon.sampling import ATEN_OPERATORS, TRT_GRID_SCALE, TRT_OPS

ATEN = "org.pytorch.aten"


def _scalar(value, default=None):
    """A Python scalar from an optional constant input (None or an empty tensor means 'not given')."""
    if value is None or np.size(value) == 0:
        return default
    return np.asarray(value).reshape(-1)[0].item()


#: torch's grid_sampler_2d / grid_sampler_3d take the inputs of grid_sampler but refuse any other input rank.
_ATEN_SAMPLER_RANK = {"grid_sampler": None, "grid_sampler_2d": 4, "grid_sampler_3d": 5}


def _aten_grid_sampler(operator: str):
    def reference(inputs, attrs):
        x, grid, mode, padding, align = inputs[:5]
        rank = _ATEN_SAMPLER_RANK[operator]
        if rank is not None and np.ndim(x) != rank:
            raise ValueError(f"{operator} needs a {rank}-D input, got shape {np.shape(x)}")
        return [grid_sample(x, grid, int(_scalar(mode, 0)), int(_scalar(padding, 0)), bool(_scalar(align, False)))]

    return reference


for _operator in ATEN_OPERATORS:
    reference_op("ATen", domain=ATEN, operator=_operator)(_aten_grid_sampler(_operator))


@reference_op("grid_sampler", domain="mmdeploy")
def mmdeploy_grid_sampler(inputs, attrs):
    return [_sample_by_attributes(inputs[0], inputs[1], attrs)]


def _sample_by_attributes(x, grid, attrs):
    """grid_sample with torch's codes for mode, padding and alignment read from attributes (mmdeploy,
    BEVFormer_tensorrt)."""
    return grid_sample(x, grid, int(attrs.get("interpolation_mode", 0)), int(attrs.get("padding_mode", 0)),
                       bool(attrs.get("align_corners", 0)))


def _trt_grid_sampler(op_type: str):
    """BEVFormer_tensorrt's plugins: the grid arrives as [N, 2, Ho, Wo] ([N, 3, Do, Ho, Wo]) holding 10x the
    normalised coordinates; their PyTorch forward does `grid.permute(0, 2, 3, 1) / 10` (3-D: (0, 2, 3, 4, 1))."""
    rank = TRT_OPS[op_type] + 2

    def reference(inputs, attrs):
        x, grid = inputs[:2]
        if np.ndim(grid) != rank:  # the forward's permute refuses it
            raise ValueError(f"{op_type} needs a {rank}-D grid, got shape {np.shape(grid)}")
        grid = np.transpose(grid, (0, *range(2, rank), 1)) / grid.dtype.type(TRT_GRID_SCALE)
        return [_sample_by_attributes(x, grid, attrs)]

    return reference


for _op_type in TRT_OPS:
    reference_op(_op_type)(_trt_grid_sampler(_op_type))


@reference_op("MMCVMultiScaleDeformableAttention", domain="mmcv")
def mmcv_multi_scale_deformable_attention(inputs, attrs):
    value, spatial_shapes, _level_start_index, sampling_locations, attention_weights = inputs[:5]
    return [multi_scale_deformable_attention(value, spatial_shapes, sampling_locations, attention_weights)]


def _register_binary(operators, fn):
    for operator in operators:
        reference_op("ATen", domain=ATEN, operator=operator)(lambda inputs, attrs: [fn(inputs[0], inputs[1])])


# In-place and plain bitwise ops: logical on bool tensors, bitwise on integers (as torch).
_register_binary(("__iand_", "__and_", "bitwise_and"), np.bitwise_and)
_register_binary(("__ior_", "__or_", "bitwise_or"), np.bitwise_or)
_register_binary(("__ixor_", "__xor_", "bitwise_xor"), np.bitwise_xor)
# torch.logical_*: operands read as bool (non-zero, NaN included, is true), result bool.
_register_binary(("logical_and",), np.logical_and)
_register_binary(("logical_or",), np.logical_or)
_register_binary(("logical_xor",), np.logical_xor)


def _in_torch_result_type(a, b) -> tuple[np.ndarray, np.ndarray]:
    """Both operands cast to the dtype torch computes a binary elementwise op in (torch.result_type, with
    its 0-d rule: maximum(int32[n], int64[]) is int32), which NumPy's promotion does not follow."""
    a, b = np.asarray(a), np.asarray(b)
    dtype = torch_result_type([a, b])  # reads .dtype and .shape, which NumPy arrays have
    if dtype is None:
        raise ValueError(f"torch does not promote {a.dtype} with {b.dtype}")
    return a.astype(dtype, copy=False), b.astype(dtype, copy=False)


def _promoting(fn):
    return lambda inputs, attrs: [fn(*_in_torch_result_type(inputs[0], inputs[1]))]


# torch.maximum/minimum propagate NaN, as np.maximum/np.minimum do; torch.fmax/fmin return the non-NaN
# operand (NaN only where both are), as np.fmax/np.fmin do.
_ELEMENTWISE_MAX_MIN = {"maximum": np.maximum, "minimum": np.minimum, "fmax": np.fmax, "fmin": np.fmin}
for _operator, _fn in _ELEMENTWISE_MAX_MIN.items():
    reference_op("ATen", domain=ATEN, operator=_operator)(_promoting(_fn))


def _max_min(name: str, elementwise, arg_reduce):
    """torch.max / torch.min by overload: `other` is maximum/minimum; `` reduces the whole tensor; `dim`
    returns (values, int64 indices) along a dim. A NaN wins, and ties go to the first index, as in torch."""
    other = _promoting(elementwise)

    def reference(inputs, attrs):
        overload = attrs.get("overload_name", "")
        if overload == "other":
            return other(inputs, attrs)
        x = np.asarray(inputs[0])
        if overload == "":
            return [np.asarray(x.reshape(-1)[arg_reduce(x)])]
        if overload == "dim":
            dim = int(_scalar(inputs[1]))
            keepdim = bool(_scalar(inputs[2], False)) if len(inputs) > 2 else False
            indices = np.expand_dims(arg_reduce(x, axis=dim), dim)
            values = np.take_along_axis(x, indices, axis=dim)
            if not keepdim:
                values, indices = values.squeeze(dim), indices.squeeze(dim)
            return [values, indices.astype(np.int64)]
        raise ValueError(f"ATen {name} overload {overload!r} has no CPU reference (known: '', 'dim', 'other')")

    return reference


reference_op("ATen", domain=ATEN, operator="max")(_max_min("max", np.maximum, np.argmax))
reference_op("ATen", domain=ATEN, operator="min")(_max_min("min", np.minimum, np.argmin))


@reference_op("ATen", domain=ATEN, operator="atan2")
@reference_op("Atan2", domain=ANY_DOMAIN)
def atan2(inputs, attrs):
    """torch.atan2(y, x) in torch's result type (float16 with float32 is float32, int64 with float32 is
    float32, integers alone torch's default float32). float16 is computed in float32 and rounded once, as
    torch does. Where an operand is ±0, ±inf or NaN the result is torch's exactly (IEEE atan2); elsewhere
    torch's CPU kernel and NumPy's libm round differently, by up to 3 float32 ulp."""
    y, x = np.asarray(inputs[0]), np.asarray(inputs[1])
    dtype = torch_result_type([y, x])
    if dtype is None:
        raise ValueError(f"torch does not promote {y.dtype} with {x.dtype}")
    if dtype.kind != "f":
        dtype = np.dtype(np.float32)
    computed_in = np.float64 if dtype == np.float64 else np.float32
    return [np.asarray(np.arctan2(y.astype(computed_in), x.astype(computed_in))).astype(dtype)]


@reference_op("ATen", domain=ATEN, operator="linspace")
def aten_linspace(inputs, attrs):
    """torch.linspace: the first half steps up from `start`, the second half steps down from `end`."""
    start, end, steps = (_scalar(v) for v in inputs[:3])
    steps = int(steps)
    float64 = any(np.asarray(v).dtype == np.float64 for v in inputs[:2])
    dtype = np.float64 if float64 else np.float32
    if steps == 1:
        return [np.array([start], dtype=dtype)]
    step = (dtype(end) - dtype(start)) / dtype(steps - 1)
    index = np.arange(steps, dtype=dtype)
    half = steps // 2
    values = np.where(np.arange(steps) < half, dtype(start) + index * step,
                      dtype(end) - (dtype(steps - 1) - index) * step)
    return [values.astype(dtype)]


def _inverse(inputs, attrs):
    return [np.linalg.inv(inputs[0]).astype(inputs[0].dtype)]


for _operator in ("inverse", "linalg_inv"):
    reference_op("ATen", domain=ATEN, operator=_operator)(_inverse)
# BEVFormer_tensorrt's plugin (default domain, no attributes): its PyTorch forward is torch.linalg.inv.
reference_op("InverseTRT")(_inverse)


@reference_op("ATen", domain=ATEN, operator="nan_to_num")
def aten_nan_to_num(inputs, attrs):
    x = np.asarray(inputs[0])
    rest = list(inputs[1:4]) + [None] * (3 - len(inputs[1:4]))
    nan, posinf, neginf = (_scalar(v) for v in rest)
    return [np.nan_to_num(x, nan=0.0 if nan is None else nan, posinf=posinf, neginf=neginf)]


def _reduce(fn):
    def reference(inputs, attrs):
        x = np.asarray(inputs[0])
        dim = _scalar(inputs[1]) if len(inputs) > 1 else None
        keepdim = bool(_scalar(inputs[2], False)) if len(inputs) > 2 else False
        # torch.any/all return bool, except on uint8 input where they keep uint8.
        out = fn(x, axis=None if dim is None else int(dim), keepdims=keepdim)
        return [np.asarray(out, dtype=np.uint8 if x.dtype == np.uint8 else bool)]

    return reference


reference_op("ATen", domain=ATEN, operator="any")(_reduce(np.any))
reference_op("ATen", domain=ATEN, operator="all")(_reduce(np.all))


@reference_op("ATen", domain=ATEN, operator="unflatten")
def aten_unflatten(inputs, attrs):
    """torch.unflatten(x, dim, sizes): split one axis into `sizes` (one entry may be -1)."""
    x, dim, sizes = np.asarray(inputs[0]), int(_scalar(inputs[1])), [int(s) for s in np.ravel(inputs[2])]
    dim = dim % x.ndim
    return [x.reshape(x.shape[:dim] + tuple(sizes) + x.shape[dim + 1:])]
