"""Rewrite mmcv's multi-scale deformable attention into one gather and one batched MatMul of opset-11 ops.

Recognised: the block that `multi_scale_deformable_attn_pytorch` exports (one grid sampler per level, read as
msda-plugin reads it: surgeon.passes.msda_plugin.match_block), and mmcv's own op
`mmcv::MMCVMultiScaleDeformableAttention(value, spatial_shapes, level_start_index, loc, weights)`.

Before (L levels; value [B, S, M, C], loc [B, Q, M, L, P, 2], weights [B, Q, M, L, P])::

    per level: value_l ─► [B*M, C, h, w] ─► grid sampler(2 * loc - 1) ─► [B*M, C, Q, P] ─┐
    Concat (stack) ─► flatten ─► Mul(weights) ─► ReduceSum(-1) ─► view [B, M*C, Q] ─► Transpose ─► out

After (one table, one gather, one MatMul; output channels-last)::

    value ─► per level: Slice ─► [B, h, w, M, C] ─Pad(1 before, 2 after)─► 4 shifted Slices ─Concat─►
             [B, h+2, w+2, M, 4C] ─► Concat over levels ─Flatten─► table [B*R*M, 4C] (rows: nw|ne|sw|se)
    grid (2 * loc - 1) ─► pixel coordinates per level (grid-sample decompose's unnormalise, NaN guard,
             clip to [-1, size]) ─Floor─► row index [B, Q, M, L*P], corner weights × attention weight
    Gather(table, index) ─► [B, Q, M, L*P*4, C];  MatMul([B, Q, M, 1, L*P*4], that) ─► [B, Q, M*C]

so nothing of sampler size is transposed: the block's final layout is at most a Transpose of the output
(where the exporter merged the block's transpose(1, 2) with a permute after it). The samples equal grid-sample
decompose's: same coordinate ops (its helpers, `fma_emulation` alike), same zero border, so out-of-image
corners read zeros. Only the blend differs from torch: each corner weight is multiplied by its attention
weight before one sum over levels, points and corners (torch: sum the 4 corners, times the attention
weight, sum over levels and points), another float32 rounding order. mmcv's op with locations or weights of
another type than the value's has them Cast to the value's, as mmcv does. docs/passes/msda-decompose.md has
the arithmetic and the benchmark.
"""
from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from surgeon.errors import PassError
from surgeon.pass_api import Param, Pass, PassResult, register_pass
from surgeon.passes.grid_sample import (CORNERS, CastBackToBfloat16, bilinear_corners, check_fma_emulation,
                                        decomposition_note, dtype_name_of, emulates_fma_in_float64, fma_dtype_for,
                                        unnormalise)
from surgeon.passes.msda_plugin import MMCV_OP_TYPE, match_blocks, mmcv_attention_nodes
from surgeon.rewrite import Rewrite, const_value, dtype_of, prune_graph
from surgeon.sampling import batch_row_starts, grid_axis, value_weight


