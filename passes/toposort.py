"""Sort nodes so every node comes after the producers of its inputs (onnx.checker requires it).

Before:  [Tile_16 (reads r), ReduceMax_5 (writes r)]     After:  [ReduceMax_5, Tile_16]

Nodes already in order keep their relative order, so a sorted graph is left unchanged. What an
If/Loop/Scan body reads from outside counts as read by the node holding it; the bodies' own nodes are
sorted the same way.
"""
from __future__ import annotations

from surgeon.errors import PassError
from surgeon.pass_api import Pass, PassResult, register_pass
from surgeon.rewrite import stable_toposort


@register_pass("toposort")
class Toposort(Pass):
    """Sort nodes topologically (stable: a sorted graph stays as it is)."""

    provides = ("toposort",)
    keeps = ("cleanup", "shapes")

    def run(self, graph, ctx):
        result = PassResult()
        if "toposort" in ctx.held:  # the pipeline knows the graph is sorted
            return result
        before = _orders(graph)
        try:
            changed = stable_toposort(graph)
        except ValueError as exc:
            raise PassError(str(exc)) from None
        if changed:
            after = _orders(graph)
            moved = [node.name for key, nodes in after.items()
                     for old, node in zip(before[key], nodes) if old is not node]
            result.rewritten.extend(moved)
            result.note(f"reordered {len(moved)} node(s)")
        return result


def _orders(graph) -> dict[int, list]:
    """The node order of the graph and of each body in it, by graph identity."""
    orders = {id(graph): list(graph.nodes)}
    for node in graph.nodes:
        for body in node.subgraphs():
            orders.update(_orders(body))
    return orders
