"""Rename graph inputs, outputs, other tensors and nodes.

Before:  input.1 ─► ... ─► 47          After:  voxels ─► ... ─► pillar_features

Deploy code binds engine tensors by name; exported names like `input.1` or `47` change with every
export. Renaming is exact: an unknown name or a clash with an existing name (one inside an If/Loop body
too) is an error.
"""
from __future__ import annotations

from surgeon.errors import PassError, suggest
from surgeon.graphinfo import tensor_names
from surgeon.pass_api import Param, Pass, PassResult, register_pass
from surgeon.rewrite import any_subgraphs


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
        inner = _subgraph_tensors(graph) if any_subgraphs(graph.nodes) else {}
        taken = (set(tensors) if tensors else tensor_names(graph)) | set(inner)
        given: dict[str, str] = {}
        for key, pool in groups:
            for old, new in (getattr(self, key) or {}).items():
                tensor = self._lookup(pool, old, key)
                self._claim(taken, given, new, old)
                tensor.name = new
                # Subgraphs read outer tensors by name; in an unsorted graph graphsurgeon gives such a
                # read a Variable of its own (see rewrite.subgraph_reads), which must follow.
                for read in inner.pop(old, ()):
                    read.name = new
                result.rewritten.append(f"tensor:{old}")
        nodes = {n.name: n for n in graph.nodes}
        taken_nodes, given_nodes = set(nodes), {}
        original = _metadata_by_node(ctx.input_model) if self.nodes else {}
        for old, new in (self.nodes or {}).items():
            node = self._lookup(nodes, old, "nodes")
            self._claim(taken_nodes, given_nodes, new, old)
            node.name = new
            _carry_metadata(ctx, original, old, new)
            ctx.renamed_nodes[new] = ctx.renamed_nodes.pop(old, old)
            result.rewritten.append(old)
        return result

    @staticmethod
    def _lookup(pool, name, key):
        if name not in pool:
            raise PassError(f"rename.{key}: no {key[:-1]} named '{name}'", hint=suggest(name, pool))
        return pool[name]

    @staticmethod
    def _claim(taken, given, new, old):
        """Take `new` for `old` in `taken`; `given` ({new: old}) holds what this rename has handed out."""
        if not isinstance(new, str) or not new:
            raise PassError(f"rename: the new name for '{old}' must be a non-empty string")
        if new in given and given[new] != old:
            raise PassError(f"rename: the mapping gives '{given[new]}' and '{old}' the same new name '{new}'")
        given[new] = old
        if new in taken and new != old:
            raise PassError(f"rename: '{new}' is already used in the graph")
        taken.discard(old)
        taken.add(new)


def _subgraph_tensors(graph) -> dict[str, list]:
    """Every tensor the subgraphs (If/Loop/Scan bodies, nested too) name, by name: what they define
    (a new name must not clash with it) and what they read from outside."""
    found: dict[str, list] = {}
    pending = [sub for node in graph.nodes for sub in node.subgraphs()]
    while pending:
        sub = pending.pop()
        tensors = [*sub.inputs, *sub.outputs]
        for node in sub.nodes:
            tensors += node.inputs
            tensors += node.outputs
            pending.extend(node.subgraphs())
        for tensor in tensors:
            if not tensor.is_empty():
                same = found.setdefault(tensor.name, [])
                if not any(t is tensor for t in same):
                    same.append(tensor)
    return found


def _metadata_by_node(model) -> dict[str, dict[str, str]]:
    if model is None:
        return {}
    return {n.name: {p.key: p.value for p in n.metadata_props} for n in model.graph.node if n.metadata_props}


def _carry_metadata(ctx, original: dict[str, dict[str, str]], old: str, new: str) -> None:
    """graphsurgeon drops nodes' `metadata_props`; the pipeline puts them back by node name, from the
    input model and from `ctx.provenance` (surgeon.pipeline._restore_node_metadata): carry them to the
    new name."""
    props = {**original.get(old, {}), **ctx.provenance.pop(old, {})}
    if props:
        ctx.provenance[new] = props
