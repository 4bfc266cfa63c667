"""Replace BEVFusion's bev_pool (BEVPoolv2's interval form) by one BEVPool plugin node.

The plugin's inputs are the interval form's seven tensors — depth [N, D, H, W], feat [N, H, W, C],
int32 ranks_depth / ranks_feat / ranks_bev (per frustum point, sorted by BEV cell), int32
interval_starts / interval_lengths (one interval per occupied cell) — and it writes [1, C, bev_h, bev_w]
(CUDA-BEVFusion's layout; see docs/plugins.md). Two spellings are recognised:

1. A custom bev_pool node (`BEVPoolV2TRT`, `bev_pool_v2` in any domain) with those seven inputs and
   `output_height` / `output_width` attributes, or BEVDet's `out_height` / `out_width` (TRTBEVPoolv2's
   symbolic); `output_z`, where given, must be 1. Its output layout is read from the node's output
   shape (C checked against feat's): [1, C, H, W] is replaced as is, [1, H, W, C] gets a Transpose
   after the plugin; a shape that fits both (C == H == W) is left alone with a note — no attribute says.
2. The PyTorch reference exported by torch.onnx (surgeon.zoo.bevfusion.bev_pool)::

       depth ─► Reshape ─► Unsqueeze ─► Gather(ranks_depth) ─┐
       feat ─► Reshape ─► Gather(ranks_feat) ────────────────┴► Mul ─► ScatterElements(segment) ─► Add ─┐
       ranks_bev ─► Gather(interval_starts) ─► Unsqueeze ───────────────────────► ScatterND(zeros) ◄─ Reshape
                                                                                     └─► Reshape [1, Y, X, C] ─► ...

   where `segment` is repeat_interleave(arange, interval_lengths) (an ATen node at opset 11, a Loop at
   opset 16). TorchScript exports `index_add_` as a ScatterElements *without* reduction, so that graph
   overwrites instead of summing points of the same cell; the plugin computes the sum the model meant.
   The ScatterND's [Y*X, C] result is rebuilt from the plugin as Reshape + Transpose, so the rest of
   the graph is unchanged. interval_lengths is the one integer graph input, besides the other index
   inputs, cast for repeat_interleave upstream of the segment ids (float casts there, such as a float16
   feat promoted with .float(), belong to the feature branch).

After (both spellings):
    depth, feat ─────────────────────────────────┐
    ranks_depth, ranks_feat, ranks_bev,          ├─► BEVPool plugin ─► [1, C, bev_h, bev_w]
    interval_starts, interval_lengths ─► int32 ──┘
  then, for a custom node with a [1, H, W, C] output:  ─► Transpose(0, 2, 3, 1) ─► [1, bev_h, bev_w, C]
  and for the exported form, in place of the ScatterND: ─► Reshape [C, bev_h*bev_w] ─► Transpose ─► [Y*X, C]
(the index tensors are Cast to int32 only where they are not int32 already).

In both, BEVDet's 5-D depth [B, N, D, H, W] and feat [B, N, H, W, C] are reshaped to the plugin's
[B*N, ...] (the flat order the ranks index is the same); depth and feat must share a float type, and
their ranks must be known (the TensorRT plugin reads C from feat's dim 3).
"""
from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs
from onnx import helper

from surgeon.pass_api import Pass, PassResult, register_pass
from surgeon.plugins.matching import DOMAIN_PARAM, NoMatch, expect_producer
from surgeon.plugins.specs import make_plugin_node
from surgeon.rewrite import Rewrite, const_value, dtype_of, is_op, producer

CUSTOM_OP_TYPES = ("BEVPoolV2TRT", "bev_pool_v2")
#: The BEV size attributes: CUDA-BEVFusion's spelling, then BEVDet's TRTBEVPoolv2.symbolic (out_height_i).
SIZE_ATTRS = (("output_height", "output_width"), ("out_height", "out_width"))


