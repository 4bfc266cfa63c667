"""Make named input dimensions static (or rename symbolic ones) and re-infer the shapes downstream.

Before:  images: float32[batch, 6, 3, H, W]       After:  images: float32[1, 6, 3, 480, 800]

TensorRT engines without optimization profiles, NPUs and `chunk` folding need static shapes.
"""
from __future__ import annotations

import onnx_graphsurgeon as gs

from surgeon.errors import PassError, suggest
from surgeon.pass_api import Param, ParamError, Pass, PassResult, register_pass
from surgeon.inference import infer_graph_shapes


@register_pass("set-input-shapes")
class SetInputShapes(Pass):
    """Set graph input shapes (make dynamic dims static) and re-infer shapes."""

    params = {
        "shapes": Param(dict, help="{input name: [dims]}; a dim is a size >= 0 (0: an empty tensor) or a symbolic "
                                   "name such as 'batch' for a dynamic dim"),
    }
    needs = ("cleanup", "toposort")  # shape inference runs on a tidy, sorted graph; this pass moves no node
    provides = ("toposort", "cleanup", "shapes")

    @classmethod
    def check_params(cls, values):
        """The declared checks, then each shape's dims: recipes and `--set` fail at load time, naming `shapes`."""
        checked = super().check_params(values)
        for name, dims in checked["shapes"].items():
            problem = _shape_problem(dims)
            if problem:
                raise ParamError("shapes", f"parameter 'shapes' of pass '{cls.name}': input '{name}': {problem}",
                                 hint="a dim is a size >= 0 or a name such as 'batch' for a dynamic dim")
        return checked

    def run(self, graph, ctx):
        result = PassResult()
        inputs = {t.name: t for t in graph.inputs}
        for name, dims in self.shapes.items():
            if name not in inputs:
                raise PassError(f"no graph input named '{name}'", hint=suggest(name, inputs) or
                                f"inputs: {', '.join(inputs)}")
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


def _shape_problem(dims) -> str | None:
    """Why `dims` is not a shape (a list of sizes >= 0 and non-empty dim names), or None."""
    if not isinstance(dims, list):
        return f"the shape must be a list of dims, got {type(dims).__name__} {dims!r}"
    for i, dim in enumerate(dims):
        if isinstance(dim, bool) or not isinstance(dim, (int, str)):
            return f"dim {i} must be a size or a dim name, got {type(dim).__name__} {dim!r}"
        if isinstance(dim, int) and dim < 0:
            return f"dim {i} is {dim}; a size cannot be negative"
        if isinstance(dim, str) and not dim.strip():
            return f"dim {i} is an empty name"
    return None
