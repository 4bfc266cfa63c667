"""Rename graph inputs, outputs, other tensors and nodes.

Before:  input.1 ─► ... ─► 47          After:  voxels ─► ... ─► pillar_features

Deploy code binds engine tensors by name; exported names like `input.1` or `47` change with every
export. Renaming is exact: an unknown name or a clash with an existing name is an error.
"""
from __future__ import annotations

from surgeon.errors import PassError, suggest
from surgeon.graphinfo import tensor_names
from surgeon.pass_api import Param, Pass, PassResult, register_pass


@register_pass("rename")
class Rename(Pass):
    """Rename inputs, outputs, tensors and nodes."""

    params = {
        "inputs": Param(dict, None, help="{old: new} for graph inputs"),
        "outputs": Param(dict, None, help="{old: new} for graph outputs"),
        "tensors": Param(dict, None, help="{old: new} for any tensor"),
        "nodes": Param(dict, None, help="{old: new} for node names"),
    }
    keeps = ("toposort", "cleanup", "shapes")

    def run(self, graph, ctx):
        result = PassResult()
        tensors = graph.tensors() if self.tensors else {}
        groups = (("inputs", {t.name: t for t in graph.inputs}), ("outputs", {t.name: t for t in graph.outputs}),
                  ("tensors", tensors))
        taken = set(tensors) if tensors else tensor_names(graph)
        for key, pool in groups:
            for old, new in (getattr(self, key) or {}).items():
                tensor = self._lookup(pool, old, key)
                self._claim(taken, new, old)
                tensor.name = new
                result.rewritten.append(f"tensor:{old}")
        nodes = {n.name: n for n in graph.nodes}
        taken_nodes = set(nodes)
        for old, new in (self.nodes or {}).items():
            node = self._lookup(nodes, old, "nodes")
            self._claim(taken_nodes, new, old)
            node.name = new
            result.rewritten.append(old)
        return result

    @staticmethod
    def _lookup(pool, name, key):
        if name not in pool:
            raise PassError(f"rename.{key}: no {key[:-1]} named '{name}'", hint=suggest(name, pool))
        return pool[name]

    @staticmethod
    def _claim(taken, new, old):
        if not isinstance(new, str) or not new:
            raise PassError(f"rename: the new name for '{old}' must be a non-empty string")
        if new in taken and new != old:
            raise PassError(f"rename: '{new}' is already used in the graph")
        taken.discard(old)
        taken.add(new)
