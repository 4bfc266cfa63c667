"""Small tools passes share: recognising op spellings, reading constants, and building replacements.

`Rewrite` builds the replacement of one node. New nodes are named after the node they replace
(`<old name>/<suffix>`), tagged with the running pass (exported to `metadata_props`), and spliced in
at the old node's position, so a sorted graph stays sorted and the original output tensors (and so
their names) survive. Nothing touches the graph until `finish`/`bypass`: a pass that raises halfway
leaves the graph as it was.

    rw = Rewrite(graph, ctx, node)
    ratio = rw.op("Div", [rw.cast(y, np.float32), rw.cast(x, np.float32)], dtype=np.float32)
    rw.finish("Atan", [ratio])

`op` takes the op type, its inputs and attributes positionally and everything else by keyword. `cast`
adds a Cast only where the type differs. Ops whose signature changed across opsets have their own
builders (`unsqueeze`, `squeeze`, `reduce`), which write the form the graph's opset defines; the opset
facts below say when each change came.
"""
from __future__ import annotations

import functools
from operator import attrgetter
from typing import Iterable, Sequence

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx_graphsurgeon.util.misc import SynchronizedList

from surgeon.graphio import export_model, import_graph

ATEN_DOMAINS = ("org.pytorch.aten", "")

# When an op's signature changed (the ONNX operator changelog): the opset of the version that changed it.
#: Unsqueeze-13, Squeeze-13 and ReduceSum-13 take their axes as an input (an attribute before).
AXES_INPUT_SINCE = 13
#: The other Reduce* ops (ReduceMax, ReduceMin, ReduceMean, ...) take their axes as an input from opset 18.
REDUCE_AXES_INPUT_SINCE = 18
#: Split-13 takes the split sizes as an input (an attribute before).
SPLIT_INPUT_SINCE = 13
#: Max-12 and Min-12 accept integer types (float types only before).
INTEGER_MAX_MIN_SINCE = 12


def axes_input_since(op_type: str) -> int:
    """The opset from which `op_type` (Unsqueeze, Squeeze or a Reduce*) takes its axes as an input."""
    return AXES_INPUT_SINCE if op_type in ("Unsqueeze", "Squeeze", "ReduceSum") else REDUCE_AXES_INPUT_SINCE


def onnx_dtype(dtype) -> int:
    """The TensorProto element type of a NumPy dtype (the `to` of a Cast)."""
    return onnx.helper.np_dtype_to_tensor_dtype(np.dtype(dtype))


def aten_operator(node: gs.Node) -> str | None:
    """The `operator` of an `org.pytorch.aten::ATen` node (e.g. 'grid_sampler'), else None."""
    if node.op != "ATen" or node.domain not in ATEN_DOMAINS + (None,):
        return None
    value = node.attrs.get("operator")
    if isinstance(value, bytes):
        value = value.decode()
    return value


def attr_text(node: gs.Node, key: str, default: str | None = None) -> str | None:
    value = node.attrs.get(key, default)
    return value.decode() if isinstance(value, bytes) else value


def is_op(node: gs.Node, op_type: str | Iterable[str], domains: Iterable[str] = ("", "ai.onnx")) -> bool:
    """True when `node` is a standard (or given-domain) op of one of the given types."""
    types = (op_type,) if isinstance(op_type, str) else tuple(op_type)
    return node.op in types and (node.domain or "") in tuple(domains)


def dtype_of(tensor: gs.Tensor) -> np.dtype | None:
    """The tensor's element type as a NumPy dtype, or None when unknown."""
    if isinstance(tensor, gs.Constant):
        return tensor.values.dtype
    dtype = getattr(tensor, "dtype", None)
    if dtype is None:
        return None
    if isinstance(dtype, (int, np.integer)):
        if dtype == onnx.TensorProto.UNDEFINED:
            return None
        return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(int(dtype)))
    try:
        return np.dtype(dtype)
    except TypeError:
        return None


def const_value(tensor: gs.Tensor) -> np.ndarray | None:
    """The value of a tensor known at rewrite time: an initializer or a Constant node's output."""
    if isinstance(tensor, gs.Constant):
        return tensor.values
    if len(tensor.inputs) == 1:
        producer = tensor.inputs[0]
        if producer.op == "Constant" and "value" in producer.attrs:
            value = producer.attrs["value"]
            return value.values if isinstance(value, gs.Constant) else np.asarray(value)
    return None


