"""Convert a graph to another default-domain opset with the ONNX version converter, around its two gaps.

Used by set-opset, by grid-sample / grid-sample-3d where GridSample needs a newer opset, and, for a local
function at another opset than its model's, by inline-functions and validation's inlining
(surgeon.modelio.inlined_header): one conversion, so a model converts the same whichever asks.

- The converter (onnx 1.x) drops a model's local functions: each function body is converted on its own
  and put back. A body whose attribute references (`ref_attr_name`) the converter would have to rewrite
  is an error naming the function, since the converter reads such an attribute as absent.
- The converter stops at default-domain ops it has no schema for (BEVFormer_tensorrt's GridSampler2DTRT
  and the other TensorRT-plugin op types): those ride through it in a private domain and come back
  unchanged.
- The converter leaves the nodes it adds unnamed (the Constant that carries Unsqueeze-13's axes): given
  the pass's context, each gets a name after the node it feeds (`Unsqueeze_12/Constant`) and, with the
  nodes the converter changed, the running pass's provenance.
"""
from __future__ import annotations

import re

import onnx
import onnx_graphsurgeon as gs
from onnx import helper

from surgeon.errors import PassError, first_line
from surgeon.rewrite import via_onnx

HIDDEN_DOMAIN = "surgeon.opset-conversion"


def convert_opset(graph: gs.Graph, opset: int, ctx=None) -> gs.Graph:
    """A new graph: `graph` converted to default-domain `opset`, local functions included. `graph` itself
    is left as it was. With the pass's `ctx`, new nodes are named and tagged. Raises PassError saying why
    the converter refused."""
    unknown = [(node, node.domain) for node in graph.nodes
               if (node.domain or "") in ("", "ai.onnx") and not onnx.defs.has(node.op)]
    for node, _ in unknown:
        node.domain = HIDDEN_DOMAIN
    try:
        converted = via_onnx(graph, lambda model: _convert_model(model, graph.opset, opset))
    finally:
        for node, domain in unknown:
            node.domain = domain
    for node in converted.nodes:
        if node.domain == HIDDEN_DOMAIN:
            node.domain = ""
    converted.import_domains = [d for d in converted.import_domains if d.domain != HIDDEN_DOMAIN]
    if ctx is not None:
        _name_and_tag(graph, converted, ctx)
    return converted


def _name_and_tag(before: gs.Graph, after: gs.Graph, ctx) -> None:
    """Name and tag the nodes of `after` the converter added, and tag those it adapted. A node is the
    same node as before when it has the same name, or, unnamed, writes the same outputs (an unnamed node
    the converter kept stays unnamed); the bodies of If/Loop/Scan nodes are paired by attribute and
    walked the same way."""
    named = {node.name: node for node in before.nodes if node.name}
    unnamed = {_outputs(node): node for node in before.nodes if not node.name}
    for node in after.nodes:
        was = named.get(node.name) if node.name else unnamed.get(_outputs(node))
        if was is None:
            reader = next((user for out in node.outputs for user in out.outputs if user.name), None)
            node.name = ctx.new_name(f"{reader.name if reader else f'opset{after.opset}'}/{node.op}", after)
            ctx.tag(node, replaces=reader.name if reader else None)
            continue
        if _signature(node) != _signature(was) and node.name:  # provenance goes by path, which needs a name
            ctx.tag(node, replaces=node.name)
        for key, body in node.attrs.items():
            if isinstance(body, gs.Graph) and isinstance(was.attrs.get(key), gs.Graph):
                _name_and_tag(was.attrs[key], body, ctx)


def _outputs(node: gs.Node) -> tuple[str, ...]:
    return tuple(out.name for out in node.outputs)


def _signature(node: gs.Node) -> tuple:
    """What the converter changes when it adapts a node: its op, inputs (Unsqueeze's axes) and attributes."""
    return node.op, node.domain or "", [t.name for t in node.inputs], sorted(node.attrs)


def _convert_model(model: onnx.ModelProto, current: int, wanted: int) -> onnx.ModelProto:
    try:
        converted = onnx.version_converter.convert_version(model, wanted)
    except Exception as exc:
        raise PassError(f"cannot convert opset {current} to {wanted}: {_converter_reason(exc)}") from exc
    del converted.functions[:]  # dropped by the converter (onnx 1.x): converted one by one instead
    converted.functions.extend(convert_function(f, wanted, model.ir_version) for f in model.functions)
    return converted


