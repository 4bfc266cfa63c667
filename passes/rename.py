"""Rename graph inputs, outputs, other tensors and nodes.

Before:  input.1 ─► ... ─► 47          After:  voxels ─► ... ─► pillar_features

Deploy code binds engine tensors by name; exported names like `input.1` or `47` change with every
export. Renaming is exact: an unknown name or a clash with an existing name (one inside an If/Loop body
too) is an error. The names change at once: `{a: b, b: q}` and swaps work in any order.
"""
from __future__ import annotations

from collections import Counter

from surgeon.errors import PassError, suggest
from surgeon.graphinfo import tensor_names
from surgeon.pass_api import Param, ParamError, Pass, PassResult, register_pass
from surgeon.rewrite import any_subgraphs


@register_pass("rename")
class Rename(Pass):
    """Rename inputs, outputs, tensors and nodes."""

    params = {
        "inputs": Param(dict, None, items=str, help="{old: new} for graph inputs"),
        "outputs": Param(dict, None, items=str, help="{old: new} for graph outputs"),
        "tensors": Param(dict, None, items=str, help="{old: new} for any tensor"),
        "nodes": Param(dict, None, items=str, help="{old: new} for node names"),
    }
    keeps = ("toposort", "cleanup", "shapes")

    @classmethod
    def check_params(cls, values):
        """The declared checks, then: no old or new name is empty, so a recipe fails at load time, at its line
        (an empty old name matched no tensor, or any one of the unnamed nodes)."""
        checked = super().check_params(values)
        for key in cls.params:
            mapping = checked[key] or {}
            where = f"parameter '{key}' of pass '{cls.name}'"
            no_tensor = "" if key == "nodes" else ": an empty tensor name means 'no tensor' in ONNX"
            if "" in mapping:
                why = ": unnamed nodes cannot be told apart by name" if key == "nodes" else no_tensor
                raise ParamError(key, f"{where}: the entry renaming '' to '{mapping['']}' has an empty old name",
                                 hint=f"give the {key[:-1]}'s current name, or drop the entry{why}")
            empty = next((old for old, new in mapping.items() if not new), None)
            if empty is not None:
                raise ParamError(key, f"{where}: the new name for '{empty}' is empty",
                                 hint=f"give it a name, or drop the entry{no_tensor}")
        return checked

    def run(self, graph, ctx):
        result = PassResult()
        tensors = graph.tensors() if self.tensors else {}
        groups = (("inputs", {t.name: t for t in graph.inputs}), ("outputs", {t.name: t for t in graph.outputs}),
                  ("tensors", tensors))
        inner = _subgraph_tensors(graph) if any_subgraphs(graph.nodes) else {}
        renames = [(old, self._lookup(pool, old, key), new)
                   for key, pool in groups for old, new in (getattr(self, key) or {}).items()]
        taken = (set(tensors) if tensors else tensor_names(graph)) | set(inner)
        _check_new_names(taken, [(old, new) for old, _, new in renames])
        for old, tensor, new in renames:
            tensor.name = new
            # Subgraphs read outer tensors by name; in an unsorted graph graphsurgeon gives such a
            # read a Variable of its own (see rewrite.subgraph_reads), which must follow.
            for read in inner.pop(old, ()):
                read.name = new
            result.rewritten.append(f"tensor:{old}")
        nodes = {n.name: n for n in graph.nodes}
        if self.nodes:
            _refuse_shared_names(graph.nodes, self.nodes)
        node_renames = [(old, self._lookup(nodes, old, "nodes"), new) for old, new in (self.nodes or {}).items()]
        _check_new_names(set(nodes), [(old, new) for old, _, new in node_renames])
        original = _metadata_by_node(ctx.input_model) if self.nodes else {}
        # All taken before any is put back: in a swap, one node's new name is the other's old one.
        carried = [(_take_metadata(ctx, original, old), ctx.renamed_nodes.pop(old, old)) for old, _, _ in node_renames]
        for (old, node, new), (props, input_name) in zip(node_renames, carried):
            node.name = new
            if props:
                ctx.provenance[new] = props
            ctx.renamed_nodes[new] = input_name
            result.rewritten.append(old)
        return result

    @staticmethod
    def _lookup(pool, name, key):
        if name not in pool:
            raise PassError(f"rename.{key}: no {key[:-1]} named '{name}'", hint=suggest(name, pool))
        return pool[name]


def _check_new_names(taken: set[str], renames: list[tuple[str, object]]) -> None:
    """Refuse a rename ((old, new) pairs) that gives a name two new names, two names one, or a name one
    that stays in `taken`. Every old name is free to take, whatever the order: a chain (a->b, b->q)
    and a swap (a->b, b->a) rename at once."""
    new_by_old: dict[str, str] = {}
    old_by_new: dict[str, str] = {}
    for old, new in renames:
        if new_by_old.setdefault(old, new) != new:
            raise PassError(f"rename: the mapping gives '{old}' two new names, '{new_by_old[old]}' and '{new}'")
        if old_by_new.setdefault(new, old) != old:
            raise PassError(f"rename: the mapping gives '{old_by_new[new]}' and '{old}' the same new name '{new}'")
    kept = taken - new_by_old.keys()
    for _, new in renames:
        if new in kept:
            raise PassError(f"rename: '{new}' is already used in the graph")


def _refuse_shared_names(nodes, renames: dict[str, str]) -> None:
    """Refuse renaming a name more than one node has: which of them is meant cannot be told (one used to be
    renamed silently, the other left)."""
    counts = Counter(node.name for node in nodes)  # once: a lookup per rename would cost renames x nodes
    for old in renames:
        if counts[old] > 1:
            named = [node for node in nodes if node.name == old]
            which = "; ".join(f"{node.op} -> {', '.join(t.name for t in node.outputs) or 'nothing'}" for node in named)
            raise PassError(f"rename.nodes: {len(named)} nodes are named '{old}' ({which}): which one to rename "
                            "cannot be told by name", hint="give the nodes distinct names in the export "
                            "(`surgeon check` lists shared ones, SG009)")


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


def _take_metadata(ctx, original: dict[str, dict[str, str]], old: str) -> dict[str, str]:
    """graphsurgeon drops nodes' `metadata_props`; the pipeline puts them back by node name, from the
    input model and from `ctx.provenance` (surgeon.pipeline._restore_node_metadata): what node `old`
    carries, taken out of `ctx.provenance` for its new name."""
    return {**original.get(old, {}), **ctx.provenance.pop(old, {})}
