"""The TensorRT plugins surgeon emits, each declared once: name, attributes, shapes, kernel, CPU reference.

A spec serves four places: the pass that emits the plugin node (`make_plugin_node`), `check` (the op
is known), validation (the NumPy reference runs the node on the CPU, registered with
`surgeon.reference.reference_op`) and the TensorRT build (`cuda_source` is compiled into
`libsurgeon_plugins.so`). Declaring one is decorating its reference::

    @plugin_spec("Rotate", inputs=("input", "angle", "center"), attrs=(Attr("interpolation_mode", 0, ...),),
                 output_shape=lambda shapes, attrs: [shapes[0]], cuda_source="rotate.cu")
    def rotate(input, angle, center, *, interpolation_mode):
        ...

Plugin nodes are emitted in the `surgeon` domain by default: onnx.checker accepts them there, and
TensorRT's ONNX parser looks plugins up by op type, `plugin_version` and `plugin_namespace` (the way
it loads mmdeploy's custom-domain ops). Graphs in the BEVFormer_tensorrt style put them in the default
domain; the references are registered for both, or for the spec's `domains`.

A plugin name belongs to one file: a second spec of that name (a user's, say) is an error naming both
files, so surgeon's specs and references are never replaced.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from surgeon.errors import PassError, SurgeonError
from surgeon.reference import defined_where, find_reference, reference_op, refuse_second_reference
from surgeon.reference.numpy_ops import grid_sample, multi_scale_deformable_attention

PLUGIN_DOMAIN = "surgeon"
#: Domains the references answer for: ours, and the default domain of BEVFormer_tensorrt-style graphs.
PLUGIN_DOMAINS = (PLUGIN_DOMAIN, "")
FLOAT_TYPES = ("float32", "float16")

Shape = Sequence[Any]  # ints, or strings/None for dynamic dimensions


@dataclass(frozen=True)
class Attr:
    """A plugin attribute: its name, default (whose type is the attribute's type) and meaning."""

    name: str
    default: Any
    help: str = ""
    choices: tuple | None = None

    def check(self, value: Any, plugin: str) -> Any:
        kind = type(self.default)
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if isinstance(value, bool) and kind is int:
            value = int(value)
        if not isinstance(value, kind):
            raise PassError(f"plugin {plugin}: attribute '{self.name}' must be {kind.__name__}, got {value!r}")
        if self.choices is not None and value not in self.choices:
            raise PassError(f"plugin {plugin}: attribute '{self.name}' must be one of {self.choices}, got {value!r}")
        return value


@dataclass(frozen=True)
class PluginSpec:
    """One TensorRT plugin; see the module docstring."""

    name: str
    inputs: tuple[str, ...]
    attrs: tuple[Attr, ...]
    output_shape: Callable[[list[Shape], dict[str, Any]], list[Shape]]
    cuda_source: str
    reference: Callable[..., np.ndarray]
    #: Which input's dtype the output takes (index into `inputs`).
    dtype_from: int = 0
    dtypes: tuple[str, ...] = FLOAT_TYPES
    formats: tuple[str, ...] = ("linear",)
    version: str = "1"
    namespace: str = "surgeon"
    doc: str = ""
    outputs: tuple[str, ...] = field(default=("output",))
    #: The node domains the CPU reference answers for (validation finds no reference in any other).
    domains: tuple[str, ...] = PLUGIN_DOMAINS

    @property
    def shipped(self) -> bool:
        """Declared by surgeon (its kernel is in libsurgeon_plugins.so), not by a plugin file."""
        return self.reference.__module__ == __name__

    def resolve_attrs(self, given: dict[str, Any]) -> dict[str, Any]:
        """`given` checked against the declared attributes, defaults filled in; plugin_* keys dropped."""
        declared = {a.name: a for a in self.attrs}
        unknown = sorted(k for k in given if k not in declared and not k.startswith("plugin_"))
        if unknown:
            raise PassError(f"plugin {self.name} has no attribute '{unknown[0]}' "
                            f"(declared: {', '.join(declared) or 'none'})")
        return {name: a.check(given[name], self.name) if name in given else a.default
                for name, a in declared.items()}

    def node_attrs(self, given: dict[str, Any]) -> dict[str, Any]:
        """The attributes a plugin node carries: resolved ones plus `plugin_version`/`plugin_namespace`."""
        return {**self.resolve_attrs(given), "plugin_version": self.version, "plugin_namespace": self.namespace}

    def run_reference(self, inputs: list, attrs: dict[str, Any]) -> list[np.ndarray]:
        if len(inputs) != len(self.inputs):
            raise PassError(f"plugin {self.name} takes {len(self.inputs)} inputs ({', '.join(self.inputs)}), "
                            f"got {len(inputs)}")
        return [np.asarray(self.reference(*inputs, **self.resolve_attrs(attrs)))]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "namespace": self.namespace, "inputs": list(self.inputs),
                "outputs": list(self.outputs), "dtypes": list(self.dtypes), "formats": list(self.formats),
                "cuda_source": self.cuda_source, "doc": self.doc, "domains": list(self.domains),
                "shipped": self.shipped,
                "attrs": [{"name": a.name, "type": type(a.default).__name__, "default": a.default, "help": a.help,
                           "choices": list(a.choices) if a.choices else None} for a in self.attrs]}


