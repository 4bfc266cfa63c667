"""Rewrite 3-D (volumetric) grid sampling into GridSample-20 or standard opset-11 ops.

Recognised (x [N,C,D,H,W], grid [N,Dg,Hg,Wg,3]); the spellings surgeon.sampling reads, with 5-D input:
    org.pytorch.aten::ATen(operator="grid_sampler" | "grid_sampler_3d")(x, grid, mode, padding, align_corners)
    GridSample(x, grid) mode=linear|nearest (opset 20)
    mmdeploy::grid_sampler(x, grid) interpolation_mode=, padding_mode=, align_corners=
    GridSampler3DTRT / GridSampler3DTRT2(x, grid10)   BEVFormer_tensorrt: grid10 = [N,3,Dg,Hg,Wg] * 10

After, mode onnx:       GridSample(x, grid) mode=linear padding_mode=zeros align_corners=0   (opset >= 20)
After, mode decompose (opset-11 ops, no loops, no per-channel index):
    x ─Pad(1 before, 2 after)─Transpose(NDHWC)─Flatten─► table [N*D'*H'*W', C]
    grid ─► voxel coords ─Floor─► one flat index [N,Dg,Hg,Wg] + 8 corner offsets and weights
    Σ weight_k · Gather(table, index + offset_k, axis 0) ─Transpose─► y [N,C,Dg,Hg,Wg]

mode auto: GridSample-20 where the target's opset is 20 or more, except on TensorRT (its GridSample is 2-D only),
at sites whose dtype the target's GridSample lacks, and, where the spatial size is static, at nearest sites with
reflection padding and align_corners 0, whose ties outside the volume GridSample resolves unlike torch
(grid_sample.TIE_ORDER); else decompose. A bfloat16 site is sampled in float32 between Casts, as in grid-sample.

torch samples 3-D grids with its scalar CPU kernel (GridSampler.cpp), whose arithmetic differs from the
vectorised 2-D one, so the coordinates and weights here follow that kernel operation for operation
(docs/passes/grid-sample.md, "3-D").
"""
from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from surgeon.pass_api import Param, Pass, register_pass
from surgeon.passes.grid_sample import rewrite_following_torch_ties
from surgeon.rewrite import Rewrite, dtype_of
from surgeon.sampling import (Sampling, blend_rows, clip_pixel, emit_onnx, flat_index, grid_axis, padded_channels_last,
                              value_weight)

GRID_SAMPLE_ND_SINCE = 20  # GridSample accepts 5-D input from opset 20
#: Corners in torch's order (top/bottom = z, north/south = y, west/east = x) as (dz, dy, dx).
CORNERS = {"tnw": (0, 0, 0), "tne": (0, 0, 1), "tsw": (0, 1, 0), "tse": (0, 1, 1),
           "bnw": (1, 0, 0), "bne": (1, 0, 1), "bsw": (1, 1, 0), "bse": (1, 1, 1)}


@register_pass("grid-sample-3d")
class GridSample3DPass(Pass):
    """Rewrite 3-D grid sampling (ATen, GridSample, mmdeploy, TensorRT plugin) to GridSample-20 or opset-11 ops."""

    params = {
        "mode": Param(str, "auto", choices=("auto", "onnx", "decompose"),
                      help="target form; auto: GridSample where the target's opset is 20 or more (not TensorRT), "
                           "else decompose (sites whose dtype the target's GridSample lacks, and nearest reflection "
                           "sites with align_corners 0, decompose: GridSample's ties differ from torch's)"),
    }
    needs = ("shapes",)
    handles = ("ATen:grid_sampler_3d", "GridSampler3DTRT", "GridSampler3DTRT2")

    def run(self, graph, ctx):
        form = self.mode if self.mode != "auto" else choose_form(ctx.target)
        emit = emit_onnx if form == "onnx" else emit_decomposition
        return rewrite_following_torch_ties(graph, ctx, form, 3, GRID_SAMPLE_ND_SINCE, emit, emit_decomposition,
                                            self.mode == "auto")


def choose_form(target) -> str:
    """GridSample-20 where the target's opset has it (TensorRT's GridSample is 2-D only), else opset-11 ops."""
    if not target.is_tensorrt and target.opset >= GRID_SAMPLE_ND_SINCE and target.supports("GridSample"):
        return "onnx"
    return "decompose"


