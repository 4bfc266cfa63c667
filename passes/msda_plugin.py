"""Collapse mmcv's PyTorch fallback of multi-scale deformable attention into one plugin node.

`multi_scale_deformable_attn_pytorch` exports as one grid sampler per feature level (ATen
`grid_sampler` at opset 11 with the ATen fallback, `GridSample` from opset 16) wrapped in layout ops:

Before (L levels)::

    value ─► Split ─► [Reshape ─► Transpose ─► Reshape] ─► grid sampler ─► Unsqueeze ─┐
    loc ─► Mul(2) ─► Sub(1) ─► Gather(axis 3, l) ─► Transpose ─► Reshape ─┘ (grid)      ├─► Concat
    weights ─► Transpose ─► Reshape ──────────────────────────────────────────────► Mul ◄─ Reshape
                                              ReduceSum(-1) ─► Reshape ─► Transpose ─► out

After::

    MultiScaleDeformableAttn(value, spatial_shapes, level_start_index, loc, weights) ─► out

When the exporter merged the final transpose(1, 2) with a permute that followed it (BEVFormer's
temporal self-attention), the plugin is followed by the Transpose that remains. mmcv's own op,
exported as `mmcv::MMCVMultiScaleDeformableAttention` (same five inputs, same semantics), becomes the
plugin too; its im2col_step attribute only tiles mmcv's CUDA work and is dropped.

The match starts at each grid sampler and walks outwards, so node order does not matter; the level
sizes (h, w) come from the sampler input's Reshape. The samplers are read by surgeon.sampling, so
mmdeploy's `grid_sampler` (and ATen `grid_sampler_2d`) is taken as well; BEVFormer_tensorrt's
GridSampler2DTRT is not, its grid being [N,2,Hg,Wg] * 10 rather than 2 * loc - 1. Only bilinear,
zero-padding, align_corners=False samplers are taken (mmcv's semantics, and the plugin's). Every axis
the plugin's math relies on is checked — the stack on dim -2 (level-major, as the weights are laid out), each
flatten, transpose and the weights' view — because a block stacked on another axis pairs samples with
other weights; a site that does not fit the pattern is left alone with a note saying which step of the
walk failed. Where value_spatial_shapes is a tensor torch does not fold, the level sizes come from it
and value.split exports as one Slice per level: after fold-constants the Slices' bounds are constants,
and consecutive key ranges in level order are taken as the split.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from surgeon.errors import PassError
from surgeon.pass_api import Pass, PassResult, register_pass
from surgeon.plugins.matching import DOMAIN_PARAM, NoMatch, expect_producer
from surgeon.plugins.specs import make_plugin_node
from surgeon.rewrite import Rewrite, const_value, is_op, producer, prune_graph
from surgeon.sampling import read_sampling


#: mmcv's CUDA op as mmcv exports it (domain mmcv): the plugin's inputs and semantics already.
MMCV_OP_TYPE = "MMCVMultiScaleDeformableAttention"


@register_pass("msda-plugin")
class MsdaPlugin(Pass):
    """Fuse mmcv's grid_sample fallback of multi-scale deformable attention into MultiScaleDeformableAttn."""

    handles = ("mmcv::MMCVMultiScaleDeformableAttention",)
    provides = ("cleanup",)  # the replaced blocks are pruned

    params = {
        "domain": DOMAIN_PARAM,
    }

    def run(self, graph, ctx):
        result = PassResult()
        for site in match_blocks(graph, result):
            rewrite = Rewrite(graph, ctx, site.output_node)
            shapes = rewrite.const(np.array(site.level_shapes, dtype=np.int64), "spatial_shapes")
            starts = np.cumsum([0] + [h * w for h, w in site.level_shapes[:-1]]).astype(np.int64)
            inputs = [site.value, shapes, rewrite.const(starts, "level_start_index"), site.locations, site.weights]
            node = make_plugin_node(rewrite, "MultiScaleDeformableAttn", inputs, domain=self.domain,
                                    last=site.perm == [0, 2, 1])
            if site.perm != [0, 2, 1]:
                # The exporter merged the block's final transpose(1, 2) with a permute after it.
                rewrite.finish("Transpose", [node.outputs[0]], {"perm": [[0, 2, 1][i] for i in site.perm]})
            result.rewrote(site.output_node)
            result.note(f"{node.name}: {len(site.level_shapes)} level(s) {site.level_shapes}")
        for node in mmcv_attention_nodes(graph):
            rewrite = Rewrite(graph, ctx, node)
            inputs = [node.inputs[0], rewrite.cast(node.inputs[1], np.int64),
                      rewrite.cast(node.inputs[2], np.int64), *node.inputs[3:]]
            make_plugin_node(rewrite, "MultiScaleDeformableAttn", inputs, domain=self.domain)
            result.rewrote(node)
        if result.changed:
            prune_graph(graph)  # the blocks' own nodes, dead now: gone in this step's op changes, not a later one's
        return result


