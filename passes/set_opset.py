"""Convert the model to another default-domain opset with the ONNX version converter.

Before:  opset 11, Split(split=[2, 2] attribute)      After:  opset 13, Split(x, split=[2, 2] input)

Without `opset`, the target's opset is used. Custom-domain nodes are left as they are.
"""
from __future__ import annotations

import onnx

from surgeon.errors import PassError
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
                return onnx.version_converter.convert_version(model, wanted)
            except Exception as exc:
                raise PassError(f"cannot convert opset {graph.opset} to {wanted}: "
                                f"{str(exc).strip().splitlines()[0]}") from exc

        result.graph = via_onnx(graph, convert)
        result.rewritten.append(f"opset:{graph.opset}->{wanted}")
        return result
