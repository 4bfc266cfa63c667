"""Fold subgraphs whose inputs are all constants into initializers (onnx-graphsurgeon's folder).

Before:  Constant(2) ─► Mul ◄─ Constant(3) ─► Add ◄─ x      After:  Constant(6) ─► Add ◄─ x

`size_threshold` keeps large folded tensors (e.g. expanded index tables) out of the file: a folded
value bigger than it stays computed at run time.
"""
from __future__ import annotations

import onnx_graphsurgeon as gs

from surgeon.errors import PassError
from surgeon.pass_api import Param, Pass, PassResult, register_pass

# onnx-graphsurgeon folds through ONNX Runtime, which refuses IR versions above 10 here (DESIGN.md).
_FOLDING_IR_VERSION = 10


@register_pass("fold-constants")
class FoldConstants(Pass):
    """Fold constant subgraphs into initializers (with a size threshold)."""

    params = {
        "size_threshold": Param(int, None, help="bytes; larger folded tensors are not materialised"),
        "fold_shapes": Param(bool, True, help="also fold Shape nodes of statically known shapes"),
        "partitioning": Param(str, None, choices=(None, "basic", "recursive"),
                              help="retry folding partitions when a node cannot be evaluated"),
    }
    needs = ("toposort",)

    def run(self, graph, ctx):
        result = PassResult()
        if not self._anything_to_fold(graph):
            return result
        before = [(id(n), n.name) for n in graph.nodes]
        ir_version = graph.ir_version
        if ir_version is None or ir_version > _FOLDING_IR_VERSION:
            graph.ir_version = _FOLDING_IR_VERSION
        try:
            graph.fold_constants(fold_shapes=self.fold_shapes, partitioning=self.partitioning,
                                 size_threshold=self.size_threshold, error_ok=False)
        except Exception as exc:
            raise PassError(f"constant folding failed: {type(exc).__name__}: {str(exc).splitlines()[0]}",
                            hint="try partitioning: basic") from exc
        finally:
            graph.ir_version = ir_version
        graph.cleanup()
        kept = {id(n) for n in graph.nodes}
        result.rewritten.extend(name for key, name in before if key not in kept)
        return result

    def _anything_to_fold(self, graph) -> bool:
        """Whether some node could fold: all its inputs constant, or a Shape node (with fold_shapes).

        graphsurgeon's folder walks and partitions the whole graph even when nothing folds (seconds on
        20,000 nodes, see docs/performance.md); this linear check skips that case.
        """
        for node in graph.nodes:
            if self.fold_shapes and node.op == "Shape":
                return True
            if all(isinstance(t, gs.Constant) or t.is_empty() for t in node.inputs) and not list(node.subgraphs()):
                return True
        return False
