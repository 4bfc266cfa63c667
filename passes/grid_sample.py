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
A bfloat16 site is sampled in float32 between Casts (onnx and decompose), as torch's CUDA kernel samples it.
5-D input is left to grid-sample-3d. docs/passes/grid-sample.md has the exact arithmetic and the benchmark;
surgeon.sampling reads the spellings and holds what the 2-D and 3-D rewrites share.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from surgeon.errors import PassError
from surgeon.pass_api import Param, ParamError, Pass, PassResult, register_pass
from surgeon.plugins.specs import make_plugin_node, plugin_specs
from surgeon.rewrite import Rewrite, dtype_of
from surgeon.sampling import (INTERPOLATION_CODES, PADDING_CODES, Sampling, blend_rows, check_supported, clip_pixel,
                              emit_onnx, flat_index, grid_axis, padded_channels_last, read_sampling, rewrite_sites,
                              unsqueeze, value_weight)

GRID_SAMPLE_SINCE = 16
#: From this many channels decompose blends with one gather + MatMul instead of four gathers: the measured
#: crossover lies between 64 (four gathers faster) and 128 (MatMul faster); docs/passes/grid-sample.md, Speed.
MATMUL_MIN_CHANNELS = 128
#: The corners of a bilinear sample in torch's order (and the order of `bilinear_corners`' weights).
CORNERS = ("nw", "ne", "sw", "se")
#: The plugin spec whose contract (inputs, attributes, output) every plugin node of this pass has.
PLUGIN_SPEC = "GridSample2D"
#: The attributes of that contract, which the pass gives every plugin node (besides plugin_version/_namespace).
PLUGIN_ATTRIBUTES = ("interpolation_mode", "padding_mode", "align_corners")
#: The hint where `plugin_op` names another contract than the plugin node's.
OWN_PLUGIN_OP = f"name your plugin's own op type (the default, {PLUGIN_SPEC}, is surgeon's plugin)"
#: Why a plugin node must not carry an op type the pass reads as input, by the spelling it reads.
INPUT_SPELLING_CONTRACTS = {
    "trt": "BEVFormer_tensorrt's sampler: grid channels-first and scaled by 10, where the plugin node's is [N,Hg,Wg,2]",
    "onnx": "the standard GridSample: string mode and padding_mode, no plugin attributes",
    "mmdeploy": "mmdeploy's sampler: every later run would rewrite the plugin nodes again",
}