_SPECS: dict[str, PluginSpec] = {}


def plugin_spec(name: str, *, inputs: Sequence[str], output_shape, cuda_source: str, attrs: Sequence[Attr] = (),
                **options):
    """Decorator: declare plugin `name` with the decorated NumPy function as its CPU reference, registered
    for the node domains `domains` (default PLUGIN_DOMAINS: `surgeon` and the default domain)."""
    domains = options.pop("domains", PLUGIN_DOMAINS)
    if isinstance(domains, str) or not domains or not all(isinstance(d, str) for d in domains):
        raise ValueError(f"plugin {name}: domains must be a non-empty tuple of domain names, got {domains!r}")

    def decorate(fn):
        existing = _SPECS.get(name)
        if existing is not None and defined_where(existing.reference) != defined_where(fn):
            raise SurgeonError(f"two plugin specs are named '{name}': {defined_where(existing.reference)} and "
                               f"{defined_where(fn)}", hint="rename yours: a built-in plugin spec cannot be replaced"
                               if existing.shipped else "rename one of them")
        summary = next(iter((fn.__doc__ or "").strip().splitlines()), "")
        spec = PluginSpec(name=name, inputs=tuple(inputs), attrs=tuple(attrs), output_shape=output_shape,
                          cuda_source=cuda_source, reference=fn, doc=summary, domains=tuple(domains), **options)
        # Wrapped, so a clash names the file that declared the spec, not this module.
        reference = functools.wraps(fn)(lambda inputs, attrs: spec.run_reference(inputs, attrs))
        for domain in spec.domains:  # all of them checked before any is registered: nothing half-declared
            refuse_second_reference(reference, name, domain)
        _SPECS[name] = spec
        for domain in spec.domains:
            reference_op(name, domain=domain)(reference)
        return fn

    return decorate


def plugin_specs() -> dict[str, PluginSpec]:
    return dict(_SPECS)


def get_spec(name: str) -> PluginSpec:
    if name not in _SPECS:
        raise PassError(f"unknown plugin '{name}' (known: {', '.join(sorted(_SPECS))})")
    return _SPECS[name]


