"""Fold subgraphs whose inputs are all constants into initializers, shape computations included.

Before:  Constant(2) ─► Mul ◄─ Constant(3) ─► Add ◄─ x      After:  Constant(6) ─► Add ◄─ x
         x[1,8,8,8] ─► Shape ─► Gather(0) ─► Unsqueeze ─► Concat(-1) ─► Reshape      x ─► Reshape ◄─ [1,-1]

One walk over the sorted graph (surgeon.folding): shape computations, integer and elementwise
float arithmetic fold in NumPy, bit-identical to ONNX Runtime; other constant nodes (MatMul, Exp, ...)
are evaluated one by one on ONNX Runtime. Graphs with subgraphs or functions, and whatever the walk
could not evaluate, go to onnx-graphsurgeon's folder (ONNX Runtime over the whole graph). Shapes are
inferred first when a `Shape` node reads a tensor of unknown shape, and again after a fold that may
have made one known (up to 8 folds), so that a second run folds nothing. Random ops never fold.
`size_threshold` keeps large folded tensors (e.g. expanded index tables) out of the file: a folded
value bigger than it stays computed at run time.
"""
from __future__ import annotations

import onnx
import onnx_graphsurgeon as gs
from onnx_graphsurgeon.logger import G_LOGGER

from surgeon.errors import PassError, first_line
from surgeon.folding import evaluate_with_onnxruntime, fold_graph, never_folded
from surgeon.inference import infer_graph_shapes
from surgeon.pass_api import Param, Pass, PassResult, register_pass
from surgeon.rewrite import any_subgraphs, prune_graph, subgraph_reads

# onnx-graphsurgeon folds through ONNX Runtime, which refuses IR versions above 10 here (DESIGN.md).
_FOLDING_IR_VERSION = 10
# Fold, infer shapes, fold again: at most this many folds. The zoo needs up to 5 (bevfusion-fuser-head,
# where graphsurgeon's folder reaches one attention block further each time); each one after the first
# costs a shape inference (docs/performance.md).
_ROUNDS = 8
# graphsurgeon's folder turns Cast(int->float) -> op -> Cast(->int) on shape values back into integer
# math (for TensorRT); these are the ops it does that for.
_CAST_ELISION_OPS = {"Add", "Sub", "Mul", "Div", "Max", "Min", "Equal", "Greater", "Less", "Concat"}


