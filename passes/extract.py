"""Cut out the subgraph between named tensors: they become the new graph inputs and outputs.

Before:  img ─► backbone ─► feats ─► vtransform ─► bev ─► head ─► boxes
After (inputs: [feats], outputs: [bev]):             feats ─► vtransform ─► bev

This is how deploy projects split BEVFusion's camera backbone from its vtransform (bev_pool runs as a
CUDA kernel in between) or drop BEVFormer's post-processing. The new inputs need a dtype; the pass
runs shape inference first so they usually have a shape too.

A new input made by a multi-output node (one half of a Split) leaves a placeholder in its producer's
output slot: the producer's other outputs keep their positions, and a producer the cut still needs
writes the placeholder (named `<input>_before_cut`, read by nothing) where it wrote the input.
"""
from __future__ import annotations

import onnx
import onnx_graphsurgeon as gs

from surgeon.errors import PassError, suggest
from surgeon.graphinfo import op_label, tensor_names
from surgeon.pass_api import Param, Pass, PassResult, register_pass
from surgeon.rewrite import any_subgraphs, const_value, dtype_of, producer, prune_graph, subgraph_reads, upstream

#: Where an If/Loop output's type is declared: the body output it comes from (a Loop body's first output
#: is its condition, so Loop output i is body output i + 1).
BODY_OUTPUT = {"If": ("then_branch", 0), "Loop": ("body", 1)}
#: How many tensors or nodes an error names before it stops.
NAMED = 8


@register_pass("extract")
class Extract(Pass):
    """Cut the subgraph between named tensors into a graph of its own."""

    params = {
        "inputs": Param(list, None, items=str, help="tensors that become the graph inputs (default: keep)"),
        "outputs": Param(list, None, items=str, help="tensors that become the graph outputs (default: keep)"),
    }
    needs = ("shapes",)

    def run(self, graph, ctx):
        result = PassResult()
        if not self.inputs and not self.outputs:
            raise PassError("extract needs 'inputs' or 'outputs' (tensor names)")
        tensors = graph.tensors()
        new_inputs = self._tensors(graph, tensors, self.inputs, "inputs") if self.inputs else list(graph.inputs)
        new_outputs = self._tensors(graph, tensors, self.outputs, "outputs") if self.outputs else list(graph.outputs)
        # The graph's own inputs and outputs are typed tensors (ONNX requires a type there): check the named.
        for tensor in new_inputs if self.inputs else ():
            if isinstance(tensor, gs.Constant):
                raise PassError(f"'{tensor.name}' is a constant and cannot become a graph input")
            _check_is_typed_tensor(graph, ctx, tensor, "input")
        for tensor in new_outputs if self.outputs else ():
            _check_is_typed_tensor(graph, ctx, tensor, "output")
        bodies = any_subgraphs(graph.nodes)
        kept, _ = upstream(new_outputs, tensors if bodies else None, stop=new_inputs)
        kept_nodes = [node for node in graph.nodes if id(node) in kept]
        readers = _readers_by_name(kept_nodes, bodies)
        if self.inputs:
            _check_inputs_are_read(graph, tensors, new_inputs, new_outputs, readers, bodies)
        _check_closed(tensors, new_inputs, kept_nodes, readers)

        before = [t.name for t in graph.inputs], [t.name for t in graph.outputs]
        placeholders = [_detach_from_producer(tensor) for tensor in new_inputs]
        graph.inputs, graph.outputs = new_inputs, new_outputs
        # Named inputs are all read (checked above); the graph's own go when the cut no longer reads them.
        removed = prune_graph(graph, remove_unused_inputs=not self.inputs)
        for tensor, placeholder in zip(new_inputs, placeholders):
            if placeholder is not None and placeholder.inputs:  # its producer stays for another output
                placeholder.name = ctx.new_name(f"{tensor.name}_before_cut", graph)
        result.rewritten.extend(node.name for node in removed)
        result.rewritten.extend(_interface_changes("input", before[0], [t.name for t in new_inputs]))
        result.rewritten.extend(_interface_changes("output", before[1], [t.name for t in new_outputs]))
        result.note(f"inputs {[t.name for t in new_inputs]}, outputs {[t.name for t in new_outputs]}, "
                    f"{len(graph.nodes)} nodes kept")
        return result

    @staticmethod
    def _tensors(graph, tensors, names, key):
        chosen = []
        for name in names:
            if name not in tensors:
                holder = _body_holder(graph.nodes, name)
                if holder is not None:
                    raise PassError(f"extract.{key}: '{name}' is inside the body of node {_describe(holder)}; "
                                    f"a cut cannot enter a subgraph",
                                    hint=f"cut at what {holder.name} reads or writes instead")
                raise PassError(f"extract.{key}: no tensor named '{name}'", hint=suggest(name, tensors))
            if names.count(name) > 1:
                raise PassError(f"extract.{key}: '{name}' is named more than once")
            chosen.append(tensors[name])
        return chosen


