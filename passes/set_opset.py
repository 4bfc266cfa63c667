"""Convert the model to another default-domain opset with the ONNX version converter.

Before:  opset 11, Split(split=[2, 2] attribute)      After:  opset 13, Split(x, split=[2, 2] input)

Without `opset`, the target's opset is used. Custom-domain nodes are left as they are, and so are
default-domain op types onnx has no schema for (TensorRT-plugin style, GridSampler2DTRT), which the
converter alone would refuse. The converter drops a model's local functions, so each function body is
converted on its own and put back; a body whose attribute references (`ref_attr_name`) the converter
would have to rewrite is an error naming the function, since the converter reads such an attribute as
absent (surgeon.opset_conversion, shared with grid-sample).
"""
from __future__ import annotations

from surgeon.opset_conversion import convert_opset
from surgeon.pass_api import Param, Pass, PassResult, register_pass


@register_pass("set-opset")
class SetOpset(Pass):
    """Convert the default-domain opset (onnx version converter)."""

    params = {"opset": Param(int, None, minimum=1, help="the opset to convert to (default: the target's)")}
    needs = ("toposort", "cleanup")

    def run(self, graph, ctx):
        result = PassResult()
        wanted = self.opset or ctx.target.opset
        if graph.opset == wanted:
            return result
        result.graph = convert_opset(graph, wanted, ctx)
        result.rewritten.append(f"opset:{graph.opset}->{wanted}")
        return result