def match_blocks(graph: gs.Graph, result: PassResult) -> list[MsdaBlock]:
    """Every block of mmcv's fallback in `graph`, found from its grid samplers; a stack of samples that is not
    one gets a note in `result` naming the step of the walk that failed."""
    stacks: dict[int, gs.Node] = {}
    for sampler in graph.nodes:
        if is_mmcv_grid_sampler(sampler):
            stack = stack_of(sampler)
            if stack is not None:
                stacks.setdefault(id(stack), stack)
    blocks = []
    for stack in stacks.values():
        try:
            blocks.append(match_block(stack))
        except NoMatch as exc:
            result.note(f"{stack.name}: not a deformable-attention block ({exc})")
    return blocks


def mmcv_attention_nodes(graph: gs.Graph) -> list[gs.Node]:
    """mmcv's own op nodes (value, spatial_shapes, level_start_index, loc, weights) in `graph`."""
    return [n for n in graph.nodes if n.op == MMCV_OP_TYPE and len(n.inputs) == 5]


def is_mmcv_grid_sampler(node: gs.Node) -> bool:
    """Whether `node` samples as mmcv's fallback does: 2-D, bilinear, zero padding, align_corners=False, with
    the grid in torch's layout (BEVFormer_tensorrt's [N,2,Hg,Wg] * 10 grid is not the walk's 2 * loc - 1)."""
    try:
        site = read_sampling(node)
    except PassError:  # a sampler whose mode is unknown or not a constant is not mmcv's
        return False
    return site is not None and site.spelling != "trt" and site.spatial_dims == 2 and \
        (site.interpolation, site.padding, site.align_corners) == ("bilinear", "zeros", False)


def _only_consumer(tensor: gs.Tensor, op_type: str) -> gs.Node | None:
    """The consumer of `tensor` of type `op_type` that reads it as its first input (Shape readers ignored)."""
    found = [n for n in tensor.outputs if is_op(n, op_type) and n.inputs and n.inputs[0] is tensor]
    return found[0] if len(found) == 1 else None


def stack_of(sampler: gs.Node) -> gs.Node | None:
    """The Concat of torch.stack(samples, ...) reading this sampler (Unsqueeze each, Concat); its axes are
    checked by `match_block`, which reports a stack on another axis."""
    unsqueeze = _only_consumer(sampler.outputs[0], "Unsqueeze")
    return _only_consumer(unsqueeze.outputs[0], "Concat") if unsqueeze is not None else None


def _unsqueeze_axes(node: gs.Node) -> list[int] | None:
    """Unsqueeze's axes: an attribute before opset 13, the second input from it."""
    axes = node.attrs.get("axes")
    if axes is None and len(node.inputs) > 1:
        axes = _ints(node.inputs[1])
    return None if axes is None else [int(a) for a in axes]


