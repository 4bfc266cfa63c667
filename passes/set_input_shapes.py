"""Make named input dimensions static (or rename symbolic ones) and re-infer the shapes downstream.

Before:  images: float32[batch, 6, 3, H, W]       After:  images: float32[1, 6, 3, 480, 800]

TensorRT engines without optimization profiles, NPUs and `chunk` folding need static shapes.
"""
from __future__ import annotations

import onnx_graphsurgeon as gs

from surgeon.errors import PassError, suggest
from surgeon.pass_api import Param, Pass, PassResult, register_pass
from surgeon.inference import infer_graph_shapes


@register_pass("set-input-shapes")
class SetInputShapes(Pass):
    """Set graph input shapes (make dynamic dims static) and re-infer shapes."""

    params = {
        "shapes": Param(dict, help="{input name: [dims]}; a dim is an int or a symbolic name"),
    }
    needs = ("cleanup", "toposort")  # shape inference runs on a tidy, sorted graph; this pass moves no node
    provides = ("toposort", "cleanup", "shapes")

    def run(self, graph, ctx):
        result = PassResult()
        inputs = {t.name: t for t in graph.inputs}
        for name, dims in self.shapes.items():
            if name not in inputs:
                raise PassError(f"no graph input named '{name}'", hint=suggest(name, inputs) or
                                f"inputs: {', '.join(inputs)}")
            if not isinstance(dims, list) or not all(isinstance(d, (int, str)) and not isinstance(d, bool)
                                                     for d in dims):
                raise PassError(f"shape of '{name}' must be a list of ints or dim names, got {dims!r}")
            old = inputs[name].shape
            if old is not None and len(old) != len(dims):
                raise PassError(f"input '{name}' has rank {len(old)}, the new shape {dims} has rank {len(dims)}")
            if list(old or []) != dims:
                inputs[name].shape = list(dims)
                result.rewritten.append(f"input:{name}")
                result.note(f"{name}: {old} -> {dims}")
        if result.changed:
            # Every other shape may depend on the inputs: forget them and infer again.
            graph_inputs = set(inputs)
            for tensor in graph.tensors().values():
                if isinstance(tensor, gs.Variable) and tensor.name not in graph_inputs:
                    tensor.shape = None
            result.graph = infer_graph_shapes(graph)
        return result