def make_plugin_node(rewrite, spec_name: str, inputs: Sequence, attrs: dict[str, Any] | None = None,
                     domain: str = PLUGIN_DOMAIN, last: bool = True, plugin_namespace: str | None = None):
    """Add a plugin node to `rewrite` (a surgeon.rewrite.Rewrite) and return it.

    With `last` the node takes over the replaced node's outputs and the rewrite is spliced in;
    otherwise it gets a new output for further nodes to read. Unknown output shapes and dtypes are
    filled in from the spec's rules.

    The node carries `plugin_namespace` (default the spec's `namespace`), by which TensorRT's parser
    finds the plugin. Carrying the spec's own, it is the spec's plugin, which validation runs through the
    reference registered for (`domain`, op type): a domain without one (neither in the spec's `domains`
    nor given a `@reference_op`) is a PassError here, naming the domain and the spec, not a graph that
    validation refuses after the run. Another namespace makes the node a plugin of the user's own with
    the spec's contract (grid-sample's `plugin_namespace`), whose reference is the user's to register.
    """
    spec = get_spec(spec_name)
    if len(inputs) != len(spec.inputs):
        raise PassError(f"plugin {spec.name} takes {len(spec.inputs)} inputs ({', '.join(spec.inputs)}), "
                        f"got {len(inputs)}")
    if (plugin_namespace in (None, spec.namespace) and domain not in spec.domains
            and find_reference(spec.name, domain) is None):
        answers = " and ".join(f"'{d}'" if d else "the default domain" for d in spec.domains)
        raise PassError(f"plugin {spec.name} in domain '{domain}': its spec's reference answers in {answers} only, "
                        "so validation could not run the node", hint="emit it in one of those" + (
                            "" if spec.shipped else f", or add '{domain}' to its plugin_spec(domains=...)"))
    node_attrs = spec.node_attrs(dict(attrs or {}))
    if plugin_namespace is not None:
        node_attrs["plugin_namespace"] = plugin_namespace
    if last:
        node = rewrite.finish(spec.name, list(inputs), node_attrs, domain=domain)
    else:
        rewrite.op(spec.name, list(inputs), node_attrs, domain=domain)
        node = rewrite.nodes[-1]
    shapes = [getattr(t, "shape", None) for t in inputs]
    out = node.outputs[0]
    if out.shape is None and all(s is not None for s in shapes):  # a replaced output keeps what it knew
        (shape,) = spec.output_shape(shapes, spec.resolve_attrs(node_attrs))
        out.shape = list(shape)
    if out.dtype is None:
        out.dtype = getattr(inputs[spec.dtype_from], "dtype", None)
    return node


# ---------------------------------------------------------------- the plugins

def _f32(array) -> np.ndarray:
    return np.asarray(array, dtype=np.float32)


def _like(result: np.ndarray, source: np.ndarray) -> np.ndarray:
    return result.astype(np.result_type(source.dtype, np.float16))


@plugin_spec("MultiScaleDeformableAttn",
             inputs=("value", "spatial_shapes", "level_start_index", "sampling_locations", "attention_weights"),
             output_shape=lambda s, a: [[s[0][0], s[3][1], _product(s[0][2], s[0][3])]],
             cuda_source="msda.cu")
def multi_scale_deformable_attn(value, spatial_shapes, level_start_index, sampling_locations, attention_weights):
    """mmcv's multi_scale_deformable_attn_pytorch: bilinear, zero padding, align_corners=False.

    value [B, S, heads, dims]; spatial_shapes int64 [L, 2] (h, w); level_start_index int64 [L];
    sampling_locations [B, Q, heads, L, P, 2] in [0, 1] (x, y); attention_weights [B, Q, heads, L, P].
    Returns [B, Q, heads * dims].
    """
    # The plugin reads level l at level_start_index[l]; mmcv's fallback splits value in level order,
    # which is the same thing for the consistent offsets every exporter writes.
    starts = np.cumsum([0] + [int(h) * int(w) for h, w in np.asarray(spatial_shapes).reshape(-1, 2)])[:-1]
    if not np.array_equal(starts, np.asarray(level_start_index).reshape(-1)):
        raise ValueError(f"MultiScaleDeformableAttn: level_start_index {np.asarray(level_start_index).tolist()} "
                         f"does not follow from spatial_shapes (expected {starts.tolist()})")
    out = multi_scale_deformable_attention(_f32(value), spatial_shapes, _f32(sampling_locations),
                                           _f32(attention_weights))
    return _like(np.ascontiguousarray(out), value)


def _product(a, b):
    return a * b if isinstance(a, int) and isinstance(b, int) else None