def _target_entries(reshape: gs.Node, rank: int) -> list | None:
    """A Reshape's target, entry by entry: an int where known, ("dim", i) where the exporter copies dim i of
    the rank-`rank` input (Slice of its Shape), "?" for any other one-element piece; None when unreadable."""
    value = _ints(reshape.inputs[1])
    if value is not None:
        return value
    concat = producer(reshape.inputs[1])
    if concat is None or not is_op(concat, "Concat"):
        return None
    entries: list = []
    for piece in concat.inputs:
        values, node = _ints(piece), producer(piece)
        if values is not None:
            entries += values
        elif node is not None and is_op(node, "Slice") and _copies_dims(node, reshape.inputs[0]):
            starts, ends = _ints(node.inputs[1]), _ints(node.inputs[2])
            begin, end = (max(0, min(rank, v + rank if v < 0 else v)) for v in (starts[0], ends[0]))
            entries += [("dim", i) for i in range(begin, end)]
        elif len(getattr(piece, "shape", None) or []) == 1 and piece.shape[0] == 1 or \
                node is not None and is_op(node, "Unsqueeze") and len(getattr(node.inputs[0], "shape", None) or [0]) == 0:
            entries.append("?")
        else:
            return None
    return entries


def _copies_dims(slice_node: gs.Node, source: gs.Tensor) -> bool:
    """Whether a Slice reads a contiguous run of `source`'s Shape (axis 0, step 1, constant bounds)."""
    shape = producer(slice_node.inputs[0])
    if shape is None or not is_op(shape, "Shape") or shape.inputs[0] is not source or shape.attrs.get("start") \
            or shape.attrs.get("end") is not None or len(slice_node.inputs) < 3:
        return False
    bounds = [_ints(t) for t in slice_node.inputs[1:3]]
    extra = [_ints(t) for t in slice_node.inputs[3:]]
    return all(b is not None and len(b) == 1 for b in bounds) and \
        all(e in ([0], [1]) for e in extra)  # axes [0], steps [1]


def _flattens(reshape: gs.Node, rank: int, start: int, end: int) -> bool:
    """Whether `reshape` is torch's flatten(start, end - 1) of its rank-`rank` input: dims before `start` and
    from `end` kept, those between merged into one. A constant target counts only where the input's shape is
    known, to compare the kept dims with."""
    entries = _target_entries(reshape, rank)
    expected = [("dim", i) for i in range(start)] + [None] + [("dim", i) for i in range(end, rank)]
    if entries is None or len(entries) != len(expected):
        return False
    known = list(getattr(reshape.inputs[0], "shape", None) or [])
    known = known if len(known) == rank else [None] * rank
    merged = known[start:end]
    copies_zero = not reshape.attrs.get("allowzero", 0)
    for entry, want in zip(entries, expected):
        if want is None:
            ok = entry == -1 or (all(isinstance(d, int) for d in merged) and entry == int(np.prod(merged)))
        else:
            dim = known[want[1]]
            ok = entry == want or (isinstance(dim, int) and (entry == dim or (copies_zero and entry == 0)))
        if not ok:
            return False
    return True


def _perm(node: gs.Node) -> list[int]:
    return list(node.attrs.get("perm", []))


def _ints(tensor: gs.Tensor) -> list[int] | None:
    value = const_value(tensor)
    return None if value is None else [int(v) for v in np.asarray(value).reshape(-1)]


def _trailing_dims(shape: gs.Tensor, count: int = 2) -> list[int] | None:
    """The last `count` entries of a Reshape's target shape: a constant, or the constant tail of the
    Concat a dynamic-batch export builds it with."""
    value = _ints(shape)
    if value is not None:
        return value[-count:] if len(value) >= count else None
    concat = producer(shape)
    if concat is None or not is_op(concat, "Concat"):
        return None
    tail: list[int] = []
    for piece in reversed(concat.inputs):
        values = _ints(piece)
        if values is None:
            break
        tail = values + tail
    return tail[-count:] if len(tail) >= count else None


@dataclass
class MsdaBlock:
    """One matched block: the plugin's tensor inputs, each level's (h, w), the node whose outputs it takes,
    and the samplers' grid 2 * locations - 1 (as the graph computes it)."""

    value: gs.Tensor
    locations: gs.Tensor
    weights: gs.Tensor
    level_shapes: list[tuple[int, int]]
    output_node: gs.Node
    grid: gs.Tensor

    @property
    def perm(self) -> list[int]:
        return _perm(self.output_node)