@register_pass("msda-decompose")
class MsdaDecompose(Pass):
    """Rewrite mmcv's deformable-attention sampling (fallback block or mmcv op) into one Gather and one MatMul."""

    params = {
        "fma_emulation": Param(str, "auto", choices=("auto", "float64", "none"),
                               help="float32 locations: torch's fused multiply-adds in the coordinate math, as "
                                    "grid-sample's; float64: Cast/Mul/Sub in float64, rounded once as torch; "
                                    "none: float32 Mul, Sub (two roundings); auto: float64 where the target runs it"),
    }
    needs = ("shapes",)
    provides = ("cleanup",)  # the replaced blocks are pruned
    handles = (f"mmcv::{MMCV_OP_TYPE}",)

    @classmethod
    def check_params_for(cls, values, target):
        check_fma_emulation(cls.name, values["fma_emulation"], target)

    def run(self, graph, ctx):
        self.check_params_for(self.values, ctx.target)  # a Recipe built in code skips load_recipe's check
        in_float64 = emulates_fma_in_float64(self.fma_emulation, ctx.target)
        result = PassResult()
        grid_dtypes: set[str] = set()  # as sampled
        widened: list[str] = []  # the bfloat16 blocks, sampled in float32
        for block in match_blocks(graph, result):
            try:
                dims = static_dims(block.output_node, block.value, block.grid, block.weights, len(block.level_shapes))
            except PassError as exc:  # grid-sample can still decompose the block's samplers one by one
                result.note(f"{exc.message}; left to grid-sample")
                continue
            rw, value, grid, weights = _sampled_in_float32(Rewrite(graph, ctx, block.output_node), block.value,
                                                           block.grid, block.weights, widened)
            keys = np.cumsum([0] + [h * w for h, w in block.level_shapes[:-1]]).tolist()
            # The block's output is [B, M*C, Q] transposed by `perm`, so the fused [B, Q, M*C] transposed by this:
            perm = [[0, 2, 1][axis] for axis in block.perm]
            grid_dtypes.add(emit_fused(rw, value, grid, weights, block.level_shapes, keys, dims, in_float64, perm))
            result.rewrote(block.output_node)
            result.note(f"{block.output_node.name}: {len(block.level_shapes)} level(s) {block.level_shapes}"
                        + _symbolic_channels_note(value))
        for node in mmcv_attention_nodes(graph):
            value, shapes, starts, locations, weights = node.inputs
            level_shapes, keys = _constant_levels(node, shapes, starts)
            dims = static_dims(node, value, locations, weights, len(level_shapes))
            rw = Rewrite(graph, ctx, node)
            locations, weights = _as_value_dtype(rw, value, locations, weights)
            rw, value, locations, weights = _sampled_in_float32(rw, value, locations, weights, widened)
            dtype = np.dtype(dtype_of(locations) or np.float32)  # mmcv: sampling_grids = 2 * sampling_locations - 1
            twice = rw.op("Mul", [locations, rw.const(2.0, "two", dtype)], suffix="twice", dtype=dtype)
            grid = rw.op("Sub", [twice, rw.const(1.0, "one", dtype)], suffix="grid", dtype=dtype)
            grid_dtypes.add(emit_fused(rw, value, grid, weights, level_shapes, keys, dims, in_float64, [0, 1, 2]))
            result.rewrote(node)
            result.note(f"{node.name}: {len(level_shapes)} level(s) {level_shapes}" + _symbolic_channels_note(value))
        if widened:
            result.note(f"sampled {', '.join(widened)} in float32 between Casts from and to bfloat16, as "
                        "grid-sample samples bfloat16 (ONNX has no bfloat16 Where before opset 16)")
        if result.changed:
            result.note(decomposition_note(self.fma_emulation, in_float64, ctx.target, grid_dtypes))
            prune_graph(graph)  # the blocks' own nodes, dead now: gone in this step's op changes, not a later one's
        return result


def _constant_levels(node: gs.Node, shapes: gs.Tensor, starts: gs.Tensor) -> tuple[list[tuple[int, int]], list[int]]:
    """mmcv's op's level sizes and first keys, which the table's layout needs as constants."""
    values = [const_value(t) for t in (shapes, starts)]
    if any(v is None for v in values):
        raise PassError(f"node '{node.name}': msda-decompose needs constant spatial_shapes and level_start_index; "
                        "run fold-constants before this step")
    level_shapes = [(int(h), int(w)) for h, w in np.asarray(values[0]).reshape(-1, 2)]
    keys = [int(k) for k in np.asarray(values[1]).reshape(-1)]
    if len(keys) != len(level_shapes) or any(h <= 0 or w <= 0 for h, w in level_shapes):
        raise PassError(f"node '{node.name}': spatial_shapes {level_shapes} and level_start_index {keys} do not "
                        "describe the same levels")
    return level_shapes, keys