def producer(tensor: gs.Tensor) -> gs.Node | None:
    return tensor.inputs[0] if tensor.inputs else None


def validation_runtime(target):
    """The ONNX Runtime profile a rewrite is validated on: `target` where it is ONNX Runtime, else the
    built-in profile, since validation runs every rewrite on ONNX Runtime whatever the target."""
    if target.runtime == "onnxruntime":
        return target
    from surgeon.targets import load_target

    return load_target("onnxruntime")


def max_min_is_wrong(target, dtype) -> bool:
    """Whether Max/Min on `dtype` give wrong results where a rewrite for `target` is validated, which is
    ONNX Runtime whatever the target (`validation_runtime`): its 1.31 int64 Max/Min broadcast wrongly past
    the int32 range (measured from two elements on: Min([-2147483649] * 2, -1) = [-1, -1],
    Min(2147483648, 0) = 0; tests/test_pass_maximum_minimum.py pins it), so a TensorRT target's rewrite
    would fail validation. Its uint64 Max/Min and int64 Less/Greater/Where are right, and the Where form
    runs on TensorRT too."""
    return validation_runtime(target).runtime == "onnxruntime" and np.dtype(dtype) == np.int64


#: Float types torch computes elementwise ops on in float32, rounding once at the end.
HALF_FLOATS = ("float16", "bfloat16")


def takes_dtype(ctx, op_type: str, dtype, opset: int | None = None) -> bool:
    """Whether a standard `op_type` node on `dtype` may be written: ONNX's schema at the graph's opset lists the
    type for every input that takes floats (those a float rewrite feeds: Pow's base and exponent, not Where's
    condition nor Gather's indices; Where-9 and Pow-13's exponent have no bfloat16: onnx.checker's full check
    refuses them), and the target runs it (`target.supports`, asked at `opset`; None: the target's own)."""
    return _schema_takes(op_type, onnx_dtype(dtype), ctx.opset) and ctx.target.supports(op_type, dtype=dtype,
                                                                                         opset=opset)


@functools.lru_cache(maxsize=None)
def _schema_takes(op_type: str, elem_type: int, opset: int) -> bool:
    try:
        schema = onnx.defs.get_schema(op_type, opset, "")
    except onnx.defs.SchemaError:  # not defined at that opset: the target's question (surgeon check reports it)
        return True
    wanted = f"tensor({onnx.TensorProto.DataType.Name(elem_type).lower()})"  # tensor(float), tensor(bfloat16)
    allowed = {c.type_param_str: c.allowed_type_strs for c in schema.type_constraints}
    fed = [types for types in (allowed.get(formal.type_str, [formal.type_str]) for formal in schema.inputs)
           if "tensor(float)" in types]
    return bool(fed) and all(wanted in types for types in fed)


def bfloat16_compute_dtype(ctx, ops: Iterable[str], dtype) -> np.dtype | None:
    """The type to run `ops` on `dtype` in: a bfloat16 stays where every op takes it (`takes_dtype`), else
    float32 where every op takes that (Cast there and back: exact for selections, comparisons and max/min,
    one rounding at the end for arithmetic, as torch computes bfloat16), else None. Other types stay as they
    are: ONNX Runtime runs a float16 op it has no kernel for in float32 itself (InsertCastTransformer), which
    it does not for bfloat16, and what a target lacks of the others `surgeon check` reports."""
    dtype = np.dtype(dtype)
    if dtype.name != "bfloat16":
        return dtype
    ops = tuple(ops)
    candidates = (dtype, np.dtype(np.float32))
    return next((c for c in candidates if all(takes_dtype(ctx, op, c, opset=ctx.opset) for op in ops)), None)


def find_nodes(graph: gs.Graph, predicate) -> list[gs.Node]:
    """Nodes matching `predicate`, in graph order (a copy, safe to rewrite while iterating)."""
    return [n for n in graph.nodes if predicate(n)]


def replace_uses(graph: gs.Graph, old: gs.Tensor, new: gs.Tensor) -> None:
    """Make every consumer of `old` read `new` instead (graph outputs included)."""
    for consumer in list(old.outputs):
        for i, tensor in enumerate(consumer.inputs):  # item by item: graphsurgeon's lists mishandle slices
            if tensor is old:
                consumer.inputs[i] = new
    graph.outputs[:] = [new if t is old else t for t in graph.outputs]