def _describe(node) -> str:
    return f"{node.name} ({op_label(node)})"


def _cut_points(tensors, opset: int) -> str:
    """The names of `tensors` a cut could be made at (not constants, not sequences), quoted, the first few."""
    names = [f"'{t.name}'" for t in tensors if t.name and const_value(t) is None and not _is_sequence(t, opset)]
    return ", ".join(names[:NAMED]) + (f" and {len(names) - NAMED} more" if len(names) > NAMED else "")


def _body_holder(nodes, name: str):
    """The node whose If/Loop/Scan body (or a body nested in it) names tensor `name`, if one does."""
    for node in nodes:
        for body in node.subgraphs():
            if name in tensor_names(body) or _body_holder(body.nodes, name) is not None:
                return node
    return None


def _check_is_typed_tensor(graph, ctx, tensor, role: str) -> None:
    """A stage boundary is a tensor of known dtype: the next stage (a TensorRT engine, a plugin, a
    kernel) binds it by dtype, and a sequence has no binding at all."""
    if _is_sequence(tensor, graph.opset):
        made_by = producer(tensor)
        read_into = [t for node in tensor.outputs for t in node.outputs]
        places = _cut_points([*(made_by.inputs if made_by is not None else ()), *read_into], graph.opset)
        raise PassError(f"'{tensor.name}' is a sequence, not a tensor, so it cannot be a graph {role} of a stage",
                        hint=f"cut at a tensor the sequence is made from or read into: {places}" if places else None)
    if dtype_of(tensor) is not None:
        return
    message = f"the dtype of '{tensor.name}' is unknown, so it cannot become a graph {role}"
    origins = _untyped_origins(tensor)[:NAMED]
    if not origins:
        raise PassError(f"{message}: nothing in the graph writes it")
    from surgeon.check.rules import fix_for  # the fixes `surgeon check` names, from the passes' `handles`

    hints = []
    for node in origins:
        fix = fix_for(node, ctx.target)
        if fix:
            hints.append(f"pass {fix} rewrites {node.name}")
        elif onnx.defs.has(node.op, node.domain or ""):
            hints.append(f"infer-shapes with strict: true says why {node.name} writes no type")
        else:
            hints.append(f"no pass rewrites {node.name}: cut upstream of it")
    raise PassError(f"{message}: shape inference stops at {', '.join(_describe(n) for n in origins)}, "
                    f"whose outputs have no type", hint="; ".join(hints))


def _is_sequence(tensor, opset: int) -> bool:
    """Whether `tensor` holds a sequence. The pipeline's shape annotation records tensor types only, so
    ask the producer: its schema (SplitToSequence, SequenceInsert, ... write sequences only), or for an
    If/Loop output the body output it comes from (graphsurgeon marks that `sequence_type`)."""
    if getattr(tensor, "type", None) == "sequence_type":
        return True
    node = producer(tensor)
    if node is None:
        return False
    index = next(i for i, t in enumerate(node.outputs) if t is tensor)
    if node.op in BODY_OUTPUT and not node.domain:
        body, offset = BODY_OUTPUT[node.op]
        outputs = getattr(node.attrs.get(body), "outputs", ())
        return index + offset < len(outputs) and getattr(outputs[index + offset], "type", None) == "sequence_type"
    try:
        schema = onnx.defs.get_schema(node.op, opset, node.domain or "")
    except onnx.defs.SchemaError:
        return False
    formal = schema.outputs[min(index, len(schema.outputs) - 1)]
    allowed = {c.type_param_str: c.allowed_type_strs for c in schema.type_constraints}
    return all(t.startswith("seq(") for t in allowed.get(formal.type_str, [formal.type_str]))


