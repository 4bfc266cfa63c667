"""Replace every call of a model-local function by the function's body (onnx.inliner).

Before:  x ─► pkg.local::Block(x) ─► y                    functions: Block = [mul: Mul ─► relu: Relu]
After:   x ─► block_1/mul: Mul ─► block_1/relu: Relu ─► y   functions: none

torch's dynamo export writes a function per module. TensorRT's parser reads them from 9.0 on, an opset-11
toolchain not at all (profile `local_functions: false`; check: SG001), and the other passes rewrite the main
graph only, so a target recipe inlines first. `onnx.inliner` does the work: attribute references take the
call's values, calls inside function bodies and inside If/Loop/Scan bodies are inlined too, and the names
a body defines are made unique in the graph. Each inlined node is named after the call it replaces
(`block_1/mul`, the body's own name, less the inliner's `__N` suffix) and tagged with it. Functions nothing
calls any more are dropped. The inliner works on the model without its weights (as validation's does),
which keeps models past protobuf's 2 GB limit working.

`functions` names the functions to inline (a name, or `domain::name`; default all). Calls of the others
stay calls, also where a named function's body holds them; a named function a kept one's body calls stays
for that call.
"""
from __future__ import annotations

import re

import onnx

from surgeon.errors import PassError, suggest
from surgeon.graphinfo import subgraphs
from surgeon.graphio import import_graph
from surgeon.modelio import inlined_header, take_header
from surgeon.pass_api import Param, Pass, PassResult, node_paths, register_pass
from surgeon.rewrite import export_graph

#: Marks the end of a call in the model handed to the inliner, which puts a call's body where the call was:
#: what lies between the call's predecessor and its marker is its body.
MARKER_DOMAIN = "surgeon.inline-functions"
INLINER_SUFFIX = re.compile(r"__\d+$")


@register_pass("inline-functions")
class InlineFunctions(Pass):
    """Replace calls of model-local functions by their bodies (onnx.inliner) and drop unused functions."""

    params = {"functions": Param(list, None, items=str,
                                 help="the local functions to inline, by name or domain::name (default: all)")}

    def run(self, graph, ctx):
        result = PassResult()
        if not graph.functions:
            return result
        model = export_graph(graph)
        chosen = self._chosen(model.functions)
        marked = {}  # marker name -> (call, scope, nodes since the call before)
        for scope, body in _graphs(model.graph):
            _mark_calls(body, scope, chosen, marked)
        called_before = _called(model)
        if not marked and called_before == {_key(f) for f in model.functions}:
            return result
        functions = _detached(model.functions)
        del model.functions[:]  # the inliner inlines every function it is given
        model.functions.extend(f for f in functions if _key(f) in chosen)
        inlined = inlined_header(model)
        inlined.functions.extend(functions)  # those still called stay: a kept body may call an inlined one
        replaced = {}
        for scope, body in _graphs(inlined.graph):
            replaced.update(_unmark(body, scope, marked, ctx, graph))
        called = _called(inlined)
        gone = [f for f in inlined.functions if _key(f) not in called]  # inlined everywhere, or never called
        for function in gone:
            inlined.functions.remove(function)
        unused = [_label(f) for f in gone if _key(f) not in called_before]
        take_header(model, inlined)
        result.graph = import_graph(model)
        for path, node in node_paths(result.graph):
            if path in replaced:
                ctx.tag(node, replaces=replaced[path])
        result.rewritten.extend(f"{scope}{call.name}" for call, scope, _ in marked.values())
        result.rewritten.extend(f"function:{label}" for label in unused)
        inlined_names = sorted({_label_of_call(call) for call, _, _ in marked.values()})
        if marked:
            result.note(f"inlined {len(marked)} call(s) of {', '.join(inlined_names)}")
        if unused:
            result.note(f"dropped {len(unused)} unused function(s): {', '.join(unused)}")
        return result

    def _chosen(self, functions) -> set[tuple[str, str]]:
        """The (domain, name) of the functions to inline; PassError for a name the model has none of."""
        if self.functions is None:
            return {_key(f) for f in functions}
        chosen = set()
        for wanted in self.functions:
            matching = {_key(f) for f in functions if wanted in (f.name, _label(f))}
            if not matching:
                known = sorted({f.name for f in functions} | {_label(f) for f in functions})
                raise PassError(f"no local function named '{wanted}' (the model's: "
                                f"{', '.join(_label(f) for f in functions)})", hint=suggest(wanted, known))
            chosen |= matching
        return chosen