@plugin_spec("GridSample2D", inputs=("input", "grid"),
             attrs=(Attr("interpolation_mode", 0, "0 bilinear, 1 nearest", (0, 1)),
                    Attr("padding_mode", 0, "0 zeros, 1 border, 2 reflection", (0, 1, 2)),
                    Attr("align_corners", 0, "1: -1 and 1 are the corner pixels' centres", (0, 1))),
             output_shape=lambda s, a: [[s[0][0], s[0][1], s[1][1], s[1][2]]],
             cuda_source="grid_sample.cu")
def grid_sample_2d(input, grid, *, interpolation_mode, padding_mode, align_corners):
    """torch.nn.functional.grid_sample on input [N, C, H, W] with grid [N, Hg, Wg, 2] -> [N, C, Hg, Wg]."""
    return _like(grid_sample(_f32(input), _f32(grid), interpolation_mode, padding_mode, bool(align_corners)), input)


@plugin_spec("BEVPool",
             inputs=("depth", "feat", "ranks_depth", "ranks_feat", "ranks_bev", "interval_starts", "interval_lengths"),
             attrs=(Attr("bev_h", 128, "BEV grid rows"), Attr("bev_w", 128, "BEV grid columns")),
             output_shape=lambda s, a: _bev_pool_shape(s, a), cuda_source="bev_pool.cu")
def bev_pool(depth, feat, ranks_depth, ranks_feat, ranks_bev, interval_starts, interval_lengths, *, bev_h, bev_w):
    """BEVDet v2 / CUDA-BEVFusion interval bev_pool: [1, C, bev_h, bev_w] sums of depth * feature.

    depth [N, D, H, W]; feat [N, H, W, C], both of one float type (the output's); per frustum point
    (sorted by BEV cell) ranks_depth indexes the flat depth, ranks_feat the flat N*H*W pixels of feat
    and ranks_bev the flat bev_h*bev_w cell; interval i sums points interval_starts[i] .. +
    interval_lengths[i] into cell ranks_bev[start]. Cells no interval writes are zero.
    """
    depth, feat = np.asarray(depth), np.asarray(feat)
    # The TensorRT plugins read C from feat's dim 3 and take one float type for both: refuse here what
    # they would misread or reject, so validation cannot pass such a graph.
    _bev_pool_shape([depth.shape, feat.shape], {"bev_h": bev_h, "bev_w": bev_w})
    if depth.dtype != feat.dtype:
        raise ValueError(f"BEVPool: depth ({depth.dtype}) and feat ({feat.dtype}) must have one float type")
    channels = feat.shape[-1]
    flat_depth = _f32(depth).reshape(-1)
    flat_feat = _f32(feat).reshape(int(np.prod(feat.shape[:-1])), channels)  # not -1: C may be 0
    starts = np.asarray(interval_starts, dtype=np.int64)
    lengths = np.asarray(interval_lengths, dtype=np.int64)
    interval_of_point = np.repeat(np.arange(len(starts)), lengths)
    points = np.repeat(starts, lengths) + (np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths))
    contributions = flat_depth[ranks_depth[points]][:, None] * flat_feat[ranks_feat[points]]
    sums = np.zeros((len(starts), channels), dtype=np.float32)
    np.add.at(sums, interval_of_point, contributions)
    bev = np.zeros((bev_h * bev_w, channels), dtype=np.float32)
    bev[np.asarray(ranks_bev, dtype=np.int64)[starts]] = sums
    return _like(bev.T.reshape(1, channels, bev_h, bev_w), depth)


def _bev_pool_shape(shapes, attrs):
    """[1, C, bev_h, bev_w]; depth and feat must be 4-D ([N, D, H, W], [N, H, W, C]: B*N cameras)."""
    depth, feat = (list(shape) for shape in shapes[:2])
    if len(depth) != 4 or len(feat) != 4:
        raise PassError(f"plugin BEVPool takes depth [N, D, H, W] and feat [N, H, W, C] (4-D), "
                        f"got depth {depth} and feat {feat}")
    return [[1, feat[3], attrs["bev_h"], attrs["bev_w"]]]


@plugin_spec("Rotate", inputs=("input", "angle", "center"),
             attrs=(Attr("interpolation_mode", 0, "0 bilinear, 1 nearest", (0, 1)),),
             output_shape=lambda s, a: [list(s[0])], cuda_source="rotate.cu")