@register_pass("bev-pool-plugin")
class BevPoolPlugin(Pass):
    """Replace BEVFusion's bev_pool (custom node or exported scatter form) by the BEVPool plugin."""

    handles = CUSTOM_OP_TYPES

    params = {
        "domain": DOMAIN_PARAM,
    }

    def run(self, graph, ctx):
        result = PassResult()
        for node in list(graph.nodes):
            try:
                if node.op in CUSTOM_OP_TYPES and len(node.inputs) == 7:
                    self._replace_custom(graph, ctx, node)
                elif is_op(node, "ScatterND") and not node.attrs.get("reduction"):
                    if not _looks_like_bev_pool(node):
                        continue
                    self._replace_scatter(graph, ctx, node)
                else:
                    continue
            except NoMatch as exc:
                result.note(f"{node.name}: not replaced ({exc})")
                continue
            result.rewrote(node)
        return result

    def _replace_custom(self, graph, ctx, node: gs.Node) -> None:
        if int(node.attrs.get("output_z", 1)) != 1:
            raise NoMatch("output_z != 1: the plugin pools into one height slice")
        size = next(((node.attrs[h], node.attrs[w]) for h, w in SIZE_ATTRS if h in node.attrs and w in node.attrs), None)
        if size is None:
            raise NoMatch("no output_height / output_width (or BEVDet's out_height / out_width) attributes")
        bev_h, bev_w = int(size[0]), int(size[1])
        channels = _last_dim(node.inputs[1])
        shape = list(node.outputs[0].shape or [])
        fits = {layout: len(shape) == 4 and shape[0] == 1 and shape[i:i + 2] == [bev_h, bev_w]
                and channels in (None, shape[c]) for layout, i, c in (("nchw", 2, 1), ("channels_last", 1, 3))}
        if not any(fits.values()):
            raise NoMatch(f"output shape {shape or 'unknown'} is neither [1, C, H, W] nor [1, H, W, C]")
        if all(fits.values()):  # C == bev_h == bev_w: the shape cannot tell, and the attributes do not say
            raise NoMatch(f"output shape {shape} fits both [1, C, H, W] and [1, H, W, C]")
        channels_last = fits["channels_last"]
        _check_float_types(node.inputs[0], node.inputs[1])
        rewrite = Rewrite(graph, ctx, node)
        inputs = [_cameras_first(rewrite, node.inputs[0], "depth"), _cameras_first(rewrite, node.inputs[1], "feat")] \
            + [rewrite.cast(t, np.int32) for t in node.inputs[2:]]
        plugin = make_plugin_node(rewrite, "BEVPool", inputs, {"bev_h": bev_h, "bev_w": bev_w}, domain=self.domain,
                                  last=not channels_last)
        if channels_last:
            rewrite.finish("Transpose", [plugin.outputs[0]], {"perm": [0, 2, 3, 1]})

    def _replace_scatter(self, graph, ctx, scatter: gs.Node) -> None:
        bev_h, bev_w, channels = _grid(scatter)
        starts_gather = expect_producer(_skip_casts(expect_producer(scatter.inputs[1], "Unsqueeze", "the cell indices").inputs[0]),
                              "Gather", "the cell of each interval")
        ranks_bev, interval_starts = starts_gather.inputs[0], _skip_casts(starts_gather.inputs[1])
        add = expect_producer(expect_producer(scatter.inputs[2], "Reshape", "the interval sums").inputs[0], "Add", "the interval sums")
        segment_sum = next((producer(t) for t in add.inputs if producer(t) is not None
                            and is_op(producer(t), "ScatterElements")), None)
        if segment_sum is None:
            raise NoMatch("the interval sums are not a ScatterElements over the point contributions")
        mul = expect_producer(_skip(segment_sum.inputs[2], "Expand"), "Mul", "depth * feature")
        depth, ranks_depth, feat, ranks_feat = _depth_and_feature(mul)
        interval_lengths = _interval_lengths(segment_sum.inputs[1], known=(ranks_depth, ranks_feat, ranks_bev,
                                                                           interval_starts))
        _check_float_types(depth, feat)
        rewrite = Rewrite(graph, ctx, scatter)
        depth, feat = _cameras_first(rewrite, depth, "depth"), _cameras_first(rewrite, feat, "feat")
        indices = [rewrite.cast(t, np.int32)
                   for t in (ranks_depth, ranks_feat, ranks_bev, interval_starts, interval_lengths)]
        plugin = make_plugin_node(rewrite, "BEVPool", [depth, feat, *indices], {"bev_h": bev_h, "bev_w": bev_w},
                                  domain=self.domain, last=False)
        rows = rewrite.op("Reshape", [plugin.outputs[0], rewrite.const(np.array([channels, bev_h * bev_w]), "shape")])
        rewrite.finish("Transpose", [rows], {"perm": [1, 0]})


def _last_dim(tensor: gs.Tensor):
    shape = getattr(tensor, "shape", None)
    return shape[-1] if shape and isinstance(shape[-1], int) else None


def _check_float_types(depth: gs.Tensor, feat: gs.Tensor) -> None:
    """The plugin takes depth and feat of one float type (its output's)."""
    types = dtype_of(depth), dtype_of(feat)
    if None not in types and types[0] != types[1]:
        raise NoMatch(f"depth is {types[0]} and feat {types[1]}; the plugin takes one float type")


