"""surgeon's kernels as TensorRT Python plugins (`tensorrt.plugin`, TensorRT 10.7+), launched via ctypes.

Importing this module registers `surgeon::GridSample2D`, `surgeon::MultiScaleDeformableAttn`,
`surgeon::Rotate`, `surgeon::DeformableAggregation` and `surgeon::BEVPool` with TensorRT's plugin
registry; each `impl` calls the C API of libsurgeon_plugins.so on TensorRT's stream. It imports only
where `tensorrt` does.

    import surgeon.plugins.trt_python  # noqa: F401  (before parsing the ONNX model)

Use it *instead of* loading the library's C++ IPluginV3 plugins into the same process: both register
the same names.
"""
from __future__ import annotations

import functools
from typing import Tuple

import tensorrt as trt
import tensorrt.plugin as trtp

from surgeon.plugins.build_lib import DTYPES, load_library

NAMESPACE = "surgeon"


@functools.lru_cache(maxsize=1)
def _library():
    return load_library()


def _dtype(tensor) -> int:
    return DTYPES["float16" if tensor.dtype == trt.DataType.HALF else "float32"]


def _desc(dims: tuple, dtype) -> trtp.TensorDesc:
    """An output descriptor from symbolic (or constant) dimensions."""
    return trtp.from_shape_expr(trtp.ShapeExprs.from_tuple(dims), dtype=dtype)


def _launch(function: str, tensor, *args) -> None:
    status = getattr(_library(), function)(_dtype(tensor), *args)
    if status != 0:
        raise RuntimeError(f"{function} failed with cudaError {status}")


@trtp.register(f"{NAMESPACE}::GridSample2D")
def grid_sample_2d_desc(input: trtp.TensorDesc, grid: trtp.TensorDesc, interpolation_mode: int, padding_mode: int,
                        align_corners: int) -> trtp.TensorDesc:
    return _desc((input.shape_expr[0], input.shape_expr[1], grid.shape_expr[1], grid.shape_expr[2]),
                                dtype=input.dtype)


@trtp.impl(f"{NAMESPACE}::GridSample2D")
def grid_sample_2d_impl(input: trtp.Tensor, grid: trtp.Tensor, interpolation_mode: int, padding_mode: int,
                        align_corners: int, outputs: Tuple[trtp.Tensor], stream: int) -> None:
    n, c, h, w = input.shape
    _launch("surgeon_grid_sample_2d", input, input.data_ptr, grid.data_ptr, outputs[0].data_ptr, n, c, h, w,
            grid.shape[1], grid.shape[2], interpolation_mode, padding_mode, align_corners, stream)


@trtp.register(f"{NAMESPACE}::MultiScaleDeformableAttn")
def msda_desc(value: trtp.TensorDesc, spatial_shapes: trtp.TensorDesc, level_start_index: trtp.TensorDesc,
              sampling_locations: trtp.TensorDesc, attention_weights: trtp.TensorDesc) -> trtp.TensorDesc:
    return _desc((value.shape_expr[0], sampling_locations.shape_expr[1],
                                 value.shape_expr[2] * value.shape_expr[3]), dtype=value.dtype)


@trtp.impl(f"{NAMESPACE}::MultiScaleDeformableAttn")
def msda_impl(value: trtp.Tensor, spatial_shapes: trtp.Tensor, level_start_index: trtp.Tensor,
              sampling_locations: trtp.Tensor, attention_weights: trtp.Tensor, outputs: Tuple[trtp.Tensor],
              stream: int) -> None:
    batch, keys, heads, channels = value.shape
    _launch("surgeon_msda", value, value.data_ptr, spatial_shapes.data_ptr, level_start_index.data_ptr,
            sampling_locations.data_ptr, attention_weights.data_ptr, outputs[0].data_ptr, batch, keys, heads, channels,
            spatial_shapes.shape[0], sampling_locations.shape[1], sampling_locations.shape[4], stream)


@trtp.register(f"{NAMESPACE}::Rotate")
def rotate_desc(input: trtp.TensorDesc, angle: trtp.TensorDesc, center: trtp.TensorDesc,
                interpolation_mode: int) -> trtp.TensorDesc:
    return input.like()


@trtp.impl(f"{NAMESPACE}::Rotate")
def rotate_impl(input: trtp.Tensor, angle: trtp.Tensor, center: trtp.Tensor, interpolation_mode: int,
                outputs: Tuple[trtp.Tensor], stream: int) -> None:
    shape = tuple(input.shape)
    n, c, h, w = shape if len(shape) == 4 else (1, *shape)
    _launch("surgeon_rotate", input, input.data_ptr, angle.data_ptr, center.data_ptr, outputs[0].data_ptr, n, c, h, w,
            interpolation_mode, stream)


@trtp.register(f"{NAMESPACE}::DeformableAggregation")
def deformable_aggregation_desc(mc_ms_feat: trtp.TensorDesc, spatial_shape: trtp.TensorDesc,
                                scale_start_index: trtp.TensorDesc, sampling_location: trtp.TensorDesc,
                                weights: trtp.TensorDesc) -> trtp.TensorDesc:
    return _desc((mc_ms_feat.shape_expr[0], sampling_location.shape_expr[1], mc_ms_feat.shape_expr[2]),
                                dtype=mc_ms_feat.dtype)


@trtp.impl(f"{NAMESPACE}::DeformableAggregation")
def deformable_aggregation_impl(mc_ms_feat: trtp.Tensor, spatial_shape: trtp.Tensor, scale_start_index: trtp.Tensor,
                                sampling_location: trtp.Tensor, weights: trtp.Tensor, outputs: Tuple[trtp.Tensor],
                                stream: int) -> None:
    batch, features, channels = mc_ms_feat.shape
    _, anchors, points, cams, _ = sampling_location.shape
    _launch("surgeon_deformable_aggregation", mc_ms_feat, mc_ms_feat.data_ptr, spatial_shape.data_ptr,
            scale_start_index.data_ptr, sampling_location.data_ptr, weights.data_ptr, outputs[0].data_ptr, batch,
            features, channels, cams, spatial_shape.shape[1], anchors, points, weights.shape[5], stream)


@trtp.register(f"{NAMESPACE}::BEVPool")
def bev_pool_desc(depth: trtp.TensorDesc, feat: trtp.TensorDesc, ranks_depth: trtp.TensorDesc,
                  ranks_feat: trtp.TensorDesc, ranks_bev: trtp.TensorDesc, interval_starts: trtp.TensorDesc,
                  interval_lengths: trtp.TensorDesc, bev_h: int, bev_w: int) -> trtp.TensorDesc:
    return _desc((1, feat.shape_expr[3], bev_h, bev_w), dtype=depth.dtype)  # as the C++ plugin and the spec


@trtp.impl(f"{NAMESPACE}::BEVPool")
def bev_pool_impl(depth: trtp.Tensor, feat: trtp.Tensor, ranks_depth: trtp.Tensor, ranks_feat: trtp.Tensor,
                  ranks_bev: trtp.Tensor, interval_starts: trtp.Tensor, interval_lengths: trtp.Tensor, bev_h: int,
                  bev_w: int, outputs: Tuple[trtp.Tensor], stream: int) -> None:
    _launch("surgeon_bev_pool", depth, depth.data_ptr, feat.data_ptr, ranks_depth.data_ptr, ranks_feat.data_ptr,
            ranks_bev.data_ptr, interval_starts.data_ptr, interval_lengths.data_ptr, outputs[0].data_ptr,
            interval_starts.shape[0], feat.shape[3], bev_h, bev_w, stream)