def _as_value_dtype(rw: Rewrite, value: gs.Tensor, locations: gs.Tensor, weights: gs.Tensor):
    """(locations, weights) Cast to value's dtype where theirs differs, as mmcv's op does before its kernel
    (`sampling_locations.type_as(value)`, for amp: float32 locations with a float16 value), so one dtype
    flows through the rewrite and the output has value's, the op's."""
    dtype = dtype_of(value)
    if dtype is None:
        return locations, weights
    return rw.cast(locations, dtype, "locations_as_value"), rw.cast(weights, dtype, "weights_as_value")


def _sampled_in_float32(rw: Rewrite, value: gs.Tensor, grid: gs.Tensor, weights: gs.Tensor, widened: list[str]):
    """(rw, value, grid, weights) to sample with: where one of them is bfloat16, all three Cast to float32 and a
    rewrite whose last node Casts back to bfloat16 (a bfloat16 value), its node's name appended to `widened`, as
    grid-sample's `sampled_in_float32` and torch's CUDA kernel (float32 opmath, one rounding at the end)."""
    names = [dtype_name_of(t) for t in (value, grid, weights)]
    if "bfloat16" not in names:
        return rw, value, grid, weights
    widened.append(rw.node.name or rw.prefix)
    wide = CastBackToBfloat16(rw) if names[0] == "bfloat16" else rw
    return (wide, *(wide.cast(t, np.float32, f"{label}_float32")
                    for t, label in ((value, "value"), (grid, "grid"), (weights, "weights"))))


def emit_fused(rw: Rewrite, value: gs.Tensor, grid: gs.Tensor, weights: gs.Tensor, level_shapes: list[tuple[int, int]],
               keys: list[int], dims: tuple[int, int], fma_in_float64: bool, perm: list[int]) -> str:
    """Finish `rw` with [B, Q, M*C] transposed by `perm`: Σ over levels, points and corners of (corner weight ×
    attention weight) × value row, from value [B, S, M, C] (level l from key keys[l]), grid [B, Q, M, L, P, 2]
    (2 * loc - 1) and weights [B, Q, M, L, P]; `dims` = (M, P) (`static_dims`). Returns the coordinates' dtype
    name (the grid's)."""
    heads, points = dims
    coord_dtype = np.dtype(dtype_of(grid) or np.float32)
    fma_dtype = fma_dtype_for(coord_dtype, fma_in_float64)
    # a row per pixel of the bordered image but its last row and column, per head
    level_rows = [(h + 2) * (w + 2) for h, w in level_shapes]
    first_rows = np.cumsum([0] + level_rows[:-1]).tolist()
    # Static sizes rather than -1 where known: ONNX Runtime cannot infer a -1 dim of an empty tensor (batch or
    # queries 0).
    channels = static_channels(value)
    samples = len(level_shapes) * points
    table = _corner_table(rw, value, level_shapes, keys, heads, channels)
    heights, widths = (_per_level([shape[axis] for shape in level_shapes]) for axis in (0, 1))
    px, py = (_clip_to_levels(rw, unnormalise(rw, grid_axis(rw, grid, axis, label), size, False, coord_dtype,
                                              fma_dtype, label), size, coord_dtype, label)
              for axis, size, label in ((0, widths, "x"), (1, heights, "y")))
    x0, y0, corner_weights = bilinear_corners(rw, px, py, coord_dtype)
    columns = []
    for label, weight in zip(CORNERS, corner_weights):
        weighted = rw.op("Mul", [value_weight(rw, weight, value, coord_dtype, label), weights], suffix=f"{label}_attn")
        columns.append(rw.unsqueeze(weighted, [-1], suffix=f"{label}_column", axes_suffix=f"{label}_axes"))
    # [B, Q, M, L, P, 4] -> one row [B, Q, M, 1, L*P*4], in the gathered rows' order (point-major, then corner)
    weight_row = rw.op("Reshape", [rw.op("Concat", columns, {"axis": -1}, suffix="weights"),
                                   rw.const([0, 0, heads, 1, samples * 4], "weight_row_shape", np.int64)],
                       suffix="weight_row")
    index = _row_index(rw, value, x0, y0, widths, first_rows, sum(level_rows), heads, samples, coord_dtype)
    gathered = rw.op("Gather", [table, index], {"axis": 0}, suffix="gather")  # [B, Q, M, L*P, 4C]
    by_corner = rw.op("Reshape", [gathered, rw.const([0, 0, heads, samples * 4, channels], "corner_shape", np.int64)],
                      suffix="by_corner")
    blended = rw.op("MatMul", [weight_row, by_corner], suffix="blend")  # [B, Q, M, 1, C]
    out_shape = rw.const([0, 0, heads * channels if channels > 0 else -1], "out_shape", np.int64)
    if perm == [0, 1, 2]:
        rw.finish("Reshape", [blended, out_shape], suffix="channels_last")
    else:
        rw.finish("Transpose", [rw.op("Reshape", [blended, out_shape], suffix="channels_last")], {"perm": perm})
    return coord_dtype.name


