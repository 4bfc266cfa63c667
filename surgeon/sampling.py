"""Grid sampling in every spelling, read the same way, and the pieces its rewrites share.

Used by grid-sample (2-D), grid-sample-3d and msda-plugin, so that a sampler node is recognised, and its
mode, padding and align_corners read, in one place:

    org.pytorch.aten::ATen(operator="grid_sampler" | "grid_sampler_2d" | "grid_sampler_3d")
        (x, grid, interpolation_mode, padding_mode, align_corners)     torch's ATen fallback export
    GridSample(x, grid) mode=bilinear|nearest|bicubic (opset 16) or linear|nearest|cubic (opset 20)
    mmdeploy::grid_sampler(x, grid) interpolation_mode=, padding_mode=, align_corners= (ints)
    GridSampler2DTRT / GridSampler2DTRT2 / GridSampler3DTRT / GridSampler3DTRT2(x, grid10)
        BEVFormer_tensorrt: grid10 = [N,2,Hg,Wg] ([N,3,Dg,Hg,Wg]) scaled by 10

Also here: the rewrite loop of both grid-sample passes (`rewrite_sites`: check every site, raise the
opset for GridSample, rewrite), the GridSample form, and the coordinate and gathering helpers their 2-D
and 3-D decompositions have in common (a zero-bordered channels-last table, clipping, flat indices,
weighted sums of gathered rows). docs/passes/grid-sample.md has the arithmetic.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from surgeon.errors import PassError
from surgeon.opset_conversion import convert_opset
from surgeon.pass_api import PassResult
from surgeon.rewrite import Rewrite, aten_operator, attr_text, const_value, dtype_of, is_op

#: GridSample's attribute spelling by opset: opset 20 renamed bilinear/bicubic to linear/cubic.
ONNX16_MODES = {"bilinear": "bilinear", "nearest": "nearest", "bicubic": "bicubic",
                "linear": "bilinear", "cubic": "bicubic"}
ONNX20_MODES = {"bilinear": "linear", "nearest": "nearest", "bicubic": "cubic"}
#: The integer codes of aten::grid_sampler, mmdeploy, BEVFormer_tensorrt and our plugin.
INTERPOLATION_CODES = ("bilinear", "nearest", "bicubic")
PADDING_CODES = ("zeros", "border", "reflection")
#: BEVFormer_tensorrt's op types and their number of spatial dimensions.
TRT_OPS = {"GridSampler2DTRT": 2, "GridSampler2DTRT2": 2, "GridSampler3DTRT": 3, "GridSampler3DTRT2": 3}
ATEN_OPERATORS = ("grid_sampler", "grid_sampler_2d", "grid_sampler_3d")  # same inputs; torch exports the first
TRT_GRID_SCALE = 10.0  # BEVFormer_tensorrt's wrapper feeds grid * 10 and divides by 10 inside


@dataclass
class Sampling:
    """One grid-sampling node, whatever its spelling, in torch's terms."""

    node: gs.Node
    spelling: str  # aten | onnx | mmdeploy | trt
    x: gs.Tensor
    grid: gs.Tensor  # [N,Hg,Wg,2] ([N,Dg,Hg,Wg,3]) except for the trt spelling ([N,2,Hg,Wg] scaled by 10)
    interpolation: str
    padding: str
    align_corners: bool

    @property
    def spatial_dims(self) -> int:
        """2 for [N,C,H,W] input, 3 for [N,C,D,H,W]: from the input's rank, else the grid's, else the op."""
        for tensor in (self.x, self.grid):
            if tensor.shape is not None:
                return len(tensor.shape) - 2
        return TRT_OPS.get(self.node.op, 2)


def _code(codes: tuple[str, ...], value, node: gs.Node, what: str) -> str:
    if value is None or not 0 <= int(value) < len(codes):
        raise PassError(f"node '{node.name}': {what} {value!r} is not one of "
                        f"{', '.join(f'{i} ({c})' for i, c in enumerate(codes))}")
    return codes[int(value)]