def _untyped_origins(tensor) -> list:
    """Where shape inference stopped on the way to the untyped `tensor`: the nodes upstream of it (or
    its own producer) that write untyped outputs from typed inputs (ATen, custom and plugin nodes)."""
    origins, seen, pending = [], set(), [tensor]
    while pending:
        node = producer(pending.pop())
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        untyped = [t for t in node.inputs if t.name and dtype_of(t) is None]
        pending.extend(reversed(untyped))
        if not untyped:
            origins.append(node)
    return origins


def _readers_by_name(nodes, bodies: bool) -> dict[str, object]:
    """{tensor name: the first of `nodes` to read it}, reads inside If/Loop/Scan `bodies` included."""
    readers: dict[str, object] = {}
    for node in nodes:
        for tensor in (*node.inputs, *(subgraph_reads(node) if bodies else ())):
            if tensor.name:
                readers.setdefault(tensor.name, node)
    return readers


def _check_inputs_are_read(graph, tensors, inputs, outputs, readers, bodies: bool) -> None:
    """Every named input feeds the cut. One that does not is the first thing wrong with the cut (the
    closure check would ask for more inputs instead), so say why it feeds nothing."""
    output_names = {t.name for t in outputs}
    for tensor in inputs:
        if tensor.name in readers or tensor.name in output_names:
            continue
        name = f"extract.inputs: nothing between the inputs and the outputs reads '{tensor.name}'"
        anywhere = [n.name for n in graph.nodes if any(t is tensor for t in n.inputs)
                    or bodies and any(t.name == tensor.name for t in subgraph_reads(n))]
        if not anywhere:
            made_by = producer(tensor)
            where = ("it is a graph output no node reads" if any(t is tensor for t in graph.outputs)
                     else "no node reads it at all")
            cut_points = _cut_points(made_by.inputs, graph.opset) if made_by is not None else ""
            hint = f"its producer {_describe(made_by)} reads {cut_points}: cut there instead" if cut_points else None
            raise PassError(f"{name}: {where}", hint=hint)
        _, ancestors = upstream([tensor], tensors if bodies else None)
        after = [t.name for t in outputs if id(t) in ancestors]
        if after:
            raise PassError(f"{name}: it lies downstream of output '{after[0]}'",
                            hint="an input lies upstream of the outputs: are inputs and outputs swapped?")
        raise PassError(f"{name}: the nodes that read it ({', '.join(anywhere[:NAMED])}) are outside the cut",
                        hint="drop it from 'inputs': it lies upstream of another input, or off the paths to the outputs")


def _check_closed(tensors, inputs, kept_nodes, readers) -> None:
    """The kept nodes read nothing but the inputs, constants and what kept nodes write."""
    written = {t.name for node in kept_nodes for t in node.outputs}
    given = {t.name for t in inputs}
    dangling = sorted(name for name in readers
                      if name not in written and name not in given and not isinstance(tensors.get(name), gs.Constant))
    if dangling:
        leaks = ", ".join(f"{name} (read by {readers[name].name})" for name in dangling[:NAMED])
        raise PassError(f"the cut is not closed: the kept nodes also read {leaks}",
                        hint="add them to 'inputs', or name as inputs the tensors where those paths enter the cut")


def _detach_from_producer(tensor):
    """Cut `tensor` from the node that writes it, leaving an unnamed placeholder in its output slot so the
    node's other outputs keep their positions. Returns the placeholder (None for a graph input)."""
    node = producer(tensor)
    if node is None:
        return None
    placeholder = gs.Variable.empty()
    index = next(i for i, t in enumerate(node.outputs) if t is tensor)
    node.outputs[index] = placeholder
    return placeholder


def _interface_changes(kind: str, before: list[str], after: list[str]) -> list[str]:
    """`input:NAME` for each input the cut adds or drops (`output:` alike); `inputs:order` where only
    the order changed (deploy code binding by position sees that too)."""
    changes = [f"{kind}:{name}" for name in after if name not in before]
    changes += [f"{kind}:{name}" for name in before if name not in after]
    if not changes and before != after:
        changes.append(f"{kind}s:order")
    return changes