def static_channels(value: gs.Tensor) -> int:
    """The value's channels per head C where its shape gives them, else -1 (`Reshape` infers them)."""
    return value.shape[3] if value.shape is not None and isinstance(value.shape[3], int) else -1


def _symbolic_channels_note(value: gs.Tensor) -> str:
    """The note's tail where C is symbolic: its Reshapes then read -1, which ONNX Runtime cannot infer for an
    empty tensor (computing C from the value's Shape would cost a Shape, Gather and Concat per Reshape)."""
    if static_channels(value) > 0:
        return ""
    return ("; channels per head are symbolic, so batch or queries 0 fail at run time in a Reshape: run "
            "set-input-shapes with a static channel size first where they can be 0")


def static_dims(node: gs.Node, value, grid, weights, levels: int) -> tuple[int, int]:
    """(heads M, points P), which the index and weight layouts name, from the shapes inference gave; PassError
    naming `node` where they are unknown or the locations' levels are not `levels`."""
    heads = {s[i] for s, i in ((value.shape, 2), (grid.shape, 2), (weights.shape, 2)) if s is not None}
    points = {s[4] for s in (grid.shape, weights.shape) if s is not None}
    found = [next((d for d in dims if isinstance(d, int)), None) for dims in (heads, points)]
    level_dims = {s[3] for s in (grid.shape, weights.shape) if s is not None and isinstance(s[3], int)}
    if None in found or level_dims - {levels}:
        raise PassError(f"node '{node.name}': msda-decompose needs static heads, levels and points (value "
                        f"{value.shape}, locations {grid.shape}, weights {weights.shape}, {levels} level(s)); "
                        "run set-input-shapes or fold-constants before this step")
    return found[0], found[1]


def _per_level(sizes: list[int]) -> np.ndarray:
    """Sizes as a constant broadcasting over [.., L, P]: [L, 1] (a scalar for one level)."""
    array = np.array(sizes, dtype=np.float64)
    return array.reshape(()) if len(sizes) == 1 else array.reshape(-1, 1)