def match_block(stack: gs.Node) -> MsdaBlock:
    """The block whose samples `stack` stacks; raises NoMatch naming the step of the walk that fails."""
    samplers = []
    for tensor in stack.inputs:
        unsqueeze = expect_producer(tensor, "Unsqueeze", "each stacked level")
        sampler = producer(unsqueeze.inputs[0])
        if sampler is None or not is_mmcv_grid_sampler(sampler):
            raise NoMatch("a stacked tensor is not a bilinear zero-padding grid sample")
        # Samples [B*heads, dims, Q, P] stacked on dim -2 (level-major, as the weights are laid out).
        if _unsqueeze_axes(unsqueeze) not in ([3], [-2]):
            raise NoMatch(f"the samples are not stacked on dim -2 (Unsqueeze axes {_unsqueeze_axes(unsqueeze)})")
        samplers.append(sampler)
    if stack.attrs.get("axis") not in (3, -2):
        raise NoMatch(f"the samples are not stacked on dim -2 (Concat axis {stack.attrs.get('axis')})")
    value, level_shapes = _value_and_shapes(samplers)
    locations, grid = _locations(samplers)
    flatten = _only_consumer(stack.outputs[0], "Reshape")
    mul = _only_consumer(flatten.outputs[0], "Mul") if flatten is not None else None
    if mul is None:
        raise NoMatch("the stacked samples are not flattened and multiplied by the attention weights")
    if not _flattens(flatten, 5, 3, 5):
        raise NoMatch("the stacked samples are not flattened over (levels, points): flatten(-2)")
    weights = _weights(mul.inputs[1] if mul.inputs[0] is flatten.outputs[0] else mul.inputs[0])
    reduce = _only_consumer(mul.outputs[0], "ReduceSum")
    axes = reduce.attrs.get("axes") if reduce is not None else None
    if reduce is not None and axes is None and len(reduce.inputs) > 1:
        axes = _ints(reduce.inputs[1])
    if reduce is None or list(axes or []) not in ([-1], [3]) or reduce.attrs.get("keepdims", 1):
        raise NoMatch("the weighted samples are not summed over the last axis")
    view = _only_consumer(reduce.outputs[0], "Reshape")
    transpose = _only_consumer(view.outputs[0], "Transpose") if view is not None else None
    entries = _target_entries(view, 3) if view is not None else None
    if transpose is None or sorted(_perm(transpose)) != [0, 1, 2] or entries is None or len(entries) != 3:
        raise NoMatch("the sum is not viewed as [B, C, Q] and transposed")
    return MsdaBlock(value, locations, weights, level_shapes, transpose, grid)


def _value_and_shapes(samplers: list[gs.Node]) -> tuple[gs.Tensor, list[tuple[int, int]]]:
    """value [B, S, heads, dims] before the per-level Split, and each level's (h, w)."""
    sources, shapes = [], []
    for level, sampler in enumerate(samplers):
        to_image = expect_producer(sampler.inputs[0], "Reshape", "the sampled value")
        hw = _trailing_dims(to_image.inputs[1]) or list(getattr(sampler.inputs[0], "shape", None) or [])[2:]
        if len(hw) != 2 or not all(isinstance(v, int) and v > 0 for v in hw):
            raise NoMatch(f"level {level}: the value's [B*heads, dims, h, w] shape is not known "
                          "(fold-constants first resolves h, w read from a tensor)")
        shapes.append((hw[0], hw[1]))
        transpose = expect_producer(to_image.inputs[0], "Transpose", "the value image")
        flatten = expect_producer(transpose.inputs[0], "Reshape", "the value image")
        image = _target_entries(to_image, 3)
        if _perm(transpose) != [0, 2, 1] or not _flattens(flatten, 4, 2, 4) or image is None or len(image) != 4:
            raise NoMatch(f"level {level}: the value image is not value_l.flatten(2).transpose(1, 2)"
                          ".reshape(B*heads, dims, h, w)")
        sources.append(flatten.inputs[0])
    split = producer(sources[0])
    if split is not None and is_op(split, "Slice"):
        return _sliced_value(sources, shapes), shapes
    if len(samplers) == 1 and (split is None or not is_op(split, "Split")):
        return sources[0], shapes
    if split is None or not is_op(split, "Split") or [producer(s) for s in sources] != [split] * len(sources) \
            or [split.outputs.index(s) for s in sources] != list(range(len(sources))) \
            or len(split.outputs) != len(sources):
        raise NoMatch("the levels' values are not the outputs of one Split, in level order")
    sizes = split.attrs.get("split") or (_ints(split.inputs[1]) if len(split.inputs) > 1 else None)
    if sizes is not None and list(sizes) != [h * w for h, w in shapes]:
        raise NoMatch(f"Split sizes {list(sizes)} do not match the levels' h*w {[h * w for h, w in shapes]}")
    if split.attrs.get("axis", 0) != 1:
        raise NoMatch("value is not split along the key axis")
    return split.inputs[0], shapes


