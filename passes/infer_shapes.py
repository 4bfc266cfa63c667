"""Run ONNX shape inference so every tensor carries its dtype and (where knowable) its shape.

Before:  x[1,3,8,8] ─► Conv ─► t (no type) ─► Relu ─► y      After:  t: float32[1,16,8,8]
"""
from __future__ import annotations

import onnx

from surgeon.errors import PassError, first_line
from surgeon.pass_api import Param, Pass, PassResult, register_pass
from surgeon.rewrite import via_onnx


@register_pass("infer-shapes")
class InferShapes(Pass):
    """Infer tensor dtypes and shapes (ONNX shape inference)."""

    params = {
        "strict": Param(bool, False, help="fail on a shape inference error instead of skipping that node"),
        "data_prop": Param(bool, True, help="propagate constant shape values (Shape → Gather → Reshape)"),
    }
    needs = ("toposort",)
    provides = ("shapes",)

    def run(self, graph, ctx):
        result = PassResult()
        unknown_before = sum(1 for t in graph.tensors().values() if t.shape is None)

        def infer(model):
            try:
                return onnx.shape_inference.infer_shapes(model, strict_mode=self.strict, data_prop=self.data_prop)
            except Exception as exc:
                raise PassError(f"shape inference failed: {first_line(exc)}") from exc

        result.graph = via_onnx(graph, infer)
        unknown_after = sum(1 for t in result.graph.tensors().values() if t.shape is None)
        result.note(f"tensors without a shape: {unknown_before} -> {unknown_after}")
        return result