def _aten_constant(node: gs.Node, index: int, what: str):
    value = const_value(node.inputs[index]) if len(node.inputs) > index else None
    if value is None:
        raise PassError(f"node '{node.name}': grid_sampler's {what} (input {index}) is not a constant")
    return value.item()


def read_sampling(node: gs.Node) -> Sampling | None:
    """The grid sampling `node` performs, or None when it is not a grid-sampling spelling. Raises PassError
    naming the node where it is one but its mode or padding is unknown or not a constant."""
    if aten_operator(node) in ATEN_OPERATORS:
        return Sampling(node, "aten", node.inputs[0], node.inputs[1],
                        _code(INTERPOLATION_CODES, _aten_constant(node, 2, "interpolation_mode"), node,
                              "interpolation_mode"),
                        _code(PADDING_CODES, _aten_constant(node, 3, "padding_mode"), node, "padding_mode"),
                        bool(_aten_constant(node, 4, "align_corners")))
    if is_op(node, "GridSample"):
        mode = attr_text(node, "mode", "bilinear")
        if mode not in ONNX16_MODES:
            raise PassError(f"node '{node.name}': unknown GridSample mode {mode!r}")
        return Sampling(node, "onnx", node.inputs[0], node.inputs[1], ONNX16_MODES[mode],
                        attr_text(node, "padding_mode", "zeros"), bool(node.attrs.get("align_corners", 0)))
    if node.op == "grid_sampler" and node.domain == "mmdeploy" or is_op(node, tuple(TRT_OPS)):
        return Sampling(node, "mmdeploy" if node.op == "grid_sampler" else "trt", node.inputs[0], node.inputs[1],
                        _code(INTERPOLATION_CODES, node.attrs.get("interpolation_mode", 0), node,
                              "interpolation_mode"),
                        _code(PADDING_CODES, node.attrs.get("padding_mode", 0), node, "padding_mode"),
                        bool(node.attrs.get("align_corners", 0)))
    return None


def rewrite_sites(graph, ctx, form: str, spatial_dims: int, onnx_opset: int, emit) -> PassResult:
    """The loop of grid-sample and grid-sample-3d: find the sites with `spatial_dims`, check them all,
    raise the opset for the onnx form, then `emit(rw, site, grid, opset)` each one."""
    result = PassResult()
    sites = find_sites(graph, form, spatial_dims)
    if sites and form == "onnx" and graph.opset < onnx_opset:
        try:
            graph = convert_opset(graph, onnx_opset, ctx)
        except PassError as exc:
            raise PassError(f"GridSample needs opset {onnx_opset}: {exc.message}; use mode decompose") from exc
        result.graph = graph
        result.note(f"raised the default-domain opset to {onnx_opset} for GridSample (onnx version converter)")
        sites = find_sites(graph, form, spatial_dims)
    for site in sites:
        rw = Rewrite(graph, ctx, site.node)
        emit(rw, site, standard_grid(rw, site), graph.opset)
        result.rewrote(site.node.name or rw.prefix)
    others = [s.node.name for s in map(read_sampling, graph.nodes) if s is not None and s.spatial_dims != spatial_dims]
    if others:
        result.note(f"left {len(others)} grid sampling node(s) with {'2' if spatial_dims == 3 else '3'} spatial "
                    f"dimensions to {'grid-sample' if spatial_dims == 3 else 'grid-sample-3d'}: {', '.join(others)}")
    return result


def find_sites(graph, form: str, spatial_dims: int) -> list[Sampling]:
    """The grid-sampling nodes with `spatial_dims` that `form` rewrites, each checked (before any rewrite)."""
    sites = [s for s in map(read_sampling, graph.nodes) if s is not None and s.spatial_dims == spatial_dims]
    if form == "onnx":  # a standard GridSample already is the onnx form
        sites = [s for s in sites if s.spelling != "onnx"]
    for site in sites:
        check_supported(site, form)
    return sites