def _converter_reason(exc: Exception) -> str:
    """The converter's message, its C++ assertion for a missing adapter said in words."""
    text = str(exc)
    missing = re.search(r"No Adapter (?:From|To) Version \$?(\d+) for (\w+)", text)
    if missing:
        version, op = missing.groups()
        return f"onnx's version converter has no adapter for {op} across version {version}"
    assertion = re.search(r"(\w+)\.h:\d+: \w+: Assertion `.*?` failed: (.+)", text)
    if assertion:  # an adapter's C++ assertion: its header names the adapter, the rest says why
        adapter, why = assertion.groups()
        return f"onnx's version converter ({adapter}) refused: {why.strip().splitlines()[0]}"
    return first_line(exc)


def aligned_function(function: onnx.FunctionProto, model: onnx.ModelProto) -> onnx.FunctionProto:
    """A copy of `function` onnx's inliner inlines into `model`: it leaves the calls of a function whose imports
    differ from the model's in place, silently. Its default-domain body is converted to the model's opset, and
    a domain only the function imports is added to `model`'s imports; PassError where the two import another
    domain at different versions."""
    imports = {_domain(o.domain): o.version for o in model.opset_import}
    aligned = convert_function(function, imports[""], model.ir_version) if "" in imports else _copy(function)
    for opset in aligned.opset_import:
        domain = _domain(opset.domain)
        if domain not in imports:
            model.opset_import.add(domain=opset.domain, version=opset.version)
        elif imports[domain] != opset.version:
            raise PassError(f"local function {function.domain}::{function.name} imports domain '{domain}' version "
                            f"{opset.version}, the model version {imports[domain]}: onnx's inliner leaves such a "
                            "function's calls in place", hint=f"make the function's and the model's imports of "
                                                              f"'{domain}' agree")
    return aligned


def _domain(name: str) -> str:
    return "" if name == "ai.onnx" else name


def _copy(function: onnx.FunctionProto) -> onnx.FunctionProto:
    copy = onnx.FunctionProto()
    copy.CopyFrom(function)
    return copy


def convert_function(function: onnx.FunctionProto, wanted: int, ir_version: int) -> onnx.FunctionProto:
    """A copy of the function with its body converted to default-domain opset `wanted` (the converter takes
    models only); PassError saying why the converter refused."""
    converted = _copy(function)
    imports = {o.domain: o for o in converted.opset_import}
    default = imports.get("") or imports.get("ai.onnx")
    if default is None or default.version == wanted:
        return converted
    where = f"local function {function.domain}::{function.name}"
    body = helper.make_graph(list(function.node), function.name,
                             [onnx.ValueInfoProto(name=name) for name in function.input],
                             [onnx.ValueInfoProto(name=name) for name in function.output])
    try:
        model = onnx.version_converter.convert_version(
            helper.make_model(body, opset_imports=function.opset_import, ir_version=ir_version), wanted)
    except Exception as exc:
        raise PassError(f"cannot convert {where} from opset {default.version} to {wanted}: "
                        f"{_converter_reason(exc)}") from exc
    kept = {_with_refs(node) for node in model.graph.node}
    for node in function.node:
        if _with_refs(node) is not None and _with_refs(node) not in kept:
            raise PassError(f"cannot convert {where} to opset {wanted}: node '{node.name or node.op_type}' "
                            f"takes an attribute from the function's, which the version converter cannot rewrite")
    del converted.node[:]
    converted.node.extend(helper.make_node("Constant", [], [t.name], value=t) for t in model.graph.initializer)
    converted.node.extend(model.graph.node)
    default.version = wanted
    return converted


def _with_refs(node: onnx.NodeProto):
    """The node's identity and its attribute references, or None where it has none."""
    refs = tuple(sorted((a.name, a.ref_attr_name) for a in node.attribute if a.ref_attr_name))
    return (node.op_type, node.domain, tuple(node.input), tuple(node.output), refs) if refs else None
