"""Convert the model to another default-domain opset with the ONNX version converter.

Before:  opset 11, Split(split=[2, 2] attribute)      After:  opset 13, Split(x, split=[2, 2] input)

Without `opset`, the target's opset is used. Custom-domain nodes are left as they are. The converter
drops a model's local functions, so each function body is converted on its own and put back; a body
whose attribute references (`ref_attr_name`) the converter would have to rewrite is an error naming
the function, since the converter reads such an attribute as absent.
"""
from __future__ import annotations

import onnx
from onnx import helper

from surgeon.errors import PassError, first_line
from surgeon.pass_api import Param, Pass, PassResult, register_pass
from surgeon.rewrite import via_onnx


@register_pass("set-opset")
class SetOpset(Pass):
    """Convert the default-domain opset (onnx version converter)."""

    params = {"opset": Param(int, None, help="the opset to convert to (default: the target's)")}
    needs = ("toposort", "cleanup")

    def run(self, graph, ctx):
        result = PassResult()
        wanted = self.opset or ctx.target.opset
        if graph.opset == wanted:
            return result

        def convert(model):
            try:
                converted = onnx.version_converter.convert_version(model, wanted)
            except Exception as exc:
                raise PassError(f"cannot convert opset {graph.opset} to {wanted}: "
                                f"{first_line(exc)}") from exc
            del converted.functions[:]  # dropped by the converter (onnx 1.x): converted one by one instead
            converted.functions.extend(_convert_function(f, wanted, model.ir_version) for f in model.functions)
            return converted

        result.graph = via_onnx(graph, convert)
        result.rewritten.append(f"opset:{graph.opset}->{wanted}")
        return result


def _convert_function(function: onnx.FunctionProto, wanted: int, ir_version: int) -> onnx.FunctionProto:
    """The function with its body converted to default-domain opset `wanted` (the converter takes models only)."""
    converted = onnx.FunctionProto()
    converted.CopyFrom(function)
    imports = {o.domain: o for o in converted.opset_import}
    default = imports.get("") or imports.get("ai.onnx")
    if default is None or default.version == wanted:
        return converted
    where = f"local function {function.domain}:{function.name}"
    body = helper.make_graph(list(function.node), function.name,
                             [onnx.ValueInfoProto(name=name) for name in function.input],
                             [onnx.ValueInfoProto(name=name) for name in function.output])
    try:
        model = onnx.version_converter.convert_version(
            helper.make_model(body, opset_imports=function.opset_import, ir_version=ir_version), wanted)
    except Exception as exc:
        raise PassError(f"cannot convert {where} from opset {default.version} to {wanted}: "
                        f"{first_line(exc)}") from exc
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
