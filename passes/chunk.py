"""Replace the dynamic chunk/split chains torch exports by one static Split (or constant Slices).

Before (tensor.chunk(3, dim=1) with a dynamic batch, torch's exporter at opset 11 and 13):
    Shape(x) ─► Gather(1) ─► Add(2) ─► Div(3) ─► Mul(1|2|3) ─┬─► Slice(x, 0, e1, 1) ─► a
                                                             ├─► Slice(x, e1, e2, 1) ─► b
                                                             └─► Slice(x, e2, e3, 1) ─► c
Before (chunk along dim=-1): Shape ─► … ─► Concat(sizes) ─► SplitToSequence(x) ─► SequenceAt(0|1|2)
Before (opset 18): Split(x, axis=1, num_outputs=3)
After:  x ─► Split(axis=1, split=[3, 3, 1]) ─► a, b, c    (split: an attribute before opset 13, an input after)

Before (nn.MultiheadAttention with q = k = v unpacks its in-projection with unflatten; ATen fallback):
    ATen(operator="unflatten")(proj, dim=-1, sizes=Concat(3, E))
After:  Reshape(proj, [0, 0, 3, E])    (leading dims copied, later dims static)

The integer chain is evaluated at rewrite time from the static dims that shape inference knows (a dynamic
batch dim does not matter when the split axis is static), or that the pass works out through Slices,
Concats and elementwise ops where inference left them unknown (chained `chunk; cat` blocks); through
other ops it infers shapes again and folds again until nothing new folds. Slices on one tensor and axis,
with step 1, that tile the axis exactly become one Split; other folded Slices keep their place with
constant starts/ends (`mode: slice` always does that). SplitToSequence read only through SequenceAt at
constant positions becomes a Split (sequences run neither on TensorRT nor on opset-11 NPUs); readers of
the same position all read its one output, and trailing empty chunks nobody reads are dropped. A chain
whose split axis size is unknown, or a position past the chunks, stays as it is, with a note.

torch.chunk(n) gives ceil(d / n) per chunk, the last one smaller, and fewer than n chunks when
ceil(d / n) * (n - 1) >= d. Split-18's `num_outputs` uses the same ceil(d / n) sizes but always n
outputs; when the last would be empty or negative (d = 6, n = 4) ONNX Runtime rejects the node, and
so the pass leaves it with a note. Otherwise num_outputs becomes explicit sizes when the target's
opset is below 18.
"""
from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from surgeon.folding import evaluate
from surgeon.inference import infer_graph_shapes
from surgeon.pass_api import Param, Pass, PassResult, register_pass
from surgeon.rewrite import (SPLIT_INPUT_SINCE, Rewrite, aten_operator, const_value, find_nodes, is_op, producer,
                             remove_nodes, unlink_outputs)

NUM_OUTPUTS_SINCE = 18  # Split-18 takes num_outputs
#: Ops whose output broadcasts their inputs (one input: the same shape), through which `IntegerFolder.dim`
#: works out sizes: unary and binary arithmetic, comparisons, logic, Where, Cast, activations.
ELEMENTWISE = frozenset({
    "Abs", "Add", "And", "Cast", "Clip", "Div", "Equal", "Erf", "Exp", "Greater", "GreaterOrEqual", "Identity",
    "LeakyRelu", "Less", "LessOrEqual", "Log", "Max", "Mean", "Min", "Mod", "Mul", "Neg", "Not", "Or", "Pow",
    "Relu", "Sigmoid", "Softmax", "Sqrt", "Sub", "Sum", "Tanh", "Where", "Xor"})


def static_dim(tensor, axis: int) -> int | None:
    shape = tensor.shape
    if shape is None or not -len(shape) <= axis < len(shape):
        return None
    dim = shape[axis]
    return int(dim) if isinstance(dim, (int, np.integer)) and dim >= 0 else None