def _detached(functions) -> list[onnx.FunctionProto]:
    """Copies of `functions`, which outlive the repeated field they came from."""
    copies = []
    for function in functions:
        copy = onnx.FunctionProto()
        copy.CopyFrom(function)
        copies.append(copy)
    return copies


def _key(function) -> tuple[str, str]:
    """How the inliner, and a call, name a function."""
    return function.domain, function.name


def _label(function) -> str:
    return f"{function.domain}::{function.name}"


def _label_of_call(node) -> str:
    return f"{node.domain}::{node.op_type}"


def _graphs(graph: onnx.GraphProto, scope: str = ""):
    """(scope, graph) for `graph` and each If/Loop/Scan body in it, a body's scope `holder/attribute/` (as
    surgeon.pass_api.node_paths names its nodes)."""
    yield scope, graph
    for node in graph.node:
        for attribute, body in subgraphs(node):
            yield from _graphs(body, f"{scope}{node.name}/{attribute}/")


def _mark_calls(graph: onnx.GraphProto, scope: str, chosen, marked: dict) -> None:
    """Put a marker node after each call of a chosen function in `graph` (its own nodes only), recorded in
    `marked` by the marker's name."""
    nodes = list(graph.node)
    if not any((n.domain, n.op_type) in chosen for n in nodes):
        return
    del graph.node[:]
    preceding = 0  # the nodes since the last call, which the inliner leaves as they are
    for node in nodes:
        graph.node.append(node)
        if (node.domain, node.op_type) not in chosen:
            preceding += 1
            continue
        marker = graph.node.add(op_type="CallEnd", domain=MARKER_DOMAIN, name=f"{len(marked)}")
        call = onnx.NodeProto()
        call.CopyFrom(node)
        marked[marker.name] = (call, scope, preceding)
        preceding = 0


def _unmark(graph: onnx.GraphProto, scope: str, marked: dict, ctx, gs_graph) -> dict[str, str]:
    """Remove the markers from an inlined `graph`, naming each body node after its call; returns the call
    each body node replaces, by node path."""
    nodes = list(graph.node)
    if not any(n.domain == MARKER_DOMAIN for n in nodes):
        return {}
    replaced, since_marker, kept = {}, 0, []
    for node in nodes:
        if node.domain != MARKER_DOMAIN:
            kept.append(node)
            since_marker += 1
            continue
        call, _, preceding = marked[node.name]
        caller = call.name or call.op_type
        for inlined in kept[len(kept) - since_marker + preceding:]:
            base = INLINER_SUFFIX.sub("", inlined.name) or inlined.op_type
            inlined.name = ctx.new_name(f"{caller}/{base}", gs_graph)
            replaced[f"{scope}{inlined.name}"] = call.name
        since_marker = 0
    del graph.node[:]
    graph.node.extend(kept)
    return replaced


def _called(model: onnx.ModelProto) -> set[tuple[str, str]]:
    """The (domain, name) of the local functions the graph calls, directly or through other functions."""
    functions = {_key(f): f for f in model.functions}
    called, reading = set(), [model.graph]
    while reading:
        for _, graph in _graphs(reading.pop()):
            for node in graph.node:
                key = (node.domain, node.op_type)
                if key in functions and key not in called:
                    called.add(key)
                    reading.append(onnx.GraphProto(node=functions[key].node))
    return called