def _sliced_value(sources: list[gs.Tensor], shapes: list[tuple[int, int]]) -> gs.Tensor:
    """value, where torch exported value.split(sizes, dim=1) as one Slice per level (sizes from a tensor
    it did not fold, whose bounds fold-constants made constant): level l must be keys
    [start_l, start_l + h*w) of one tensor, in level order from 0, as level_start_index will say."""
    value, start = None, 0
    for level, (source, (h, w)) in enumerate(zip(sources, shapes)):
        node = producer(source)
        bounds = [_ints(t) for t in node.inputs[1:]] if node is not None and is_op(node, "Slice") else None
        if bounds is None or (value is not None and value is not node.inputs[0]) or bounds[:2] != [[start], [start + h * w]] \
                or bounds[2:] not in ([[1]], [[1], [1]]):  # axes [1], steps absent or [1]
            raise NoMatch(f"level {level}: the value is not keys {start}..{start + h * w} of the value, "
                          "sliced along the key axis")
        value, start = node.inputs[0], start + h * w
    return value


def _locations(samplers: list[gs.Node]) -> tuple[gs.Tensor, gs.Tensor]:
    """(sampling_locations, the grid 2 * loc - 1), from each level's grid:
    Reshape(Transpose(Gather(2 * loc - 1, level, axis=3)))."""
    grids = set()
    for level, sampler in enumerate(samplers):
        flatten = expect_producer(sampler.inputs[1], "Reshape", "the sampling grid")
        transpose = expect_producer(flatten.inputs[0], "Transpose", "the sampling grid")
        gather = expect_producer(transpose.inputs[0], "Gather", "the level's grid")
        if _perm(transpose) != [0, 2, 1, 3, 4] or gather.attrs.get("axis", 0) != 3 or _ints(gather.inputs[1]) != [level] \
                or np.ndim(const_value(gather.inputs[1])) != 0 or not _flattens(flatten, 5, 0, 2):
            raise NoMatch(f"level {level}: the grid is not sampling_grids[:, :, :, {level}].transpose(1, 2).flatten(0, 1)")
        grids.add(id(gather.inputs[0]))
        grid = gather.inputs[0]
    if len(grids) != 1:
        raise NoMatch("the levels sample different grids")
    sub = expect_producer(grid, "Sub", "2 * loc - 1")
    mul = expect_producer(sub.inputs[0], "Mul", "2 * loc")
    constant = [i for i, t in enumerate(mul.inputs) if _ints(t) is not None]
    if _ints(sub.inputs[1]) != [1] or len(constant) != 1 or const_value(mul.inputs[constant[0]]).reshape(-1).tolist() != [2]:
        raise NoMatch("the grid is not 2 * sampling_locations - 1")
    return mul.inputs[1 - constant[0]], grid


def _weights(tensor: gs.Tensor) -> gs.Tensor:
    """attention_weights [B, Q, heads, L, P], from its transpose(1, 2).reshape(B*heads, 1, Q, L*P)."""
    reshape = expect_producer(tensor, "Reshape", "the attention weights")
    transpose = expect_producer(reshape.inputs[0], "Transpose", "the attention weights")
    if _perm(transpose) != [0, 2, 1, 3, 4]:
        raise NoMatch("the attention weights are not transposed (1, 2)")
    entries = _target_entries(reshape, 5)
    if entries is None or len(entries) != 4 or entries[1] != 1:
        raise NoMatch("the attention weights are not reshaped to [B*heads, 1, Q, L*P]")
    return transpose.inputs[0]