class IntegerFolder:
    """Evaluates constant subgraphs from constants and static dims: Shape and the dims Gather/Slice take
    from it here, every other op with constant folding's exact evaluators (float ops included: linspace
    reads its bounds through it too)."""

    def __init__(self):
        self.memo: dict[int, np.ndarray | None] = {}
        self.dims: dict[tuple[int, int], int | None] = {}  # (id(tensor), axis) -> size, see dim()
        self.expanded: set[tuple[int, int]] = set()

    def __call__(self, tensor) -> np.ndarray | None:
        key = id(tensor)
        if key not in self.memo:
            self.memo[key] = None  # guards against cycles in a malformed graph
            self.memo[key] = self.fold(tensor)
        return self.memo[key]

    def fold(self, tensor) -> np.ndarray | None:
        value = const_value(tensor)
        if value is not None:
            return np.asarray(value)
        node = producer(tensor)
        if node is None or (node.domain or "") not in ("", "ai.onnx"):
            return None
        if node.op == "Shape":
            return self.shape(node)
        if node.op == "Gather" and producer(node.inputs[0]) is not None and producer(node.inputs[0]).op == "Shape":
            return self.gathered_dims(node)
        if node.op == "Slice" and producer(node.inputs[0]) is not None and producer(node.inputs[0]).op == "Shape":
            return self.sliced_dims(node)
        args = [self(t) if t.name else None for t in node.inputs]
        if any(a is None for a, t in zip(args, node.inputs) if t.name):
            return None
        outputs = evaluate(node, args)
        return None if outputs is None else outputs[node.outputs.index(tensor)]

    def dim(self, tensor, axis: int) -> int | None:
        """The static size of `tensor`'s `axis`: shape inference's, else worked out through the Slices,
        Concats and elementwise ops that write it. Inference leaves the size after a dynamic Slice unknown,
        so chained `chunk; cat` blocks would otherwise fold one per shape inference."""
        unknown = self.unknown_axis(tensor, axis)
        if unknown is None:
            return static_dim(tensor, axis)
        todo = [(tensor, unknown)]
        while todo:  # producers first, without recursion: a chain may pass thousands of ops
            current, at = todo[-1]
            key = (id(current), at)
            if key in self.dims:
                todo.pop()
                continue
            unread = [(t, u) for t, a in self.operands(current, at)[1]
                      if (u := self.unknown_axis(t, a)) is not None and (id(t), u) not in self.dims]
            if unread and key not in self.expanded:  # expanded once: a cycle in a malformed graph ends
                self.expanded.add(key)
                todo.extend(unread)
                continue
            self.dims[key] = self.derived_dim(current, at)
            todo.pop()
        return self.dims[(id(tensor), unknown)]

    @staticmethod
    def unknown_axis(tensor, axis: int) -> int | None:
        """`axis` made non-negative where `tensor` has it and shape inference gave it no number (a name,
        made up as `unk__3` or not, or nothing), else None."""
        shape = tensor.shape
        if shape is None or not -len(shape) <= axis < len(shape) or static_dim(tensor, axis) is not None:
            return None
        return axis % len(shape)

    @staticmethod
    def operands(tensor, axis: int) -> tuple:
        """The producer of `tensor` where `dim` sees through it (else None), and the (tensor, axis) dims
        the size of `axis` comes from."""
        node = producer(tensor)
        if node is None or (node.domain or "") not in ("", "ai.onnx") or len(node.outputs) != 1:
            return None, []
        if node.op == "Concat":
            return node, [(t, axis) for t in node.inputs]
        if node.op == "Slice" and len(node.inputs) >= 3:
            return node, [(node.inputs[0], axis)]
        inputs = [t for t in node.inputs if t.name]
        if node.op not in ELEMENTWISE or any(t.shape is None for t in inputs):
            return None, []
        from_end = len(tensor.shape) - axis  # broadcasting aligns the last dims
        return node, [(t, len(t.shape) - from_end) for t in inputs if len(t.shape) >= from_end]

    def derived_dim(self, tensor, axis: int) -> int | None:
        node, operands = self.operands(tensor, axis)
        if node is None:
            return None
        dims = [static_dim(t, a) if (u := self.unknown_axis(t, a)) is None else self.dims.get((id(t), u))
                for t, a in operands]
        if node.op == "Concat":
            if node.attrs.get("axis", 0) % len(tensor.shape) == axis:
                return None if None in dims else sum(dims)
            return next((d for d in dims if d is not None), None)
        if node.op == "Slice":
            bounds = folded_bounds(node, self)
            if bounds is None or dims[0] is None:
                return None
            for start, end, sliced, step in zip(*bounds):
                if int(sliced) % len(tensor.shape) == axis:  # ONNX Slice clamps its bounds as Python slicing does
                    return len(range(*slice(int(start), int(end), int(step)).indices(dims[0]))) if step else None
            return dims[0]
        sizes = {d for d in dims if d is not None and d != 1}  # elementwise: the one size broadcast to
        if sizes:
            return sizes.pop() if len(sizes) == 1 else None
        return 1 if dims and None not in dims else None

    def shape(self, node) -> np.ndarray | None:
        dims = [self.dim(node.inputs[0], i) for i in range(len(node.inputs[0].shape or []))]
        if node.inputs[0].shape is None or None in dims:
            return None
        return np.array(dims, np.int64)[node.attrs.get("start", 0):node.attrs.get("end", len(dims))]

    def gathered_dims(self, node) -> np.ndarray | None:
        shape_node = producer(node.inputs[0])
        indices = self(node.inputs[1])
        source = shape_node.inputs[0]
        if indices is None or source.shape is None or shape_node.attrs.get("start", 0) or "end" in shape_node.attrs:
            return None
        dims = [self.dim(source, int(i)) for i in indices.ravel()]
        return None if None in dims else np.array(dims, np.int64).reshape(indices.shape)

    def sliced_dims(self, node) -> np.ndarray | None:
        """Slice of a Shape (unflatten's `x.shape[-1]`): only the dims it keeps need to be static."""
        shape_node = producer(node.inputs[0])
        source = shape_node.inputs[0]
        bounds = [self(t) if t.name else None for t in node.inputs[1:]]
        if (source.shape is None or shape_node.attrs.get("start", 0) or "end" in shape_node.attrs
                or any(b is None or b.size != 1 for b in bounds[:2])
                or any(b is not None and (b.size != 1 or int(b.ravel()[0]) not in (0, -1)) for b in bounds[2:3])):
            return None
        start, end = (int(b.ravel()[0]) for b in bounds[:2])
        step = int(bounds[3].ravel()[0]) if len(bounds) > 3 and bounds[3] is not None else 1
        kept = list(range(len(source.shape)))[start:end:step]  # Python slicing clamps as ONNX Slice does
        dims = [self.dim(source, axis) for axis in kept]
        return None if None in dims else np.array(dims, np.int64)


