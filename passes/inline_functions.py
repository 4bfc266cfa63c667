"""Replace every call of a model-local function by the function's body (onnx.inliner).

Before:  x ─► pkg.local::Block(x) ─► y                    functions: Block = [mul: Mul ─► relu: Relu]
After:   x ─► block_1/mul: Mul ─► block_1/relu: Relu ─► y   functions: none

torch's dynamo export writes a function per module. TensorRT's parser reads them from 9.0 on, an opset-11
toolchain not at all (profile `local_functions: false`; check: SG001), and the other passes rewrite the main
graph only, so a target recipe inlines first. `onnx.inliner` does the work: attribute references take the
call's values, calls inside function bodies and inside If/Loop/Scan bodies are inlined too, and the names
a body defines are made unique in the graph. Each node a call brings in, down to those inside an If/Loop
body of the function, is named after the call (`block_1/mul`, the body's own name less the inliner's `__N`
suffix; `block_1/mul_1` where a node of the graph or of its bodies has that name) and tagged with it and
with the functions it came through (`surgeon.function: pkg::Outer/pkg::Inner`).
Functions nothing calls any more are dropped. The inliner works on the model without its weights (as
validation's does), which keeps models past protobuf's 2 GB limit working.

The inliner leaves a call in place, silently, where the function imports an opset other than the model's:
a function's default-domain body is converted to the model's opset first (as set-opset converts one), a
domain the model lacks is imported, and a custom domain at another version is an error.

`functions` names the functions to inline (a name, or `domain::name`; default all). Calls of the others
stay calls, also where a named function's body holds them; a named function a kept one's body calls stays
for that call (called from kept bodies only, it is inlined nowhere: a note names them). A named function the graph no longer has that an earlier step or run inlined (its nodes'
`surgeon.function` say so: a recipe extending a target recipe, which inlines everything first) is a note;
a name never inlined is an error.
"""
from __future__ import annotations

import re

import onnx

from surgeon.errors import PassError, suggest
from surgeon.graphinfo import all_nodes, subgraphs
from surgeon.graphio import import_graph
from surgeon.modelio import called_functions, inlined_header, take_header
from surgeon.opset_conversion import aligned_function
from surgeon.pass_api import Param, Pass, PassResult, node_paths, register_pass
from surgeon.rewrite import export_graph

#: Marks where a call begins and ends in the model handed to the inliner, which puts a call's body (its
#: markers around the calls it holds included) where the call was: what lies between is the body.
MARKER_DOMAIN = "surgeon.inline-functions"
INLINER_SUFFIX = re.compile(r"__\d+$")
#: The provenance of an inlined node naming the functions it came through, outermost first (`ctx.tag`'s
#: `function=`).
FUNCTION_KEY = "surgeon.function"