def _cameras_first(rewrite: Rewrite, tensor: gs.Tensor, name: str) -> gs.Tensor:
    """`tensor` as the plugin's 4-D layout (depth [N, D, H, W], feat [N, H, W, C]): BEVDet's 5-D
    [B, N, ...] becomes [B*N, ...], which keeps the flat order the ranks index."""
    shape = getattr(tensor, "shape", None)
    if shape is None:
        raise NoMatch(f"{name}'s rank is not known (the plugin takes 4-D; run infer-shapes first)")
    if len(shape) == 4:
        return tensor
    tail = list(shape[-3:])
    if len(shape) < 4 or not all(isinstance(d, int) and d > 0 for d in tail):
        raise NoMatch(f"{name} is {list(shape)}: the plugin takes it 4-D, cameras first")
    return rewrite.op("Reshape", [tensor, rewrite.const(np.array([-1, *tail], dtype=np.int64), f"{name}_shape")],
                      suffix=f"{name}_4d", dtype=tensor.dtype, shape=[_product(shape[:-3]), *tail])


def _product(dims):
    return int(np.prod(dims)) if all(isinstance(d, int) for d in dims) else None


def _skip(tensor: gs.Tensor, op_type: str) -> gs.Tensor:
    node = producer(tensor)
    return node.inputs[0] if node is not None and is_op(node, op_type) else tensor


def _skip_casts(tensor: gs.Tensor) -> gs.Tensor:
    while producer(tensor) is not None and is_op(producer(tensor), "Cast"):
        tensor = producer(tensor).inputs[0]
    return tensor


def _looks_like_bev_pool(scatter: gs.Node) -> bool:
    zeros = const_value(scatter.inputs[0])
    return zeros is not None and zeros.ndim == 2 and not zeros.any() and len(scatter.inputs) == 3


def _grid(scatter: gs.Node) -> tuple[int, int, int]:
    """(bev_h, bev_w, channels) from the zeros the cells are scattered into and the Reshape that follows."""
    cells, channels = const_value(scatter.inputs[0]).shape
    views = [n for n in scatter.outputs[0].outputs if is_op(n, "Reshape")]
    shape = const_value(views[0].inputs[1]) if len(views) == 1 else None
    if shape is None or len(shape) != 4 or int(shape[0]) != 1 or int(shape[3]) != channels \
            or int(shape[1]) * int(shape[2]) != cells:
        raise NoMatch("the cells are not viewed as [Z=1, Y, X, C] afterwards")
    return int(shape[1]), int(shape[2]), int(channels)


def _depth_and_feature(mul: gs.Node):
    """(depth, ranks_depth, feat, ranks_feat) from depth.reshape(-1)[ranks_depth, None] * feat.reshape(-1, C)[ranks_feat]."""
    found = {}
    for operand in mul.inputs:
        gather = expect_producer(operand, "Gather", "a gathered operand")
        source = producer(gather.inputs[0])
        if source is not None and is_op(source, "Unsqueeze"):  # depth[..., None]
            found["depth"] = (expect_producer(source.inputs[0], "Reshape", "the flat depth").inputs[0], gather.inputs[1])
        else:
            found["feat"] = (expect_producer(gather.inputs[0], "Reshape", "the flat features").inputs[0], gather.inputs[1])
    if sorted(found) != ["depth", "feat"]:
        raise NoMatch("the product is not depth[ranks_depth, None] * feat[ranks_feat]")
    (depth, ranks_depth), (feat, ranks_feat) = found["depth"], found["feat"]
    return depth, _skip_casts(ranks_depth), feat, _skip_casts(ranks_feat)


def _is_integer(tensor: gs.Tensor) -> bool:
    dtype = dtype_of(tensor)
    return dtype is not None and np.issubdtype(dtype, np.integer)


def _interval_lengths(segment: gs.Tensor, known) -> gs.Tensor:
    """The one input tensor, besides the `known` index tensors, cast to integers among the ancestors of the
    segment ids (repeat_interleave's result; the index shape also depends on the gathered points)."""
    found, seen, stack = [], set(), [segment]
    while stack:
        tensor = stack.pop()
        node = producer(tensor)
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        if is_op(node, "Cast") and producer(node.inputs[0]) is None and _is_integer(node.inputs[0]) \
                and np.issubdtype(helper.tensor_dtype_to_np_dtype(node.attrs["to"]), np.integer):
            found.append(node.inputs[0])  # an integer graph input or initializer widened for repeat_interleave
        stack.extend(t for t in node.inputs if isinstance(t, gs.Variable))
        for body in (v for v in node.attrs.values() if isinstance(v, gs.Graph)):  # a Loop reads outer tensors
            stack.extend(t for inner in body.nodes for t in inner.inputs if isinstance(t, gs.Variable))
    # The walk also climbs the feature branch (the index shapes depend on the gathered points), whose
    # float casts (a float16 feat promoted, a uint8 image) are no candidates.
    names = sorted({t.name for t in found} - {t.name for t in known})
    if len(names) != 1:
        raise NoMatch(f"cannot tell interval_lengths among {names or 'no'} integer inputs of the segment ids")
    return next(t for t in found if t.name == names[0])