def check_supported(site: Sampling, form: str) -> None:
    """Raise PassError naming the node when `form` cannot express `site`."""
    where = f"node '{site.node.name}'"
    shape = site.x.shape
    if form in ("decompose", "plugin") and site.interpolation == "bicubic":
        raise PassError(f"{where}: bicubic is not supported by {form}; use mode onnx")
    if form == "decompose" and (shape is None or not all(isinstance(d, int) for d in shape[2:])):
        raise PassError(f"{where}: decompose needs a static spatial size of the input, got {shape}; run "
                        "fold-constants before this step (shapes computed by Shape/Concat chains) or set-input-shapes")


def standard_grid(rw: Rewrite, site: Sampling) -> gs.Tensor:
    """The grid in torch's layout [N,Hg,Wg,2] (or [N,Dg,Hg,Wg,3]), normalised to [-1, 1]."""
    if site.spelling != "trt":
        return site.grid
    perm = [0, *range(2, site.spatial_dims + 2), 1]
    # shaped, so that a form reading the grid's shape (the plugin's output shape) finds it
    shape = None if site.grid.shape is None else [site.grid.shape[axis] for axis in perm]
    channels_last = rw.op("Transpose", [site.grid], {"perm": perm}, suffix="grid_channels_last", shape=shape)
    dtype = dtype_of(site.grid) or np.float32
    return rw.op("Div", [channels_last, rw.const(TRT_GRID_SCALE, "grid_scale", dtype)], suffix="grid", dtype=dtype,
                 shape=shape)


def emit_onnx(rw: Rewrite, site: Sampling, grid: gs.Tensor, opset: int) -> None:
    mode = ONNX20_MODES[site.interpolation] if opset >= 20 else site.interpolation
    rw.finish("GridSample", [site.x, grid], {"mode": mode, "padding_mode": site.padding,
                                              "align_corners": int(site.align_corners)})


def padded_channels_last(rw: Rewrite, x: gs.Tensor, spatial_dims: int) -> gs.Tensor:
    """x with one zero row/column/slice before and two after each spatial axis, channels last: every
    clipped corner index stays inside, and every corner outside the image reads zero."""
    pads = [0, 0] + [1] * spatial_dims + [0, 0] + [2] * spatial_dims
    padded = rw.op("Pad", [x, rw.const(pads, "pads", np.int64)], {"mode": "constant"}, suffix="pad")
    return rw.op("Transpose", [padded], {"perm": [0, *range(2, spatial_dims + 2), 1]}, suffix="channels_last")


def grid_axis(rw: Rewrite, grid: gs.Tensor, axis: int, label: str) -> gs.Tensor:
    """grid[..., axis] (a 0-d index drops the last axis)."""
    return rw.op("Gather", [grid, rw.const(axis, f"{label}_axis", np.int64)], {"axis": -1}, suffix=label)


def clip_pixel(rw: Rewrite, pixel: gs.Tensor, size: int, padding: str, nan_to: float, dtype, opset: int,
               label: str) -> gs.Tensor:
    """border and reflection: clip to [0, size-1] as torch does. zeros: [-1, size], which keeps far-out
    coordinates finite (no int64 overflow in Cast) while every corner of such a point still lands in the
    zero border. NaN becomes `nan_to`: its int64 index would be undefined and make Gather fail the run."""
    low, high = (-1, size) if padding == "zeros" else (0, size - 1)
    is_nan = rw.op("IsNaN", [pixel], suffix=f"{label}_nan")
    defined = rw.op("Where", [is_nan, rw.const(nan_to, f"{label}_nan_to", dtype), pixel], suffix=f"{label}_defined")
    low, high = rw.const(low, f"{label}_low", dtype), rw.const(high, f"{label}_high", dtype)
    if np.dtype(dtype) == np.float32 or opset >= 12:
        return rw.op("Clip", [defined, low, high], suffix=f"{label}_clip")
    # ONNX Runtime implements Clip-11 for float32 only (Clip-12 adds the others); Max, Min are as exact
    return rw.op("Min", [rw.op("Max", [defined, low], suffix=f"{label}_above_low"), high], suffix=f"{label}_clip")