def _position(nodes: list, node, hint: int) -> int:
    """Index of `node` (by identity) in `nodes` (the graph's, or a tensor's readers or writers), searching
    from `hint` onwards first, then from the start."""
    hint = min(hint, len(nodes))
    for i in range(hint, len(nodes)):
        if nodes[i] is node:
            return i
    for i in range(hint):
        if nodes[i] is node:
            return i
    raise ValueError(f"node '{node.name}' is not in the list searched")


class Rewrite:
    """Builds the replacement of `node`; see the module docstring."""

    def __init__(self, graph: gs.Graph, ctx, node: gs.Node):
        self.graph = graph
        self.ctx = ctx
        self.node = node
        self.prefix = node.name or ctx.new_name(node.op, graph)
        self.nodes: list[gs.Node] = []

    def name(self, suffix: str) -> str:
        return self.ctx.new_name(f"{self.prefix}/{suffix}", self.graph)

    def const(self, value, suffix: str = "const", dtype=None) -> gs.Constant:
        """A new initializer holding `value` (cast to `dtype` when given)."""
        # np.array, not ascontiguousarray: that one turns 0-d scalars into shape [1].
        return gs.Constant(self.name(suffix), values=np.array(value, dtype=dtype, order="C"))

    def op(self, op_type: str, inputs: Sequence[gs.Tensor], attrs: dict | None = None, *, suffix: str | None = None,
           domain: str | None = None, dtype=None, shape=None, num_outputs: int = 1):
        """Add a node; return its output Variable (a list when `num_outputs` > 1)."""
        name = self.name(suffix or op_type)
        outputs = [gs.Variable(name if num_outputs == 1 else f"{name}:{i}", dtype=dtype, shape=shape)
                   for i in range(num_outputs)]
        for out in outputs:
            self.ctx.new_name(out.name, self.graph)
        self._add(gs.Node(op_type, name=name, attrs=dict(attrs or {}), inputs=list(inputs), outputs=outputs,
                          domain=domain))
        return outputs[0] if num_outputs == 1 else outputs

    def cast(self, tensor: gs.Tensor, dtype, suffix: str = "Cast") -> gs.Tensor:
        """`tensor` itself where it is known to have `dtype`, else a Cast of it to `dtype`."""
        dtype = np.dtype(dtype)
        if dtype_of(tensor) == dtype:
            return tensor
        return self.op("Cast", [tensor], {"to": onnx_dtype(dtype)}, suffix=suffix, dtype=dtype, shape=tensor.shape)

    def unsqueeze(self, tensor: gs.Tensor, axes: Sequence[int], *, suffix: str = "Unsqueeze",
                  axes_suffix: str = "axes", dtype=None, shape=None) -> gs.Variable:
        """Unsqueeze(tensor, axes) at the graph's opset: axes an input from Unsqueeze-13, else an attribute."""
        return self._with_axes("Unsqueeze", tensor, axes, {}, suffix, axes_suffix, dtype, shape)

    def squeeze(self, tensor: gs.Tensor, axes: Sequence[int], *, suffix: str = "Squeeze",
                axes_suffix: str = "axes", dtype=None, shape=None) -> gs.Variable:
        """Squeeze(tensor, axes) at the graph's opset: axes an input from Squeeze-13, else an attribute."""
        return self._with_axes("Squeeze", tensor, axes, {}, suffix, axes_suffix, dtype, shape)

    def reduce(self, op_type: str, tensor: gs.Tensor, axes: Sequence[int] | None, keepdims: int | None = None, *,
               suffix: str | None = None, axes_suffix: str = "axes", dtype=None, shape=None) -> gs.Variable:
        """A Reduce* node over `axes` (None: all of them) at the graph's opset: axes an input from
        ReduceSum-13 and the other Reduce*-18, else an attribute. keepdims None leaves ONNX's default (1)."""
        attrs = {} if keepdims is None else {"keepdims": int(keepdims)}
        return self._with_axes(op_type, tensor, axes, attrs, suffix or op_type, axes_suffix, dtype, shape)

    def _with_axes(self, op_type, tensor, axes, attrs, suffix, axes_suffix, dtype, shape):
        inputs = [tensor]
        if axes is not None and self.ctx.opset >= axes_input_since(op_type):
            inputs.append(self.const(np.asarray(axes, np.int64), axes_suffix))
        elif axes is not None:
            attrs = {**attrs, "axes": [int(axis) for axis in axes]}
        return self.op(op_type, inputs, attrs, suffix=suffix, dtype=dtype, shape=shape)

    def finish(self, op_type: str, inputs: Sequence[gs.Tensor], attrs: dict | None = None, *,
               domain: str | None = None, suffix: str | None = None) -> gs.Node:
        """Add the last node, which takes over the replaced node's outputs, and splice everything in."""
        outputs = list(self.node.outputs)
        unlink_outputs(self.node)
        last = gs.Node(op_type, name=self.name(suffix or op_type), attrs=dict(attrs or {}), inputs=list(inputs),
                       outputs=outputs, domain=domain)
        self._add(last)
        self._splice()
        return last

    def finish_cast(self, tensor: gs.Tensor, dtype, suffix: str = "Cast") -> gs.Node:
        """`finish` with a Cast of `tensor` to `dtype`."""
        return self.finish("Cast", [tensor], {"to": onnx_dtype(dtype)}, suffix=suffix)

    def bypass(self, *values: gs.Tensor) -> None:
        """Replace the node's outputs by existing tensors (an Identity keeps graph-output names)."""
        outputs = list(self.node.outputs)
        if len(values) != len(outputs):
            raise ValueError(f"{self.node.name}: {len(outputs)} outputs, {len(values)} replacements")
        graph_outputs = {id(t) for t in self.graph.outputs}
        unlink_outputs(self.node)
        for old, new in zip(outputs, values):
            if id(old) in graph_outputs:
                self._add(gs.Node("Identity", name=self.name("Identity"), inputs=[new], outputs=[old]))
            else:
                replace_uses(self.graph, old, new)
        self._splice(outputs)

    def _add(self, node: gs.Node) -> None:
        self.nodes.append(node)
        self.ctx.tag(node, replaces=self.node.name)

    def _splice(self, former_outputs: Sequence[gs.Tensor] = ()) -> None:
        nodes = self.graph.nodes
        at = _position(nodes, self.node, self.ctx.splice_hint)
        former_inputs = list(self.node.inputs)
        unlink_inputs(self.node)
        _release(self.node)
        unlinked = [t for t in (*former_inputs, *former_outputs) if not t.inputs and not t.outputs]
        if unlinked:  # the graph's inputs and outputs only then: a graph may have thousands
            graph_io = {id(t) for t in (*self.graph.inputs, *self.graph.outputs)}
            for tensor in unlinked:
                if id(tensor) not in graph_io:
                    _release(tensor)  # nothing reads or writes it any more
        nodes[at:at + 1] = self.nodes
        # Passes rewrite in graph order: the next node to replace is usually after this one, so the
        # search starts here (thousands of rewrites on 20,000 nodes stay linear, not quadratic).
        self.ctx.splice_hint = at + len(self.nodes)


