"""Make named input dimensions static (or rename symbolic ones) and re-infer the shapes downstream.

Before:  images: float32[batch, 6, 3, H, W]       After:  images: float32[1, 6, 3, 480, 800]

TensorRT engines without optimization profiles, NPUs and `chunk` folding need static shapes.

Where inference cannot follow (past plugin, ATen or custom-domain nodes) a tensor keeps its declared
shape, carried over to the new inputs: a dim named like a changed input dim takes its new value, other
names stay, and static dims stay only when no static input dim changed (one derived from it, e.g. a
batch of 1, cannot be told apart from the others); dims that cannot be carried over become unknown.
The rank always stays, and graph outputs keep the shape onnx.checker requires.
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
        changes = []  # (old dims, new dims) of each input changed
        for name, dims in self.shapes.items():
            if name not in inputs:
                raise PassError(f"no graph input named '{name}'", hint=suggest(name, inputs) or
                                f"inputs: {', '.join(inputs)}")
            old = inputs[name].shape
            if old is not None and len(old) != len(dims):
                raise PassError(f"input '{name}' has rank {len(old)}, the new shape {dims} has rank {len(dims)}")
            if list(old or []) != dims:
                inputs[name].shape = list(dims)
                changes.append((old or [], dims))
                result.rewritten.append(f"input:{name}")
                result.note(f"{name}: {old} -> {dims}")
        if result.changed:
            # Every other shape may depend on the inputs: forget them and infer again.
            declared = []
            for tensor in graph.tensors().values():
                if isinstance(tensor, gs.Variable) and tensor.name not in inputs:
                    if tensor.shape is not None:
                        declared.append((tensor, tensor.shape))
                    tensor.shape = None
            result.graph = infer_graph_shapes(graph)
            carry = _carrier(changes)
            for tensor, shape in declared:
                tensor.shape = _merged(tensor.shape, [carry(dim) for dim in shape])
        return result


def _carrier(changes):
    """How a declared dim reads with the new input shapes: a function of the old dim (None: unknown)."""
    renamed: dict[str, object] = {}  # old dim name -> new dim
    conflicting = set()
    static_changed = False
    for old, new in changes:
        for before, after in zip(old, new):
            if isinstance(before, str):
                if renamed.setdefault(before, after) != after:
                    conflicting.add(before)  # two new values for one name: neither can be carried
            elif before is not None and before != after:  # an unknown dim was any size already
                static_changed = True

    def carry(dim):
        if isinstance(dim, str):  # a name inference made up may be given to another dim by the next one
            return None if dim in conflicting or not _known(dim) else renamed.get(dim, dim)
        return None if static_changed else dim
    return carry


def _merged(inferred, declared):
    """Inference's shape, its unknown dims filled from the declared one; the declared one where
    inference found none (or another rank, which only a declared shape that no longer holds can give)."""
    if inferred is None or len(inferred) != len(declared):
        return declared if inferred is None else inferred
    return [dim if _known(dim) or declared_dim is None else declared_dim
            for dim, declared_dim in zip(inferred, declared)]


def _known(dim) -> bool:
    """A static dim, or a name inference did not make up (`unk__0`: a dim it could not say)."""
    return isinstance(dim, int) or isinstance(dim, str) and not dim.startswith("unk__")


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
