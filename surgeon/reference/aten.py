"""CPU references of the ATen fallback ops and the custom grid-sampler ops found in exported BEV models.

Each function receives the node's inputs as NumPy arrays (ATen passes its scalar arguments as
constant inputs) and its attributes as Python values; it returns one array per node output. Every
reference matches PyTorch (tested in tests/test_reference_aten.py).
"""
from __future__ import annotations

import numpy as np

from surgeon.reference import reference_op
from surgeon.reference.numpy_ops import grid_sample, multi_scale_deformable_attention

ATEN = "org.pytorch.aten"


def _scalar(value, default=None):
    """A Python scalar from an optional constant input (None or an empty tensor means 'not given')."""
    if value is None or np.size(value) == 0:
        return default
    return np.asarray(value).reshape(-1)[0].item()


@reference_op("ATen", domain=ATEN, operator="grid_sampler")
def aten_grid_sampler(inputs, attrs):
    x, grid, mode, padding, align = inputs[:5]
    return [grid_sample(x, grid, int(_scalar(mode, 0)), int(_scalar(padding, 0)), bool(_scalar(align, False)))]


@reference_op("grid_sampler", domain="mmdeploy")
def mmdeploy_grid_sampler(inputs, attrs):
    x, grid = inputs[:2]
    return [grid_sample(x, grid, int(attrs.get("interpolation_mode", 0)), int(attrs.get("padding_mode", 0)),
                        bool(attrs.get("align_corners", 0)))]


@reference_op("GridSampler2DTRT")
def grid_sampler_2d_trt(inputs, attrs):
    """BEVFormer_tensorrt's plugin: the grid arrives as [N, 2, Ho, Wo] holding 10x the normalised coordinates."""
    x, grid = inputs[:2]
    grid = np.transpose(grid, (0, 2, 3, 1)) / grid.dtype.type(10)
    return [grid_sample(x, grid, int(attrs.get("interpolation_mode", 0)), int(attrs.get("padding_mode", 0)),
                        bool(attrs.get("align_corners", 0)))]


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
# torch.maximum/minimum propagate NaN, as np.maximum/np.minimum do.
_register_binary(("maximum",), np.maximum)
_register_binary(("minimum",), np.minimum)


@reference_op("ATen", domain=ATEN, operator="atan2")
def aten_atan2(inputs, attrs):
    y, x = np.asarray(inputs[0]), np.asarray(inputs[1])
    dtype = np.result_type(y, x)
    return [np.arctan2(y, x).astype(dtype if dtype.kind == "f" else np.float32)]


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
