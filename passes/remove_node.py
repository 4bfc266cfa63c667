"""Remove nodes by name or op type, wiring their first input straight to their output.

Before:  x ─► Identity ─► Dropout ─► y         After (op_types: [Identity, Dropout]):  x ─► y

Only nodes with one output can be removed; their first input takes the output's place. A graph
output keeps its name (an Identity holds it). A node that reads more than that input changes what the
graph computes when it goes (BatchNormalization's scale and mean, an Add's second addend), so
`op_types` matches only nodes without other inputs (Dropout's ratio and training_mode excepted);
`names` removes any node asked for and notes the inputs nothing reads any more.
"""
from __future__ import annotations

from surgeon.errors import PassError, suggest
from surgeon.pass_api import Param, Pass, PassResult, register_pass
from surgeon.rewrite import Rewrite


# Ops whose (single) output has its first input's dtype and shape, so removing them leaves every
# tensor's inferred type as it was (Dropout: in inference).
_SAME_TYPE_AND_SHAPE = {"Identity", "Dropout"}
# Ops `op_types` removes although they read more than their first input: what else they read (Dropout's
# ratio and training_mode) does not change the inference output.
_EXTRA_INPUTS_IGNORED = {"Dropout"}


@register_pass("remove-node")
class RemoveNode(Pass):
    """Remove nodes by name or op type, reconnecting their input to their output."""

    params = {
        "names": Param(list, None, items=str, help="node names to remove (each must exist)"),
        "op_types": Param(list, None, items=str, help="remove every node of these op types"),
    }
    keeps = ("toposort",)  # a bypassed node's readers now read its input, made earlier

    def run(self, graph, ctx):
        result = PassResult()
        if not self.names and not self.op_types:
            raise PassError("remove-node needs 'names' or 'op_types'")
        by_name = {n.name: n for n in graph.nodes}
        for name in self.names or ():
            if name not in by_name:
                raise PassError(f"no node named '{name}'", hint=suggest(name, by_name))
        wanted = set(self.names or ())
        types = set(self.op_types or ())
        removed_types: set[str] = set()
        for node in [n for n in graph.nodes if n.name in wanted or n.op in types]:
            if self._is_identity_kept(graph, node):
                continue
            data = [t for t in node.inputs if not t.is_empty()]
            if len(node.outputs) != 1 or not data:
                raise PassError(f"node '{node.name}' ({node.op}) has {len(node.outputs)} outputs and "
                                f"{len(data)} inputs; only single-output nodes with an input can be removed")
            others = [t.name for t in data[1:]]
            if others and node.name not in wanted and node.op not in _EXTRA_INPUTS_IGNORED:
                raise PassError(f"node '{node.name}' ({node.op}) also reads {', '.join(others)}: removing it "
                                f"would put its first input '{data[0].name}' in its place and ignore them",
                                hint="name it in 'names' to remove it all the same")
            if others and node.op not in _EXTRA_INPUTS_IGNORED:
                result.note(f"{node.name} ({node.op}): '{data[0].name}' took its output's place; "
                            f"no longer read by it: {', '.join(others)}")
            Rewrite(graph, ctx, node).bypass(data[0])
            result.rewrote(node)
            removed_types.add(node.op)
        if removed_types <= _SAME_TYPE_AND_SHAPE:
            result.keeps = ("shapes",)  # every reader now reads a tensor of the same type and shape
        return result

    @staticmethod
    def _is_identity_kept(graph, node) -> bool:
        # Removing an Identity that produces a graph output would only put another Identity there
        # (to keep the output's name): skip it, so a second run changes nothing.
        return node.op == "Identity" and any(t is node.outputs[0] for t in graph.outputs)
