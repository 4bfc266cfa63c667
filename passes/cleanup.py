"""Remove dead nodes, unused initializers and (optionally) unused graph inputs.

Before:  x ─► Relu ─► y (graph output)      After:  x ─► Relu ─► y
         x ─► Neg ─► z (consumed by nobody)
         initializer W (consumed by nobody)
"""
from __future__ import annotations

from surgeon.pass_api import Param, Pass, PassResult, register_pass


@register_pass("cleanup")
class Cleanup(Pass):
    """Remove dead nodes, unused initializers and unused graph inputs."""

    params = {
        "remove_unused_inputs": Param(bool, True, help="also drop graph inputs nothing reads"),
    }

    def run(self, graph, ctx):
        result = PassResult()
        nodes_before = {id(n): n.name for n in graph.nodes}
        initializers_before = {name for name, t in graph.tensors().items() if t.__class__.__name__ == "Constant"}
        inputs_before = [t.name for t in graph.inputs]
        graph.cleanup(remove_unused_graph_inputs=self.remove_unused_inputs, remove_unused_node_outputs=False)
        kept = {id(n) for n in graph.nodes}
        for key, name in nodes_before.items():
            if key not in kept:
                result.rewrote(name)
        dropped_consts = sorted(initializers_before - set(graph.tensors()))
        dropped_inputs = [name for name in inputs_before if name not in {t.name for t in graph.inputs}]
        if dropped_consts:
            result.note(f"removed {len(dropped_consts)} unused initializer(s): {', '.join(dropped_consts[:10])}")
            result.rewritten.extend(f"initializer:{n}" for n in dropped_consts)
        if dropped_inputs:
            result.note(f"removed unused graph input(s): {', '.join(dropped_inputs)}")
            result.rewritten.extend(f"input:{n}" for n in dropped_inputs)
        return result