def _corner_table(rw: Rewrite, value: gs.Tensor, level_shapes, keys, heads: int, channels: int) -> gs.Tensor:
    """table [B * R * M, 4C]: for each level, its [B, h, w, M, C] image with grid-sample decompose's zero border
    (1 before, 2 after), a row per head of each of its first h+2 by w+2 pixels holding the four corners nw|ne|sw|se
    (the border keeps every clipped corner inside), the levels one after the other."""
    levels = []
    for level, ((h, w), key) in enumerate(zip(level_shapes, keys)):
        keys_of_level = value if len(level_shapes) == 1 else rw.op(
            "Slice", [value, rw.const([key], f"level{level}_start", np.int64),
                      rw.const([key + h * w], f"level{level}_end", np.int64),
                      rw.const([1], f"level{level}_axes", np.int64)], suffix=f"level{level}_keys")
        image = rw.op("Reshape", [keys_of_level, rw.const([0, h, w, heads, channels], f"level{level}_shape", np.int64)],
                      suffix=f"level{level}_image")
        padded = rw.op("Pad", [image, rw.const([0, 1, 1, 0, 0, 0, 2, 2, 0, 0], f"level{level}_pads", np.int64)],
                       {"mode": "constant"}, suffix=f"level{level}_pad")
        shifted = [rw.op("Slice", [padded, rw.const([dy, dx], f"level{level}_{label}_starts", np.int64),
                                   rw.const([dy + h + 2, dx + w + 2], f"level{level}_{label}_ends", np.int64),
                                   rw.const([1, 2], f"level{level}_{label}_axes", np.int64)],
                          suffix=f"level{level}_{label}_shift")
                   for label, (dy, dx) in zip(CORNERS, ((0, 0), (0, 1), (1, 0), (1, 1)))]
        corners = rw.op("Concat", shifted, {"axis": 4}, suffix=f"level{level}_corners")
        rows_shape = [0, (h + 2) * (w + 2), heads, 4 * channels if channels > 0 else -1]
        levels.append(rw.op("Reshape", [corners, rw.const(rows_shape, f"level{level}_rows", np.int64)],
                            suffix=f"level{level}_rows"))
    table = levels[0] if len(levels) == 1 else rw.op("Concat", levels, {"axis": 1}, suffix="levels")
    return rw.op("Flatten", [table], {"axis": 3}, suffix="table")


def _clip_to_levels(rw: Rewrite, pixel: gs.Tensor, size: np.ndarray, dtype, label: str) -> gs.Tensor:
    """grid-sample decompose's zero-padding clip (surgeon.sampling.clip_pixel): NaN to -1, then [-1, size] with
    each level's size, by Max and Min (as exact), since Clip-11 takes scalar bounds only."""
    is_nan = rw.op("IsNaN", [pixel], suffix=f"{label}_nan")
    defined = rw.op("Where", [is_nan, rw.const(-1.0, f"{label}_nan_to", dtype), pixel], suffix=f"{label}_defined")
    above = rw.op("Max", [defined, rw.const(-1.0, f"{label}_low", dtype)], suffix=f"{label}_above_low")
    return rw.op("Min", [above, rw.const(size, f"{label}_high", dtype)], suffix=f"{label}_clip")


def _row_index(rw: Rewrite, value: gs.Tensor, x0, y0, widths: np.ndarray, first_rows: list[int], rows: int,
               heads: int, samples: int, dtype) -> gs.Tensor:
    """int64 [B, Q, M, L*P]: each sample's table row (its north-west corner's), (b * R + first row of the level +
    (y0 + 1) * (w + 2) + x0 + 1) * M + m; the +1 steps over the zero border's first row and column."""
    one = rw.const(1.0, "pad_offset", dtype)
    y, x = (rw.op("Cast", [rw.op("Add", [c, one], suffix=f"{label}_padded")], {"to": onnx.TensorProto.INT64},
                  suffix=f"{label}_index") for c, label in ((y0, "y"), (x0, "x")))
    in_level = rw.op("Add", [rw.op("Mul", [y, rw.const((widths + 2).astype(np.int64), "row_stride", np.int64)],
                                   suffix="y_rows"), x], suffix="in_level")
    cell = rw.op("Add", [in_level, rw.const(_per_level(first_rows).astype(np.int64), "level_rows", np.int64)],
                 suffix="cell")
    head_rows = rw.op("Add", [rw.op("Mul", [cell, rw.const(heads, "heads", np.int64)], suffix="cell_rows"),
                              rw.const(np.arange(heads).reshape(heads, 1, 1), "head_offset", np.int64)],
                      suffix="head_rows")
    row = rw.op("Add", [head_rows, batch_row_starts(rw, value, rows * heads, 4)], suffix="row")
    return rw.op("Reshape", [row, rw.const([0, 0, heads, samples], "index_shape", np.int64)], suffix="index")