def export_graph(graph: gs.Graph):
    """`gs.export_onnx` (byte for byte, via surgeon.graphio), export failures turned into one clear error."""
    from surgeon.errors import SurgeonError, first_line

    try:
        return export_model(graph, do_type_check=False)
    except (ValueError, TypeError) as exc:
        raise SurgeonError(f"onnx-graphsurgeon cannot export the graph: {first_line(exc)}") from exc


def via_onnx(graph: gs.Graph, transform) -> gs.Graph:
    """Apply an ONNX-level `transform(ModelProto) -> ModelProto` (onnxsim, version converter, shape
    inference) to a graphsurgeon graph; return the re-imported graph."""
    return import_graph(transform(export_graph(graph)))


def stable_toposort(graph: gs.Graph) -> bool:
    """Sort `graph.nodes` topologically, keeping the present order wherever it is already valid.

    onnx-graphsurgeon's own toposort orders by depth and so reshuffles sorted graphs; this one leaves a
    sorted graph exactly as it is (Kahn's algorithm, ready nodes taken in their original order). A node
    holding subgraphs (If/Loop/Scan bodies) comes after the producers of what they read from outside
    (`subgraph_reads`), and the bodies are sorted the same way. Returns whether any order changed.
    Raises ValueError on a cycle.
    """
    if is_sorted(graph.nodes):
        return False
    return _sort_with_bodies(graph)