def emit_decomposition(rw: Rewrite, site: Sampling, grid: gs.Tensor, opset: int) -> None:
    _, _, depth, height, width = site.x.shape
    dtype = np.dtype(dtype_of(grid) or np.float32)
    sizes = [depth + 3, height + 3, width + 3]  # the padded table's spatial shape
    table = rw.op("Flatten", [padded_channels_last(rw, site.x, 3)], {"axis": 4}, suffix="table")
    # slowest axis first: z (grid[..., 2], depth), y, x
    voxel = [_voxel(rw, grid, axis, size, site, dtype, opset, label)
             for axis, size, label in ((2, depth, "z"), (1, height, "y"), (0, width, "x"))]
    if site.interpolation == "nearest":  # Round is half-to-even, as torch's nearbyint
        rounded = [rw.op("Round", [v], suffix=f"{label}_round") for v, label in zip(voxel, "zyx")]
        picked = rw.op("Gather", [table, flat_index(rw, rounded, site.x, sizes, dtype)], {"axis": 0}, suffix="gather")
        rw.finish("Transpose", [picked], {"perm": [0, 4, 1, 2, 3]}, suffix="ncdhw")
        return

    floors = [rw.op("Floor", [v], suffix=f"{label}_floor") for v, label in zip(voxel, "zyx")]
    one = rw.const(1.0, "one", dtype)
    # torch: weight of the low corner = (floor + 1) - p, of the high corner = p - floor
    low_weights = [rw.op("Sub", [rw.op("Add", [f, one], suffix=f"{label}_ceil"), v], suffix=f"{label}_low_weight")
                   for f, v, label in zip(floors, voxel, "zyx")]
    high_weights = [rw.op("Sub", [v, f], suffix=f"{label}_high_weight") for f, v, label in zip(floors, voxel, "zyx")]
    corners = []
    for label, (dz, dy, dx) in CORNERS.items():
        z_weight, y_weight, x_weight = ((high_weights if d else low_weights)[axis]
                                        for axis, d in enumerate((dz, dy, dx)))
        weight = rw.op("Mul", [rw.op("Mul", [x_weight, y_weight], suffix=f"{label}_xy_weight"), z_weight],
                       suffix=f"{label}_weight")  # (x * y) * z, torch's order
        offset = dz * sizes[1] * sizes[2] + dy * sizes[2] + dx
        corners.append((label, offset, value_weight(rw, weight, site.x, dtype, label)))
    blended = blend_rows(rw, table, flat_index(rw, floors, site.x, sizes, dtype), corners, opset)
    rw.finish("Transpose", [blended], {"perm": [0, 4, 1, 2, 3]}, suffix="ncdhw")


def _voxel(rw: Rewrite, grid: gs.Tensor, axis: int, size: int, site: Sampling, dtype, opset: int,
           label: str) -> gs.Tensor:
    """torch's scalar `grid_sampler_compute_source_index`: unnormalise, reflect, clip (NaN -> size-1, as
    its std::min/std::max clip does)."""
    plus_one = rw.op("Add", [grid_axis(rw, grid, axis, label), rw.const(1.0, f"{label}_one", dtype)],
                     suffix=f"{label}_plus1")
    two = rw.const(2.0, f"{label}_two", dtype)
    if site.align_corners:  # ((g + 1) / 2) * (size - 1)
        half = rw.op("Div", [plus_one, two], suffix=f"{label}_half")
        voxel = rw.op("Mul", [half, rw.const(size - 1, f"{label}_scale", dtype)], suffix=f"{label}_voxel")
    else:  # ((g + 1) * size - 1) / 2
        scaled = rw.op("Mul", [plus_one, rw.const(size, f"{label}_size", dtype)], suffix=f"{label}_scaled")
        shifted = rw.op("Sub", [scaled, rw.const(1.0, f"{label}_minus", dtype)], suffix=f"{label}_shifted")
        voxel = rw.op("Div", [shifted, two], suffix=f"{label}_voxel")
    if site.padding == "reflection":
        twice_low, twice_high = (0, 2 * (size - 1)) if site.align_corners else (-1, 2 * size - 1)
        voxel = _reflect(rw, voxel, twice_low, twice_high, dtype, label)
    return clip_pixel(rw, voxel, size, site.padding, -1 if site.padding == "zeros" else size - 1, dtype, opset,
                      label)


def _reflect(rw: Rewrite, coord: gs.Tensor, twice_low: int, twice_high: int, dtype, label: str) -> gs.Tensor:
    """torch's scalar `reflect_coordinates`: |coord - min| folded by fmod, mirrored on odd flips."""
    if twice_low == twice_high:  # torch: 0 (here NaN for ±inf, which the clip then maps as torch's does)
        return rw.op("Mul", [coord, rw.const(0.0, f"{label}_zero", dtype)], suffix=f"{label}_reflected")
    low = rw.const(twice_low / 2, f"{label}_mirror_low", dtype)
    span = rw.const((twice_high - twice_low) / 2, f"{label}_span", dtype)
    distance = rw.op("Abs", [rw.op("Sub", [coord, low], suffix=f"{label}_from_low")], suffix=f"{label}_distance")
    extra = rw.op("Mod", [distance, span], {"fmod": 1}, suffix=f"{label}_extra")
    flips = rw.op("Floor", [rw.op("Div", [distance, span], suffix=f"{label}_spans")], suffix=f"{label}_flips")
    # torch's flips is an int: beyond its range x86 gives INT_MIN (even); so does fmod of a float that large
    parity = rw.op("Mod", [flips, rw.const(2.0, f"{label}_two_flips", dtype)], {"fmod": 1}, suffix=f"{label}_parity")
    even = rw.op("Equal", [parity, rw.const(0.0, f"{label}_even", dtype)], suffix=f"{label}_is_even")
    forward = rw.op("Add", [extra, low], suffix=f"{label}_forward")
    backward = rw.op("Add", [rw.op("Sub", [span, extra], suffix=f"{label}_back"), low], suffix=f"{label}_backward")
    return rw.op("Where", [even, forward, backward], suffix=f"{label}_reflected")
