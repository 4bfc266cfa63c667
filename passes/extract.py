"""Cut out the subgraph between named tensors: they become the new graph inputs and outputs.

Before:  img ─► backbone ─► feats ─► vtransform ─► bev ─► head ─► boxes
After (inputs: [feats], outputs: [bev]):             feats ─► vtransform ─► bev

This is how deploy projects split BEVFusion's camera backbone from its vtransform (bev_pool runs as a
CUDA kernel in between) or drop BEVFormer's post-processing. The new inputs need a dtype; the pass
runs shape inference first so they usually have a shape too.
"""
from __future__ import annotations

import onnx_graphsurgeon as gs

from surgeon.errors import PassError, suggest
from surgeon.pass_api import Param, Pass, PassResult, register_pass


@register_pass("extract")
class Extract(Pass):
    """Cut the subgraph between named tensors into a graph of its own."""

    params = {
        "inputs": Param(list, None, items=str, help="tensors that become the graph inputs (default: keep)"),
        "outputs": Param(list, None, items=str, help="tensors that become the graph outputs (default: keep)"),
    }
    needs = ("shapes",)

    def run(self, graph, ctx):
        result = PassResult()
        if not self.inputs and not self.outputs:
            raise PassError("extract needs 'inputs' or 'outputs' (tensor names)")
        tensors = graph.tensors()
        new_inputs = [self._tensor(tensors, n, "input") for n in self.inputs] if self.inputs else list(graph.inputs)
        new_outputs = [self._tensor(tensors, n, "output") for n in self.outputs] if self.outputs else list(graph.outputs)
        for tensor in new_inputs:
            if isinstance(tensor, gs.Constant):
                raise PassError(f"'{tensor.name}' is a constant and cannot become a graph input")
            if tensor.dtype is None:
                raise PassError(f"the dtype of '{tensor.name}' is unknown, so it cannot become a graph input",
                                hint="run infer-shapes or set-input-shapes first")
            tensor.inputs.clear()
        for tensor in new_outputs:
            if tensor.dtype is None:
                raise PassError(f"the dtype of '{tensor.name}' is unknown, so it cannot become a graph output")
        before = [(id(n), n.name) for n in graph.nodes]
        graph.inputs, graph.outputs = new_inputs, new_outputs
        graph.cleanup(remove_unused_graph_inputs=True)
        dangling = sorted({t.name for n in graph.nodes for t in n.inputs
                           if isinstance(t, gs.Variable) and not t.is_empty() and not t.inputs
                           and t not in graph.inputs})
        if dangling:
            raise PassError(f"the cut is not closed: the kept nodes also read {', '.join(dangling[:8])}",
                            hint="add them to 'inputs'")
        kept = {id(n) for n in graph.nodes}
        result.rewritten.extend(name for key, name in before if key not in kept)
        result.note(f"inputs {[t.name for t in new_inputs]}, outputs {[t.name for t in new_outputs]}, "
                    f"{len(graph.nodes)} nodes kept")
        return result

    @staticmethod
    def _tensor(tensors, name, role):
        if name not in tensors:
            raise PassError(f"no tensor named '{name}' to use as an {role}", hint=suggest(name, tensors))
        return tensors[name]
