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
from surgeon.rewrite import prune_graph, subgraph_reads


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
        new_inputs = self._tensors(tensors, self.inputs, "inputs") if self.inputs else list(graph.inputs)
        new_outputs = self._tensors(tensors, self.outputs, "outputs") if self.outputs else list(graph.outputs)
        for tensor in new_inputs:
            if isinstance(tensor, gs.Constant):
                raise PassError(f"'{tensor.name}' is a constant and cannot become a graph input")
            if tensor.dtype is None:
                raise PassError(f"the dtype of '{tensor.name}' is unknown, so it cannot become a graph input",
                                hint="run infer-shapes or set-input-shapes first")
        for tensor in new_outputs:
            if tensor.dtype is None:
                raise PassError(f"the dtype of '{tensor.name}' is unknown, so it cannot become a graph output")
        for tensor in new_inputs:
            tensor.inputs.clear()
        graph.inputs, graph.outputs = new_inputs, new_outputs
        # Named inputs are kept as named (one nothing reads is an error below); the graph's own go when unused.
        removed = prune_graph(graph, remove_unused_inputs=not self.inputs)
        read = {t.name for node in graph.nodes for t in (*node.inputs, *subgraph_reads(node))}
        produced = {t.name for node in graph.nodes for t in node.outputs}
        given = {t.name for t in graph.inputs}
        dangling = sorted(name for name in read - produced - given
                          if name and not isinstance(tensors.get(name), gs.Constant))
        if dangling:
            raise PassError(f"the cut is not closed: the kept nodes also read {', '.join(dangling[:8])}",
                            hint="add them to 'inputs'")
        outputs = {t.name for t in new_outputs}
        unread = [t.name for t in new_inputs if t.name not in read and t.name not in outputs]
        if self.inputs and unread:
            raise PassError(f"extract.inputs: nothing between the inputs and the outputs reads "
                            f"{', '.join(repr(n) for n in unread)}",
                            hint="drop it from 'inputs': the nodes that read it are outside the cut")
        result.rewritten.extend(node.name for node in removed)
        result.note(f"inputs {[t.name for t in new_inputs]}, outputs {[t.name for t in new_outputs]}, "
                    f"{len(graph.nodes)} nodes kept")
        return result

    @staticmethod
    def _tensors(tensors, names, key):
        chosen = []
        for name in names:
            if name not in tensors:
                raise PassError(f"extract.{key}: no tensor named '{name}'", hint=suggest(name, tensors))
            if names.count(name) > 1:
                raise PassError(f"extract.{key}: '{name}' is named more than once")
            chosen.append(tensors[name])
        return chosen