@register_pass("inline-functions")
class InlineFunctions(Pass):
    """Replace calls of model-local functions by their bodies (onnx.inliner) and drop unused functions."""

    params = {"functions": Param(list, None, items=str,
                                 help="the local functions to inline, by name or domain::name (default: all)")}

    def run(self, graph, ctx):
        result = PassResult()
        chosen, inlined_earlier = self._chosen(graph.functions, ctx)
        if inlined_earlier:
            result.note(f"already inlined by an earlier step or run: {', '.join(inlined_earlier)}")
        if not graph.functions:
            return result
        model = export_graph(graph)
        called_before = called_functions(model)
        for name, kept in _reached_only_through_kept(model, chosen, called_before).items():
            result.note(f"{name} is called only from functions kept as calls ({', '.join(kept)}): name those too")
        sites = {}  # marker site -> (call, its scope; None for a call in a function body)
        for scope, body in _graphs(model.graph):
            _mark_calls(body, scope, chosen, sites)
        if not sites and called_before == {_key(f) for f in model.functions}:
            return result
        functions = _detached(model.functions)
        # Only the called ones: a function nothing calls goes anyway, whatever opsets it imports.
        given = [_prepared(f, model, chosen, sites) for f in functions if _key(f) in chosen & called_before]
        del model.functions[:]  # the inliner inlines every function it is given
        model.functions.extend(given)
        inlined = inlined_header(model)
        inlined.functions.extend(functions)  # those still called stay: a kept body may call an inlined one
        replaced = {}
        _name_inlined(inlined.graph, "", [], sites, _namer(ctx, graph, model.graph), replaced)
        called = called_functions(inlined)
        gone = [f for f in inlined.functions if _key(f) not in called]  # inlined everywhere, or never called
        for function in gone:
            inlined.functions.remove(function)
        unused = [_label(f) for f in gone if _key(f) not in called_before]
        take_header(model, inlined)
        result.graph = import_graph(model)
        for path, node in node_paths(result.graph):
            if path in replaced:
                call, functions = replaced[path]
                ctx.tag(node, replaces=call, function=functions)
        calls = [(call, scope) for call, scope in sites.values() if scope is not None]
        result.rewritten.extend(f"{scope}{call.name}" for call, scope in calls)
        result.rewritten.extend(f"function:{label}" for label in unused)
        if calls:
            names = sorted({_label_of_call(call) for call, _ in calls})
            result.note(f"inlined {len(calls)} call(s) of {', '.join(names)}")
        if unused:
            result.note(f"dropped {len(unused)} unused function(s): {', '.join(unused)}")
        return result

    def _chosen(self, functions, ctx) -> tuple[set[tuple[str, str]], list[str]]:
        """The (domain, name) of the functions to inline, and the named ones an earlier step or run inlined;
        PassError for a name neither the model nor that provenance knows."""
        if self.functions is None:
            return {_key(f) for f in functions}, []
        chosen, earlier, inlined_before = set(), set(), None
        for wanted in self.functions:
            matching = {_key(f) for f in functions if wanted in (f.name, _label(f))}
            if matching:
                chosen |= matching
                continue
            if inlined_before is None:  # a walk over the input model's nodes: only for a name the model lacks
                inlined_before = _inlined_before(ctx, self.name)
            matching_before = {label for label in inlined_before if wanted in (label, _bare(label))}
            if matching_before:
                earlier |= matching_before
                continue
            labels = sorted(_label(f) for f in functions)
            known = f"the model's: {', '.join(labels)}" if labels else "the model has none"
            if inlined_before:
                known += f"; inlined earlier: {', '.join(inlined_before)}"
            names = {f.name for f in functions} | {_bare(label) for label in inlined_before}
            raise PassError(f"no local function named '{wanted}' ({known})",
                            hint=suggest(wanted, names | set(labels) | set(inlined_before)))
        return chosen, sorted(earlier)


def _inlined_before(ctx, pass_name: str) -> list[str]:
    """The functions this pass inlined in an earlier step of the run or in the run that wrote the input
    model, as the provenance of the nodes it made names them."""
    tags = list(ctx.provenance.values())
    if ctx.input_model is not None:
        tags.extend({entry.key: entry.value for entry in node.metadata_props}
                    for node in all_nodes(ctx.input_model.graph) if node.metadata_props)
    labels = set()
    for tag in tags:
        if tag.get("surgeon.pass") == pass_name and isinstance(tag.get(FUNCTION_KEY), str):
            labels.update(tag[FUNCTION_KEY].split("/"))
    return sorted(labels)


def _reached_only_through_kept(model: onnx.ModelProto, chosen, called) -> dict[str, list[str]]:
    """The `chosen` functions the graph calls (`called`: `called_functions`) that no call the inliner reaches
    calls (from the graph, through chosen functions only), by name, with the kept functions whose bodies call
    them, directly or through other such chosen ones: naming a function whose calls all stay inlines nothing,
    which the user should hear about."""
    chosen = chosen & called
    calls = {_key(f): _calls_in(f) for f in model.functions if _key(f) in called}
    reached, reading = set(), [key for key in _calls_in(model.graph) if key in chosen]
    while reading:
        key = reading.pop()
        if key not in reached:
            reached.add(key)
            reading.extend(calls[key] & chosen)
    found = {}
    for key in sorted(chosen - reached):
        kept, seen, reading = set(), set(), [key]
        while reading:  # up through the callers, to the first kept one on each path
            callee = reading.pop()
            for caller, called in calls.items():
                if callee in called and caller not in seen:
                    seen.add(caller)
                    if caller in chosen:
                        reading.append(caller)
                    else:
                        kept.add(caller)
        if kept:
            found[key[1]] = sorted(name for _, name in kept)
    return found


