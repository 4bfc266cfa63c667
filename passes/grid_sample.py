"""Rewrite every spelling of 2-D grid sampling into standard GridSample, opset-11 ops or one plugin node.

Recognised (x [N,C,H,W], grid [N,Hg,Wg,2] unless said otherwise):
    org.pytorch.aten::ATen(operator="grid_sampler")(x, grid, mode, padding, align_corners)   torch fallback export
    GridSample(x, grid) mode=bilinear|nearest|bicubic (opset 16) or linear|nearest|cubic (opset 20)
    mmdeploy::grid_sampler(x, grid) interpolation_mode=, padding_mode=, align_corners= (ints)
    GridSampler2DTRT / GridSampler2DTRT2(x, grid10)   BEVFormer_tensorrt: grid10 = [N,2,Hg,Wg] * 10

After, mode onnx:       GridSample(x, grid) mode=bilinear padding_mode=zeros align_corners=0   (opset >= 16)
After, mode plugin:     surgeon::GridSample2D(x, grid) interpolation_mode=0 padding_mode=0 align_corners=0
After, mode decompose (opset-11 ops, no loops, no per-channel index):
    x ─Pad(1 before, 2 after)─Transpose(NHWC)─Flatten─► table [N*H'*W', C]
    grid ─► pixel coords (unnormalise, reflect, NaN guard, Clip) ─Floor─► 4 flat indices [N,Hg,Wg], 4 weights
    (torch's fused multiply-adds in unnormalise and reflect: float64, rounded once to float32; fma_emulation)
    Σ weight_k · Gather(table, index_k, axis 0) ─Transpose─► y [N,C,Hg,Wg]
    (from 128 channels: one Gather from a table of 4-corner rows [N*H'*W', 4C], then MatMul with the weights)
Out-of-image corners land in the zero border of the padded table, so zero padding needs no masks.
5-D input is left to grid-sample-3d. docs/passes/grid-sample.md has the exact arithmetic and the benchmark.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from surgeon.errors import PassError, first_line
from surgeon.graphio import export_model, import_graph
from surgeon.pass_api import Param, Pass, PassResult, register_pass
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
GRID_SAMPLE_SINCE = 16
CONVERTER_HIDDEN_DOMAIN = "surgeon.opset-conversion"
#: From this many channels decompose blends with one gather + MatMul instead of four gathers: the measured
#: crossover lies between 64 (four gathers faster) and 128 (MatMul faster); docs/passes/grid-sample.md, Speed.
MATMUL_MIN_CHANNELS = 128


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
    """The grid sampling `node` performs, or None when it is not a grid-sampling spelling."""
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


@register_pass("grid-sample")
class GridSamplePass(Pass):
    """Rewrite grid sampling (ATen, GridSample, mmdeploy, TensorRT plugin) to GridSample, opset-11 ops or a plugin."""

    params = {
        "mode": Param(str, "auto", choices=("auto", "onnx", "decompose", "plugin"),
                      help="target form; auto: GridSample where the target runs it, else decompose"),
        "plugin_op": Param(str, "GridSample2D", help="op type of the plugin node (mode plugin)"),
        "plugin_version": Param(str, "1", help="plugin_version attribute of the plugin node"),
        "plugin_namespace": Param(str, "surgeon", help="plugin_namespace attribute (and domain) of the plugin node"),
        "fma_emulation": Param(str, "auto", choices=("auto", "float64", "none"),
                               help="decompose, float32 grids: torch's fused multiply-adds in the coordinate math; "
                                    "float64: Cast/Mul/Sub in float64, rounded once as torch; none: float32 Mul, Sub "
                                    "(two roundings); auto: float64 where the target runs it"),
    }
    needs = ("shapes",)
    handles = ("ATen:grid_sampler", "ATen:grid_sampler_2d", "mmdeploy::grid_sampler", "GridSampler2DTRT",
               "GridSampler2DTRT2", "GridSample")

    @classmethod
    def fix_hint(cls, target) -> str:
        if target.is_tensorrt:
            return "grid-sample mode=plugin or mode=decompose"
        return "grid-sample" if choose_form(target) == "onnx" else "grid-sample mode=decompose"

    def run(self, graph, ctx):
        form = self.mode if self.mode != "auto" else choose_form(ctx.target)
        if self.fma_emulation == "float64" and not runs_float64(ctx.target):
            raise PassError(f"grid-sample fma_emulation 'float64' needs float64 Cast/Mul/Sub, which target "
                            f"'{ctx.target.name}' lacks; use fma_emulation 'none' (or 'auto')")
        fma_in_float64 = self.fma_emulation == "float64" or (self.fma_emulation == "auto" and
                                                              runs_float64(ctx.target))
        emit = {"onnx": emit_onnx,
                "decompose": lambda rw, site, grid, opset: emit_decomposition(rw, site, grid, opset, fma_in_float64),
                "plugin": lambda rw, site, grid, opset: self._emit_plugin(rw, site, grid)}[form]
        result = rewrite_sites(graph, ctx, form, 2, GRID_SAMPLE_SINCE, emit)
        if self.mode == "auto" and result.changed:
            result.note(f"mode auto chose '{form}' for target {ctx.target.name}")
        if form == "decompose" and result.changed:
            why = "" if self.fma_emulation != "auto" else (
                f" (auto: target {ctx.target.name} {'runs' if fma_in_float64 else 'has no'} float64 Cast/Mul/Sub)")
            effect = ("float32 grids' coordinates are rounded once where torch's kernel fuses a multiply-add, "
                      "as torch's are" if fma_in_float64 else
                      "float32 grids' coordinates are rounded twice where torch's kernel fuses a multiply-add: "
                      "they can be 1 ulp off, bilinear then differ from torch by more than 1e-5 on large maps "
                      "and nearest pick a neighbour")
            result.note(f"fma_emulation {'float64' if fma_in_float64 else 'none'}{why}: {effect}")
        return result

    def _emit_plugin(self, rw: Rewrite, site: Sampling, grid: gs.Tensor) -> None:
        out = site.node.outputs[0]
        if out.shape is None and site.x.shape is not None and grid.shape is not None:
            out.shape = [site.x.shape[0], site.x.shape[1], grid.shape[1], grid.shape[2]]
        if out.dtype is None:
            out.dtype = dtype_of(site.x)
        rw.finish(self.plugin_op, [site.x, grid], {
            "plugin_version": self.plugin_version, "plugin_namespace": self.plugin_namespace,
            "interpolation_mode": INTERPOLATION_CODES.index(site.interpolation),
            "padding_mode": PADDING_CODES.index(site.padding), "align_corners": int(site.align_corners),
        }, domain=self.plugin_namespace)


def rewrite_sites(graph, ctx, form: str, spatial_dims: int, onnx_opset: int, emit) -> PassResult:
    """The loop of grid-sample and grid-sample-3d: find the sites with `spatial_dims`, check them all,
    raise the opset for the onnx form, then `emit(rw, site, grid, opset)` each one."""
    result = PassResult()
    sites = find_sites(graph, form, spatial_dims)
    if sites and form == "onnx" and graph.opset < onnx_opset:
        graph = raise_opset(graph, onnx_opset)
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


def choose_form(target) -> str:
    """The form `mode: auto` picks: GridSample where the target runs it, opset-11 ops elsewhere."""
    if target.is_tensorrt:
        return "onnx" if target.version_tuple() >= (8, 5) else "decompose"
    if target.opset >= GRID_SAMPLE_SINCE and target.supports("GridSample", opset=target.opset):
        return "onnx"
    return "decompose"


def runs_float64(target) -> bool:
    """Whether `target` runs the float64 ops of the fused multiply-add emulation (TensorRT has no float64)."""
    return all(target.supports(op, dtype=np.float64) for op in ("Cast", "Mul", "Sub"))


def raise_opset(graph: gs.Graph, opset: int) -> gs.Graph:
    """The graph converted to `opset` by the onnx version converter (which adapts e.g. Unsqueeze's axes).

    The converter stops at default-domain ops it has no schema for (GridSampler2DTRT and the other
    BEVFormer_tensorrt plugins), so those ride through it in a private domain and come back unchanged.
    """
    unknown = [n for n in graph.nodes if (n.domain or "") in ("", "ai.onnx") and not onnx.defs.has(n.op)]
    for node in unknown:
        node.domain = CONVERTER_HIDDEN_DOMAIN
    try:
        model = onnx.version_converter.convert_version(export_model(graph, do_type_check=False), opset)
    except Exception as exc:
        raise PassError(f"GridSample needs opset {opset} but converting the model from opset {graph.opset} "
                        f"failed: {first_line(exc)}; use mode decompose") from exc
    finally:
        for node in unknown:
            node.domain = ""
    converted = import_graph(model)
    for node in converted.nodes:
        if node.domain == CONVERTER_HIDDEN_DOMAIN:
            node.domain = ""
    converted.import_domains = [d for d in converted.import_domains if d.domain != CONVERTER_HIDDEN_DOMAIN]
    return converted


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


def emit_decomposition(rw: Rewrite, site: Sampling, grid: gs.Tensor, opset: int, fma_in_float64: bool) -> None:
    """Gather whole channel rows of a padded channels-last table, one flat index per sample point."""
    _, channels, height, width = site.x.shape
    coord_dtype = np.dtype(dtype_of(grid) or np.float32)
    # torch's float32 kernel fuses two multiply-adds (one rounding each), which float64 arithmetic rounds
    # once too (docs: where not). Its float64 kernel fuses them as well, beyond what float64 ops can emulate.
    fma_dtype = np.dtype(np.float64) if fma_in_float64 and coord_dtype == np.float32 else coord_dtype
    padded = padded_channels_last(rw, site.x, 2)  # [N, H+3, W+3, C]
    px = _pixel(rw, grid, 0, width, site, coord_dtype, fma_dtype, opset, "x")
    py = _pixel(rw, grid, 1, height, site, coord_dtype, fma_dtype, opset, "y")
    if site.interpolation == "nearest":
        # Round is half-to-even, as torch's nearbyint.
        rounded = [rw.op("Round", [p], suffix=f"{label}_round") for p, label in ((py, "y"), (px, "x"))]
        table = rw.op("Flatten", [padded], {"axis": 3}, suffix="table")
        index = flat_index(rw, rounded, site.x, [height + 3, width + 3], coord_dtype)
        picked = rw.op("Gather", [table, index], {"axis": 0}, suffix="gather")
        rw.finish("Transpose", [picked], {"perm": [0, 3, 1, 2]}, suffix="nchw")
        return

    one = rw.const(1.0, "one", coord_dtype)
    x0, y0 = rw.op("Floor", [px], suffix="x_floor"), rw.op("Floor", [py], suffix="y_floor")
    east, south = rw.op("Sub", [px, x0], suffix="east"), rw.op("Sub", [py, y0], suffix="south")
    west, north = rw.op("Sub", [one, east], suffix="west"), rw.op("Sub", [one, south], suffix="north")
    weights = []  # torch's order: nw, ne, sw, se; each a product of two 1-D weights
    for label, weight_x, weight_y in (("nw", west, north), ("ne", east, north), ("sw", west, south),
                                      ("se", east, south)):
        weights.append(value_weight(rw, rw.op("Mul", [weight_x, weight_y], suffix=f"{label}_weight"), site.x,
                                    coord_dtype, label))
    if isinstance(channels, int) and channels >= MATMUL_MIN_CHANNELS:
        blended = _blend_by_matmul(rw, padded, x0, y0, weights, site.x, height, width, opset, coord_dtype)
    else:
        table = rw.op("Flatten", [padded], {"axis": 3}, suffix="table")
        north_west = flat_index(rw, [y0, x0], site.x, [height + 3, width + 3], coord_dtype)
        corners = zip(("nw", "ne", "sw", "se"), (0, 1, width + 3, width + 4), weights)
        blended = blend_rows(rw, table, north_west, corners, opset)
    rw.finish("Transpose", [blended], {"perm": [0, 3, 1, 2]}, suffix="nchw")


def padded_channels_last(rw: Rewrite, x: gs.Tensor, spatial_dims: int) -> gs.Tensor:
    """x with one zero row/column/slice before and two after each spatial axis, channels last: every
    clipped corner index stays inside, and every corner outside the image reads zero."""
    pads = [0, 0] + [1] * spatial_dims + [0, 0] + [2] * spatial_dims
    padded = rw.op("Pad", [x, rw.const(pads, "pads", np.int64)], {"mode": "constant"}, suffix="pad")
    return rw.op("Transpose", [padded], {"perm": [0, *range(2, spatial_dims + 2), 1]}, suffix="channels_last")


def grid_axis(rw: Rewrite, grid: gs.Tensor, axis: int, label: str) -> gs.Tensor:
    """grid[..., axis] (a 0-d index drops the last axis; Rewrite.const would make it 1-d)."""
    index = gs.Constant(rw.name(f"{label}_axis"), values=np.array(axis, dtype=np.int64))
    return rw.op("Gather", [grid, index], {"axis": -1}, suffix=label)


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


def _pixel(rw: Rewrite, grid: gs.Tensor, axis: int, size: int, site: Sampling, dtype, fma_dtype, opset: int,
           label: str) -> gs.Tensor:
    """Source pixel coordinate along one axis, as torch's vectorised 2-D CPU kernel computes it, clipped;
    its fused multiply-adds in `fma_dtype` (float64: rounded once, as torch's).

    A NaN coordinate becomes the low bound, as torch's `clip_coordinates` does for border and reflection.
    """
    shifted = rw.op("Add", [grid_axis(rw, grid, axis, label), rw.const(1.0, f"{label}_one", dtype)],
                    suffix=f"{label}_plus1")
    if site.align_corners:  # no addend: the product is rounded once anyway
        pixel = rw.op("Mul", [shifted, rw.const((size - 1) / 2, f"{label}_scale", dtype)], suffix=f"{label}_pixel")
    else:  # fused: (g + 1) * (size / 2) - 0.5
        scaled = rw.op("Mul", [_widen(rw, shifted, dtype, fma_dtype, f"{label}_plus1"),
                               rw.const(size / 2, f"{label}_scale", fma_dtype)], suffix=f"{label}_scaled")
        pixel = _narrow(rw, rw.op("Sub", [scaled, rw.const(0.5, f"{label}_half", fma_dtype)],
                                  suffix=f"{label}_unnormalised"), dtype, fma_dtype, f"{label}_pixel")
    if site.padding == "reflection":
        pixel = _reflect(rw, pixel, site.align_corners, size, dtype, fma_dtype, label)
    return clip_pixel(rw, pixel, size, site.padding, -1 if site.padding == "zeros" else 0, dtype, opset, label)


def _widen(rw: Rewrite, tensor: gs.Tensor, dtype, fma_dtype, label: str) -> gs.Tensor:
    """`tensor` (of `dtype`) in `fma_dtype`: exact."""
    if fma_dtype == dtype:
        return tensor
    return rw.op("Cast", [tensor], {"to": onnx.helper.np_dtype_to_tensor_dtype(fma_dtype)}, suffix=f"{label}_wide")


def _narrow(rw: Rewrite, tensor: gs.Tensor, dtype, fma_dtype, label: str) -> gs.Tensor:
    """`tensor` (of `fma_dtype`) rounded to `dtype`: the one rounding of the fused multiply-add."""
    if fma_dtype == dtype:
        return tensor
    return rw.op("Cast", [tensor], {"to": onnx.helper.np_dtype_to_tensor_dtype(dtype)}, suffix=label)


def _reflect(rw: Rewrite, coord: gs.Tensor, align_corners: bool, size: int, dtype, fma_dtype,
             label: str) -> gs.Tensor:
    """torch's vectorised `reflect_coordinates` (GridSamplerKernel.cpp), operation for operation:
    mirror into [low, low + twice_span/2] with low = 0 (align_corners) or -0.5; its fused multiply-add
    `extra` in `fma_dtype`."""
    if align_corners and size <= 1:  # torch: every coordinate reflects to 0 (here NaN for ±inf, then 0)
        return rw.op("Mul", [coord, rw.const(0.0, f"{label}_zero", dtype)], suffix=f"{label}_reflected")
    span_value = (size - 1) * 2 if align_corners else size * 2
    twice_span = rw.const(span_value, f"{label}_twice_span", dtype)
    low = None if align_corners else rw.const(-0.5, f"{label}_mirror_low", dtype)
    if low is not None:
        coord = rw.op("Sub", [coord, low], suffix=f"{label}_from_low")
    distance = rw.op("Abs", [coord], suffix=f"{label}_distance")
    # Floor is torch's trunc here: the distance is not negative.
    flips = rw.op("Floor", [rw.op("Div", [distance, twice_span], suffix=f"{label}_spans")], suffix=f"{label}_flips")
    # fused: distance - flips * twice_span
    wide_span = twice_span if fma_dtype == dtype else rw.const(span_value, f"{label}_wide_span", fma_dtype)
    whole = rw.op("Mul", [_widen(rw, flips, dtype, fma_dtype, f"{label}_flips"), wide_span], suffix=f"{label}_whole")
    extra = _narrow(rw, rw.op("Sub", [_widen(rw, distance, dtype, fma_dtype, f"{label}_distance"), whole],
                              suffix=f"{label}_remainder"), dtype, fma_dtype, f"{label}_extra")
    reflected = rw.op("Min", [extra, rw.op("Sub", [twice_span, extra], suffix=f"{label}_back")],
                      suffix=f"{label}_reflected")
    return reflected if low is None else rw.op("Add", [reflected, low], suffix=f"{label}_mirrored")


def flat_index(rw: Rewrite, coords: list[gs.Tensor], x: gs.Tensor, sizes: list[int], dtype) -> gs.Tensor:
    """int64 row of a [N * prod(sizes), ...] table holding each batch item of `x` at offset 1 along every
    spatial axis; `coords` are float pixel coordinates [N, ...], slowest axis first."""
    offset = rw.const(1.0, "pad_offset", dtype)
    strides = [int(np.prod(sizes[axis + 1:])) for axis in range(len(sizes))]
    index = _batch_starts(rw, x, int(np.prod(sizes)), len(coords))
    for axis, (coord, stride) in enumerate(zip(coords, strides)):
        padded = rw.op("Add", [coord, offset], suffix=f"axis{axis}_padded")
        position = rw.op("Cast", [padded], {"to": onnx.TensorProto.INT64}, suffix=f"axis{axis}_index")
        if stride != 1:
            position = rw.op("Mul", [position, rw.const(stride, f"axis{axis}_stride", np.int64)],
                             suffix=f"axis{axis}_start")
        index = rw.op("Add", [index, position], suffix=f"axis{axis}_flat")
    return index


def _batch_starts(rw: Rewrite, x: gs.Tensor, rows_per_item: int, grid_dims: int) -> gs.Tensor:
    """[N, 1, ...] int64: the first table row of each batch item (Shape and Range when N is dynamic)."""
    batch = x.shape[0]
    if isinstance(batch, int):
        return rw.const((np.arange(batch) * rows_per_item).reshape((batch,) + (1,) * grid_dims), "batch_start",
                        np.int64)

    def scalar(value, suffix):  # Range takes 0-d inputs; Rewrite.const would make them 1-d
        return gs.Constant(rw.name(suffix), values=np.array(value, dtype=np.int64))

    count = rw.op("Gather", [rw.op("Shape", [x], suffix="shape"), scalar(0, "batch_axis")], {"axis": 0},
                  suffix="batch")
    items = rw.op("Range", [scalar(0, "range_start"), count, scalar(1, "range_step")], suffix="batch_items")
    starts = rw.op("Mul", [items, rw.const(rows_per_item, "batch_stride", np.int64)], suffix="batch_rows")
    return rw.op("Reshape", [starts, rw.const([-1] + [1] * grid_dims, "batch_shape", np.int64)],
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


def _blend_by_matmul(rw, padded, x0, y0, weights, x, height, width, opset, dtype) -> gs.Tensor:
    """One gather from a table whose row holds a pixel's four corners [nw|ne|sw|se] (4C wide), then
    MatMul [.., 1, 4] x [.., 4, C]. Faster than four gathers from 128 channels on (docs: Speed)."""
    corners = []
    for label, (dy, dx) in zip(("nw", "ne", "sw", "se"), ((0, 0), (0, 1), (1, 0), (1, 1))):
        corners.append(rw.op("Slice", [padded, rw.const([dy, dx], f"{label}_starts", np.int64),
                                       rw.const([dy + height + 2, dx + width + 2], f"{label}_ends", np.int64),
                                       rw.const([1, 2], f"{label}_axes", np.int64)], suffix=f"{label}_shift"))
    quads = rw.op("Concat", corners, {"axis": 3}, suffix="corners")
    table = rw.op("Flatten", [quads], {"axis": 3}, suffix="table")
    index = flat_index(rw, [y0, x0], x, [height + 2, width + 2], dtype)
    gathered = rw.op("Gather", [table, index], {"axis": 0}, suffix="gather")
    by_corner = rw.op("Reshape", [gathered, rw.const([0, 0, 0, 4, -1], "corner_shape", np.int64)],
                      suffix="by_corner")
    columns = [unsqueeze(rw, w, [-1], opset, f"{label}_weight") for label, w in zip(("nw", "ne", "sw", "se"),
                                                                                        weights)]
    weight_row = unsqueeze(rw, rw.op("Concat", columns, {"axis": -1}, suffix="weights"), [-2], opset, "weights")
    blended = rw.op("MatMul", [weight_row, by_corner], suffix="blend")
    return rw.op("Reshape", [blended, rw.const([0, 0, 0, -1], "blend_shape", np.int64)], suffix="blended")


def unsqueeze(rw: Rewrite, tensor: gs.Tensor, axes: list[int], opset: int, label: str) -> gs.Tensor:
    """Unsqueeze in the spelling of `opset` (axes became an input at opset 13)."""
    if opset >= 13:
        return rw.op("Unsqueeze", [tensor, rw.const(axes, f"{label}_axes", np.int64)], suffix=f"{label}_unsqueeze")
    return rw.op("Unsqueeze", [tensor], {"axes": axes}, suffix=f"{label}_unsqueeze")