def folded_bounds(node, fold):
    """(starts, ends, axes, steps) of a Slice as arrays (defaults filled in), or None if one is unknown."""
    params = list(node.inputs[1:]) + [None] * (5 - len(node.inputs))
    values = [fold(t) if t is not None and t.name else None for t in params]
    if values[0] is None or values[1] is None or any(
            v is None for v, t in zip(values, params) if t is not None and t.name):
        return None
    starts, ends, axes, steps = (np.asarray(v, np.int64).reshape(-1) if v is not None else None for v in values)
    axes = axes if axes is not None else np.arange(len(starts), dtype=np.int64)
    steps = steps if steps is not None else np.ones(len(starts), np.int64)
    return starts, ends, axes, steps


def negative_sizes_note(node, sizes) -> str:
    # torch's exporter writes such chains for chunk(n) of an axis smaller than n - 1 (e.g. 3 chunks of 1).
    return (f"{node.name}: left alone, its chain gives split sizes {sizes} for this input shape, which ONNX "
            "Runtime rejects in the original graph too")


def clamp(index: int, dim: int) -> int:
    """ONNX Slice's start/end normalisation for step 1: negative counts from the end, then clamp."""
    index = index + dim if index < 0 else index
    return min(max(index, 0), dim)


@register_pass("chunk")
class Chunk(Pass):
    """Fold dynamic chunk/split chains (Slice, SplitToSequence, Split-18 num_outputs, ATen unflatten) statically."""

    handles = ("Split",)  # Split-18 num_outputs, which older runtimes lack

    params = {
        "mode": Param(str, "split", choices=("split", "slice"),
                      help="split: one Split where slices tile the axis (else constant Slices); slice: constant Slices"),
    }
    needs = ("shapes",)

    def run(self, graph, ctx):
        result = PassResult()
        # A folded chain makes the sizes after it static, and the next chain's Shape reads them (torch's
        # chunk; cat; chunk ...): while a round folds something and leaves something alone, infer shapes
        # again and fold again, so that a second run finds nothing left.
        while True:
            round_ = PassResult()
            self.fold_once(graph, ctx, round_)
            result.rewritten.extend(round_.rewritten)
            if not (round_.rewritten and round_.notes):
                break
            infer_graph_shapes(graph)
        result.notes = round_.notes  # the last round's: what earlier rounds left alone may have folded since
        return result

    def fold_once(self, graph, ctx, result):
        fold = IntegerFolder()  # per round: the shapes it reads change between rounds
        limit = ctx.target.max_opset
        # A Split made above the target's max_opset is a Split at the graph's opset, which onnx's version
        # converter cannot lower (no Split 18 -> 17 adapter), while the Slice chains, sequences and ATen nodes
        # it would replace can be: leave them for after set-opset. Split-18's num_outputs is still made explicit.
        if limit is not None and graph.opset > limit:
            if any(is_op(n, ("Slice", "SplitToSequence")) or aten_operator(n) == "unflatten" for n in graph.nodes):
                result.note(f"left Slice chains, SplitToSequence and unflatten alone: the graph's opset "
                            f"{graph.opset} is above what {ctx.target.name} parses (at most {limit}); run "
                            f"set-opset opset={limit} before this step (prepend_steps)")
        else:
            self.slices(graph, ctx, fold, result)
            for node in find_nodes(graph, lambda n: is_op(n, "SplitToSequence")):
                self.split_to_sequence(graph, ctx, node, fold, result)
            for node in find_nodes(graph, lambda n: aten_operator(n) == "unflatten"):
                self.unflatten(graph, ctx, node, fold, result)
        for node in find_nodes(graph, lambda n: is_op(n, "Split")):
            self.split(graph, ctx, node, fold, result)

    # ------------------------------------------------------------------ Slice chains

    def slices(self, graph, ctx, fold, result):
        groups: dict[tuple[int, int], list] = {}
        for node in find_nodes(graph, lambda n: is_op(n, "Slice") and len(n.inputs) >= 3):
            if all(const_value(t) is not None for t in node.inputs[1:] if t.name):
                continue  # already static: not a chain
            bounds = folded_bounds(node, fold)
            if bounds is None:
                result.note(f"{node.name}: left alone, its bounds depend on sizes unknown at rewrite time")
                continue
            starts, ends, axes, steps = bounds
            data = node.inputs[0]
            dim = fold.dim(data, int(axes[0])) if len(axes) == 1 else None
            if self.mode == "split" and dim is not None and steps[0] == 1:
                axis = int(axes[0]) % len(data.shape)
                interval = (clamp(int(starts[0]), dim), clamp(int(ends[0]), dim))
                groups.setdefault((id(data), axis), []).append((interval, node))
            else:
                self.constant_slice(graph, ctx, node, bounds, result)
        for (_, axis), members in groups.items():
            members.sort(key=lambda m: m[0])
            intervals = [interval for interval, _ in members]
            dim = fold.dim(members[0][1].inputs[0], axis)
            tiles = (intervals[0][0] == 0 and intervals[-1][1] == dim and all(a < b for a, b in intervals)
                     and all(prev[1] == nxt[0] for prev, nxt in zip(intervals, intervals[1:])))
            if tiles:
                nodes = [node for _, node in members]
                sizes = [b - a for a, b in intervals]
                self.emit_split(graph, ctx, nodes, [n.outputs[0] for n in nodes], axis, sizes, result)
                continue
            for _, node in members:
                self.constant_slice(graph, ctx, node, folded_bounds(node, fold), result)

    def constant_slice(self, graph, ctx, node, values, result):
        rw = Rewrite(graph, ctx, node)
        names = ("starts", "ends", "axes", "steps")
        inputs = [node.inputs[0]] + [rw.const(v, name) for v, name in zip(values, names)]
        rw.finish("Slice", inputs)
        result.rewrote(node)

    # ------------------------------------------------------------------ SplitToSequence

    def split_to_sequence(self, graph, ctx, node, fold, result):
        x, sequence = node.inputs[0], node.outputs[0]
        sizes = fold(node.inputs[1]) if len(node.inputs) > 1 and node.inputs[1].name else None
        readers = list(sequence.outputs)
        positions = [fold(r.inputs[1]) if r.op == "SequenceAt" else None for r in readers]
        if sizes is None or sizes.ndim != 1 or any(p is None for p in positions) or sequence in graph.outputs:
            result.note(f"{node.name}: left alone, its split sizes or the positions read are unknown at rewrite time")
            return
        axis = node.attrs.get("axis", 0)  # Split takes negative axes like SplitToSequence
        sizes = [int(s) for s in sizes]
        if min(sizes) < 0:
            result.note(negative_sizes_note(node, sizes))
            return
        positions = [int(p) for p in positions]
        if any(not -len(sizes) <= p < len(sizes) for p in positions):
            result.note(f"{node.name}: left alone, a SequenceAt reads a position outside its {len(sizes)} chunks, "
                        "which ONNX Runtime rejects in the original graph too")
            return
        read: dict[int, gs.Tensor] = {}  # position -> Split output: the first reader's output, name kept
        first_readers = []
        for position, reader in zip(positions, readers):
            position %= len(sizes)
            if position in read:  # another reader of the same chunk reads that output too
                Rewrite(graph, ctx, reader).bypass(read[position])
            else:
                read[position] = reader.outputs[0]
                first_readers.append(reader)
        while sizes and sizes[-1] == 0 and len(sizes) - 1 not in read:
            sizes.pop()
        rw_names = Rewrite(graph, ctx, node)
        outputs = [read.get(i) or gs.Variable(rw_names.name(f"chunk_{i}"), dtype=x.dtype) for i in range(len(sizes))]
        for reader in first_readers:
            unlink_outputs(reader)  # their outputs become the Split's
        self.emit_split(graph, ctx, [node], outputs, axis, sizes, result)
        remove_nodes(graph, ctx, first_readers)

    # ------------------------------------------------------------------ Split

    def split(self, graph, ctx, node, fold, result):
        x = node.inputs[0]
        axis = node.attrs.get("axis", 0)
        dim = fold.dim(x, axis)
        has_sizes = len(node.inputs) > 1 and node.inputs[1].name
        if has_sizes and const_value(node.inputs[1]) is None:
            sizes = fold(node.inputs[1])
            if sizes is None:
                result.note(f"{node.name}: left alone, its split sizes are unknown at rewrite time")
                return
            if sizes.min() < 0:
                result.note(negative_sizes_note(node, sizes.tolist()))
                return
        elif "num_outputs" in node.attrs and ctx.target.opset < NUM_OUTPUTS_SINCE:
            count = node.attrs["num_outputs"]
            if dim is None:
                result.note(f"{node.name}: left alone, num_outputs needs the size of axis {axis}, unknown here")
                return
            chunk = -(-dim // count)
            sizes = [chunk] * (count - 1) + [dim - chunk * (count - 1)]
            if sizes[-1] <= 0:
                result.note(f"{node.name}: left alone, axis size {dim} gives no valid {count}-way split "
                            f"(ceil({dim}/{count}) = {chunk}; ONNX Runtime rejects it, torch.chunk would give fewer)")
                return
        else:
            return
        self.emit_split(graph, ctx, [node], list(node.outputs), axis, [int(s) for s in sizes], result)

    # ------------------------------------------------------------------ ATen unflatten

    @staticmethod
    def unflatten(graph, ctx, node, fold, result):
        """unflatten(x, dim, sizes) is a Reshape: dims before `dim` copied (0), `sizes`, later dims static."""
        x, dim, sizes = node.inputs[0], fold(node.inputs[1]), fold(node.inputs[2])
        rank = len(x.shape) if x.shape is not None else None
        # A 0 in sizes would mean "copy" to Reshape.
        if dim is None or sizes is None or 0 in sizes or rank is None or not -rank <= int(dim) < rank:
            result.note(f"{node.name}: left alone, unflatten's dim, sizes or input rank is unknown at rewrite time")
            return
        dim = int(dim) % rank
        later = [fold.dim(x, axis) for axis in range(dim + 1, rank)]
        if None in later:
            result.note(f"{node.name}: left alone, the dims after unflatten's axis {dim} are not static")
            return
        rw = Rewrite(graph, ctx, node)
        shape = np.array([0] * dim + [int(s) for s in np.ravel(sizes)] + later, np.int64)
        rw.finish("Reshape", [x, rw.const(shape, "shape")])
        result.rewrote(node)

    # ------------------------------------------------------------------ emitting

    @staticmethod
    def emit_split(graph, ctx, nodes, outputs, axis, sizes, result):
        """Replace `nodes` by one Split of their data input into `outputs`, at the first node's place."""
        first = nodes[0]
        x = first.inputs[0]
        unlink_outputs(first)
        remove_nodes(graph, ctx, nodes[1:])
        first.outputs.extend(outputs)
        rw = Rewrite(graph, ctx, first)
        if ctx.opset >= SPLIT_INPUT_SINCE:
            rw.finish("Split", [x, rw.const(np.array(sizes, np.int64), "split")], {"axis": axis})
        else:
            rw.finish("Split", [x], {"axis": axis, "split": sizes})
        result.rewritten.extend(node.name for node in nodes)