def _sort_with_bodies(graph: gs.Graph) -> bool:
    changed = _sort_level(graph)
    if any_subgraphs(graph.nodes):
        for node in graph.nodes:
            for body in node.subgraphs():
                changed = _sort_with_bodies(body) or changed
    return changed


def _sort_level(graph: gs.Graph) -> bool:
    import heapq

    nodes = list(graph.nodes)
    producer_index = {}
    for i, node in enumerate(nodes):
        for out in node.outputs:
            producer_index[id(out)] = i
    index_by_name = _producer_index_by_name(nodes) if any_subgraphs(nodes) else {}
    deps: list[set[int]] = []
    for i, node in enumerate(nodes):
        needed = {producer_index[id(t)] for t in node.inputs if id(t) in producer_index}
        if index_by_name:
            needed.update(index_by_name[t.name] for t in subgraph_reads(node) if t.name in index_by_name)
        needed.discard(i)
        deps.append(needed)
    users: list[list[int]] = [[] for _ in nodes]
    waiting = [len(d) for d in deps]
    for i, needed in enumerate(deps):
        for d in needed:
            users[d].append(i)
    ready = [i for i, w in enumerate(waiting) if w == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        i = heapq.heappop(ready)
        order.append(i)
        for user in users[i]:
            waiting[user] -= 1
            if waiting[user] == 0:
                heapq.heappush(ready, user)
    if len(order) != len(nodes):
        stuck = sorted(nodes[i].name for i, w in enumerate(waiting) if w)
        raise ValueError(f"the graph has a cycle through {', '.join(stuck[:5])}")
    if order == list(range(len(nodes))):
        return False
    graph.nodes[:] = [nodes[i] for i in order]
    return True


def is_sorted(nodes, _seen: set | None = None) -> bool:
    """Every input is produced by an earlier node (or by none): one cheap pass over the graph. What a
    node's subgraphs read from outside (`subgraph_reads`) counts as read by the node, and the nodes of
    its subgraphs must be in order too."""
    seen = set() if _seen is None else _seen  # ids of the nodes before this one, outer scopes' too
    index_by_name = None  # built at the first node that holds a subgraph
    for index, node in enumerate(nodes):
        attrs = node.attrs
        bodies = attrs and [value for value in attrs.values() if isinstance(value, gs.Graph)]
        if bodies:
            if index_by_name is None:
                index_by_name = _producer_index_by_name(nodes)
            if any(index_by_name.get(t.name, -1) > index for t in subgraph_reads(node)):
                return False
        for tensor in node.inputs:
            producers = tensor.inputs
            if producers and id(producers[0]) not in seen and producers[0] is not node:
                return False
        seen.add(id(node))
        if bodies and not all(is_sorted(body.nodes, seen) for body in node.subgraphs()):
            return False
    return True


def _producer_index_by_name(nodes) -> dict[str, int]:
    return {t.name: i for i, node in enumerate(nodes) for t in node.outputs if not t.is_empty()}


def subgraph_reads(node: gs.Node) -> list[gs.Tensor]:
    """The tensors `node`'s subgraphs (If/Loop/Scan bodies, nested ones too) read from outside them.

    Match them to the outer graph by name, as ONNX scoping does, not by object: graphsurgeon links a
    body's read to the outer tensor only when the outer producer comes first in the file, so in an
    unsorted graph the body holds a `Variable` of its own with that name and no producer.
    Constants are left out (they have no producer to wait for or keep).
    """
    found: dict[str, gs.Tensor] = {}
    for sub in node.subgraphs():
        _outside_reads(sub, found)
    return list(found.values())


def _outside_reads(graph: gs.Graph, found: dict[str, gs.Tensor]) -> None:
    local = {t.name for t in graph.inputs}
    local.update(t.name for node in graph.nodes for t in node.outputs)
    for node in graph.nodes:
        for tensor in node.inputs:
            if tensor.name not in local and not tensor.is_empty() and not isinstance(tensor, gs.Constant):
                found.setdefault(tensor.name, tensor)
        for sub in node.subgraphs():
            inner: dict[str, gs.Tensor] = {}
            _outside_reads(sub, inner)
            for name, tensor in inner.items():
                if name not in local:
                    found.setdefault(name, tensor)


def any_subgraphs(nodes) -> bool:
    """Whether some node holds a subgraph (If/Loop/Scan bodies). Same test as `Node.subgraphs`, minus
    its generator per node (a third of a toposort on 20,000 nodes)."""
    for attrs in map(attrgetter("attrs"), nodes):
        if attrs:
            for value in attrs.values():
                if isinstance(value, gs.Graph):
                    return True
    return False


def _release(item: gs.Node | gs.Tensor) -> None:
    """Swap a disconnected node's or tensor's (empty) synchronized `inputs`/`outputs` lists for plain
    ones: the lists point back at their owner, so a removed node would otherwise wait for the cyclic
    garbage collector (see dismantle_graph). The object stays readable (name, op, attrs)."""
    item.__dict__["inputs"] = []
    item.__dict__["outputs"] = []


def remove_nodes(graph: gs.Graph, ctx, nodes: Iterable[gs.Node]) -> None:
    """Take `nodes` out of `graph.nodes`, unlinked from their tensors, for a pass that replaces several
    nodes by one Rewrite. Found from `ctx.splice_hint` on, as Rewrite finds the node it replaces."""
    for node in nodes:
        unlink_inputs(node)
        unlink_outputs(node)
        del graph.nodes[_position(graph.nodes, node, ctx.splice_hint)]
        _release(node)


def unlink_inputs(node: gs.Node) -> None:
    """`node.inputs.clear()`, in time linear in the number of rewrites however many nodes read an input."""
    _unlink_side(node, "inputs", "outputs")


def unlink_outputs(node: gs.Node) -> None:
    """`node.outputs.clear()`, in time linear in the number of rewrites (see unlink_inputs)."""
    _unlink_side(node, "outputs", "inputs")


def _unlink_side(node: gs.Node, field: str, back: str) -> None:
    # graphsurgeon's synchronized clear() takes the node out of each tensor's list with list.remove,
    # which calls Node.__eq__ (attributes, inputs, a log message) on every node before it: with 2,000
    # rewritten readers of a tensor 2,000 others also read, 2,000,000 calls. The plain list methods
    # and an identity search do the same unlinking.
    links = node.__dict__[field]
    for tensor in links:
        _drop_link(tensor.__dict__[back], node)
    list.clear(links)


def _drop_link(links: list, node: gs.Node) -> None:
    """Delete one occurrence of `node` from a tensor's node list, found by identity. Rewrites go in graph
    order, so the next reader to drop usually sits at or after the last one dropped: the search starts
    there (kept on graphsurgeon's list object), which keeps thousands of rewrites of readers of one
    tensor linear."""
    at = _position(links, node, getattr(links, "next_drop", 0))
    list.__delitem__(links, at)
    if isinstance(links, SynchronizedList):  # a released object's plain list takes no attribute
        links.next_drop = at


def _unlink(removed: list[gs.Node]) -> None:
    """Disconnect removed nodes from their tensors and release them (and the tensors left with no
    link). As `node.inputs.clear()`, `node.outputs.clear()` on each, but one filtered rebuild per
    touched tensor instead of one `list.remove` per link (8,400 folded nodes: 3x faster)."""
    gone = {id(node) for node in removed}
    touched = {id(t): t for node in removed for t in node.inputs}
    orphans = {id(t): t for node in removed for t in node.outputs}
    for tensors, field in ((touched, "outputs"), (orphans, "inputs")):
        for tensor in tensors.values():
            links = tensor.__dict__[field]
            kept = [node for node in links if id(node) not in gone]
            if len(kept) != len(links):
                list.clear(links)  # the plain list methods: the removed nodes' own lists are dropped below
                list.extend(links, kept)
    for node in removed:
        _release(node)
    for tensor in orphans.values():
        if not tensor.inputs and not tensor.outputs:
            _release(tensor)


def dismantle_graph(graph: gs.Graph) -> None:
    """Take apart a graph nobody will use again, so reference counting frees it at once.

    Every graphsurgeon node and tensor is a reference cycle (its `inputs`/`outputs` lists point back
    at it), so a dropped graph waits for a full garbage collection, which walks every object the run
    created: 0.45 s for a 21,000-node graph, plus 0.1-0.2 s in the collection that re-enabling the
    collector triggers (docs/performance.md). Clearing the objects' attribute dicts breaks the cycles.
    """
    stack = [graph, *graph.functions]
    while stack:
        current = stack.pop()
        for node in current.nodes:
            for value in node.attrs.values():
                if isinstance(value, gs.Graph):
                    stack.append(value)
                elif isinstance(value, list):
                    stack.extend(v for v in value if isinstance(v, gs.Graph))
            for tensor in node.inputs:
                tensor.__dict__.clear()
            for tensor in node.outputs:
                tensor.__dict__.clear()
            node.__dict__.clear()
        for tensor in (*current.inputs, *current.outputs):
            tensor.__dict__.clear()
        current.__dict__.clear()


def dismantle_replaced(old: gs.Graph, new: gs.Graph) -> None:
    """Take apart `old` (see dismantle_graph) now that `new` replaces it, unless the two share a node or
    tensor (a pass may build its new graph from the old one's parts) or hold subgraphs or functions."""
    if old is new or old.functions or new.functions or any_subgraphs(old.nodes) or any_subgraphs(new.nodes):
        return
    kept = {id(t) for t in (*new.inputs, *new.outputs)}
    for node in new.nodes:
        kept.add(id(node))
        kept.update(id(t) for t in node.inputs)
        kept.update(id(t) for t in node.outputs)
    if any(id(t) in kept for t in (*old.inputs, *old.outputs)):
        return
    for node in old.nodes:
        if id(node) in kept or any(id(t) in kept for t in node.inputs) or any(id(t) in kept for t in node.outputs):
            return
    dismantle_graph(old)


def prune_graph(graph: gs.Graph, remove_unused_inputs: bool = False) -> list[gs.Node]:
    """Remove the nodes no graph output depends on; return them, in graph order.

    As `graph.cleanup(remove_unused_graph_inputs=remove_unused_inputs)` but one backward walk from the
    outputs (graphsurgeon's cleanup rebuilds the whole tensor map: 0.3 s on 20,000 nodes,
    docs/performance.md), and right where graphsurgeon's is wrong about subgraphs:
    - what a node's subgraphs read from outside keeps its producers, matched by name (`subgraph_reads`;
      graphsurgeon follows the body's own unlinked `Variable` in an unsorted graph and drops them);
    - subgraphs and local functions lose their dead nodes but never an input: their inputs are a
      signature (a Loop body without its unused iteration-count input no longer matches the Loop, and
      ONNX Runtime refuses the model), yet graphsurgeon's `remove_unused_graph_inputs` recurses.
    Only `graph`'s own inputs are removed (when `remove_unused_inputs`), and only its nodes returned.
    """
    removed = _prune(graph, remove_unused_inputs)
    for function in graph.functions:
        _prune(function, False)
    return removed


def upstream(start, outer: dict | None = None, stop=(), own: set[int] | None = None) -> tuple[set[int], set[int]]:
    """(ids of the nodes, ids of the tensors) that the tensors `start` depend on, not looking past the
    tensors `stop` nor at nodes outside `own` (ids), where given. With `outer` ({name: tensor}), what a
    node's bodies read from outside leads on to the tensor of that name (`subgraph_reads`)."""
    nodes: set[int] = set()
    seen = {id(t) for t in stop}
    pending = list(start)
    while pending:
        tensor = pending.pop()
        if id(tensor) in seen:
            continue
        seen.add(id(tensor))
        for node in tensor.inputs:
            if id(node) not in nodes and (own is None or id(node) in own):
                nodes.add(id(node))
                pending.extend(node.inputs)
                if outer is not None and node.attrs:
                    pending.extend(outer[t.name] for t in subgraph_reads(node) if t.name in outer)
    return nodes, seen


def _prune(graph: gs.Graph, remove_unused_inputs: bool, nested: bool = False) -> list[gs.Node]:
    nodes = graph.nodes
    for tensor in graph.inputs:
        tensor.inputs.clear()
    outer: dict[str, gs.Tensor] | None = None
    if any_subgraphs(nodes):
        outer = {t.name: t for t in graph.inputs}
        outer.update((t.name, t) for node in nodes for t in node.outputs if not t.is_empty())
    # In a subgraph, a read of an outer tensor leads to the outer graph's nodes: not this walk's business.
    used, read = upstream(graph.outputs, outer, own={id(n) for n in nodes} if nested else None)
    removed = [n for n in nodes if id(n) not in used]
    if removed:
        nodes[:] = [n for n in nodes if id(n) in used]
        _unlink(removed)
    if remove_unused_inputs:
        graph.inputs = [t for t in graph.inputs if id(t) in read]
    if outer is not None:
        for node in nodes:
            for sub in node.subgraphs():
                _prune(sub, False, nested=True)
    return removed