def _calls_in(graph) -> set[tuple[str, str]]:
    """What the nodes of `graph` (or a function) and of its If/Loop/Scan bodies call, as (domain, op type)."""
    return {(n.domain, n.op_type) for n in all_nodes(graph)}


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


def _bare(label: str) -> str:
    """The function's name in its label (`domain::name`)."""
    return label.split("::", 1)[1]


def _graphs(graph, scope: str = ""):
    """(scope, graph) for `graph` (or a function) and each If/Loop/Scan body in it, a body's scope
    `holder/attribute/` (as surgeon.pass_api.node_paths names its nodes)."""
    yield scope, graph
    for node in graph.node:
        for attribute, body in subgraphs(node):
            yield from _graphs(body, f"{scope}{node.name}/{attribute}/")


def _mark_calls(graph, scope: str | None, chosen, sites: dict) -> None:
    """Put a marker before and after each call of a chosen function in `graph` (its own nodes only), the
    call recorded in `sites` by the markers' `site`."""
    nodes = list(graph.node)
    if not any((n.domain, n.op_type) in chosen for n in nodes):
        return
    del graph.node[:]
    for node in nodes:
        if (node.domain, node.op_type) not in chosen:
            graph.node.append(node)
            continue
        site = len(sites)
        call = onnx.NodeProto()
        call.CopyFrom(node)
        sites[site] = (call, scope)
        graph.node.append(onnx.helper.make_node("CallBegin", [], [], domain=MARKER_DOMAIN, site=site))
        graph.node.append(node)
        graph.node.append(onnx.helper.make_node("CallEnd", [], [], domain=MARKER_DOMAIN, site=site))


def _prepared(function: onnx.FunctionProto, model: onnx.ModelProto, chosen, sites: dict) -> onnx.FunctionProto:
    """A copy of `function` the inliner inlines (`aligned_function`: at the model's opsets), its calls of chosen
    functions marked."""
    prepared = aligned_function(function, model)
    for _, body in _graphs(prepared):
        _mark_calls(body, None, chosen, sites)
    return prepared


def _namer(ctx, gs_graph, marked: onnx.GraphProto):
    """`ctx.new_name` for the nodes calls bring in, also clear of the names of the nodes of `marked` (the graph
    before inlining) inside its If/Loop/Scan bodies, which `new_name` does not see: an inlined node lands beside
    them, and ONNX wants a graph's node names unique."""
    own = {node.name for node in all_nodes(marked)}

    def new_name(base: str) -> str:
        name = ctx.new_name(base, gs_graph)
        while name in own:
            name = ctx.new_name(base)
        return name

    return new_name


def _name_inlined(graph: onnx.GraphProto, scope: str, open_calls: list, sites: dict, new_name,
                  replaced: dict) -> None:
    """Remove the markers from an inlined `graph` and its bodies, naming each node a call brought in after
    the call (the outermost, `open_calls[0]`, where calls nest) with `new_name` (`_namer`); record, by node
    path, the call each replaces and the functions it came through."""
    kept = []
    for node in graph.node:
        if node.domain == MARKER_DOMAIN:
            if node.op_type == "CallBegin":
                open_calls.append(sites[node.attribute[0].i][0])
            else:
                open_calls.pop()
            continue
        kept.append(node)
        if open_calls:
            outermost = open_calls[0]
            base = INLINER_SUFFIX.sub("", node.name) or node.op_type
            node.name = new_name(f"{outermost.name or outermost.op_type}/{base}")
            replaced[f"{scope}{node.name}"] = (outermost.name, "/".join(_label_of_call(c) for c in open_calls))
        for attribute, body in subgraphs(node):
            _name_inlined(body, f"{scope}{node.name}/{attribute}/", list(open_calls), sites, new_name, replaced)
    if len(kept) != len(graph.node):
        del graph.node[:]
        graph.node.extend(kept)
