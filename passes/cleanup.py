"""Remove dead nodes, unused initializers and (optionally) unused graph inputs.

Before:  x ─► Relu ─► y (graph output)      After:  x ─► Relu ─► y
         x ─► Neg ─► z (consumed by nobody)
         initializer W (consumed by nobody)

Initializers that nothing reads never survive the import into onnx-graphsurgeon; this pass reports
them (from the pipeline's context) so the run report says where they went.

What an If/Loop/Scan body reads from outside counts as read by the node holding it; a body's inputs
are never removed (see `surgeon.rewrite.prune_graph`).
"""
from __future__ import annotations

import onnx_graphsurgeon as gs

from surgeon.pass_api import Param, Pass, PassResult, register_pass
from surgeon.rewrite import any_subgraphs, prune_graph


@register_pass("cleanup")
class Cleanup(Pass):
    """Remove dead nodes, unused initializers and unused graph inputs."""

    params = {
        "remove_unused_inputs": Param(bool, True, help="also drop graph inputs nothing reads"),
    }
    provides = ("cleanup",)
    keeps = ("toposort", "shapes")

    def run(self, graph, ctx):
        result = PassResult()
        inputs_before = [t.name for t in graph.inputs]
        if "cleanup" in ctx.held and not graph.functions and not any_subgraphs(graph.nodes):
            # Pruned already (by the pipeline or the previous pass): every node feeds an output, so
            # an input is read exactly when some node reads it or it is an output itself.
            removed, dropped = [], []
            if self.remove_unused_inputs:
                outputs = {id(t) for t in graph.outputs}
                graph.inputs = [t for t in graph.inputs if t.outputs or id(t) in outputs]
        else:
            constants_before = _constants_read(graph)
            removed = prune_graph(graph, remove_unused_inputs=self.remove_unused_inputs)
            dropped = sorted(constants_before - _constants_read(graph)) if removed else []
        result.rewritten.extend(node.name for node in removed)
        dropped += list(ctx.unused_initializers)
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


def _constants_read(graph) -> set[str]:
    """Names of the constants that nodes (subgraph nodes too) or graph outputs read."""
    names = {t.name for t in graph.outputs if isinstance(t, gs.Constant)}
    for node in graph.nodes:
        names.update(t.name for t in node.inputs if isinstance(t, gs.Constant))
        for subgraph in node.subgraphs():
            names |= _constants_read(subgraph)
    return names