@register_pass("fold-constants")
class FoldConstants(Pass):
    """Fold constant subgraphs into initializers (with a size threshold)."""

    params = {
        "size_threshold": Param(int, None, minimum=0, help="bytes; larger folded tensors are not materialised"),
        "fold_shapes": Param(bool, True, help="also fold Shape nodes of statically known shapes"),
        "partitioning": Param(str, None, choices=(None, "basic", "recursive"),
                              help="graphsurgeon's folder: 'recursive' folds around nodes ONNX Runtime cannot "
                                   "evaluate (ATen, plugins) and leaves them; 'basic' evaluates each folded output "
                                   "on its own and, like the default, fails on such a node"),
    }
    needs = ("toposort",)
    provides = ("cleanup",)  # folded nodes are pruned
    keeps = ("toposort",)  # folded nodes become constants where they stood

    def run(self, graph, ctx):
        result = PassResult()
        if self.fold_shapes and "shapes" not in ctx.held and _shapes_unknown(graph):
            infer_graph_shapes(graph)  # held: inference already said all it can
        graphsurgeon_only = bool(graph.functions) or any_subgraphs(graph.nodes) or _cast_elision_possible(graph)
        # Folding makes shapes known (a Reshape's computed shape becomes a constant), which may let Shape
        # nodes fold that could not before: infer again and fold again, so that a second run of the pass
        # finds nothing left to fold (docs/architecture.md).
        for round_ in range(1, _ROUNDS + 1):
            constants = self._fold_once(graph, graphsurgeon_only, graph.opset or ctx.opset, result)
            if not (self.fold_shapes and round_ < _ROUNDS and _shapes_to_learn(graph, constants)):
                break
            infer_graph_shapes(graph)
        return result

    def _fold_once(self, graph, graphsurgeon_only: bool, opset: int, result: PassResult) -> list[str]:
        """Fold and prune, adding what went to `result`; the names of the tensors that became constants."""
        if graphsurgeon_only:
            if self._anything_to_fold(graph):
                return self._graphsurgeon_folds(graph, result)
            result.rewritten.extend(node.name for node in prune_graph(graph))
            return []

        def onnxruntime(node, inputs):
            return evaluate_with_onnxruntime(node, inputs, opset)

        folded = fold_graph(graph, fold_shapes=self.fold_shapes, size_threshold=self.size_threshold,
                            fallback=onnxruntime)
        for node, why in folded.refused:
            result.note(f"{node.name}: not folded, {why}")
        if folded.remaining:
            return folded.constants + self._graphsurgeon_folds(graph, result)
        result.rewritten.extend(node.name for node in prune_graph(graph))
        return folded.constants

    def _graphsurgeon_folds(self, graph, result: PassResult) -> list[str]:
        """Fold with graphsurgeon's folder and prune, adding what went to `result`; the names of the
        tensors that became constants."""
        before = list(graph.nodes)  # graphsurgeon's folder removes nodes itself: found by comparing
        variables = {name for name, tensor in graph.tensors().items() if isinstance(tensor, gs.Variable)}
        self._fold_with_graphsurgeon(graph)
        prune_graph(graph)
        kept = {id(n) for n in graph.nodes}
        result.rewritten.extend(node.name for node in before if id(node) not in kept)
        return [name for name, tensor in graph.tensors().items()
                if isinstance(tensor, gs.Constant) and name in variables]

    def _fold_with_graphsurgeon(self, graph) -> None:
        # Subgraphs and functions are exported on their own while folding: each needs the IR cap.
        graphs = [graph, *graph.subgraphs(recursive=True), *graph.functions]
        ir_versions = [g.ir_version for g in graphs]
        for g in graphs:
            if g.ir_version is None or g.ir_version > _FOLDING_IR_VERSION:
                g.ir_version = _FOLDING_IR_VERSION
        try:
            # graphsurgeon's folder prints to stdout, which breaks `run --json`: a warning for each part that
            # recursive partitioning sets aside, advice on size_threshold, and a warning or critical before
            # each failure, which with error_ok=False it raises and this step reports. Its logger prints
            # nothing above CRITICAL (its "colored module is not installed" warning included).
            with G_LOGGER.suppress(G_LOGGER.CRITICAL + 1):
                graph.fold_constants(fold_shapes=self.fold_shapes, partitioning=self.partitioning,
                                     size_threshold=self.size_threshold, error_ok=False,
                                     should_exclude_node=never_folded)
        except Exception as exc:
            # Only recursive partitioning sets aside a node ONNX Runtime cannot run: without it (and with
            # basic, given error_ok=False) graphsurgeon's folder raises on the first such node.
            hint = None if self.partitioning == "recursive" else (
                "try partitioning: recursive, which leaves nodes ONNX Runtime cannot evaluate, such as ATen "
                "or plugin nodes, unfolded")
            raise PassError(f"constant folding failed: {type(exc).__name__}: {first_line(exc)}", hint=hint) from exc
        finally:
            for g, version in zip(graphs, ir_versions):
                g.ir_version = version

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


def _shapes_to_learn(graph, constants: list[str]) -> bool:
    """Whether a Shape node reads a dim inference did not know (None, or a name it made up: `unk__3`)
    downstream of a tensor that just became a constant: inference may know that dim now. Inference reads
    only what lies upstream of a tensor and cannot see through ops it has no schema for (ATen, plugins),
    so unknown dims elsewhere stay unknown, and dims named after the graph inputs' (`batch`) stay dynamic
    however often it runs."""
    inferable = {"", "ai.onnx", "ai.onnx.ml", *(function.domain for function in graph.functions)}
    changed = set(constants)
    for node in graph.nodes:  # sorted: a walk in order reaches everything downstream
        reads = [*node.inputs, *subgraph_reads(node)] if any(node.subgraphs()) else node.inputs
        if (node.domain or "") in inferable and any(tensor.name in changed for tensor in reads):
            if node.op == "Shape" and _unknown_dims(node.inputs[0].shape):
                return True
            changed.update(tensor.name for tensor in node.outputs)
    return False


def _unknown_dims(shape) -> bool:
    return shape is None or any(dim is None or isinstance(dim, str) and dim.startswith("unk__") for dim in shape)


def _shapes_unknown(graph) -> bool:
    """Some Shape node reads a tensor whose shape nobody has inferred yet."""
    return any(node.op == "Shape" and node.inputs and node.inputs[0].shape is None for node in graph.nodes)


def _cast_elision_possible(graph) -> bool:
    """Whether graphsurgeon's shape-cast elision could apply: an op from _CAST_ELISION_OPS reading a
    Cast to float and consumed only by Casts."""
    for node in graph.nodes:
        if node.op not in _CAST_ELISION_OPS:
            continue
        casts_in = any(t.inputs and t.inputs[0].op == "Cast" and t.inputs[0].attrs.get("to") == onnx.TensorProto.FLOAT
                       for t in node.inputs)
        casts_out = all(t.outputs and all(c.op == "Cast" for c in t.outputs) for t in node.outputs)
        if casts_in and casts_out:
            return True
    return False