@register_pass("grid-sample")
class GridSamplePass(Pass):
    """Rewrite grid sampling (ATen, GridSample, mmdeploy, TensorRT plugin) to GridSample, opset-11 ops or a plugin."""

    params = {
        "mode": Param(str, "auto", choices=("auto", "onnx", "decompose", "plugin"),
                      help="target form; auto: GridSample where the target runs it on the site's dtype, else "
                           "decompose (nearest sites decompose on ONNX Runtime, whose nearest kernel is slower; "
                           "nearest reflection sites with align_corners 0 everywhere but on TensorRT: GridSample's "
                           "ties differ from torch's)"),
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
    def check_params(cls, values):
        """The declared checks, then `plugin_op`: not an op type the pass reads as input (in the default domain,
        where the BEV exporters put their samplers, or in `plugin_namespace`), nor a plugin spec of another
        contract (the node is checked against the spec of its op type), so recipes fail at load time."""
        checked = super().check_params(values)
        op_type = checked["plugin_op"]
        for domain in dict.fromkeys(("", checked["plugin_namespace"])):
            # The pass's own reader decides, so the refused op types are exactly the spellings it takes.
            site = read_sampling(gs.Node(op_type, domain=domain, inputs=[gs.Variable("x"), gs.Variable("grid")]))
            if site is None:
                continue
            label = f"'{domain}::{op_type}'" if domain else f"'{op_type}'"
            contract = INPUT_SPELLING_CONTRACTS.get(site.spelling, site.spelling)
            raise ParamError("plugin_op", f"parameter 'plugin_op' of pass '{cls.name}': {label} is an input "
                             f"spelling of grid-sample ({contract})", hint=OWN_PLUGIN_OP)
        spec = plugin_specs().get(op_type)
        if spec is not None and (len(spec.inputs) != 2 or {a.name for a in spec.attrs} != set(PLUGIN_ATTRIBUTES)):
            # The node would be checked against that spec and run through its reference: another contract.
            raise ParamError("plugin_op", f"parameter 'plugin_op' of pass '{cls.name}': '{op_type}' is the plugin "
                             f"spec {spec.name} (inputs {', '.join(spec.inputs)}; attributes "
                             f"{', '.join(a.name for a in spec.attrs) or 'none'}), not grid-sample's contract",
                             hint=OWN_PLUGIN_OP)
        return checked

    @classmethod
    def check_params_for(cls, values, target):
        check_fma_emulation(cls.name, values["fma_emulation"], target)

    @classmethod
    def fix_hint(cls, target) -> str:
        if target.is_tensorrt:  # from 8.5 the parser has GridSample, which auto picks; older: plugin or ops
            native = "grid-sample (native GridSample), or " if choose_form(target) == "onnx" else "grid-sample "
            return native + "mode=plugin or mode=decompose"
        return "grid-sample" if choose_form(target) == "onnx" else "grid-sample mode=decompose"

    def run(self, graph, ctx):
        self.check_params_for(self.values, ctx.target)  # a Recipe built in code skips load_recipe's check
        form = self.mode if self.mode != "auto" else choose_form(ctx.target)
        fma_in_float64 = emulates_fma_in_float64(self.fma_emulation, ctx.target)
        grid_dtypes: set[str] = set()  # of the decomposed sites, as sampled

        def decompose(rw: Rewrite, site: Sampling, grid: gs.Tensor, opset: int) -> None:
            grid_dtypes.add(np.dtype(dtype_of(grid) or np.float32).name)
            emit_decomposition(rw, site, grid, opset, fma_in_float64)

        emit = {"onnx": emit_onnx, "decompose": decompose,
                "plugin": lambda rw, site, grid, opset: self._emit_plugin(rw, site, grid)}[form]
        result = rewrite_following_torch_ties(graph, ctx, form, 2, GRID_SAMPLE_SINCE, emit, decompose,
                                              self.mode == "auto")
        if grid_dtypes:
            result.note(decomposition_note(self.fma_emulation, fma_in_float64, ctx.target, grid_dtypes))
        return result

    def _emit_plugin(self, rw: Rewrite, site: Sampling, grid: gs.Tensor) -> None:
        attrs = dict(zip(PLUGIN_ATTRIBUTES, (INTERPOLATION_CODES.index(site.interpolation),
                                             PADDING_CODES.index(site.padding), int(site.align_corners))))
        if self.plugin_op in plugin_specs():  # surgeon's plugin: the spec checks the attributes, sizes the output
            node = make_plugin_node(rw, self.plugin_op, [site.x, grid], attrs, domain=self.plugin_namespace,
                                    plugin_namespace=self.plugin_namespace)
        else:  # the user's own plugin, which no spec describes: the output is grid-sample's [N, C, Hg, Wg]
            node = rw.finish(self.plugin_op, [site.x, grid], attrs, domain=self.plugin_namespace)
            output = node.outputs[0]
            if output.shape is None and site.x.shape is not None and grid.shape is not None:
                output.shape = [*site.x.shape[:2], *grid.shape[1:3]]
            if output.dtype is None:
                output.dtype = site.x.dtype
        node.attrs.update(plugin_version=self.plugin_version, plugin_namespace=self.plugin_namespace)


def choose_form(target) -> str:
    """The form `mode: auto` picks: GridSample where the target runs it, opset-11 ops elsewhere (then, site by
    site, `auto_decomposes` says where GridSample is not taken after all)."""
    if target.is_tensorrt:
        return "onnx" if target.version_tuple() >= (8, 5) else "decompose"
    if target.opset >= GRID_SAMPLE_SINCE and target.supports("GridSample", opset=target.opset):
        return "onnx"
    return "decompose"


#: How standard GridSample's nearest reflection about pixel edges differs from torch's (docs: "Ties outside the image").
TIE_ORDER = ("ONNX's GridSample rounds a coordinate before reflecting it and torch after: a coordinate outside the "
             "image exactly halfway between two pixels reads another pixel than torch")


def ties_differ_from_torch(site: Sampling) -> bool:
    """Whether standard GridSample can read another pixel than torch at `site` (nearest, reflection about pixel
    edges): 5.5 of a 5-wide row rounds to 6 and reflects to 3, where torch reflects to 3.5 and rounds to 4.
    About pixel centres (align_corners) both orders give one pixel: that reflection keeps pixels' parity."""
    return site.interpolation == "nearest" and site.padding == "reflection" and not site.align_corners


#: How much slower ONNX Runtime 1.31's nearest GridSample kernel ran than the decomposition on the bench's
#: 2-D shapes (docs/passes/grid-sample.md, Speed); why auto decomposes nearest sites there.
ORT_NEAREST_SLOWDOWN = "5–11×"


def rewrite_following_torch_ties(graph, ctx, form: str, spatial_dims: int, onnx_opset: int, emit, decompose,
                                 auto: bool) -> PassResult:
    """`rewrite_sites`, and when `auto` chose the onnx form, `decompose` (an `emit`) instead for the sites
    `auto_decomposes` names, standard GridSample nodes included; notes the chosen forms and why, and the
    GridSample nodes left whose ties differ. Bfloat16 sites are sampled in float32 (`sampled_in_float32`),
    but by a plugin node, whose kernel is the user's choice."""
    widened: list[str] = []  # the bfloat16 sites, sampled in float32
    if form != "plugin":
        emit = sampled_in_float32(emit, widened)
    decompose = sampled_in_float32(decompose, widened)
    auto_onnx = auto and form == "onnx"
    gridsample_opset = max(graph.opset, onnx_opset)  # the opset of any GridSample auto writes or keeps
    reasons: dict[str, str] = {}  # node name -> why auto decomposed it

    def reason_for(site: Sampling) -> str | None:
        return auto_decomposes(site, ctx.target, gridsample_opset) if auto_onnx else None

    def emit_site(rw: Rewrite, site: Sampling, grid: gs.Tensor, opset: int) -> None:
        reason = reason_for(site)
        if reason:
            reasons[site.node.name or rw.prefix] = reason
            decompose(rw, site, grid, opset)
        else:
            emit(rw, site, grid, opset)

    if auto_onnx:
        sites = [site for site in map(read_sampling, graph.nodes)
                 if site is not None and site.spatial_dims == spatial_dims]
        decomposed = {id(site.node): reason for site in sites if (reason := reason_for(site))}
        for site in sites:  # before anything is rewritten
            if id(site.node) in decomposed:
                check_decomposable(site, decomposed[id(site.node)], ctx.target)
        if all(site.spelling == "onnx" or id(site.node) in decomposed for site in sites):
            onnx_opset = graph.opset  # no site becomes GridSample: no conversion to its opset
    result = rewrite_sites(graph, ctx, form, spatial_dims, onnx_opset, emit_site)
    if auto and len(result.rewritten) > len(reasons):
        result.note(f"mode auto chose '{form}' for target {ctx.target.name}")
    if auto_onnx:  # a standard GridSample is the onnx form already, which rewrite_sites leaves alone
        standard = decompose_standard(result.graph or graph, ctx, spatial_dims, decompose, gridsample_opset)
        result.rewritten += list(standard)
        reasons.update(standard)
    for why in [*AUTO_REASONS, *sorted(set(reasons.values()) - set(AUTO_REASONS))]:
        names = [name for name, reason in reasons.items() if reason == why]
        if names:
            result.note(f"mode auto chose 'decompose' for {', '.join(names)}: "
                        f"{AUTO_REASONS.get(why) or lacking_text(why, ctx.target)}")
    if widened:
        result.note(f"sampled {', '.join(widened)} in float32 between Casts from and to bfloat16, as torch's CUDA "
                    f"kernel computes bfloat16 (its CPU kernel rounds every step to bfloat16 and differs)")
    if form == "onnx":
        note_ties(result.graph or graph, result, ctx.target, spatial_dims)
    return result


#: The notes of `auto_decomposes`' reasons but a GridSample the target lacks (`lacking_text`).
AUTO_REASONS = {
    "ties": f"nearest with reflection padding and align_corners 0, where {TIE_ORDER}; decompose follows torch "
            f"(mode onnx keeps GridSample)",
    "speed": f"ONNX Runtime's nearest GridSample kernel is {ORT_NEAREST_SLOWDOWN} slower than the decomposition "
             f"here; mode onnx keeps it",
}


def lacking_text(lacking: str, target) -> str:
    """Why auto decomposes a site whose GridSample `target` lacks (`lacking`: "float64 GridSample-16")."""
    return f"target {target.name} runs no {lacking} (mode onnx keeps GridSample)"


def check_decomposable(site: Sampling, reason: str, target) -> None:
    """Raise PassError naming the node where auto would decompose `site` for `reason` but decompose cannot take
    it: only for a GridSample the target lacks (ties and speed need what decompose needs)."""
    try:
        check_supported(site, "decompose")
    except PassError as exc:
        raise PassError(f"{exc.message}; mode auto decomposes it: {lacking_text(reason, target)}") from exc


def sampled_in_float32(emit, widened: list[str]):
    """`emit`, which samples a site whose input or grid is bfloat16 in float32 between Casts and appends its name
    to `widened`. torch's CUDA kernel computes bfloat16 sampling in float32 too (opmath), rounding once at the
    end; a bfloat16 form could not: ONNX has no bfloat16 GridSample before opset 22, nor Where before 16."""

    def emit_site(rw: Rewrite, site: Sampling, grid: gs.Tensor, opset: int) -> None:
        if "bfloat16" not in (dtype_name_of(site.x), dtype_name_of(grid)):
            emit(rw, site, grid, opset)
            return
        widened.append(site.node.name or rw.prefix)
        last = CastBackToBfloat16(rw) if dtype_name_of(site.x) == "bfloat16" else rw
        wide = dataclasses.replace(site, x=last.cast(site.x, np.float32, "x_float32"))
        emit(last, wide, last.cast(grid, np.float32, "grid_float32"), opset)

    return emit_site


def dtype_name_of(tensor: gs.Tensor) -> str | None:
    """`tensor`'s dtype by name ("bfloat16"), None where unknown."""
    dtype = dtype_of(tensor)
    return None if dtype is None else dtype.name


class CastBackToBfloat16(Rewrite):
    """The rewrite `rw` of a bfloat16 site sampled in float32: its last node writes float32, and a Cast to
    bfloat16 takes over the site's outputs."""

    def __init__(self, rw: Rewrite):
        super().__init__(rw.graph, rw.ctx, rw.node)
        self.prefix, self.nodes = rw.prefix, rw.nodes  # the nodes `rw` holds already (a standardised grid)

    def finish(self, op_type: str, inputs, attrs: dict | None = None, *, domain: str | None = None,
               suffix: str | None = None) -> gs.Node:
        sampled = self.op(op_type, inputs, attrs, domain=domain, suffix=suffix, dtype=np.float32)
        return super().finish("Cast", [sampled], {"to": onnx.TensorProto.BFLOAT16}, suffix="bfloat16")


def auto_decomposes(site: Sampling, target, gridsample_opset: int) -> str | None:
    """Why auto, having chosen GridSample for `target`, decomposes `site` instead: the GridSample it would write
    or keep at `gridsample_opset` where `target` lacks it for the site's dtype (`lacking_gridsample`); "ties"
    where GridSample's ties differ from torch's (but on TensorRT, whose kernel is unchecked), "speed" for 2-D
    nearest on ONNX Runtime, whose nearest kernel is the slow one (TensorRT's and 3-D are unmeasured); None
    otherwise. Where decompose cannot take the site (a dynamic spatial size), ties and speed leave it GridSample
    (noted if its ties differ); a lacking GridSample stops the pass (`check_decomposable`)."""
    lacking = lacking_gridsample(site, target, gridsample_opset)
    if lacking:
        return lacking
    shape = site.x.shape
    if shape is None or not all(isinstance(d, int) for d in shape[2:]):
        return None
    if ties_differ_from_torch(site) and not target.is_tensorrt:
        return "ties"
    if site.interpolation == "nearest" and site.spatial_dims == 2 and target.runtime == "onnxruntime":
        return "speed"
    return None


def lacking_gridsample(site: Sampling, target, opset: int) -> str | None:
    """The GridSample of `opset` that `target` lacks for `site` ("float64 GridSample-16"), asked for the dtypes
    of its input and grid as written (a bfloat16 site but a standard GridSample, kept as it is, in float32:
    `sampled_in_float32`); None where it runs it. What `surgeon check` accepts counts as run: ONNX Runtime
    runs a float16 node in float32 itself, TensorRT casts float64 to float32 (`Target.computes_in`). ONNX
    Runtime's kernels take input and grid of one type: a pair it computes in two lacks GridSample there
    ("GridSample-20 on float32 input and float64 grid")."""
    version = onnx.defs.get_schema("GridSample", opset).since_version
    dtypes = []
    for tensor in (site.x, site.grid):
        dtype = np.dtype(dtype_of(tensor) or np.float32)
        if dtype.name == "bfloat16" and site.spelling != "onnx":
            dtype = np.dtype(np.float32)
        if not target.supports("GridSample", dtype=target.computes_in(dtype.name), opset=opset):
            return f"{dtype.name} GridSample-{version}"
        dtypes.append(dtype.name)
    if target.runtime == "onnxruntime" and len({target.computes_in(name) for name in dtypes}) > 1:
        return f"GridSample-{version} on {dtypes[0]} input and {dtypes[1]} grid (its kernels take one type for both)"
    return None


def decompose_standard(graph, ctx, spatial_dims: int, decompose, gridsample_opset: int) -> dict[str, str]:
    """`decompose` the standard GridSample nodes with `spatial_dims` that `auto_decomposes`; the names of
    those rewritten, with why."""
    reasons = {}
    for site in map(read_sampling, list(graph.nodes)):
        if site is None or site.spelling != "onnx" or site.spatial_dims != spatial_dims:
            continue
        reason = auto_decomposes(site, ctx.target, gridsample_opset)
        if reason:
            rw = Rewrite(graph, ctx, site.node)
            decompose(rw, site, site.grid, graph.opset)
            reasons[site.node.name or rw.prefix] = reason
    return reasons


def note_ties(graph, result, target, spatial_dims: int) -> None:
    """Name the GridSample nodes with `spatial_dims` in `graph` whose ties outside the image differ from torch's."""
    names = [site.node.name for site in map(read_sampling, graph.nodes) if site is not None
             and site.spelling == "onnx" and site.spatial_dims == spatial_dims and ties_differ_from_torch(site)]
    if names:
        runtimes = "TensorRT's kernel not checked" if target.is_tensorrt else "ONNX Runtime and onnx.reference"
        result.note(f"{', '.join(names)}: GridSample nearest with reflection padding and align_corners 0, where "
                    f"{TIE_ORDER} ({runtimes}); mode decompose follows torch exactly")


def runs_float64(target) -> bool:
    """Whether `target` runs the float64 ops of the fused multiply-add emulation (TensorRT has no float64)."""
    return all(target.supports(op, dtype=np.float64) for op in ("Cast", "Mul", "Sub"))


def check_fma_emulation(pass_name: str, setting: str, target) -> None:
    """Raise ParamError where `fma_emulation` `setting` asks `target` for float64 ops it lacks."""
    if setting == "float64" and not runs_float64(target):
        raise ParamError("fma_emulation", f"parameter 'fma_emulation' of pass '{pass_name}': 'float64' needs "
                         f"float64 Cast/Mul/Sub, which target '{target.name}' lacks",
                         hint="use fma_emulation 'none' or 'auto'")


def emulates_fma_in_float64(setting: str, target) -> bool:
    """Whether `fma_emulation` `setting` (auto: where `target` runs float64) computes the fused multiply-adds
    in float64."""
    return setting == "float64" or (setting == "auto" and runs_float64(target))


def fma_note(setting: str, in_float64: bool, target) -> str:
    """The note a decomposing run adds: how its float32 coordinates are rounded, and why (auto)."""
    why = "" if setting != "auto" else (
        f" (auto: target {target.name} {'runs' if in_float64 else 'has no'} float64 Cast/Mul/Sub)")
    effect = ("float32 grids' coordinates are rounded once where torch's kernel fuses a multiply-add, "
              "as torch's are" if in_float64 else
              "float32 grids' coordinates are rounded twice where torch's kernel fuses a multiply-add: "
              "they can be 1 ulp off, bilinear then differ from torch by more than 1e-5 on large maps "
              "and nearest pick a neighbour")
    return f"fma_emulation {'float64' if in_float64 else 'none'}{why}: {effect}"


#: What a decomposed grid of another dtype than float32 gets, where fma_emulation does not apply.
UNEMULATED_GRIDS = {
    "float64": "torch's float64 kernel fuses the same multiply-adds, which float64 ops cannot emulate: the "
               "coordinates are rounded twice there, about one ulp of double from torch's",
    "float16": "coordinates computed in float16 op by op, where torch's float16 CPU kernel rounds differently "
               "(docs/passes/grid-sample.md, fma_emulation)",
}


def decomposition_note(setting: str, in_float64: bool, target, grid_dtypes: set[str]) -> str:
    """The note of a run that decomposed grids of `grid_dtypes` (as sampled: float32 for bfloat16):
    `fma_note` where float32 grids are among them, and what the other dtypes get instead."""
    notes = [fma_note(setting, in_float64, target) if "float32" in grid_dtypes else
             "fma_emulation applies to float32 grids only"]
    notes += [f"{dtype} grids: {UNEMULATED_GRIDS.get(dtype, f'computed in {dtype} op by op')}"
              for dtype in sorted(grid_dtypes - {"float32"})]
    return "; ".join(notes)


def fma_dtype_for(coord_dtype, in_float64: bool) -> np.dtype:
    """The dtype of the fused multiply-adds: float64 for float32 coordinates where emulated, else theirs."""
    # torch's float32 kernel fuses two multiply-adds (one rounding each), which float64 arithmetic rounds
    # once too (docs: where not). Its float64 kernel fuses them as well, beyond what float64 ops can emulate.
    return np.dtype(np.float64) if in_float64 and np.dtype(coord_dtype) == np.float32 else np.dtype(coord_dtype)


def emit_decomposition(rw: Rewrite, site: Sampling, grid: gs.Tensor, opset: int, fma_in_float64: bool) -> None:
    """Gather whole channel rows of a padded channels-last table, one flat index per sample point."""
    _, channels, height, width = site.x.shape
    coord_dtype = np.dtype(dtype_of(grid) or np.float32)
    fma_dtype = fma_dtype_for(coord_dtype, fma_in_float64)
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

    x0, y0, corner_weights = bilinear_corners(rw, px, py, coord_dtype)
    weights = [value_weight(rw, weight, site.x, coord_dtype, label)
               for label, weight in zip(CORNERS, corner_weights)]
    if isinstance(channels, int) and channels >= MATMUL_MIN_CHANNELS:
        blended = _blend_by_matmul(rw, padded, x0, y0, weights, site.x, channels, height, width, opset,
                                   coord_dtype)
    else:
        table = rw.op("Flatten", [padded], {"axis": 3}, suffix="table")
        north_west = flat_index(rw, [y0, x0], site.x, [height + 3, width + 3], coord_dtype)
        corners = zip(CORNERS, (0, 1, width + 3, width + 4), weights)
        blended = blend_rows(rw, table, north_west, corners, opset)
    rw.finish("Transpose", [blended], {"perm": [0, 3, 1, 2]}, suffix="nchw")


def bilinear_corners(rw: Rewrite, px: gs.Tensor, py: gs.Tensor, dtype) -> tuple[gs.Tensor, gs.Tensor, list]:
    """(x0, y0, weights): the north-west corner of clipped pixel coordinates `px`, `py` and the four corners'
    weights in `CORNERS` order, each the product of two 1-D weights (west = 1 - (px - x0), ...)."""
    one = rw.const(1.0, "one", dtype)
    x0, y0 = rw.op("Floor", [px], suffix="x_floor"), rw.op("Floor", [py], suffix="y_floor")
    east, south = rw.op("Sub", [px, x0], suffix="east"), rw.op("Sub", [py, y0], suffix="south")
    west, north = rw.op("Sub", [one, east], suffix="west"), rw.op("Sub", [one, south], suffix="north")
    weights = [rw.op("Mul", [weight_x, weight_y], suffix=f"{label}_weight") for label, weight_x, weight_y in
               zip(CORNERS, (west, east, west, east), (north, north, south, south))]
    return x0, y0, weights


def _pixel(rw: Rewrite, grid: gs.Tensor, axis: int, size: int, site: Sampling, dtype, fma_dtype, opset: int,
           label: str) -> gs.Tensor:
    """Source pixel coordinate along one axis, as torch's vectorised 2-D CPU kernel computes it, clipped;
    its fused multiply-adds in `fma_dtype` (float64: rounded once, as torch's).

    A NaN coordinate becomes the low bound, as torch's `clip_coordinates` does for border and reflection.
    """
    pixel = unnormalise(rw, grid_axis(rw, grid, axis, label), size, site.align_corners, dtype, fma_dtype, label)
    if site.padding == "reflection":
        pixel = _reflect(rw, pixel, site.align_corners, size, dtype, fma_dtype, label)
    return clip_pixel(rw, pixel, size, site.padding, -1 if site.padding == "zeros" else 0, dtype, opset, label)


def unnormalise(rw: Rewrite, coord: gs.Tensor, size, align_corners: bool, dtype, fma_dtype,
                label: str) -> gs.Tensor:
    """A normalised coordinate in pixels along an axis of `size` pixels, as torch's grid sampler computes it:
    (g + 1) * (size - 1) / 2 with `align_corners`, else the fused (g + 1) * (size / 2) - 0.5 in `fma_dtype`
    (float64: rounded once, as torch's). `size` may be an array broadcasting against `coord` (a size per level)."""
    shifted = rw.op("Add", [coord, rw.const(1.0, f"{label}_one", dtype)], suffix=f"{label}_plus1")
    if align_corners:  # no addend: the product is rounded once anyway
        return rw.op("Mul", [shifted, rw.const((size - 1) / 2, f"{label}_scale", dtype)], suffix=f"{label}_pixel")
    scaled = rw.op("Mul", [_widen(rw, shifted, dtype, fma_dtype, f"{label}_plus1"),
                           rw.const(size / 2, f"{label}_scale", fma_dtype)], suffix=f"{label}_scaled")
    return _narrow(rw, rw.op("Sub", [scaled, rw.const(0.5, f"{label}_half", fma_dtype)],
                             suffix=f"{label}_unnormalised"), dtype, fma_dtype, f"{label}_pixel")


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


def _blend_by_matmul(rw, padded, x0, y0, weights, x, channels, height, width, opset, dtype) -> gs.Tensor:
    """One gather from a table whose row holds a pixel's four corners [nw|ne|sw|se] (4C wide), then
    MatMul [.., 1, 4] x [.., 4, C]. Faster than four gathers from 128 channels on (docs: Speed).

    The Reshapes name C (static here), not -1: ONNX Runtime cannot infer -1 in an empty tensor (empty grid).
    """
    corners = []
    for label, (dy, dx) in zip(CORNERS, ((0, 0), (0, 1), (1, 0), (1, 1))):
        corners.append(rw.op("Slice", [padded, rw.const([dy, dx], f"{label}_starts", np.int64),
                                       rw.const([dy + height + 2, dx + width + 2], f"{label}_ends", np.int64),
                                       rw.const([1, 2], f"{label}_axes", np.int64)], suffix=f"{label}_shift"))
    quads = rw.op("Concat", corners, {"axis": 3}, suffix="corners")
    table = rw.op("Flatten", [quads], {"axis": 3}, suffix="table")
    index = flat_index(rw, [y0, x0], x, [height + 2, width + 2], dtype)
    gathered = rw.op("Gather", [table, index], {"axis": 0}, suffix="gather")
    by_corner = rw.op("Reshape", [gathered, rw.const([0, 0, 0, 4, channels], "corner_shape", np.int64)],
                      suffix="by_corner")
    columns = [unsqueeze(rw, w, [-1], opset, f"{label}_weight") for label, w in zip(CORNERS, weights)]
    weight_row = unsqueeze(rw, rw.op("Concat", columns, {"axis": -1}, suffix="weights"), [-2], opset, "weights")
    blended = rw.op("MatMul", [weight_row, by_corner], suffix="blend")
    return rw.op("Reshape", [blended, rw.const([0, 0, 0, channels], "blend_shape", np.int64)], suffix="blended")