def rotate(input, angle, center, *, interpolation_mode):
    """torchvision's rotate(input, angle, center) on [C, H, W] or [N, C, H, W]: counter-clockwise degrees, zero fill.

    center [2] is (x, y) in pixels; (W / 2, H / 2) is torchvision's default (the map centre). Computed
    as torchvision does: an inverse affine matrix, `_gen_affine_grid`, grid_sample(align_corners=False).
    """
    image = _f32(input)[None] if input.ndim == 3 else _f32(input)
    height, width = image.shape[-2:]
    radians = -_f32(angle).reshape(()) * np.float32(math.pi) / np.float32(180)
    cos, sin = np.cos(radians), np.sin(radians)
    cx, cy = _f32(center).reshape(2) - np.float32([width * 0.5, height * 0.5])
    theta = np.array([[cos, -sin, cos * -cx + -sin * -cy + cx],
                      [sin, cos, sin * -cx + cos * -cy + cy]], dtype=np.float32)
    rescaled = theta.T / np.float32([0.5 * width, 0.5 * height])
    xs = np.arange(width, dtype=np.float32) - np.float32(width * 0.5 - 0.5)
    ys = np.arange(height, dtype=np.float32) - np.float32(height * 0.5 - 0.5)
    base = np.stack(np.broadcast_arrays(xs[None, :], ys[:, None], np.float32(1)), -1).astype(np.float32)
    grid = (base @ rescaled).astype(np.float32)
    grids = np.broadcast_to(grid, (image.shape[0], height, width, 2))
    out = grid_sample(image, grids, interpolation_mode, "zeros", False)
    return _like(out[0] if input.ndim == 3 else out, input)


@plugin_spec("DeformableAggregation",
             inputs=("mc_ms_feat", "spatial_shape", "scale_start_index", "sampling_location", "weights"),
             output_shape=lambda s, a: [[s[0][0], s[3][1], s[0][2]]], cuda_source="deformable_aggregation.cu")
def deformable_aggregation(mc_ms_feat, spatial_shape, scale_start_index, sampling_location, weights):
    """Sparse4D v3's deformable_aggregation: weighted bilinear samples over cameras, scales and points.

    mc_ms_feat [B, F, C] (every camera's every scale, flattened); spatial_shape int32 [cams, scales, 2]
    (h, w); scale_start_index int32 [cams, scales] (offsets into F); sampling_location [B, A, P, cams, 2]
    (x, y in [0, 1]; points outside the open interval are skipped); weights [B, A, P, cams, scales, G]
    (channel c uses group c // (C / G)). Returns [B, A, C].
    """
    batch, _, channels = mc_ms_feat.shape
    _, anchors, points, cams, _ = sampling_location.shape
    scales, groups = spatial_shape.shape[1], weights.shape[-1]
    feat = _f32(mc_ms_feat)
    locations = _f32(sampling_location)
    grids = np.float32(2) * locations - np.float32(1)
    group_weights = np.repeat(_f32(weights), channels // groups, axis=-1)  # [B, A, P, cams, scales, C]
    out = np.zeros((batch, anchors, channels), dtype=np.float32)
    for cam in range(cams):
        grid = grids[:, :, :, cam]
        location = locations[:, :, :, cam]
        inside = ((location > 0) & (location < 1)).all(-1)[..., None]  # the kernel skips the rest
        for scale in range(scales):
            h, w = (int(v) for v in spatial_shape[cam, scale])
            start = int(scale_start_index[cam, scale])
            image = feat[:, start:start + h * w].reshape(batch, h, w, channels).transpose(0, 3, 1, 2)
            samples = grid_sample(image, grid, "bilinear", "zeros", False).transpose(0, 2, 3, 1)  # [B, A, P, C]
            out += np.where(inside, samples * group_weights[:, :, :, cam, scale], np.float32(0)).sum(2)
    return _like(out, mc_ms_feat)


__all__ = ["Attr", "PluginSpec", "plugin_spec", "plugin_specs", "get_spec", "make_plugin_node", "PLUGIN_DOMAIN",
           "PLUGIN_DOMAINS"]