def value_weight(rw: Rewrite, weight: gs.Tensor, x: gs.Tensor, coord_dtype, label: str) -> gs.Tensor:
    """`weight` in the input's dtype (the grid's may differ)."""
    value_dtype = dtype_of(x)
    if value_dtype is None or value_dtype == coord_dtype:
        return weight
    return rw.op("Cast", [weight], {"to": onnx.helper.np_dtype_to_tensor_dtype(value_dtype)},
                 suffix=f"{label}_weight_cast")


def flat_index(rw: Rewrite, coords: list[gs.Tensor], x: gs.Tensor, sizes: list[int], dtype) -> gs.Tensor:
    """int64 row of a [N * prod(sizes), ...] table holding each batch item of `x` at offset 1 along every
    spatial axis; `coords` are float pixel coordinates [N, ...], slowest axis first."""
    offset = rw.const(1.0, "pad_offset", dtype)
    strides = [int(np.prod(sizes[axis + 1:])) for axis in range(len(sizes))]
    index = batch_row_starts(rw, x, int(np.prod(sizes)), len(coords))
    for axis, (coord, stride) in enumerate(zip(coords, strides)):
        padded = rw.op("Add", [coord, offset], suffix=f"axis{axis}_padded")
        position = rw.op("Cast", [padded], {"to": onnx.TensorProto.INT64}, suffix=f"axis{axis}_index")
        if stride != 1:
            position = rw.op("Mul", [position, rw.const(stride, f"axis{axis}_stride", np.int64)],
                             suffix=f"axis{axis}_start")
        index = rw.op("Add", [index, position], suffix=f"axis{axis}_flat")
    return index


def batch_row_starts(rw: Rewrite, x: gs.Tensor, rows_per_item: int, index_dims: int) -> gs.Tensor:
    """[N, 1, ...] int64 (`index_dims` ones): the first row of each batch item of `x` in a table holding
    `rows_per_item` rows per item (Shape and Range when N is dynamic); `flat_index`'s and msda-decompose's."""
    batch = x.shape[0]
    if isinstance(batch, int):
        return rw.const((np.arange(batch) * rows_per_item).reshape((batch,) + (1,) * index_dims), "batch_start",
                        np.int64)
    count = rw.op("Gather", [rw.op("Shape", [x], suffix="shape"), rw.const(0, "batch_axis", np.int64)],
                  {"axis": 0}, suffix="batch")
    items = rw.op("Range", [rw.const(0, "range_start", np.int64), count, rw.const(1, "range_step", np.int64)],
                  suffix="batch_items")
    starts = rw.op("Mul", [items, rw.const(rows_per_item, "batch_stride", np.int64)], suffix="batch_rows")
    return rw.op("Reshape", [starts, rw.const([-1] + [1] * index_dims, "batch_shape", np.int64)],
                 suffix="batch_start")


def blend_rows(rw: Rewrite, table: gs.Tensor, base: gs.Tensor, corners, opset: int) -> gs.Tensor:
    """Σ weight · Gather(table, base + offset) over `corners` ((label, row offset, weight), summed in
    that order): one gather of whole channel rows per corner."""
    total = None
    for label, offset, weight in corners:
        index = base if offset == 0 else rw.op("Add", [base, rw.const(offset, f"{label}_offset", np.int64)],
                                               suffix=f"{label}_index")
        corner = rw.op("Gather", [table, index], {"axis": 0}, suffix=f"{label}_gather")
        term = rw.op("Mul", [corner, unsqueeze(rw, weight, [-1], opset, f"{label}_weight")], suffix=f"{label}_term")
        total = term if total is None else rw.op("Add", [total, term], suffix=f"{label}_sum")
    return total


def unsqueeze(rw: Rewrite, tensor: gs.Tensor, axes: list[int], opset: int, label: str) -> gs.Tensor:
    """Unsqueeze in the spelling of `opset` (axes became an input at opset 13)."""
    if opset >= 13:
        return rw.op("Unsqueeze", [tensor, rw.const(axes, f"{label}_axes", np.int64)], suffix=f"{label}_unsqueeze")
    return rw.op("Unsqueeze", [tensor], {"axes": axes}, suffix=f"{label}_unsqueeze")
