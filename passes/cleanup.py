"""Remove dead nodes, unused initializers and (optionally) unused graph inputs.

Before:  x ─► Relu ─► y (graph output)      After:  x ─► Relu ─► y
         x ─► Neg ─► z (consumed by nobody)
         initializer W (consumed by nobody)

Initializers that nothing reads never survive the import into onnx-graphsurgeon; this pass reports
them (from the pipeline's context) so the run report says where they went.
"""
from __future__ import annotations

import onnx_graphsurgeon as gs

from surgeon.pass_api import Param, Pass, PassResult, register_pass


@register_pass("cleanup")
class Cleanup(Pass):
    """Remove dead nodes, unused initializers and unused graph inputs."""

    params = {
        "remove_unused_inputs": Param(bool, True, help="also drop graph inputs nothing reads"),
    }
    provides = ("cleanup",)

    def run(self, graph, ctx):
        result = PassResult()
        nodes_before = [(id(n), n.name) for n in graph.nodes]
        constants_before = {name for name, t in graph.tensors().items() if isinstance(t, gs.Constant)}
        inputs_before = [t.name for t in graph.inputs]
        graph.cleanup(remove_unused_graph_inputs=self.remove_unused_inputs)
        kept = {id(n) for n in graph.nodes}
        result.rewritten.extend(name for key, name in nodes_before if key not in kept)
        dropped = sorted(constants_before - set(graph.tensors())) + list(ctx.unused_initializers)
        ctx.unused_initializers.clear()
        if dropped:
            result.note(f"removed {len(dropped)} unused initializer(s): {', '.join(dropped[:10])}")
            result.rewritten.extend(f"initializer:{n}" for n in dropped)
        remaining = {t.name for t in graph.inputs}
        dropped_inputs = [name for name in inputs_before if name not in remaining]
        if dropped_inputs:
            result.note(f"removed unused graph input(s): {', '.join(dropped_inputs)}")
            result.rewritten.extend(f"input:{n}" for n in dropped_inputs)
        return result
